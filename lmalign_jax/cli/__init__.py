"""The ``lmalign`` command line: ``align``, ``batch``, ``compare``, ``demo``, ``export``,
``find-beads``, ``reconstruct``, ``simulate``, ``track``, ``uncertainty``.

One module per command, each with ``add_<command>(subparsers)`` (its options; sets the parser's
``run`` default to the function that runs it, ``run(args) -> exit status``) and that run
function, which parses its options into plain values and calls :mod:`lmalign_jax.workflow`.
``COMMANDS`` in :mod:`._main` lists them. CLI plumbing (argparse classes, progress, messages)
is in :mod:`.common`.

``main(argv)`` (the ``lmalign`` entry point, ``lmalign_jax.cli:main``) returns the exit status:
0 success, 1 alignment failed (did not converge; the report is still written), 2 bad input
(one line ``lmalign: error: <file>:<line>: <problem>`` on stderr, no output file written), 3 an
internal error (an unexpected exception: one line, ``LMALIGN_DEBUG=1`` for the traceback).
"""

from ..workflow import (
    ALIGN_OUTPUTS,
    REPORT_OUTPUTS,
    Selection,
    compare_with_truth,
    observations_for_fit,
    parse_view_list,
    read_series,
    select_views,
    truth_ok,
)
from ..workflow import SeriesInputs as Inputs
from ..workflow.reconstruction import (
    Alignment,
    read_alignment_files,
    read_alignment_json,
    reconstruct_to_file,
)
from ._main import COMMANDS, build_parser, compilation_cache_dir, enable_compilation_cache, main
from .align import align_and_report, parse_modes, run_align, settings_from_args
from .common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, MIN_MARKERS, UsageError
from .demo import run_demo
from .simulate import run_simulate, write_series, write_stack

__all__ = [
    "main",
    "build_parser",
    "COMMANDS",
    "UsageError",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "MIN_MARKERS",
    "compilation_cache_dir",
    "enable_compilation_cache",
    "ALIGN_OUTPUTS",
    "REPORT_OUTPUTS",
    "Inputs",
    "Selection",
    "read_series",
    "select_views",
    "parse_view_list",
    "parse_modes",
    "settings_from_args",
    "observations_for_fit",
    "compare_with_truth",
    "truth_ok",
    "run_align",
    "align_and_report",
    "run_demo",
    "run_simulate",
    "write_series",
    "write_stack",
    "Alignment",
    "read_alignment_json",
    "read_alignment_files",
    "reconstruct_to_file",
]
