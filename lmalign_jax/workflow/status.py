"""Exit statuses, the usage error and the one-line messages shared by the workflow and the commands."""

from __future__ import annotations

import sys

#: Exit statuses of every command: success, a solve that did not converge (its report is still
#: written), bad input, an internal error (a bug: one line, no traceback).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
#: Fewest markers an alignment accepts.
MIN_MARKERS = 3


class UsageError(Exception):
    """Bad command-line input that is not tied to a line of a file (exit status 2)."""


def print_warning(message: str) -> None:
    """``lmalign: warning: <message>`` on stderr."""
    print(f"lmalign: warning: {message}", file=sys.stderr)


def print_note(message: str) -> None:
    """``lmalign: <message>`` on stderr (progress and remarks, not results)."""
    print(f"lmalign: {message}", file=sys.stderr)
