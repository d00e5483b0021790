"""The series of a batch: each read and checked (:func:`prepare`), aligned together with batched
solves and written as ``lmalign align`` writes one (:func:`align_and_write`, what a worker
process or Dask task runs), optionally reconstructed; each ends as an :class:`Outcome`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

from ..analysis.robust import align_robust
from ..analysis.uncertainty import uncertainty
from ..batch.runner import DEFAULT_BUCKET, align_batch
from ..core.result import AlignmentResult
from ..io.errors import InputError
from ..io.outputs import OutputSet
from ..solve import LMConfig
from .alignment_inputs import read_alignment_json
from .batch_list import SCAN_STACKS, SeriesSpec, stack_beside
from .parent_watch import exit_with_parent
from .reconstruction import reconstruct_to_file
from .selection import Selection, observations_for_fit, parse_view_list, report_selection, select_views
from .series import SeriesInputs, read_series
from .settings import AlignSettings
from .status import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, UsageError, print_warning
from .tracking import is_stack_path, track_stack, tracked_earlier
from .writing import ALIGN_OUTPUTS, write_alignment

#: The tomogram written beside a series' other outputs by ``--reconstruct``.
TOMOGRAM = ".rec.mrc"
#: A series' status: converged, did not converge (or could not be reconstructed or written),
#: bad input, or an unexpected exception (a bug: exit status 3).
STATUS_OK, STATUS_FAILED, STATUS_BAD, STATUS_ERROR = "converged", "failed", "bad input", "internal error"
#: The detail of a series whose earlier outputs ``--resume`` kept.
RESUMED = "done earlier, outputs kept (--resume)"


@dataclass
class Prepared:
    """A series read, checked and ready to align (everything a worker needs; picklable)."""

    spec: SeriesSpec
    inputs: SeriesInputs
    selection: Selection
    observations: object
    marker_ids: list
    out_dir: str
    prefix: str
    read_seconds: float
    stack: str | None = None  # the raw stack (header checked against the tilts)


@dataclass
class Outcome:
    """One row of the summary."""

    series: str
    markers: str | None
    tilts: str | None
    status: str  # converged | failed | bad input | internal error
    exit_code: int
    views: int | None = None
    markers_fitted: int | None = None
    points: int | None = None
    rms_residual_px: float | None = None
    mean_residual_px: float | None = None
    seconds: float = 0.0
    detail: str = ""  # the solver's status or the reason for failure
    outputs: list = field(default_factory=list)


def unfinished(p: Prepared, status: str, exit_code: int, detail: str) -> Outcome:
    """The summary row of a prepared series that ended without alignment outputs."""
    return Outcome(
        p.spec.name, p.spec.markers, p.spec.tilts, status, exit_code, seconds=p.read_seconds, detail=detail
    )


@dataclass(frozen=True)
class BatchOptions:
    """The alignment and output settings shared by every series (picklable, for workers)."""

    model: str = "jou"
    modes: dict = field(default_factory=dict)
    stages: tuple = ("initial", "main", "tilt", "joint")
    dtype: str = "float64"
    max_iterations: int = 200
    worst: int = 10
    figure: bool = True
    bucket: tuple = DEFAULT_BUCKET
    batch_size: int | None = None
    command: tuple = ("lmalign", "batch")
    worker_setup: object = None  # a picklable function each worker calls first (the CLI's compilation cache)
    errors: bool = True  # standard errors and leave-one-out residuals in each .json and figure
    robust: str | None = None  # robust loss of the reweighted fit (None: plain least squares)
    robust_group_size: int = 10
    reconstruct: float | None = None  # tomogram thickness in unbinned pixels, or no reconstruction
    binning: int = 1
    filter: str = "ramp"

    def settings(self) -> AlignSettings:
        """How each series is aligned."""
        return AlignSettings(
            model=self.model,
            modes=dict(self.modes),
            stages=tuple(self.stages),
            dtype=self.dtype,
            max_iterations=self.max_iterations,
            robust=self.robust,
            robust_group_size=self.robust_group_size,
        )


def output_set(out_dir: str, name: str, layout: str) -> OutputSet:
    """Where a series' outputs go: ``out_dir/NAME/NAME.*`` (layout "folders") or ``out_dir/NAME.*``."""
    return OutputSet(os.path.join(out_dir, name) if layout == "folders" else out_dir, name)


