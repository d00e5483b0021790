"""Ctrl-C (and SIGTERM) that always stops a command.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives.
Inside a garbage-collector callback or a ``__del__`` (JAX registers a collector callback) the
exception cannot propagate: Python prints "Exception ignored" and drops it, and the command runs
on to its end as if nothing had been pressed. :func:`deliver_lost_interrupts` catches exactly
those dropped interrupts (``sys.unraisablehook``) and sends them again as a new SIGINT from
another thread a moment later, which Python delivers at the next ordinary step of the command
(one lost again is sent again).
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading

__all__ = ["Terminated", "deliver_lost_interrupts", "terminate_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's cancel, ``kill``), raised as an interrupt so that a command stops
    the way Ctrl-C stops it: temporary files removed, no output left half-written."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """While inside, SIGTERM raises :class:`Terminated` in the main thread, unless the process
    already handles SIGTERM itself (a caller's handler is kept) or this is not the main thread.
    The previous handler is restored on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deliver_lost_interrupts():
    """While inside, a ``KeyboardInterrupt`` that Python could only report as unraisable is
    raised again (when SIGINT is handled by Python at all); other unraisable exceptions go to
    the hook that was set before. The hook is restored on leaving."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            # from another thread, a moment later: raised here it would be dropped again
            # (this hook runs inside the callback); a no-op where SIGINT is ignored or default
            threading.Timer(0.01, _thread.interrupt_main, (signal.SIGINT,)).start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
