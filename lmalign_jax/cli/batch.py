"""``lmalign batch``: align every tilt series of a list file or folder with batched solves.

The choice of where the series run (this process, ``--jobs`` local processes or a Dask cluster
with ``--scheduler``) and the summary files (text, TSV, JSON) are here; the options and help are
in :mod:`.batch_options`, progress and the summary table in :mod:`.batch_report`; reading the
list or folder, checking each series, aligning and writing them and the ``--resume`` check are
in :mod:`lmalign_jax.workflow` (``batch_list``, ``batch_series``, ``resume``). A bad series is
reported and skipped; the others complete.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, fields

import numpy as np

from ..analysis.shared_constant import check_shareable, shared_table, shared_tsv
from ..batch import DEFAULT_BUCKET
from ..io.errors import InputError
from ..io.outputs import OutputSet
from ..workflow import check_output_folder, software_info
from ..workflow.batch_list import SUMMARY_NAME, read_list, scan_folder
from ..workflow.batch_series import (
    STATUS_ERROR,
    BatchOptions,
    Outcome,
    Prepared,
    align_and_write,
    prepare,
    unfinished,
)
from ..workflow.folder_lock import folder_lock
from ..workflow.parent_watch import exit_with_parent
from ..workflow.resume import earlier_outcome
from ..workflow.series import check_image_size
from ..workflow.shared_constant import estimate_shared, split_by_agreement
from .align_options import settings_from_args
from .batch_options import BATCH_EXAMPLE, BATCH_HELP, add_batch_arguments
from .batch_report import BatchProgress, batch_exit_code, summary_table, summary_tsv
from .common import EXIT_INTERNAL, HelpFormatter, UsageError, check_count, note, warn

SUMMARY_OUTPUTS = (".txt", ".tsv", ".json")
#: With --share: the per-series table of the shared constant, beside the summary.
SHARED_OUTPUT = "_shared.tsv"


def _groups(prepared: list[Prepared], size: int) -> list[list[Prepared]]:
    """Groups of at most ``size`` series, similar shapes together (fewer buckets per worker)."""
    order = sorted(prepared, key=lambda p: (p.observations.n_views, p.observations.n_markers))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _run_processes(groups, options, jobs, on_outcome):
    """Each group in one of ``jobs`` local worker processes (spawned: JAX does not survive fork)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
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
        detail = f"worker failed: {type(error).__name__}: {error}"
        outcomes = [unfinished(p, STATUS_ERROR, EXIT_INTERNAL, detail) for p in group]
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
    check_count(args.max_iterations, "--max-iterations")
    check_count(args.group_size, "--group-size")
    if args.batch_size is not None:
        check_count(args.batch_size, "--batch-size")
    check_count(args.worst, "--worst", low=0)
    if args.writers is not None and args.writers < 1:
        raise UsageError(f"--writers must be at least 1, got {args.writers}")
    if args.reconstruct is not None and not (math.isfinite(args.reconstruct) and args.reconstruct > 0):
        raise UsageError(
            "--reconstruct needs the tomogram thickness, a positive number of (unbinned) pixels, got "
            f"{args.reconstruct:g}"
        )
    if args.bin < 1:
        raise UsageError(f"--bin must be at least 1, got {args.bin}")
    if args.bucket is not None and min(args.bucket) < 1:
        raise UsageError(f"--bucket needs two positive integers, got {args.bucket[0]} {args.bucket[1]}")
    if args.image_size is not None:
        check_image_size(args.image_size)
    if args.share is not None:
        _check_share(args.share)
        if args.resume:  # the kept outputs would come from a different shared value
            raise UsageError("--share and --resume cannot be combined: the shared value needs every series")
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
    summary = OutputSet(args.out_dir, SUMMARY_NAME)
    check_output_folder(
        summary, SUMMARY_OUTPUTS + ((SHARED_OUTPUT,) if args.share else ()), ()
    )  # a folder that cannot be written stops the batch before any work
    _check_summary(summary, source)

    with folder_lock(args.out_dir):
        return _align_and_summarise(args, options, source, specs, summary)


def _align_and_summarise(args, options: BatchOptions, source: str, specs, summary: OutputSet) -> int:
    """The batch itself, its output folder locked: prepare, align and write every series, then
    the summary; returns the exit status."""
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
            tracking={
                "bead_diameter_px": args.bead_diameter,
                "bead_nm": args.bead_nm,
                "target_beads": args.target_beads,
            },
            settings=options.settings(),
            resume=args.resume,
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

    shared = None
    if args.share is not None:
        note(f"estimating the shared {args.share} from {len(prepared)} series ...")
        try:
            shared = estimate_shared(prepared, options, args.share, args.share_threshold)
        except ValueError as e:  # the engine's checks of options shared by every series
            raise UsageError(str(e)) from None
        print(shared_table(shared), end="")
    try:
        if shared is not None:
            for group, group_options in split_by_agreement(prepared, options, shared):
                _align_all(group, args, group_options, shown, on_outcome)
        elif prepared:
            _align_all(prepared, args, options, shown, on_outcome)
    except KeyboardInterrupt:
        shown.close()
        done = {name for name, o in outcomes.items() if o.outputs}
        # a worker may finish writing a series whose outcome never came back: what --resume keeps
        done |= {p.spec.name for p in prepared if p.spec.name not in done and earlier_outcome(p, options)}
        kept = len(done)
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
    if shared is not None:
        record["shared"] = shared.record()
        table += shared_table(shared)
    with summary:
        summary.write_text(".txt", table)
        summary.write_text(".tsv", summary_tsv(ordered))
        summary.write_text(".json", json.dumps(record, indent=1, default=_json_default) + "\n")
        if shared is not None:
            summary.write_text(SHARED_OUTPUT, shared_tsv(shared))
        written = summary.commit()
    print(table, end="")
    print(" Wrote " + ", ".join(written))
    return code


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_share(constant: str) -> None:
    """Refuse, before any work, a constant no series can estimate."""
    try:
        check_shareable(constant)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_summary(summary: OutputSet, source: str) -> None:
    """Refuse a summary that would overwrite the list file."""
    for path in summary.final_paths(SUMMARY_OUTPUTS):
        if os.path.realpath(path) == os.path.realpath(source):
            raise UsageError(f"the summary {path} would overwrite the list file; choose another --out-dir")


def add_batch(sub):
    p = sub.add_parser(
        "batch",
        help="align many tilt series with batched solves (locally or on a Dask cluster)",
        description=BATCH_HELP,
        epilog=BATCH_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    add_batch_arguments(p)
    p.set_defaults(run=run_batch)