def reason(error: Exception) -> str:
    """What went wrong, for the summary: ``FILE: reason`` for a file-system error."""
    return (
        f"{error.filename}: {error.strerror}" if isinstance(error, OSError) and error.filename else str(error)
    )


#: How a batch user gives an image size the marker file lacks (the end of that error message).
SIZE_ADVICE = (
    "give NX NY after TILTS on the series' line of a list file, a STACK column, or --image-size NX NY for "
    "every series"
)


def prepare(
    spec: SeriesSpec,
    *,
    out_dir: str,
    layout: str = "folders",
    image_size=None,
    reconstruct: bool = False,
    tracking: dict | None = None,
    settings: AlignSettings | None = None,
    resume: bool = False,
    warn=print_warning,
) -> Prepared | Outcome:
    """Read and check one series as ``lmalign align`` does; an ``Outcome`` says why it cannot be used.
    ``image_size``: (nx, ny) for series whose files do not record it; ``reconstruct``: its
    tomogram is wanted, so it needs a stack. A raw stack as the series' markers is tracked first
    (:func:`lmalign_jax.workflow.tracking.track_stack`, with the keywords in ``tracking``), its
    tracking outputs written beside the alignment's; with ``resume`` an earlier tracking of the
    same stack with the same options is used instead (``tracked_earlier``). ``settings``: the
    alignment's, whose free parameters set how many points a view needs (``select_views``)."""
    start = time.perf_counter()
    said = warn
    warn = lambda text: said(f"{spec.name}: {text}")  # noqa: E731 - which series, among many
    try:
        if spec.problem:
            raise UsageError(spec.problem)
        out = output_set(out_dir, spec.name, layout)
        if is_stack_path(spec.markers):
            where = dict(
                out_dir=out.out_dir, prefix=spec.name, rotation_deg=spec.rotation, **(tracking or {})
            )
            fid = tracked_earlier(spec.markers, spec.tilts, **where) if resume else None
            if fid is None:
                fid = track_stack(
                    spec.markers, spec.tilts, warn=warn, note=lambda text: None, **where
                ).fid_path
            spec = replace(spec, markers=fid, stack=spec.stack or spec.markers)
        inputs_real = {os.path.realpath(spec.markers), os.path.realpath(spec.tilts)}
        clash = [p for p in out.final_paths(ALIGN_OUTPUTS) if os.path.realpath(p) in inputs_real]
        if clash:
            raise UsageError(
                f"output {clash[0]} would overwrite an input file; choose another --out-dir or --layout "
                "folders"
            )
        stack = spec.stack
        if stack is None and reconstruct:
            stack = stack_beside(spec.markers)
            if stack is None:
                stem = os.path.splitext(spec.markers)[0]
                raise InputError(
                    spec.markers,
                    None,
                    "no stack to reconstruct beside it "
                    f"({', '.join(os.path.basename(stem) + e for e in SCAN_STACKS)}); name it in a list "
                    "file: MARKERS TILTS [NX NY] STACK",
                )
        if reconstruct:
            tomogram = out.final_paths((TOMOGRAM,))[0]
            if os.path.realpath(tomogram) in inputs_real | {os.path.realpath(stack)}:
                raise UsageError(f"output {tomogram} would overwrite an input file; choose another --out-dir")
        size = spec.image_size or (tuple(image_size) if image_size else None)
        inputs = read_series(
            spec.markers,
            spec.tilts,
            stack_path=stack,
            image_size=size,
            rotation_deg=spec.rotation,
            size_advice=SIZE_ADVICE,
            warn=warn,
        )
        if spec.image_size is not None:
            inputs = replace(inputs, image_size_source=f"NX NY on {spec.where}")
        if spec.rotation is not None:
            inputs = replace(inputs, rotation_source=f"rotation= on {spec.where}")
        exclude = (
            parse_view_list(
                spec.exclude, inputs.tilts_deg.size, where=f"{spec.where}: exclude={spec.exclude}"
            )
            if spec.exclude
            else []
        )
        sel = select_views(inputs, exclude, settings)
        report_selection(inputs, sel, warn)
        obs, marker_ids = observations_for_fit(inputs, sel, warn)
    except (InputError, UsageError, ValueError, OSError) as e:
        text = reason(e)
        return Outcome(
            spec.name,
            spec.markers,
            spec.tilts,
            STATUS_BAD,
            EXIT_BAD_INPUT,
            seconds=time.perf_counter() - start,
            detail=text,
        )
    return Prepared(
        spec, inputs, sel, obs, marker_ids, out.out_dir, spec.name, time.perf_counter() - start, stack
    )


