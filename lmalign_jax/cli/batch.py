"""``lmalign batch``: align every tilt series of a list file or folder with batched solves.

The series are read and checked here (a bad one is reported and skipped), aligned together by
:func:`lmalign_jax.batch.align_batch` (in this process, in ``--jobs`` local processes, or on a
Dask cluster with ``--scheduler``) and each one's outputs are written as ``lmalign align``
writes them. A summary table (text, TSV, JSON) lists every series with its outcome.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..batch.runner import DEFAULT_BUCKET, align_batch
from ..io.errors import InputError
from ..io.mrc import read_labels
from ..models import MODELS, get_model
from ..io.outputs import OutputSet
from ..report import build_record, expand_to_file_views, record_to_json, render_figure
from ..core.result import AlignmentResult
from ..analysis.robust import align_robust
from ..solve import LMConfig
from ..analysis.uncertainty import uncertainty
from ._common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, UsageError, _check_outputs, _Formatter, _note, _software
from .align import (
    ALIGN_OUTPUTS,
    REPORT_OUTPUTS,
    _input_record,
    _stage_alignment_files,
    add_robust_options,
    add_solver_options,
    observations_for_fit,
    parse_modes,
    parse_view_list,
    read_inputs,
    report_selection,
    select,
)
from .reconstruct import FILTER_CHOICES, reconstruction_label

#: Marker files a folder scan picks up (.txt and .resid series go in a list file).
SCAN_MARKERS = (".fid", ".mod", ".csv", ".pt")
#: Tilt files looked for next to ``NAME.<marker extension>``, in order of preference.
SCAN_TILTS = (".rawtlt", ".tlt", ".mdoc", ".mrc.mdoc", ".st.mdoc")
#: Raw stacks looked for next to ``NAME.<marker extension>`` (IMOD's NAME.st, or NAME.mrc).
SCAN_STACKS = (".st", ".mrc")
#: The tomogram written beside a series' other outputs by ``--reconstruct``.
TOMOGRAM = ".rec.mrc"
SUMMARY = "batch_summary"
SUMMARY_OUTPUTS = (".txt", ".tsv", ".json")
STATUS_OK, STATUS_FAILED, STATUS_BAD = "converged", "failed", "bad input"
#: The detail of a series whose earlier outputs ``--resume`` kept.
RESUMED = "done earlier, outputs kept (--resume)"


# =========================================================================== series


@dataclass
class SeriesSpec:
    """One series named by the list file or found in the folder."""

    name: str
    markers: str | None
    tilts: str | None
    image_size: tuple[float, float] | None = None
    problem: str | None = None  # why it cannot be read (a bad list line, a missing tilt file)
    stack: str | None = None  # the raw stack named by the list file (else looked for beside the markers)
    exclude: str | None = None  # views to leave out, 1-based (the line's exclude=LIST)
    rotation: float | None = None  # tilt-axis rotation, degrees (the line's rotation=DEG)
    where: str | None = None  # "LIST:LINE" of a series named by a list file


@dataclass
class Prepared:
    """A series read, checked and ready to align (everything a worker needs; picklable)."""

    spec: SeriesSpec
    inputs: object  # cli.align.Inputs
    selection: object  # cli.align.Selection
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
    status: str  # converged | failed | bad input
    exit_code: int
    views: int | None = None
    markers_fitted: int | None = None
    points: int | None = None
    rms_residual_px: float | None = None
    mean_residual_px: float | None = None
    seconds: float = 0.0
    detail: str = ""  # the solver's status or the reason for failure
    outputs: list = field(default_factory=list)


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
    compilation_cache: bool = False  # workers turn on the CLI's persistent cache
    errors: bool = True  # standard errors and leave-one-out residuals in each .json and figure
    robust: str | None = None  # robust loss of the reweighted fit (None: plain least squares)
    robust_group_size: int = 10
    reconstruct: float | None = None  # tomogram thickness in unbinned pixels, or no reconstruction
    binning: int = 1
    filter: str = "ramp"


def _unique_names(specs: list[SeriesSpec]) -> None:
    """Make series names unique (outputs are named after them): NAME, NAME_2, NAME_3, ..."""
    seen: dict[str, int] = {}
    for s in specs:
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        if n > 1:
            s.name = f"{s.name}_{n}"


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: Per-series options a list line may end with, as ``name=value`` (``lmalign align``'s
#: --exclude and --rotation for that series).
LINE_OPTIONS = ("exclude", "rotation")
LINE_FORMAT = "MARKERS TILTS [NX NY] [STACK] [exclude=LIST] [rotation=DEG]"


def _line_options(spec: SeriesSpec, options: list[str], where) -> None:
    """Set ``spec``'s exclude/rotation from ``name=value`` tokens (a problem if malformed)."""
    seen = set()
    for token in options:
        name, _, value = token.partition("=")
        if name in seen:
            spec.problem = where(f"{name}= given twice")
            return
        seen.add(name)
        if name == "rotation":
            try:
                spec.rotation = float(value)
                if not math.isfinite(spec.rotation):
                    raise ValueError
            except ValueError:
                spec.problem = where(f"rotation={value} is not an angle in degrees")
                return
        elif not value:
            spec.problem = where("exclude= names no views (e.g. exclude=1-3,40; views count from 1)")
            return
        else:
            spec.exclude = value


