"""Ctrl-C that always stops a command.

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

__all__ = ["deliver_lost_interrupts"]


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
