"""The options and help text of ``lmalign batch``."""

from __future__ import annotations

from ..analysis.shared_constant import DEFAULT_K, SHAREABLE
from ..batch import DEFAULT_BUCKET
from ..models import MODELS
from ..workflow.batch_list import LINE_FORMAT
from ..workflow.reconstruction import FILTER_CHOICES
from .align_options import add_robust_options, add_solver_options
from .track import add_bead_options

__all__ = ["BATCH_EXAMPLE", "BATCH_HELP", "add_batch_arguments"]

BATCH_HELP = """\
Align every tilt series named in a list file or found in a folder, with batched solves: series
of similar size are padded to a shared shape and solved together, so one compilation serves
them all. Each series gets the outputs of 'lmalign align' (.xf .tlt .resid .xyz .json .png) in
--out-dir/NAME/ (or --out-dir/NAME.* with --layout prefix), and the batch a summary table
--out-dir/batch_summary.txt, .tsv and .json (series, views, markers, residuals, status, time).

LIST_OR_DIR:
  a list file: one series per line, 'MARKERS TILTS [NX NY] [STACK] [exclude=LIST]
    [rotation=DEG]' (whitespace-separated, quotes allowed, '#' starts a comment, paths relative
    to the list file; NX NY is the image size when the marker file does not record it; STACK is
    the raw stack, whose header is checked against the tilts and gives the image size;
    exclude=1-3,40 and rotation=-12.5 are that series' --exclude and --rotation of 'lmalign
    align'). NAME is the marker file's stem (NAME_2, ... when two series share a stem);
  or a folder: every NAME.fid/.mod/.csv/.pt with a tilt file NAME.rawtlt, NAME.tlt or
    NAME.mdoc beside it (first found, in that order).

--reconstruct NZ also makes each aligned series' tomogram, NAME.rec.mrc beside its other
outputs, from its raw stack (the STACK column, else NAME.st or NAME.mrc beside the markers), as
'lmalign reconstruct STACK --alignment NAME.json --thickness NZ' would (--bin, --filter). A
series asked to be reconstructed without a stack is bad input; the tomograms are made in this
process (on its GPU if it has one), or by each Dask worker for its group.

A series that cannot be read, or whose alignment fails, is reported with its reason; the others
complete. Exit status: 0 all converged, 1 some alignments failed, 2 some inputs were bad, 3
internal error (a bug) in some series; the highest applies.
A run stopped part way (Ctrl-C, a full disk), or a folder that has gained series, is finished by
the same command with --resume: a series whose outputs an earlier run wrote from the same input
files with the same options, and which converged, keeps them; the others are aligned.

Parallel work: by default everything runs in this process; on a CPU it makes one JAX device per
core (unless XLA_FLAGS sets the count), so the batch solves one series per core at a time, and
--writers processes (default one per core, at most one per 4 series) draw the report figures.
--jobs N spreads the series over N local processes instead (one device each). --scheduler
ADDRESS sends groups of --group-size series to a Dask cluster; each worker aligns its group
with batched solves and writes its outputs itself, so --out-dir and the input files must be on a
file system every worker sees, at the same paths. To use a cluster: install lmalign_jax and
'dask[distributed]' on every machine, start 'dask scheduler' on one (it prints
tcp://HOST:8786), 'dask worker tcp://HOST:8786 --nthreads 1' on each machine (one per GPU or a
few per CPU machine; JAX uses several cores per worker), then run
'lmalign batch LIST --scheduler tcp://HOST:8786 --out-dir /shared/out'.
"""

BATCH_EXAMPLE = """\
examples:
  lmalign batch series.txt --out-dir aligned
  lmalign batch /data/tomo/fiducials --out-dir aligned --image-size 4096 4096 --jobs 2
  lmalign batch series.txt --scheduler tcp://head:8786 --out-dir /shared/aligned --group-size 16
"""