def _write(p: Prepared, result, options: BatchOptions, errors=None, robust=None) -> list[str]:
    """Write one series' outputs exactly as ``lmalign align`` does (``errors``: its
    ``Uncertainty``, ``robust``: its ``RobustResult``, or None); returns the paths written."""
    written = write_alignment(
        OutputSet(p.out_dir, p.prefix),
        p.inputs,
        p.selection,
        result,
        p.marker_ids,
        options.settings(),
        command=options.command,
        errors=errors,
        robust=robust,
        figure=options.figure,
        n_worst=options.worst,
        batch={"bucket": list(result.settings.bucket)} if result.settings.bucket else {},
    )
    return written.written


def _outcome(p: Prepared, result, seconds: float, written: list[str]) -> Outcome:
    spec, obs = p.spec, p.observations
    ok = result.converged
    return Outcome(
        spec.name,
        spec.markers,
        spec.tilts,
        STATUS_OK if ok else STATUS_FAILED,
        EXIT_OK if ok else EXIT_FAILED,
        views=obs.n_views,
        markers_fitted=obs.n_markers,
        points=obs.n_observed,
        rms_residual_px=result.rms_residual_px,
        mean_residual_px=result.mean_residual_px,
        seconds=seconds,
        detail=result.status,
        outputs=written,
    )


def align_and_write(
    prepared: list[Prepared], options: BatchOptions, progress=None, on_outcome=None, writers: int = 1
) -> list[Outcome]:
    """Align a group of series together and write each one's outputs (what a worker runs).

    ``progress(index, event, detail)`` is handed to ``align_batch``; ``on_outcome(outcome)`` is
    called as each series' outputs are written. ``writers`` > 1 writes the series' outputs in
    that many spawned processes when there are figures to draw: a report figure takes ~0.6 s
    of matplotlib, a hundred times the series' solve, and one process draws one at a time.
    """
    if options.worker_setup is not None:
        options.worker_setup()
    results = align_batch(
        [p.observations for p in prepared],
        model=options.model,
        rotation_deg=[p.inputs.rotation_deg for p in prepared],
        modes=options.modes,
        stages=options.stages,
        config=LMConfig(max_iterations=options.max_iterations),
        dtype=options.dtype,
        bucket=options.bucket,
        batch_size=options.batch_size,
        progress=progress,
    )
    report = on_outcome if on_outcome is not None else (lambda _: None)
    writers = min(writers, len(prepared)) if options.figure else 1

    def finished(p, result):
        """The series' final fit and what its outputs need, computed here (on this process's
        device), and the seconds spent on it: its share of the batched solve plus the rest."""
        start = time.perf_counter()
        batched = sum(st.seconds for st in result.stages) if isinstance(result, AlignmentResult) else 0.0
        result, robust = fit_robust(p, result, options)
        errors = series_errors(result, options)
        return result, errors, robust, batched + time.perf_counter() - start

    if writers <= 1:
        outcomes = []
        for p, result in zip(prepared, results, strict=True):
            result, errors, robust, seconds = finished(p, result)
            outcomes.append(
                reconstruct_series(
                    p, write_outcome(p, result, options, errors, robust, seconds), options, result
                )
            )
            report(outcomes[-1])
        return outcomes
    import concurrent.futures
    import multiprocessing

    outcomes: list = [None] * len(prepared)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=writers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        # robust fits and standard errors are computed here (on this process's device),
        # figures drawn by the writers
        futures, final = {}, [None] * len(prepared)
        for i, (p, result) in enumerate(zip(prepared, results, strict=True)):
            result, errors, robust, seconds = finished(p, result)
            final[i] = result
            futures[pool.submit(write_outcome, p, result, options, errors, robust, seconds)] = i
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            error = future.exception()
            if error is None:
                outcomes[i] = future.result()
            else:  # the writer process died or raised: that series failed, the others go on
                p = prepared[i]
                outcomes[i] = unfinished(
                    p,
                    STATUS_ERROR,
                    EXIT_INTERNAL,
                    f"writing the outputs failed: {type(error).__name__}: {error}",
                )
            # tomograms are made here, on this process's device, while the writers draw on
            outcomes[i] = reconstruct_series(prepared[i], outcomes[i], options, final[i])
            report(outcomes[i])
    return outcomes


