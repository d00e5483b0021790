"""``lmalign resident start|stop|status``: the command that manages the resident process of
:mod:`lmalign_jax.cli.resident`."""

from __future__ import annotations

import argparse
import sys
import time

from .resident import DEFAULT_IDLE_MINUTES, MAX_IDLE_MINUTES, ping, socket_path, start, stop, supported

__all__ = ["add_resident", "run_resident"]


RESIDENT_HELP = """\
Keep one lmalign process warm (JAX, the package and matplotlib imported) so that later commands
answer fast: 'lmalign align' on a small set takes about a second less. Commands run in a forked
child of it, exactly as in their own process (same folder, environment, files and exit status);
it is used only by commands started with the same package files, Python packages and settings
(JAX_*, XLA_*, LMALIGN_* and thread-count variables), and exits after --idle-minutes without a
command. LMALIGN_RESIDENT=0 never uses one; LMALIGN_RESIDENT=1 starts one after a command when
none runs.

examples:
  lmalign resident start
  lmalign resident status
  lmalign resident stop
"""


def add_resident(sub) -> None:
    """The ``resident`` command's parser (``start``, ``stop``, ``status``)."""
    p = sub.add_parser(
        "resident",
        help="keep a warm process so that later commands answer fast",
        description=RESIDENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument(
        "--idle-minutes",
        type=float,
        default=DEFAULT_IDLE_MINUTES,
        help=f"exit after this long without a command (default: {DEFAULT_IDLE_MINUTES:g})",
    )
    p.set_defaults(run=run_resident)


def run_resident(args) -> int:
    """``lmalign resident start|stop|status``."""
    if not 0 < args.idle_minutes <= MAX_IDLE_MINUTES:
        print(
            f"lmalign: error: --idle-minutes must be positive and at most {MAX_IDLE_MINUTES:g} (a week), "
            f"got {args.idle_minutes:g}",
            file=sys.stderr,
        )
        return 2
    if not supported():
        print(
            "lmalign: error: a resident process needs Unix sockets and fork, which this system lacks",
            file=sys.stderr,
        )
        return 2
    state = ping()
    if args.action == "status":
        if state is None:
            print("lmalign resident: none running for this environment")
        else:
            age = time.time() - state["started"]
            print(
                f"lmalign resident: pid {state['pid']}, running {age / 60:.1f} min, "
                f"{state['served']} commands served"
            )
        return 0
    if args.action == "stop":
        pid = stop()
        print("lmalign resident: none running" if pid is None else f"lmalign resident: stopped pid {pid}")
        return 0
    if state is not None:
        print(f"lmalign resident: already running (pid {state['pid']})")
        return 0
    if socket_path() is None:
        print("lmalign: error: no private folder for the resident process's socket", file=sys.stderr)
        return 2
    state = start(args.idle_minutes)
    if state is None:
        print("lmalign: error: the resident process did not start", file=sys.stderr)
        return 3
    print(
        f"lmalign resident: pid {state['pid']} ready; exits after {args.idle_minutes:g} min without a command"
    )
    return 0
