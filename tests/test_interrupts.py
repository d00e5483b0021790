"""Ctrl-C is not lost when it lands in a garbage-collector callback (cli.interrupts): Python can
only report such an interrupt as unraisable, and the command would run on to its end."""

import gc
import signal
import sys
import threading
import time

import pytest

from lmalign_jax.cli.interrupts import deliver_lost_interrupts


@pytest.fixture
def python_handles_sigint():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled in the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def interrupt_in_gc():
    """The next collection raises KeyboardInterrupt inside its callback, once."""
    fired = []

    def callback(phase, _info):
        if phase == "start" and not fired:
            fired.append(phase)
            raise KeyboardInterrupt

    gc.callbacks.append(callback)
    yield fired
    gc.callbacks.remove(callback)


def busy(seconds: float = 2.0):
    """Ordinary Python work for ``seconds`` (where a re-sent interrupt is delivered)."""
    end, total = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        total += 1
    return total


def test_an_interrupt_lost_in_a_gc_callback_is_raised_again(python_handles_sigint, interrupt_in_gc):
    with pytest.raises(KeyboardInterrupt), deliver_lost_interrupts():
        gc.collect()
        busy()
    assert interrupt_in_gc


def test_without_it_the_interrupt_is_lost(python_handles_sigint, interrupt_in_gc, monkeypatch):
    """The failure this guards against: the collector drops the interrupt and the work goes on."""
    reported = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)
    gc.collect()
    assert busy(0.2) > 0 and interrupt_in_gc
    assert [type(r.exc_value) for r in reported] == [KeyboardInterrupt]


def test_other_unraisable_exceptions_go_to_the_previous_hook(monkeypatch):
    reported = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)

    class Broken:
        def __del__(self):
            raise ValueError("in __del__")

    with deliver_lost_interrupts():
        Broken()
        gc.collect()
    assert [type(r.exc_value) for r in reported] == [ValueError]
    assert sys.unraisablehook == reported.append  # restored on leaving