def reconstruct_series(p: Prepared, outcome: Outcome, options: BatchOptions, result) -> Outcome:
    """With ``options.reconstruct``, the tomogram of a series that converged, from its raw stack
    and the record just written for it, read back as ``lmalign reconstruct --alignment`` reads it
    (``result`` is unused: the record holds what it solved)."""
    if options.reconstruct is None or outcome.status != STATUS_OK:
        return outcome
    out = OutputSet(p.out_dir, p.prefix)
    record, tomogram = out.final_paths((".json", TOMOGRAM))
    start = time.perf_counter()
    try:
        # the record just written, read back: what `lmalign reconstruct --alignment` applies (a
        # deformation model's warp or shape, z factors), not the bare transforms
        alignment = read_alignment_json(record)
        reconstruct_to_file(
            p.stack,
            alignment,
            tomogram,
            thickness=options.reconstruct,
            binning=options.binning,
            filter=options.filter,
            quiet=True,
        )
    except (InputError, UsageError, ValueError, OSError) as e:
        text = reason(e)
        return replace(
            outcome,
            status=STATUS_FAILED,
            exit_code=EXIT_FAILED,
            seconds=outcome.seconds + time.perf_counter() - start,
            detail=f"aligned, but the reconstruction failed: {text}",
        )
    return replace(
        outcome, outputs=[*outcome.outputs, tomogram], seconds=outcome.seconds + time.perf_counter() - start
    )


def fit_robust(p: Prepared, result, options: BatchOptions):
    """With ``options.robust``, the reweighted fit of a series (as ``lmalign align --robust``)
    started from its batched least-squares answer: ``(result, RobustResult)``; else, or for a
    series without a usable answer, ``(result, None)``. An error in the reweighting is that
    series' outcome."""
    if (
        options.robust is None
        or not isinstance(result, AlignmentResult)
        or result.status.startswith("failed")
    ):
        return result, None
    try:
        robust = align_robust(
            p.observations,
            loss=options.robust,
            group_size=options.robust_group_size,
            initial=result,
            model=options.model,
            rotation_deg=p.inputs.rotation_deg,
            modes=options.modes,
            config=LMConfig(max_iterations=options.max_iterations),
            dtype=options.dtype,
        )
    except Exception as e:  # noqa: BLE001 - reported for this series
        return e, None
    return robust.result, robust


def series_errors(result, options: BatchOptions):
    """Standard errors of a converged series (``Uncertainty``) with the view parameters'
    covariance, as ``lmalign align`` reports them (so its record carries the same misregistration
    section); None without ``options.errors``, for a series that did not converge, or if they
    cannot be computed (the outputs are then written without them)."""
    if not options.errors or not isinstance(result, AlignmentResult) or not result.converged:
        return None
    try:
        return uncertainty(result, with_covariance=True)
    except Exception:  # noqa: BLE001 - the alignment stands without its error bars
        return None


def write_outcome(
    p: Prepared, result, options: BatchOptions, errors=None, robust=None, solve_seconds: float | None = None
) -> Outcome:
    """Write one series' outputs (or report why it has none) and say how it went.
    ``solve_seconds``: time spent fitting it (default: its stages' seconds)."""
    start = time.perf_counter()
    if isinstance(result, Exception):
        bad = isinstance(result, ValueError)  # the engine's checks of the problem
        return unfinished(
            p,
            STATUS_BAD if bad else STATUS_ERROR,
            EXIT_BAD_INPUT if bad else EXIT_INTERNAL,
            str(result) if bad else f"{type(result).__name__}: {result}",
        )
    try:
        written = _write(p, result, options, errors, robust)
    except OSError as e:
        detail = f"cannot write the outputs: {e.filename or ''} {e.strerror or e}".strip()
        return unfinished(p, STATUS_FAILED, EXIT_FAILED, detail)
    solve = sum(st.seconds for st in result.stages) if solve_seconds is None else solve_seconds
    return _outcome(p, result, p.read_seconds + solve + time.perf_counter() - start, written)
