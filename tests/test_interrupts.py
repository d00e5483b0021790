"""Ctrl-C is not lost when it lands in a garbage-collector callback (cli.interrupts): Python can
only report such an interrupt as unraisable, and the command would run on to its end. SIGTERM
stops a command as Ctrl-C does."""

import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lmalign_jax.cli.interrupts import Terminated, deliver_lost_interrupts, terminate_as_interrupt


def _handled_by(signum, handler):
    """While a test runs, ``signum`` handled by ``handler`` (main thread only), then as before."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled in the main thread only")
    previous = signal.signal(signum, handler)
    yield
    signal.signal(signum, previous)


@pytest.fixture
def python_handles_sigint():
    yield from _handled_by(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def only_explicit_collections():
    """Automatic garbage collection off (``gc.collect()`` still runs the callbacks): else one
    could start between a test's setup and its own ``gc.collect()`` (pytest allocates there) and
    fire the callback early (about 3% of runs under xdist, by an audit)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.fixture
def interrupt_in_gc():
    """The next explicit collection raises KeyboardInterrupt inside its callback, once."""
    fired = []

    def callback(phase, _info):
        if phase == "start" and not fired:
            fired.append(phase)
            raise KeyboardInterrupt

    with only_explicit_collections():
        gc.callbacks.append(callback)
        try:
            yield fired
        finally:
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


@pytest.fixture
def sigterm_default():
    yield from _handled_by(signal.SIGTERM, signal.SIG_DFL)


def test_sigterm_stops_like_an_interrupt_and_the_handler_is_restored(sigterm_default):
    with pytest.raises(Terminated), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        busy()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert issubclass(Terminated, KeyboardInterrupt)  # every cleanup for Ctrl-C runs for it too


@pytest.fixture
def sighup_default():
    yield from _handled_by(signal.SIGHUP, signal.SIG_DFL)


def test_sighup_stops_too_unless_it_is_ignored(sighup_default):
    with pytest.raises(Terminated) as stopped, terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGHUP)
        busy()
    assert stopped.value.signum == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup: kept
    with terminate_as_interrupt():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_a_termination_lost_in_a_gc_callback_is_sent_again_as_itself(sigterm_default):
    def callback(phase, _info):
        if phase == "start" and not fired:
            fired.append(phase)
            raise Terminated(signal.SIGTERM)

    fired = []
    with only_explicit_collections():
        gc.callbacks.append(callback)
        try:
            with pytest.raises(Terminated) as stopped, deliver_lost_interrupts(), terminate_as_interrupt():
                gc.collect()
                busy()
        finally:
            gc.callbacks.remove(callback)
    assert fired and stopped.value.signum == signal.SIGTERM  # not a plain Ctrl-C (exit 130)


def test_a_callers_own_sigterm_handler_is_kept(sigterm_default):
    def own(signum, frame):
        return None

    signal.signal(signal.SIGTERM, own)
    with terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is own


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_reconstruct_terminated_leaves_no_file(tmp_path, sig):
    """A scheduler's cancel (SIGTERM) or a closed terminal (SIGHUP) in the middle of writing a
    tomogram: exit 128 + the signal, the message, and nothing left in the folder (the
    half-written temporary file is removed). The command starts with the signal at its default
    action, as from a terminal or a scheduler: a signal ignored where the tests run (SIGHUP under
    nohup) stays ignored in the command, as it should, and the test would wait in vain."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    cli = [sys.executable, "-m", "lmalign_jax"]
    at_default = (  # exec keeps a signal at its default action (an ignored one would stay ignored)
        f"import os, signal, sys; signal.signal({int(sig)}, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'lmalign_jax', *sys.argv[1:]])"
    )
    made = subprocess.run(
        [
            *cli,
            "simulate",
            "--out-dir",
            tmp_path / "in",
            "--stack",
            "--image-size",
            "96",
            "96",
            "--views",
            "21",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    out.mkdir()
    stem = tmp_path / "in" / "synthetic"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            at_default,
            "reconstruct",
            f"{stem}.mrc",
            "--xf",
            f"{stem}_truth.xf",
            "--tlt",
            f"{stem}_truth.tlt",
            "--thickness",
            "96",
            "--sirt",
            "1000000",  # hours of iterations: the signal must stop them, not wait for them
            "--out",
            out / "t.mrc",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not any(out.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the reconstruction ended before its output file was opened"
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert f"terminated ({sig.name}); no output written" in err
    assert list(out.iterdir()) == []


def test_an_interrupt_while_the_commands_load_is_one_line(monkeypatch, capsys):
    """Ctrl-C while JAX was being imported (before the command's own handlers) printed a
    traceback, or was lost in JAX's collector callback and the command ran on (audit): the
    launcher delivers lost interrupts from its start and reports one as the command would."""
    import lmalign_jax.cli as cli_package
    from lmalign_jax.cli import resident

    hooks = []

    def loading(argv):
        hooks.append(sys.unraisablehook)
        raise KeyboardInterrupt

    monkeypatch.setenv(resident.SWITCH, "0")
    monkeypatch.setattr(cli_package, "main", loading)
    assert resident.main(["align", "--help"]) == 130
    assert capsys.readouterr().err == "lmalign: interrupted; no output written\n"
    assert hooks and hooks[0] is not sys.__unraisablehook__  # lost interrupts are delivered again


@pytest.mark.parametrize(
    "status, ends_at_once", [(130, True), (143, True), (129, True), (0, False), (2, False)]
)
def test_a_stopped_command_ends_its_process_without_jaxs_teardown(monkeypatch, status, ends_at_once):
    """A SIGHUP at a random moment of a reconstruction crashed the process after its message
    (segmentation fault, 9 of 37 tries on a loaded machine) or hung it: JAX's exit handler tore
    its backend down under work still in flight. As the entry point the launcher now ends a
    stopped command's process at once (flushed, no teardown); called with arguments, as tests
    and callers do, it returns the status."""
    import lmalign_jax.cli as cli_package
    from lmalign_jax.cli import resident

    ended = []
    monkeypatch.setenv(resident.SWITCH, "0")
    monkeypatch.setattr(resident, "exit_stopped", ended.append)
    monkeypatch.setattr(resident, "relaunch_with_huge_pages", lambda: None)
    monkeypatch.setattr(cli_package, "main", lambda argv: status)
    monkeypatch.setattr(sys, "argv", ["lmalign", "reconstruct"])
    assert resident.main() == status
    assert ended == ([status] if ends_at_once else [])
    ended.clear()
    assert resident.main(["reconstruct"]) == status and ended == []