def read_list(path: str) -> list[SeriesSpec]:
    """Series of a list file: one ``MARKERS TILTS [NX NY] [STACK] [exclude=LIST] [rotation=DEG]``
    per line.

    Blank lines and ``#`` comments are skipped; paths are relative to the list file's folder
    and may be quoted (shell rules); NX NY give the image size when the marker file lacks it;
    STACK names the raw stack (its header gives the image size; ``--reconstruct`` uses it);
    exclude= and rotation= are that series' ``--exclude`` and ``--rotation``.
    A malformed line becomes a series with a ``problem`` (reported, not fatal).
    """
    base = os.path.dirname(os.path.abspath(path))
    specs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if not text:
                continue
            try:
                tokens = shlex.split(text)
            except ValueError as e:
                specs.append(SeriesSpec(f"line{number}", None, None, problem=str(InputError(path, number, f"cannot split the line: {e}"))))
                continue
            where = lambda problem, n=number: str(InputError(path, n, problem))
            options = [t for t in tokens if t.partition("=")[0] in LINE_OPTIONS and "=" in t]
            tokens = [t for t in tokens if t not in options]
            if len(tokens) not in (2, 3, 4, 5):
                specs.append(SeriesSpec(f"line{number}", None, None, problem=where(f"expected '{LINE_FORMAT}', got {len(tokens)} fields")))
                continue
            markers, tilts = (t if os.path.isabs(t) else os.path.join(base, t) for t in tokens[:2])
            spec = SeriesSpec(_stem(markers), markers, tilts, where=f"{path}:{number}")
            _line_options(spec, options, where)
            if len(tokens) in (3, 5):
                spec.stack = tokens[-1] if os.path.isabs(tokens[-1]) else os.path.join(base, tokens[-1])
                if len(tokens) == 3 and _is_number(tokens[2]):
                    spec.problem = where(f"one number after TILTS ({tokens[2]}): give the image size as NX NY, or a STACK file")
            if len(tokens) >= 4:
                try:
                    size = (float(tokens[2]), float(tokens[3]))
                    if not all(math.isfinite(s) and s > 0 for s in size):
                        raise ValueError
                    spec.image_size = size
                except ValueError:
                    spec.problem = where(f"image size {tokens[2]} {tokens[3]} is not two positive numbers")
            specs.append(spec)
    if not specs:
        raise UsageError(f"{path}: the list names no series (one '{LINE_FORMAT}' per line)")
    _unique_names(specs)
    return specs


def scan_folder(folder: str) -> list[SeriesSpec]:
    """Series of a folder: every ``NAME.fid/.mod/.csv/.pt`` with ``NAME.rawtlt/.tlt/.mdoc`` beside it."""
    specs = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in SCAN_MARKERS or not os.path.isfile(path):
            continue
        tilts = next((os.path.join(folder, stem + t) for t in SCAN_TILTS if os.path.isfile(os.path.join(folder, stem + t))), None)
        problem = None
        if tilts is None:
            problem = str(InputError(path, None, f"no tilt file beside it ({', '.join(stem + t for t in SCAN_TILTS[:3])})"))
        specs.append(SeriesSpec(stem, path, tilts, problem=problem))
    if not specs:
        raise UsageError(f"{folder}: no marker files ({', '.join(SCAN_MARKERS)}) in this folder; name .txt and .resid marker files "
                         f"in a list file ({LINE_FORMAT} per line)")
    _unique_names(specs)
    return specs


