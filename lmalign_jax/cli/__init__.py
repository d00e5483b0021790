"""The ``lmalign`` command line: ``align``, ``batch``, ``compare``, ``demo``, ``export``,
``find-beads``, ``reconstruct``, ``simulate``, ``track``, ``uncertainty``.

One module per command, each with ``add_<command>(subparsers)`` (its options; sets the parser's
``run`` default to the function that runs it, ``run(args) -> exit status``) and that run
function, which parses its options into plain values and calls :mod:`lmalign_jax.workflow`.
``COMMANDS`` in :mod:`._main` lists them. CLI plumbing (argparse classes, progress, messages)
is in :mod:`.common`.

``main(argv)`` runs one command in this process (the ``lmalign`` entry point,
``lmalign_jax.cli.resident:main``, calls it here or in a resident process) and returns the exit status:
0 success, 1 alignment failed (did not converge; the report is still written), 2 bad input
(one line ``lmalign: error: <file>:<line>: <problem>`` on stderr, no output file written), 3 an
internal error (an unexpected exception: one line, ``LMALIGN_DEBUG=1`` for the traceback).
"""

from ..lazy_exports import lazy_getattr

#: public name -> (module, name there); loaded on first use (PEP 562): the ``lmalign`` launcher
#: (:mod:`.resident`) lives in this package and must start without importing the commands.
_PUBLIC = {
    "ALIGN_OUTPUTS": ("..workflow", "ALIGN_OUTPUTS"),
    "REPORT_OUTPUTS": ("..workflow", "REPORT_OUTPUTS"),
    "Selection": ("..workflow", "Selection"),
    "compare_with_truth": ("..workflow", "compare_with_truth"),
    "observations_for_fit": ("..workflow", "observations_for_fit"),
    "parse_view_list": ("..workflow", "parse_view_list"),
    "read_series": ("..workflow", "read_series"),
    "select_views": ("..workflow", "select_views"),
    "truth_ok": ("..workflow", "truth_ok"),
    "Alignment": ("..workflow.alignment_inputs", "Alignment"),
    "read_alignment_json": ("..workflow.alignment_inputs", "read_alignment_json"),
    "read_alignment_files": ("..workflow.alignment_inputs", "read_alignment_files"),
    "reconstruct_to_file": ("..workflow.reconstruction", "reconstruct_to_file"),
    "COMMANDS": ("._main", "COMMANDS"),
    "build_parser": ("._main", "build_parser"),
    "compilation_cache_dir": ("._main", "compilation_cache_dir"),
    "enable_compilation_cache": ("._main", "enable_compilation_cache"),
    "main": ("._main", "main"),
    "align_and_report": (".align", "align_and_report"),
    "parse_modes": (".align_options", "parse_modes"),
    "run_align": (".align", "run_align"),
    "settings_from_args": (".align_options", "settings_from_args"),
    "EXIT_BAD_INPUT": (".common", "EXIT_BAD_INPUT"),
    "EXIT_FAILED": (".common", "EXIT_FAILED"),
    "EXIT_INTERNAL": (".common", "EXIT_INTERNAL"),
    "EXIT_OK": (".common", "EXIT_OK"),
    "MIN_MARKERS": (".common", "MIN_MARKERS"),
    "UsageError": (".common", "UsageError"),
    "run_demo": (".demo", "run_demo"),
    "run_simulate": (".simulate", "run_simulate"),
    "write_series": (".simulate", "write_series"),
    "write_stack": (".simulate", "write_stack"),
    "Inputs": ("..workflow", "SeriesInputs"),
}

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


__getattr__ = lazy_getattr(__name__, globals(), _PUBLIC)
