"""The ``lmalign`` parser, the command table and ``main``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings

import jax

from .. import __version__, compiled_cache
from ..io.errors import InputError
from .align import add_align
from .batch import add_batch
from .common import EXIT_BAD_INPUT, EXIT_INTERNAL, CommandParser, UsageError
from .compare import add_compare
from .demo import add_demo
from .export import add_export
from .find_beads import add_find_beads
from .interrupts import Terminated, deliver_lost_interrupts, terminate_as_interrupt
from .reconstruct import add_reconstruct
from .resident_command import add_resident
from .simulate import add_simulate
from .track import add_track
from .uncertainty import add_uncertainty

#: command name -> function adding its sub-parser (which sets ``run``, the command's runner,
#: ``run(args) -> exit status``). A new command is one more entry here (and one more module).
COMMANDS = {
    "align": add_align,
    "batch": add_batch,
    "compare": add_compare,
    "demo": add_demo,
    "export": add_export,
    "find-beads": add_find_beads,
    "reconstruct": add_reconstruct,
    "resident": add_resident,
    "simulate": add_simulate,
    "track": add_track,
    "uncertainty": add_uncertainty,
}
#: Commands that compile JAX code worth keeping in the persistent compilation cache.
CACHED_COMMANDS = ("align", "batch", "compare", "demo", "find-beads", "reconstruct", "track", "uncertainty")

MAIN_HELP = """\
Fiducial-marker alignment of electron-tomography tilt series (like IMOD's tiltalign), by
masked Levenberg-Marquardt in JAX, and filtered back-projection of the aligned series.
Run 'lmalign COMMAND --help' for each command's options.

examples:
  lmalign demo --out-dir lmalign-demo
  lmalign align TS_01.mrc --tilts TS_01.rawtlt --bead-diameter 8 --reconstruct 300 --out-dir TS_01/
  lmalign align BBa.fid --tilts BBa.rawtlt --exclude 1-3,40 --out-dir align/
  lmalign reconstruct BBa.st --xf align/BBa.xf --tlt align/BBa.tlt --thickness 200 --bin 2
  lmalign simulate --out-dir sim --seed 3 --stack
"""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="lmalign", description=MAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lmalign_jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for add in COMMANDS.values():
        add(sub)
    return parser


def compilation_cache_dir() -> str:
    """Where the CLI keeps JAX's persistent compilation cache: $XDG_CACHE_HOME or ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lmalign_jax", "jax")


def executable_cache_dir() -> str:
    """Where the CLI keeps compiled computations (``compiled_cache``), beside JAX's cache."""
    return os.path.join(os.path.dirname(compilation_cache_dir()), "executables")


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache and this package's cache of compiled
    computations (CLI only), so a warm run neither traces, lowers nor compiles. Both are skipped
    when ``LMALIGN_NO_COMPILATION_CACHE`` is set; JAX's keeps a folder the user set already.
    Returns JAX's cache folder (None when off)."""
    if os.environ.get("LMALIGN_NO_COMPILATION_CACHE"):
        return None
    try:
        compiled_cache.enable(executable_cache_dir())
    except OSError:
        pass  # an unwritable cache folder only costs time
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = compilation_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


#: numpy's RuntimeWarnings about arithmetic over NaN or empty selections.
_NUMPY_NAN_REMARKS = (
    "Mean of empty slice",
    "All-NaN slice encountered",
    "Degrees of freedom <= 0",
    "invalid value encountered",
    "divide by zero encountered",
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning raised while a command runs, as the command's own one-line ``lmalign: warning:``
    (no source path). numpy's remarks on arithmetic over NaN (a mean of no observed entries)
    name no input and are left out."""
    if issubclass(category, RuntimeWarning) and str(message).startswith(_NUMPY_NAN_REMARKS):
        return
    print(f"lmalign: warning: {message}", file=sys.stderr if file is None else file)


def _kept(interrupt: KeyboardInterrupt) -> str:
    """What an interrupted command leaves: its last note (``add_note``: a command that had
    finished a step, whose files stay), else nothing."""
    notes = getattr(interrupt, "__notes__", None)
    return notes[-1] if notes else "no output written"


def main(argv=None) -> int:
    """Run the ``lmalign`` command line; returns the exit status (0 ok, 1 an alignment did not
    converge, 2 bad input, 3 internal error: an unexpected exception, reported in one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError(f"choose a command: {', '.join(COMMANDS)} (see 'lmalign --help')")
        args.argv = argv
        if args.command in CACHED_COMMANDS:
            args.compilation_cache = enable_compilation_cache()
            args.compilation_cache_setup = enable_compilation_cache  # batch hands it to its workers
        # Ctrl-C is not lost in a garbage-collector callback; SIGTERM and SIGHUP stop as Ctrl-C does
        with deliver_lost_interrupts(), terminate_as_interrupt(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args)
    except SystemExit as e:  # --help, --version
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_BAD_INPUT
    except (InputError, UsageError) as e:
        print(f"lmalign: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Terminated as e:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) may have taken stderr
            print(f"lmalign: terminated ({signal.Signals(e.signum).name}); {_kept(e)}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt as e:
        print(f"lmalign: interrupted; {_kept(e)}", file=sys.stderr)
        return 130
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"lmalign: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - a bug: one line, no traceback unless asked
        if os.environ.get("LMALIGN_DEBUG"):
            raise
        print(
            f"lmalign: error: internal error ({type(e).__name__}: {e}); set LMALIGN_DEBUG=1 for a traceback",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