def _output_set(out_dir: str, name: str, layout: str) -> OutputSet:
    return OutputSet(os.path.join(out_dir, name) if layout == "folders" else out_dir, name)


def _reason(error: Exception) -> str:
    """What went wrong, for the summary: ``FILE: reason`` for a file-system error."""
    return f"{error.filename}: {error.strerror}" if isinstance(error, OSError) and error.filename else str(error)


#: How a batch user gives an image size the marker file lacks (the end of that error message).
SIZE_ADVICE = "give NX NY after TILTS on the series' line of a list file, a STACK column, or --image-size NX NY for every series"


def prepare(spec: SeriesSpec, args) -> Prepared | Outcome:
    """Read and check one series as ``lmalign align`` does; an ``Outcome`` says why it cannot be used."""
    start = time.perf_counter()
    try:
        if spec.problem:
            raise UsageError(spec.problem)
        out = _output_set(args.out_dir, spec.name, args.layout)
        inputs_real = {os.path.realpath(spec.markers), os.path.realpath(spec.tilts)}
        clash = [p for p in out.final_paths(ALIGN_OUTPUTS) if os.path.realpath(p) in inputs_real]
        if clash:
            raise UsageError(f"output {clash[0]} would overwrite an input file; choose another --out-dir or --layout folders")
        stack = spec.stack
        if stack is None and args.reconstruct is not None:
            stack = stack_beside(spec.markers)
            if stack is None:
                stem = os.path.splitext(spec.markers)[0]
                raise InputError(spec.markers, None, f"no stack to reconstruct beside it ({', '.join(os.path.basename(stem) + e for e in SCAN_STACKS)}); "
                                                     "name it in a list file: MARKERS TILTS [NX NY] STACK")
        if args.reconstruct is not None:
            tomogram = out.final_paths((TOMOGRAM,))[0]
            if os.path.realpath(tomogram) in inputs_real | {os.path.realpath(stack)}:
                raise UsageError(f"output {tomogram} would overwrite an input file; choose another --out-dir")
        size = spec.image_size or (tuple(args.image_size) if args.image_size else None)
        inputs = read_inputs(argparse.Namespace(markers=spec.markers, tilts=spec.tilts, stack=stack, image_size=size, rotation=spec.rotation,
                                                size_advice=SIZE_ADVICE))
        if spec.image_size is not None:
            inputs = replace(inputs, image_size_source=f"NX NY on {spec.where}")
        if spec.rotation is not None:
            inputs = replace(inputs, rotation_source=f"rotation= on {spec.where}")
        exclude = parse_view_list(spec.exclude, inputs.tilts_deg.size, where=f"{spec.where}: exclude={spec.exclude}") if spec.exclude else []
        sel = select(inputs, exclude)
        report_selection(inputs, sel)
        obs, marker_ids = observations_for_fit(inputs, sel)
    except (InputError, UsageError, ValueError, OSError) as e:
        text = _reason(e)
        return Outcome(spec.name, spec.markers, spec.tilts, STATUS_BAD, EXIT_BAD_INPUT, seconds=time.perf_counter() - start, detail=text)
    return Prepared(spec, inputs, sel, obs, marker_ids, out.out_dir, spec.name, time.perf_counter() - start, stack)


def stack_beside(markers: str) -> str | None:
    """``NAME.st`` or ``NAME.mrc`` next to the marker file ``NAME.<ext>``, if there is one."""
    stem = os.path.splitext(markers)[0]
    return next((stem + e for e in SCAN_STACKS if os.path.isfile(stem + e)), None)


# =========================================================================== align and write


