"""Ctrl-C (and SIGTERM, SIGHUP) that always stops a command.

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
import os
import signal
import sys
import threading

__all__ = [
    "STOPPED_STATUSES",
    "TERMINATING",
    "Terminated",
    "deliver_lost_interrupts",
    "exit_stopped",
    "terminate_as_interrupt",
]


#: Signals that end a command as Ctrl-C does: a scheduler's cancel or ``kill`` (SIGTERM), a
#: closed terminal or dropped ssh session (SIGHUP).
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


#: Exit statuses of a command stopped by Ctrl-C (130) or a terminating signal (128 + signal).
STOPPED_STATUSES = frozenset({128 + signal.SIGINT, *(128 + s for s in TERMINATING)})


class Terminated(KeyboardInterrupt):
    """A terminating signal (:data:`TERMINATING`; ``signum``), raised as an interrupt so that a
    command stops the way Ctrl-C stops it: temporary files removed, no output left half-written."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = int(signum)


@contextlib.contextmanager
def terminate_as_interrupt():
    """While inside, each signal of :data:`TERMINATING` raises :class:`Terminated` in the main
    thread, unless the process already handles that signal itself (a caller's handler, or an
    ignored signal as under nohup, is kept) or this is not the main thread. The previous
    handlers are restored on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    previous = {s: signal.getsignal(s) for s in TERMINATING}
    taken = [s for s, h in previous.items() if h is signal.SIG_DFL]
    for s in taken:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in taken:
            signal.signal(s, previous[s])


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
            # (a dropped Terminated is sent again as its own signal: it stops as SIGTERM/SIGHUP)
            signum = getattr(unraisable.exc_value, "signum", signal.SIGINT)
            threading.Timer(0.01, _thread.interrupt_main, (signum,)).start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def exit_stopped(code: int) -> None:
    """End a process whose command was stopped (``code`` in :data:`STOPPED_STATUSES`) at once,
    after flushing its output, without the interpreter's teardown. A stop can leave XLA compiling
    or computing on its own threads; JAX's exit handler tears its backend down under them, which
    crashed the process (segmentation fault: 9 of 37 SIGHUPs sent at random moments to a SIRT
    reconstruction on a loaded machine; 0 of 24 since) or hung it. The command has already
    removed its temporary files while unwinding; nothing else is left to do. Entry points only:
    it never returns."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed terminal (SIGHUP) may have taken it
            stream.flush()
    os._exit(code)
