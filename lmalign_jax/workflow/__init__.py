"""What the commands do, as functions of plain arguments (no argparse, no printing of results).

- :mod:`.status`: exit statuses, :class:`UsageError`, one-line warnings and notes.
- :mod:`.series`: reading a series (markers, tilts, image size).
- :mod:`.selection`: the views and markers fitted (exclusions, too few points), as ``Observations``.
- :mod:`.settings`: :class:`AlignSettings`, how a series is aligned.
- :mod:`.fitting`: :func:`fit_series`, least squares or robust, with standard errors.
- :mod:`.writing`: :func:`write_alignment`, every output file of a solved series.
- :mod:`.truth`: a solved synthetic series against its truth (the demo).
- :mod:`.reconstruction`: a tomogram from a stack and an alignment.
- :mod:`.batch_list`, :mod:`.batch_series`, :mod:`.resume`: the series of a batch, aligning and
  writing them, and which ones an earlier run finished.

The command line (:mod:`lmalign_jax.cli`) parses options and calls these; nothing here imports it.
"""

from .fitting import Fit, fit_series
from .selection import Selection, observations_for_fit, parse_view_list, report_selection, select_views
from .series import MARKER_EXTENSIONS, TILT_EXTENSIONS, SeriesInputs, read_series, read_tilt_file
from .settings import STAGES, AlignSettings
from .status import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    MIN_MARKERS,
    UsageError,
    print_note,
    print_warning,
)
from .truth import compare_with_truth, truth_ok
from .writing import (
    ALIGN_OUTPUTS,
    REPORT_OUTPUTS,
    WrittenAlignment,
    check_output_folder,
    input_record,
    software_info,
    write_alignment,
)

__all__ = [
    "ALIGN_OUTPUTS",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "MARKER_EXTENSIONS",
    "MIN_MARKERS",
    "REPORT_OUTPUTS",
    "STAGES",
    "TILT_EXTENSIONS",
    "AlignSettings",
    "Fit",
    "Selection",
    "SeriesInputs",
    "UsageError",
    "WrittenAlignment",
    "check_output_folder",
    "compare_with_truth",
    "fit_series",
    "input_record",
    "observations_for_fit",
    "parse_view_list",
    "print_note",
    "print_warning",
    "read_series",
    "read_tilt_file",
    "report_selection",
    "select_views",
    "software_info",
    "truth_ok",
    "write_alignment",
]