def _write(p: Prepared, result, options: BatchOptions, errors=None, robust=None) -> list[str]:
    """Write one series' outputs exactly as ``lmalign align`` does (``errors``: its
    ``Uncertainty``, ``robust``: its ``RobustResult``, or None); returns the paths written."""
    model = get_model(options.model)
    inputs, sel, obs = p.inputs, p.selection, p.observations
    fv = expand_to_file_views(result, sel.view_index, inputs.tilts_deg)
    converged = result.converged
    record_options = {
        "model": model.name,
        "modes": _all_modes(options),
        "rotation_deg": inputs.rotation_deg if inputs.rotation_deg is not None else result.rotation_estimated_deg,
        "rotation_source": inputs.rotation_source,
        "stages": list(options.stages),
        "dtype": options.dtype,
        "max_iterations": options.max_iterations,
        "command": list(options.command),
        "batch": {"bucket": list(result.settings.bucket)} if result.settings.bucket else {},
    }
    out = OutputSet(p.out_dir, p.prefix)
    suffixes = tuple(s for s in (ALIGN_OUTPUTS if converged else REPORT_OUTPUTS) if options.figure or s != ".png")
    extra = {"outputs": [os.path.basename(q) for q in out.final_paths(suffixes)], "exit_code": EXIT_OK if converged else EXIT_FAILED}
    if robust is not None:
        record_options["robust"] = {"loss": options.robust, "group_size": options.robust_group_size}
        extra["robust"] = robust.to_dict()
    args = argparse.Namespace(markers=p.spec.markers, stack=p.stack)
    record = build_record(result, fv, marker_ids=p.marker_ids, inputs=_input_record(args, inputs, sel, obs), options=record_options,
                          n_worst=options.worst, software=_software(), extra=extra, errors=errors)
    with out:
        if converged:
            _stage_alignment_files(out, result, fv, p.marker_ids, inputs)
        out.write_text(".json", record_to_json(record))
        if options.figure:
            title = f"{p.prefix}: {os.path.basename(p.spec.markers)}, {os.path.basename(inputs.tilts_path)}"
            out.write_bytes(".png", render_figure(result, fv, record, title=title, errors=errors))
        return out.commit()


def _all_modes(options: BatchOptions) -> dict:
    """Every view parameter's mode, as the .json record lists them."""
    model = get_model(options.model)
    return {q: mode for q, mode in zip(model.parameters, model.default_modes, strict=True)} | dict(options.modes)


def _same_file(recorded: str | None, path: str | None) -> bool:
    """Whether a path a record names is ``path`` (both None counts as the same)."""
    if recorded is None or path is None:
        return recorded is None and path is None
    return os.path.realpath(recorded) == os.path.realpath(path)


def earlier_outcome(p: Prepared, options: BatchOptions) -> Outcome | None:
    """The series' outcome from an earlier run into the same outputs (``--resume``), or None
    when it must be aligned (again).

    A series is done when its ``.json`` record says it converged, names the same marker, tilt
    and stack files, image size, excluded views and given rotation, was made with the same
    model, modes, stages, precision and iteration limit, is newer than its input files, and
    every output it lists is there (the ``.png`` too when figures are wanted, the standard
    errors when they are). With ``--reconstruct`` its tomogram must also exist, be newer than
    the record, and carry the label of the same thickness, binning and filter.
    """
    out = OutputSet(p.out_dir, p.prefix)
    record_path, tomogram = out.final_paths((".json", TOMOGRAM))
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        made = os.path.getmtime(record_path)
        inputs, opts, summary = record["inputs"], record["options"], record["summary"]
        outputs = [os.path.join(out.out_dir, name) for name in record["outputs"]]
        done = (
            summary["converged"] is True
            and record["exit_code"] == EXIT_OK
            and _same_file(inputs["markers"], p.spec.markers)
            and _same_file(inputs["tilts"], p.inputs.tilts_path)
            and _same_file(inputs["stack"], p.stack)
            and [float(v) for v in inputs["image_size"]] == [float(v) for v in p.inputs.image_size]
            and inputs["excluded_by_user"] == [v + 1 for v in p.selection.excluded_by_user]
            and opts["rotation_source"].startswith("rotation=") == (p.spec.rotation is not None)
            and (p.spec.rotation is None or opts["rotation_deg"] == p.spec.rotation)
            and (opts["model"], opts["modes"], opts["stages"], opts["dtype"], opts["max_iterations"])
            == (options.model, _all_modes(options), list(options.stages), options.dtype, options.max_iterations)
            and all(os.path.getmtime(q) <= made for q in (p.spec.markers, p.inputs.tilts_path))
            and all(os.path.isfile(q) for q in outputs)
            and (not options.figure or any(q.endswith(".png") for q in outputs))
            and (not options.errors or "leave_one_out_rms_px" in summary)
            and opts.get("robust") == ({"loss": options.robust, "group_size": options.robust_group_size} if options.robust else None)
        )
        if done and options.reconstruct is not None:
            label = reconstruction_label(options.reconstruct, options.binning, options.filter)[:80]
            done = os.path.isfile(tomogram) and os.path.getmtime(tomogram) >= made and label in read_labels(tomogram)
            outputs.append(tomogram)
    except (OSError, ValueError, KeyError, TypeError):  # no record, or not one this version wrote: align again
        return None
    if not done:
        return None
    obs = p.observations
    return Outcome(p.spec.name, p.spec.markers, p.spec.tilts, STATUS_OK, EXIT_OK, views=obs.n_views, markers_fitted=obs.n_markers,
                   points=obs.n_observed, rms_residual_px=summary["rms_residual_px"], mean_residual_px=summary["mean_residual_px"],
                   seconds=p.read_seconds, detail=RESUMED, outputs=outputs)


