"""The ``lmalign`` command line: ``align``, ``demo``, ``reconstruct``, ``simulate``.

One module per command (:mod:`.align`, :mod:`.demo`, :mod:`.reconstruct`, :mod:`.simulate`), each
with a function that adds its sub-parser and sets the parser's ``run`` default to the function
that runs it (``run(args) -> exit status``); ``COMMANDS`` in :mod:`._main` lists them. Shared
pieces (exit statuses, one-line errors, progress, argparse classes) are in :mod:`._common`.

``main(argv)`` (the ``lmalign`` entry point, ``lmalign_jax.cli:main``) returns the exit status:
0 success, 1 alignment failed (did not converge; the report is still written), 2 bad input
(one line ``lmalign: error: <file>:<line>: <problem>`` on stderr, no output file written).
"""

from ._common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, MIN_MARKERS, UsageError
from ._main import COMMANDS, build_parser, compilation_cache_dir, enable_compilation_cache, main
from .align import (
    ALIGN_OUTPUTS,
    REPORT_OUTPUTS,
    Inputs,
    Selection,
    compare_with_truth,
    observations_for_fit,
    parse_modes,
    parse_view_list,
    read_inputs,
    report_selection,
    run_align,
    select,
    truth_ok,
)
from .demo import run_demo
from .reconstruct import Alignment, read_alignment_files, read_alignment_json, reconstruct_to_file, run_reconstruct
from .simulate import run_simulate, write_series, write_stack

__all__ = [
    "main",
    "build_parser",
    "COMMANDS",
    "UsageError",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_BAD_INPUT",
    "MIN_MARKERS",
    "compilation_cache_dir",
    "enable_compilation_cache",
    "ALIGN_OUTPUTS",
    "REPORT_OUTPUTS",
    "Inputs",
    "Selection",
    "read_inputs",
    "select",
    "report_selection",
    "parse_view_list",
    "parse_modes",
    "observations_for_fit",
    "compare_with_truth",
    "truth_ok",
    "run_align",
    "run_demo",
    "run_simulate",
    "run_reconstruct",
    "write_series",
    "write_stack",
    "Alignment",
    "read_alignment_json",
    "read_alignment_files",
    "reconstruct_to_file",
]
