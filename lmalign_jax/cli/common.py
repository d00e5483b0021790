"""CLI plumbing every command shares: the argparse classes, progress on a terminal, messages.

Exit statuses, :class:`UsageError` and the message printers come from
:mod:`lmalign_jax.workflow.status` and are re-exported here for the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from ..io.atomic import temporary_prefix
from ..io.outputs import is_file_stem
from ..workflow.status import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, MIN_MARKERS, UsageError
from ..workflow.status import print_note as note
from ..workflow.status import print_warning as warn

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "MIN_MARKERS",
    "CommandParser",
    "HelpFormatter",
    "Progress",
    "UsageError",
    "note",
    "warn",
]


class Progress:
    """'aligning ... 12 s' on a terminal while the solve runs; stage lines come from align's callback."""

    def __init__(self, text: str):
        self.text = text
        self.tty = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        start = time.perf_counter()
        while not self._stop.wait(0.5):
            sys.stderr.write(f"\r{self.text} {time.perf_counter() - start:5.0f} s")
            sys.stderr.flush()

    def __enter__(self):
        sys.stderr.write(self.text + ("" if self.tty else "\n"))
        sys.stderr.flush()
        if self.tty:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.tty:
            self._stop.set()
            self._thread.join()
            sys.stderr.write("\n")


class CommandParser(argparse.ArgumentParser):
    """argparse with one-line errors raised as UsageError (so main decides the exit status)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; '(default: ...)' added where there is a default to show."""

    def _get_help_string(self, action):
        shown = (
            action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and "%(default)" not in (action.help or "")
        )
        return (action.help or "") + (" (default: %(default)s)" if shown else "")


def file_stem(text: str) -> str:
    """argparse type of ``--prefix``: a file-name stem (no folder part, not . or ..), refused at
    parsing, before any work."""
    if not is_file_stem(text):
        raise argparse.ArgumentTypeError(
            f"expected a file-name stem without a folder (use --out-dir for the folder), got {text!r}"
        )
    return text


def seed_number(text: str) -> int:
    """argparse type of ``--seed``: a non-negative integer (numpy's random generators take no
    other), refused at parsing."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


#: Largest count option taken (iterations, series per solve): beyond it, 32-bit counters overflow
#: and nothing sensible remains.
MAX_COUNT = 1_000_000


def check_count(value: int, option: str, low: int = 1, high: int = MAX_COUNT) -> None:
    """UsageError unless the integer option ``value`` lies in ``low..high``."""
    if not low <= value <= high:
        raise UsageError(f"{option} must be between {low} and {high}, got {value}")


#: Bytes a temporary file's name adds to :func:`..io.atomic.temporary_prefix`: the 8 random
#: characters of ``tempfile.mkstemp`` and the ``.tmp`` suffix every atomic writer gives it.
TEMPORARY_NAME_EXTRA = 8 + len(".tmp")


def _check_name_length(path: str, folder: str, option: str) -> None:
    """UsageError when the file name of ``path``, or that of the temporary file written beside it
    first (``.<name cut to 64 bytes>.XXXXXXXX.tmp``), has more bytes than a name may have in
    ``folder`` (``PC_NAME_MAX``, else 255): otherwise the write fails only after the work."""
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    name = os.path.basename(os.path.abspath(path))
    size = len(os.fsencode(name))
    temporary = len(os.fsencode(temporary_prefix(name))) + TEMPORARY_NAME_EXTRA
    shown = os.path.join(os.path.dirname(path), name[:40] + ("..." if len(name) > 40 else ""))
    if size > longest:
        raise UsageError(
            f"{option} {shown}: the file name is {size} bytes, longer than the {longest} a file name "
            "may have here; choose a shorter name"
        )
    if temporary > longest:
        raise UsageError(
            f"{option} {shown}: the file name is {size} bytes and the temporary file it is written "
            f"through would need {temporary}, more than the {longest} a file name may have here; "
            "choose a shorter name"
        )


def check_output_file(path: str, inputs, option: str, example: str) -> None:
    """Refuse an output file ``option PATH`` that could not be written, before any work: a folder
    (``example``: a file name to suggest in it), something else that is not a regular file (a
    device or pipe, which the atomic write's rename would replace), a path under a missing or
    unwritable folder (or under a file), a name (or its temporary file's name) too long for the
    file system, or one of ``inputs``."""
    if os.path.isdir(path):
        suggestion = os.path.join(path, example)
        raise UsageError(f"{option} {path} is a folder; give a file name such as {suggestion}")
    if os.path.exists(path) and not os.path.isfile(path):
        raise UsageError(
            f"{option} {path} exists and is not a regular file (a device, pipe or socket, which writing "
            f"it would replace); give a file name such as {example}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    head = folder
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise UsageError(f"{option} {path}: {head} is a file, not a folder")
    if head != folder:
        raise UsageError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: folder {folder} is not writable")
    _check_name_length(path, folder, option)
    real = os.path.realpath(path)
    for p in inputs:
        if p and os.path.realpath(p) == real:
            raise UsageError(f"{option} {path} would overwrite the input {p}")