def _outcome(p: Prepared, result, seconds: float, written: list[str]) -> Outcome:
    spec, obs = p.spec, p.observations
    ok = result.converged
    return Outcome(
        spec.name, spec.markers, spec.tilts, STATUS_OK if ok else STATUS_FAILED, EXIT_OK if ok else EXIT_FAILED,
        views=obs.n_views, markers_fitted=obs.n_markers, points=obs.n_observed,
        rms_residual_px=result.rms_residual_px, mean_residual_px=result.mean_residual_px,
        seconds=seconds, detail=result.status, outputs=written,
    )


def align_and_write(prepared: list[Prepared], options: BatchOptions, progress=None, on_outcome=None, writers: int = 1) -> list[Outcome]:
    """Align a group of series together and write each one's outputs (what a worker runs).

    ``progress(index, event, detail)`` is handed to ``align_batch``; ``on_outcome(outcome)`` is
    called as each series' outputs are written. ``writers`` > 1 writes the series' outputs in
    that many spawned processes when there are figures to draw: a report figure takes ~0.6 s
    of matplotlib, a hundred times the series' solve, and one process draws one at a time.
    """
    if options.compilation_cache:
        from ._main import enable_compilation_cache

        enable_compilation_cache()
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
            outcomes.append(reconstruct_series(p, write_outcome(p, result, options, errors, robust, seconds), options))
            report(outcomes[-1])
        return outcomes
    import concurrent.futures
    import multiprocessing

    outcomes: list = [None] * len(prepared)
    with concurrent.futures.ProcessPoolExecutor(max_workers=writers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # robust fits and standard errors are computed here (on this process's device), figures drawn by the writers
        futures = {}
        for i, (p, result) in enumerate(zip(prepared, results, strict=True)):
            result, errors, robust, seconds = finished(p, result)
            futures[pool.submit(write_outcome, p, result, options, errors, robust, seconds)] = i
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            error = future.exception()
            if error is None:
                outcomes[i] = future.result()
            else:  # the writer process died or raised: that series failed, the others go on
                p = prepared[i]
                outcomes[i] = Outcome(p.spec.name, p.spec.markers, p.spec.tilts, STATUS_FAILED, EXIT_FAILED, seconds=p.read_seconds,
                                      detail=f"writing the outputs failed: {type(error).__name__}: {error}")
            # tomograms are made here, on this process's device, while the writers draw on
            outcomes[i] = reconstruct_series(prepared[i], outcomes[i], options)
            report(outcomes[i])
    return outcomes


def reconstruct_series(p: Prepared, outcome: Outcome, options: BatchOptions) -> Outcome:
    """With ``options.reconstruct``, the tomogram of a series that converged, from its raw stack
    and the ``.json`` record just written (as ``lmalign reconstruct --alignment`` does)."""
    if options.reconstruct is None or outcome.status != STATUS_OK:
        return outcome
    from .reconstruct import read_alignment_json, reconstruct_to_file

    out = OutputSet(p.out_dir, p.prefix)
    record, tomogram = out.final_paths((".json", TOMOGRAM))
    start = time.perf_counter()
    try:
        reconstruct_to_file(p.stack, read_alignment_json(record), tomogram, thickness=options.reconstruct, binning=options.binning,
                            filter=options.filter, quiet=True)
    except (InputError, UsageError, ValueError, OSError) as e:
        text = _reason(e)
        return replace(outcome, status=STATUS_FAILED, exit_code=EXIT_FAILED, seconds=outcome.seconds + time.perf_counter() - start,
                       detail=f"aligned, but the reconstruction failed: {text}")
    return replace(outcome, outputs=[*outcome.outputs, tomogram], seconds=outcome.seconds + time.perf_counter() - start)


def fit_robust(p: Prepared, result, options: BatchOptions):
    """With ``options.robust``, the reweighted fit of a series (as ``lmalign align --robust``)
    started from its batched least-squares answer: ``(result, RobustResult)``; else, or for a
    series without a usable answer, ``(result, None)``. An error in the reweighting is that
    series' outcome."""
    if options.robust is None or not isinstance(result, AlignmentResult) or result.status.startswith("failed"):
        return result, None
    try:
        robust = align_robust(p.observations, loss=options.robust, group_size=options.robust_group_size, initial=result,
                              model=options.model, rotation_deg=p.inputs.rotation_deg, modes=options.modes,
                              config=LMConfig(max_iterations=options.max_iterations), dtype=options.dtype)
    except Exception as e:  # noqa: BLE001 - reported for this series
        return e, None
    return robust.result, robust


def series_errors(result, options: BatchOptions):
    """Standard errors of a converged series (``Uncertainty``), as ``lmalign align`` reports them;
    None without ``options.errors``, for a series that did not converge, or if they cannot be
    computed (the outputs are then written without them)."""
    if not options.errors or not isinstance(result, AlignmentResult) or not result.converged:
        return None
    try:
        return uncertainty(result)
    except Exception:  # noqa: BLE001 - the alignment stands without its error bars
        return None


def write_outcome(p: Prepared, result, options: BatchOptions, errors=None, robust=None, solve_seconds: float | None = None) -> Outcome:
    """Write one series' outputs (or report why it has none) and say how it went.
    ``solve_seconds``: time spent fitting it (default: its stages' seconds)."""
    start = time.perf_counter()
    spec = p.spec
    if isinstance(result, Exception):
        bad = isinstance(result, ValueError)  # the engine's checks of the problem
        return Outcome(spec.name, spec.markers, spec.tilts, STATUS_BAD if bad else STATUS_FAILED, EXIT_BAD_INPUT if bad else EXIT_FAILED,
                       seconds=p.read_seconds, detail=str(result) if bad else f"{type(result).__name__}: {result}")
    try:
        written = _write(p, result, options, errors, robust)
    except OSError as e:
        return Outcome(spec.name, spec.markers, spec.tilts, STATUS_FAILED, EXIT_FAILED, seconds=p.read_seconds,
                       detail=f"cannot write the outputs: {e.filename or ''} {e.strerror or e}".strip())
    solve = sum(st.seconds for st in result.stages) if solve_seconds is None else solve_seconds
    return _outcome(p, result, p.read_seconds + solve + time.perf_counter() - start, written)


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
            sys.stderr.write(f"\r\033[Klmalign: {self.done}/{len(self.names)} series done; stages finished: {stages}; {time.perf_counter() - self.start:.0f} s")
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
            _note(f"[{self.done:>{width}}/{len(self.names)}] {outcome.series}: {outcome.status}{why}{rms} ({outcome.seconds:.2f} s)")
        self._status_line()

    def close(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _remark(o: Outcome) -> str:
    """What to say of a series beyond its status: why it failed, or that its outputs were kept."""
    return o.detail if o.exit_code != EXIT_OK or o.detail == RESUMED else ""


def summary_table(outcomes: list[Outcome]) -> str:
    """The summary as an aligned text table."""
    width = max([6, *(len(o.series) for o in outcomes)])
    lines = [f"{'series':<{width}}  views  markers  points   rms px  mean px  status     time s  detail"]
    for o in outcomes:
        lines.append(
            f"{o.series:<{width}}  {_fmt(o.views, 'd'):>5}  {_fmt(o.markers_fitted, 'd'):>7}  {_fmt(o.points, 'd'):>6}"
            f"  {_fmt(o.rms_residual_px, '.4f'):>7}  {_fmt(o.mean_residual_px, '.4f'):>7}  {o.status:<9}  {o.seconds:6.2f}"
            f"  {_remark(o)}"
        )
    counts = {k: sum(o.status == k for o in outcomes) for k in (STATUS_OK, STATUS_FAILED, STATUS_BAD)}
    lines.append(f"{len(outcomes)} series: {counts[STATUS_OK]} converged, {counts[STATUS_FAILED]} failed, {counts[STATUS_BAD]} bad input")
    return "\n".join(lines) + "\n"


TSV_COLUMNS = ("series", "markers", "tilts", "views", "markers_fitted", "points", "rms_residual_px", "mean_residual_px", "status", "exit_code", "seconds", "detail")


def summary_tsv(outcomes: list[Outcome]) -> str:
    """The summary as tab-separated values, one row per series (empty cells where unknown)."""
    def cell(v):
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)).replace("\t", " ").replace("\n", " ")

    rows = ["\t".join(TSV_COLUMNS)] + ["\t".join(cell(getattr(o, c)) for c in TSV_COLUMNS) for o in outcomes]
    return "\n".join(rows) + "\n"


