"""Pieces every command shares: exit statuses, one-line errors, progress, the argparse classes."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import jax
import numpy as np

from .. import __version__
from ..io.outputs import OutputSet

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
MIN_MARKERS = 3

class UsageError(Exception):
    """Bad command-line input that is not tied to a line of a file (exit status 2)."""


def _warn(message: str) -> None:
    print(f"lmalign: warning: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(f"lmalign: {message}", file=sys.stderr)


class _Progress:
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


def _software() -> dict:
    import platform

    return {
        "name": "lmalign_jax",
        "version": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "device": str(jax.devices()[0]),
    }


def _check_outputs(out: OutputSet, suffixes, inputs_paths) -> None:
    """Refuse an output folder that cannot be written and outputs that would overwrite inputs."""
    head = os.path.abspath(out.out_dir)
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise UsageError(f"--out-dir {out.out_dir}: {head} exists and is not a folder")
    if not os.access(head, os.W_OK | os.X_OK):
        raise UsageError(f"--out-dir {out.out_dir}: {head} is not writable")
    inputs_real = {os.path.realpath(p) for p in inputs_paths if p}
    for path in out.final_paths(suffixes):
        if os.path.realpath(path) in inputs_real:
            raise UsageError(f"output {path} would overwrite an input file; choose another --prefix or --out-dir")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors raised as UsageError (so main decides the exit status)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; '(default: ...)' added where there is a default to show."""

    def _get_help_string(self, action):
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS and "%(default)" not in (action.help or "")
        return (action.help or "") + (" (default: %(default)s)" if shown else "")

