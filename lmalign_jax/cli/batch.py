"""``lmalign batch``: align every tilt series of a list file or folder with batched solves.

The options, the choice of where the series run (this process, ``--jobs`` local processes or a
Dask cluster with ``--scheduler``), progress and the summary table (text, TSV, JSON) are here;
reading the list or folder, checking each series, aligning and writing them and the
``--resume`` check are in :mod:`lmalign_jax.workflow` (``batch_list``, ``batch_series``,
``resume``). A bad series is reported and skipped; the others complete.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, fields

import numpy as np

from ..batch.runner import DEFAULT_BUCKET
from ..io.errors import InputError
from ..io.outputs import OutputSet
from ..models import MODELS
from ..workflow import check_output_folder, software_info
from ..workflow.batch_list import LINE_FORMAT, read_list, scan_folder
from ..workflow.batch_series import (
    RESUMED,
    STATUS_BAD,
    STATUS_ERROR,
    STATUS_FAILED,
    STATUS_OK,
    BatchOptions,
    Outcome,
    Prepared,
    align_and_write,
    prepare,
)
from ..workflow.reconstruction import FILTER_CHOICES
from ..workflow.resume import earlier_outcome
from .align import add_robust_options, add_solver_options, settings_from_args
from .common import EXIT_INTERNAL, EXIT_OK, HelpFormatter, UsageError, note, warn

SUMMARY = "batch_summary"
SUMMARY_OUTPUTS = (".txt", ".tsv", ".json")


# =========================================================================== progress and summary


class BatchProgress:
    """Per-series status on stderr: a line when each series is done; on a terminal also a
    running line with the stage counts."""

    def __init__(self, names: list[str], *, quiet: bool = False):
        self.names, self.quiet = names, quiet
        self.tty = sys.stderr.isatty()
        self.stage_counts: dict[str, int] = {}
        self.done = 0
        self.start = time.perf_counter()

    def _status_line(self):
        if self.tty and self.stage_counts:
            stages = ", ".join(f"{k} {v}" for k, v in self.stage_counts.items())
            sys.stderr.write(
                f"\r\033[Klmalign: {self.done}/{len(self.names)} series done; stages finished: {stages}; "
                f"{time.perf_counter() - self.start:.0f} s"
            )
            sys.stderr.flush()

    def event(self, index: int, event: str, detail: str) -> None:
        """An ``align_batch`` progress event of series ``index`` (of ``names``)."""
        if event in ("done", "error"):
            return
        self.stage_counts[event] = self.stage_counts.get(event, 0) + 1
        self._status_line()

    def finished(self, outcome: Outcome) -> None:
        """A series' outputs are written (or it failed)."""
        self.done += 1
        if self.tty:
            sys.stderr.write("\r\033[K")
        if not self.quiet or outcome.exit_code != EXIT_OK:
            width = len(str(len(self.names)))
            rms = f", rms {outcome.rms_residual_px:.4f} px" if outcome.rms_residual_px is not None else ""
            why = f": {_remark(outcome)}" if _remark(outcome) else ""
            note(
                f"[{self.done:>{width}}/{len(self.names)}] {outcome.series}: {outcome.status}{why}{rms} "
                f"({outcome.seconds:.2f} s)"
            )
        self._status_line()

    def close(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _fmt(value, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else format(value, spec)
    )


def _remark(o: Outcome) -> str:
    """What to say of a series beyond its status: why it failed, or that its outputs were kept."""
    return o.detail if o.exit_code != EXIT_OK or o.detail == RESUMED else ""


def summary_table(outcomes: list[Outcome]) -> str:
    """The summary as an aligned text table."""
    width = max([6, *(len(o.series) for o in outcomes)])
    lines = [f"{'series':<{width}}  views  markers  points   rms px  mean px  status     time s  detail"]
    for o in outcomes:
        lines.append(
            f"{o.series:<{width}}  {_fmt(o.views, 'd'):>5}  {_fmt(o.markers_fitted, 'd'):>7}  "
            f"{_fmt(o.points, 'd'):>6}  {_fmt(o.rms_residual_px, '.4f'):>7}  "
            f"{_fmt(o.mean_residual_px, '.4f'):>7}  {o.status:<9}  {o.seconds:6.2f}  {_remark(o)}"
        )
    counts = {
        k: sum(o.status == k for o in outcomes) for k in (STATUS_OK, STATUS_FAILED, STATUS_BAD, STATUS_ERROR)
    }
    crashed = f", {counts[STATUS_ERROR]} internal error" if counts[STATUS_ERROR] else ""
    lines.append(
        f"{len(outcomes)} series: {counts[STATUS_OK]} converged, {counts[STATUS_FAILED]} failed, "
        f"{counts[STATUS_BAD]} bad input{crashed}"
    )
    return "\n".join(lines) + "\n"


TSV_COLUMNS = (
    "series",
    "markers",
    "tilts",
    "views",
    "markers_fitted",
    "points",
    "rms_residual_px",
    "mean_residual_px",
    "status",
    "exit_code",
    "seconds",
    "detail",
)


def summary_tsv(outcomes: list[Outcome]) -> str:
    """The summary as tab-separated values, one row per series (empty cells where unknown)."""

    def cell(v):
        return (
            ""
            if v is None
            else (f"{v:.6g}" if isinstance(v, float) else str(v)).replace("\t", " ").replace("\n", " ")
        )

    rows = ["\t".join(TSV_COLUMNS)] + ["\t".join(cell(getattr(o, c)) for c in TSV_COLUMNS) for o in outcomes]
    return "\n".join(rows) + "\n"


def batch_exit_code(outcomes: list[Outcome]) -> int:
    """2 if any input was bad, else 1 if any alignment failed, else 0."""
    codes = {o.exit_code for o in outcomes}
    return max(codes, default=EXIT_OK)  # 3 internal error > 2 bad input > 1 failed > 0


# =========================================================================== the command


def _groups(prepared: list[Prepared], size: int) -> list[list[Prepared]]:
    """Groups of at most ``size`` series, similar shapes together (fewer buckets per worker)."""
    order = sorted(prepared, key=lambda p: (p.observations.n_views, p.observations.n_markers))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _run_processes(groups, options, jobs, on_outcome):
    """Each group in one of ``jobs`` local worker processes (spawned: JAX does not survive fork)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {pool.submit(align_and_write, g, options): g for g in groups}
        for future in concurrent.futures.as_completed(futures):
            _deliver(
                futures[future],
                future.exception(),
                None if future.exception() else future.result(),
                on_outcome,
            )


def _deliver(group, error, outcomes, on_outcome):
    """Outcomes of a finished group, or one failed outcome per series if the group's task failed."""
    if error is not None:
        outcomes = [
            Outcome(
                p.spec.name,
                p.spec.markers,
                p.spec.tilts,
                STATUS_ERROR,
                EXIT_INTERNAL,
                seconds=p.read_seconds,
                detail=f"worker failed: {type(error).__name__}: {error}",
            )
            for p in group
        ]
    for o in outcomes:
        on_outcome(o)


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_every_core() -> int | None:
    """One XLA CPU device per core, so ``align_batch`` solves one series per core at a time.

    A series' solve is a chain of small operations that each run on one core; with one device
    the other cores idle (two devices on two cores: 7.1 -> 4.5 ms per 107 x 30 series). Only
    possible before JAX has run anything, and left alone when the user set the device count
    (``XLA_FLAGS`` or ``jax_num_cpu_devices``). Accelerators are unaffected: this sets the count
    of CPU devices only. Returns the count set, or None.
    """
    import jax

    if jax.config.jax_num_cpu_devices != -1 or "xla_force_host_platform_device_count" in os.environ.get(
        "XLA_FLAGS", ""
    ):
        return None
    cores = _usable_cores()
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # JAX already started (e.g. cli.main called inside a program)
        return None
    return cores


def _devices() -> list[str]:
    import jax

    return [str(d) for d in jax.local_devices()]


def _align_all(
    prepared: list[Prepared], args, options: BatchOptions, shown: BatchProgress, on_outcome
) -> None:
    """Align and write every prepared series: on a Dask cluster, in local processes, or here."""
    where = (
        f"on the Dask cluster at {args.scheduler}"
        if args.scheduler
        else f"in {args.jobs} processes"
        if args.jobs > 1
        else "in this process"
    )
    note(
        f"aligning {len(prepared)} series {where}, model {options.model}, "
        f"stages {', '.join(options.stages)} ..."
    )
    if args.scheduler:
        from ..batch.distributed import map_groups

        groups = _groups(prepared, args.group_size)
        map_groups(
            align_and_write,
            groups,
            options,
            scheduler=args.scheduler,
            on_result=lambda i, value: _deliver(
                groups[i],
                value if isinstance(value, BaseException) else None,
                None if isinstance(value, BaseException) else value,
                on_outcome,
            ),
        )
    elif args.jobs > 1:
        _run_processes(
            _groups(prepared, math.ceil(len(prepared) / args.jobs)), options, args.jobs, on_outcome
        )
    else:
        cores = use_every_core() or _usable_cores()  # worker processes and Dask workers keep one device each
        # a writer process takes ~1.5 s to start (imports): worth it from ~4 figures each
        writers = max(1, min(cores, len(prepared) // 4)) if args.writers is None else args.writers
        try:
            align_and_write(prepared, options, progress=shown.event, on_outcome=on_outcome, writers=writers)
        except ValueError as e:  # the engine's checks of options shared by every series
            raise UsageError(str(e)) from None


def run_batch(args) -> int:
    """``lmalign batch``: read the series, align them in batches, write outputs and the summary."""
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs > 1 and args.scheduler:
        raise UsageError("give --jobs or --scheduler, not both (the cluster's workers set the parallelism)")
    if (
        args.max_iterations < 1
        or args.group_size < 1
        or (args.batch_size is not None and args.batch_size < 1)
    ):
        raise UsageError("--max-iterations, --group-size and --batch-size must be at least 1")
    if args.writers is not None and args.writers < 1:
        raise UsageError(f"--writers must be at least 1, got {args.writers}")
    if args.reconstruct is not None and not (math.isfinite(args.reconstruct) and args.reconstruct > 0):
        raise UsageError(
            "--reconstruct needs the tomogram thickness, a positive number of (unbinned) pixels, got "
            f"{args.reconstruct:g}"
        )
    if args.bin < 1:
        raise UsageError(f"--bin must be at least 1, got {args.bin}")
    if args.robust_group_size < 1:
        raise UsageError(f"--robust-group-size must be at least 1, got {args.robust_group_size}")
    if args.bucket is not None and min(args.bucket) < 1:
        raise UsageError(f"--bucket needs two positive integers, got {args.bucket[0]} {args.bucket[1]}")
    if args.image_size is not None and min(args.image_size) <= 0:
        raise UsageError(
            f"--image-size must be two positive numbers, got {args.image_size[0]:g} {args.image_size[1]:g}"
        )
    settings = settings_from_args(args)
    setup = getattr(args, "compilation_cache_setup", None)  # given by main: workers turn on the same cache
    options = BatchOptions(
        **{f.name: getattr(settings, f.name) for f in fields(settings)},
        worst=args.worst,
        figure=not args.no_figure,
        errors=not args.no_errors,
        bucket=tuple(args.bucket) if args.bucket else DEFAULT_BUCKET,
        batch_size=args.batch_size,
        command=("lmalign", *getattr(args, "argv", ["batch"])),
        worker_setup=setup if getattr(args, "compilation_cache", None) else None,
        reconstruct=args.reconstruct,
        binning=args.bin,
        filter=args.filter,
    )
    source = args.series
    if os.path.isdir(source):
        specs = scan_folder(source)
    elif os.path.isfile(source):
        specs = read_list(source)
    else:
        raise InputError(source, None, "file or folder not found")
    summary = OutputSet(args.out_dir, SUMMARY)
    check_output_folder(
        summary, SUMMARY_OUTPUTS, ()
    )  # a folder that cannot be written stops the batch before any work
    _check_summary(summary, source)

    note(f"{len(specs)} series from {source}; reading ...")
    outcomes: dict[str, Outcome] = {}
    prepared: list[Prepared] = []
    shown = BatchProgress([s.name for s in specs], quiet=args.quiet)
    for spec in specs:
        item = prepare(
            spec,
            out_dir=args.out_dir,
            layout=args.layout,
            image_size=args.image_size,
            reconstruct=args.reconstruct is not None,
            warn=warn,
        )
        if args.resume and not isinstance(item, Outcome):
            item = earlier_outcome(item, options) or item
        if isinstance(item, Outcome):
            outcomes[spec.name] = item
            shown.finished(item)
        else:
            prepared.append(item)

    def on_outcome(o: Outcome):
        outcomes[o.series] = o
        shown.finished(o)

    try:
        if prepared:
            _align_all(prepared, args, options, shown, on_outcome)
    except KeyboardInterrupt:
        shown.close()
        kept = sum(bool(o.outputs) for o in outcomes.values())
        print(
            f"lmalign: interrupted; {kept} of {len(specs)} series have their outputs written, no summary; "
            "the same command with --resume keeps them and aligns the rest",
            file=sys.stderr,
        )
        return 130
    shown.close()

    ordered = [outcomes[s.name] for s in specs]
    code = batch_exit_code(ordered)
    table = summary_table(ordered)
    record = {
        "software": software_info(),
        "source": source,
        "options": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(options).items()
            if k != "worker_setup"
        },
        "scheduler": args.scheduler,
        "jobs": args.jobs,
        "devices": _devices() if prepared and not args.scheduler and args.jobs == 1 else None,
        "exit_code": code,
        "series": [asdict(o) for o in ordered],
    }
    with summary:
        summary.write_text(".txt", table)
        summary.write_text(".tsv", summary_tsv(ordered))
        summary.write_text(".json", json.dumps(record, indent=1, default=_json_default) + "\n")
        written = summary.commit()
    print(table, end="")
    print(" Wrote " + ", ".join(written))
    return code


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_summary(summary: OutputSet, source: str) -> None:
    """Refuse a summary that would overwrite the list file."""
    for path in summary.final_paths(SUMMARY_OUTPUTS):
        if os.path.realpath(path) == os.path.realpath(source):
            raise UsageError(f"the summary {path} would overwrite the list file; choose another --out-dir")


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


def add_batch(sub):
    p = sub.add_parser(
        "batch",
        help="align many tilt series with batched solves (locally or on a Dask cluster)",
        description=BATCH_HELP,
        epilog=BATCH_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "series",
        metavar="LIST_OR_DIR",
        help=f"list file ('{LINE_FORMAT}' per line) or folder of marker + tilt files",
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
    p.set_defaults(run=run_batch)