def batch_exit_code(outcomes: list[Outcome]) -> int:
    """2 if any input was bad, else 1 if any alignment failed, else 0."""
    codes = {o.exit_code for o in outcomes}
    return EXIT_BAD_INPUT if EXIT_BAD_INPUT in codes else EXIT_FAILED if EXIT_FAILED in codes else EXIT_OK


# =========================================================================== the command


def _groups(prepared: list[Prepared], size: int) -> list[list[Prepared]]:
    """Groups of at most ``size`` series, similar shapes together (fewer buckets per worker)."""
    order = sorted(prepared, key=lambda p: (p.observations.n_views, p.observations.n_markers))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _run_processes(groups, options, jobs, on_outcome):
    """Each group in one of ``jobs`` local worker processes (spawned: JAX does not survive fork)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(align_and_write, g, options): g for g in groups}
        for future in concurrent.futures.as_completed(futures):
            _deliver(futures[future], future.exception(), None if future.exception() else future.result(), on_outcome)


def _deliver(group, error, outcomes, on_outcome):
    """Outcomes of a finished group, or one failed outcome per series if the group's task failed."""
    if error is not None:
        outcomes = [Outcome(p.spec.name, p.spec.markers, p.spec.tilts, STATUS_FAILED, EXIT_FAILED, seconds=p.read_seconds,
                            detail=f"worker failed: {type(error).__name__}: {error}") for p in group]
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

    if jax.config.jax_num_cpu_devices != -1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
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