def add_batch_arguments(p) -> None:
    """Add the arguments and options of ``lmalign batch`` to the argparse parser ``p``."""
    p.add_argument(
        "series",
        metavar="LIST_OR_DIR",
        help=f"list file ('{LINE_FORMAT}' per line; MARKERS may be a raw stack) or folder of marker + "
        "tilt files (and of raw stacks NAME.st/NAME.mrc + tilts without markers, tracked first)",
    )
    p.add_argument("--out-dir", default=".", metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--layout",
        choices=("folders", "prefix"),
        default="folders",
        help="outputs in DIR/NAME/NAME.* (folders) or DIR/NAME.* (prefix)",
    )
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="local worker processes")
    p.add_argument(
        "--writers",
        type=int,
        metavar="N",
        help="processes drawing the report figures and writing the outputs when aligning in this process "
        "(default: one per core, at most one per 4 series)",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://head:8786 (see above)")
    p.add_argument("--group-size", type=int, default=32, metavar="N", help="series per Dask task")
    p.add_argument(
        "--image-size",
        nargs=2,
        type=float,
        metavar=("NX", "NY"),
        help="image size for series whose files do not record it",
    )
    add_bead_options(p.add_argument_group("series given as raw stacks (.mrc, .st): tracked first"))
    p.add_argument("--model", choices=sorted(MODELS), default="jou", help="projection model")
    add_solver_options(p)
    p.add_argument(
        "--bucket",
        nargs=2,
        type=int,
        metavar=("VIEWS", "MARKERS"),
        help="series whose view and marker counts round up to the same multiples of these share one "
        f"compiled kernel, padded to the largest of them (default {DEFAULT_BUCKET[0]} {DEFAULT_BUCKET[1]})",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="series per batched solve and device (default 32)"
    )
    p.add_argument(
        "--worst",
        type=int,
        default=10,
        metavar="N",
        help="number of largest-residual points to list in each .json",
    )
    p.add_argument(
        "--no-figure", action="store_true", help="do not render the .png reports (the slowest output)"
    )
    p.add_argument(
        "--no-errors",
        action="store_true",
        help="skip the standard errors and leave-one-out residuals (about 5 ms a series)",
    )
    add_robust_options(p)
    p.add_argument(
        "--reconstruct",
        type=float,
        metavar="NZ",
        help="also reconstruct each aligned series into NAME.rec.mrc, NZ unbinned pixels thick, from its raw "
        "stack (the list's STACK column, else NAME.st or NAME.mrc beside the markers)",
    )
    p.add_argument(
        "--bin", type=int, default=1, metavar="B", help="with --reconstruct: bin the stack B x B first"
    )
    p.add_argument(
        "--filter",
        choices=FILTER_CHOICES,
        default="ramp",
        help="with --reconstruct: ramp filter, optionally apodised",
    )
    p.add_argument(
        "--share",
        choices=SHAREABLE,
        metavar="CONSTANT",
        help="fit a microscope constant shared by every series from each series' own estimate weighted by "
        "its standard error, align the series with it fixed, and list the series that disagree (|z| above "
        "--share-threshold; left out and aligned on their own) in the summary and batch_summary_shared.tsv. "
        "rotation: the tilt-axis angle. tilt-offset: the stage's tilt offset, estimated as the offset that "
        "levels each series' beads (IMOD's surface analysis, two surfaces where the beads separate); this "
        "assumes the specimens lie level on the grid on average, and a series slanted far more than the "
        "others (a lamella milled at an angle, a wrong mdoc) is listed; the shared offset is added to the "
        "tilts of the series that agree. mag is refused: markers do not determine a magnification (give "
        "the calibrated pixel size)",
    )
    p.add_argument(
        "--share-threshold",
        type=float,
        default=DEFAULT_K,
        metavar="K",
        help="with --share: a series disagrees when its estimate is more than K predictive standard "
        "deviations from the shared value of the other series",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the outputs of series an earlier run already aligned the same way (same inputs and "
        "options, converged, every output there; with --reconstruct the same tomogram settings) and align "
        "only the rest",
    )
    p.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="report only the series that did not converge while running",
    )