def _align_all(prepared: list[Prepared], args, options: BatchOptions, shown: BatchProgress, on_outcome) -> None:
    """Align and write every prepared series: on a Dask cluster, in local processes, or here."""
    where = f"on the Dask cluster at {args.scheduler}" if args.scheduler else f"in {args.jobs} processes" if args.jobs > 1 else "in this process"
    _note(f"aligning {len(prepared)} series {where}, model {options.model}, stages {', '.join(options.stages)} ...")
    if args.scheduler:
        from ..batch.distributed import map_groups

        groups = _groups(prepared, args.group_size)
        map_groups(align_and_write, groups, options, scheduler=args.scheduler,
                   on_result=lambda i, value: _deliver(groups[i], value if isinstance(value, BaseException) else None,
                                                       None if isinstance(value, BaseException) else value, on_outcome))
    elif args.jobs > 1:
        _run_processes(_groups(prepared, math.ceil(len(prepared) / args.jobs)), options, args.jobs, on_outcome)
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
    if args.max_iterations < 1 or args.group_size < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("--max-iterations, --group-size and --batch-size must be at least 1")
    if args.writers is not None and args.writers < 1:
        raise UsageError(f"--writers must be at least 1, got {args.writers}")
    if args.reconstruct is not None and not (math.isfinite(args.reconstruct) and args.reconstruct > 0):
        raise UsageError(f"--reconstruct needs the tomogram thickness, a positive number of (unbinned) pixels, got {args.reconstruct:g}")
    if args.bin < 1:
        raise UsageError(f"--bin must be at least 1, got {args.bin}")
    if args.robust_group_size < 1:
        raise UsageError(f"--robust-group-size must be at least 1, got {args.robust_group_size}")
    if args.bucket is not None and min(args.bucket) < 1:
        raise UsageError(f"--bucket needs two positive integers, got {args.bucket[0]} {args.bucket[1]}")
    if args.image_size is not None and min(args.image_size) <= 0:
        raise UsageError(f"--image-size must be two positive numbers, got {args.image_size[0]:g} {args.image_size[1]:g}")
    model = get_model(args.model)
    modes = parse_modes(args, model.name)
    skip = ({"initial"} if args.no_initial_stage else set()) | ({"joint"} if args.no_joint_stage else set())
    from ._main import enable_compilation_cache

    cache = enable_compilation_cache() is not None
    options = BatchOptions(
        model=model.name, modes=modes, stages=tuple(s for s in ("initial", "main", "tilt", "joint") if s not in skip),
        dtype="float32" if args.float32 else "float64", max_iterations=args.max_iterations, worst=args.worst,
        figure=not args.no_figure, errors=not args.no_errors, robust=args.robust, robust_group_size=args.robust_group_size,
        bucket=tuple(args.bucket) if args.bucket else DEFAULT_BUCKET, batch_size=args.batch_size,
        command=("lmalign", *getattr(args, "argv", ["batch"])), compilation_cache=cache,
        reconstruct=args.reconstruct, binning=args.bin, filter=args.filter,
    )
    source = args.series
    if os.path.isdir(source):
        specs = scan_folder(source)
    elif os.path.isfile(source):
        specs = read_list(source)
    else:
        raise InputError(source, None, "file or folder not found")
    summary = OutputSet(args.out_dir, SUMMARY)
    _check_outputs(summary, SUMMARY_OUTPUTS, ())  # a folder that cannot be written stops the batch before any work
    _check_summary(summary, source)

    _note(f"{len(specs)} series from {source}; reading ...")
    outcomes: dict[str, Outcome] = {}
    prepared: list[Prepared] = []
    shown = BatchProgress([s.name for s in specs], quiet=args.quiet)
    for spec in specs:
        item = prepare(spec, args)
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
        print(f"lmalign: interrupted; {kept} of {len(specs)} series have their outputs written, no summary; the same command "
              "with --resume keeps them and aligns the rest", file=sys.stderr)
        return 130
    shown.close()

    ordered = [outcomes[s.name] for s in specs]
    code = batch_exit_code(ordered)
    table = summary_table(ordered)
    record = {
        "software": _software(),
        "source": source,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items() if k != "compilation_cache"},
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
complete. Exit status: 0 all converged, 1 some alignments failed, 2 some inputs were bad (2 wins).
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


def _add_batch(sub):
    p = sub.add_parser("batch", help="align many tilt series with batched solves (locally or on a Dask cluster)", description=BATCH_HELP,
                       epilog=BATCH_EXAMPLE, formatter_class=_Formatter)
    p.add_argument("series", metavar="LIST_OR_DIR", help=f"list file ('{LINE_FORMAT}' per line) or folder of marker + tilt files")
    p.add_argument("--out-dir", default=".", metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--layout", choices=("folders", "prefix"), default="folders", help="outputs in DIR/NAME/NAME.* (folders) or DIR/NAME.* (prefix)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="local worker processes")
    p.add_argument("--writers", type=int, metavar="N",
                   help="processes drawing the report figures and writing the outputs when aligning in this process (default: one per core, at most one per 4 series)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://head:8786 (see above)")
    p.add_argument("--group-size", type=int, default=32, metavar="N", help="series per Dask task")
    p.add_argument("--image-size", nargs=2, type=float, metavar=("NX", "NY"), help="image size for series whose files do not record it")
    p.add_argument("--model", choices=sorted(MODELS), default="jou", help="projection model")
    add_solver_options(p)
    p.add_argument("--bucket", nargs=2, type=int, metavar=("VIEWS", "MARKERS"), help=f"series whose view and marker counts round up to the same multiples of these share one compiled kernel, padded to the largest of them (default {DEFAULT_BUCKET[0]} {DEFAULT_BUCKET[1]})")
    p.add_argument("--batch-size", type=int, metavar="N", help="series per batched solve and device (default 32)")
    p.add_argument("--worst", type=int, default=10, metavar="N", help="number of largest-residual points to list in each .json")
    p.add_argument("--no-figure", action="store_true", help="do not render the .png reports (the slowest output)")
    p.add_argument("--no-errors", action="store_true", help="skip the standard errors and leave-one-out residuals (about 5 ms a series)")
    add_robust_options(p)
    p.add_argument("--reconstruct", type=float, metavar="NZ",
                   help="also reconstruct each aligned series into NAME.rec.mrc, NZ unbinned pixels thick, from its raw stack "
                        "(the list's STACK column, else NAME.st or NAME.mrc beside the markers)")
    p.add_argument("--bin", type=int, default=1, metavar="B", help="with --reconstruct: bin the stack B x B first")
    p.add_argument("--filter", choices=FILTER_CHOICES, default="ramp", help="with --reconstruct: ramp filter, optionally apodised")
    p.add_argument("--resume", action="store_true",
                   help="keep the outputs of series an earlier run already aligned the same way (same inputs and options, "
                        "converged, every output there; with --reconstruct the same tomogram settings) and align only the rest")
    p.add_argument("--quiet", "-q", action="store_true", help="report only the series that did not converge while running")
    p.set_defaults(run=run_batch)
