"""``lmalign align``: read the marker and tilt files, select views and markers, align, report, write."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .. import io
from ..core.align import align as align_observations
from ..io.errors import InputError
from ..io.markerset import contour_numbers
from ..io.mrc import read_stack_header
from ..io.pytom import is_pytom_header
from ..models import MODELS, get_model
from ..observations import Observations
from ..io.outputs import OutputSet
from ..report import build_record, expand_to_file_views, format_summary, record_to_json, render_figure
from ..analysis.robust import LOSSES, align_robust
from ..solve import LMConfig
from ..analysis.uncertainty import uncertainty
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    MIN_MARKERS,
    UsageError,
    _check_outputs,
    _Formatter,
    _note,
    _Progress,
    _software,
    _warn,
)

MODE_RE = re.compile(r"free|fixed|shared|group:[1-9][0-9]*")
TILT_EXTENSIONS = (".tlt", ".rawtlt", ".mdoc")
MARKER_EXTENSIONS = (*io.MARKER_EXTENSIONS, ".resid")
ALIGN_OUTPUTS = (".xf", ".tlt", ".resid", ".xyz", ".json", ".png")
REPORT_OUTPUTS = (".json", ".png")


# =========================================================================== inputs


@dataclass
class Inputs:
    """What the input files say, before any view or marker is dropped (views in file order)."""

    markers: io.MarkerSet
    markers_path: str
    markers_format: str
    tilts_deg: np.ndarray
    tilts_path: str
    image_size: tuple[float, float]
    image_size_source: str
    rotation_deg: float | None
    rotation_source: str
    pixel_size: float | None


def _read_tilt_file(path: str):
    """(tilts (n,), mdoc or None) from a .tlt/.rawtlt or SerialEM .mdoc file."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".mdoc":
        mdoc = io.read_mdoc(path)
        if mdoc.z_values.size and not np.array_equal(mdoc.z_values, np.arange(mdoc.z_values.size)):
            _warn(f"{path}: ZValues are not 0..{mdoc.z_values.size - 1}; views are taken in ZValue order")
        return mdoc.tilts_deg, mdoc
    if ext in (".tlt", ".rawtlt"):
        return io.read_tilts(path), None
    got = f"extension {ext!r}" if ext else "no extension"
    raise InputError(path, None, f"unsupported tilt-angle file ({got}); supported: {', '.join(TILT_EXTENSIONS)}")


def _read_marker_file(path: str, tilts_path: str | None, n_views: int | None):
    """(MarkerSet, format name, tilts from the marker file or None)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in MARKER_EXTENSIONS:
        got = f"extension {ext!r}" if ext else "no extension"
        raise InputError(path, None, f"unsupported marker file ({got}); supported: {', '.join(MARKER_EXTENSIONS)}")
    if ext == ".resid":
        table = io.read_resid(path)
        if n_views is not None and table.view.size and table.view.max() >= n_views:
            k = int(np.argmax(table.view >= n_views))
            raise InputError(path, k + 2, f"view index {int(table.view[k])} is beyond the {n_views} views of the tilt file {tilts_path}")
        return io.resid_to_markers(table, None, n_views=n_views), "IMOD residual file (measured points)", None
    if ext == ".txt" and _is_pytom(path):
        markers, tilts = io.read_pytom_markers(path, n_views=n_views)
        return markers, "PyTom marker file", tilts
    fmt = {".csv": "CSV marker,view,x,y", ".fid": "IMOD model", ".mod": "IMOD model"}.get(ext, "IMOD model2point text")
    return io.read_markers(path, n_views=n_views), fmt, None


def _is_pytom(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [f.readline() for _ in range(5)]
    except OSError:
        return False  # the reader reports it
    return is_pytom_header(head)


def read_inputs(args) -> Inputs:
    """Read the marker, tilt and (optional) stack files named by ``args`` and check them together."""
    for path in (args.markers, args.tilts):
        if path is not None and not os.path.isfile(path):
            raise InputError(path, None, "is a directory, not a file" if os.path.isdir(path) else "file not found")
    mdoc = None
    if args.tilts is None:
        if os.path.splitext(args.markers)[1].lower() != ".txt" or not _is_pytom(args.markers):
            raise UsageError("--tilts FILE is required (.tlt, .rawtlt or .mdoc); only PyTom marker files carry their tilt angles")
        markers, fmt, tilts = _read_marker_file(args.markers, None, None)
        tilts_path = args.markers
    else:
        tilts, mdoc = _read_tilt_file(args.tilts)
        tilts_path = args.tilts
        markers, fmt, file_tilts = _read_marker_file(args.markers, args.tilts, tilts.size)
        if file_tilts is not None and not np.allclose(file_tilts, tilts[: file_tilts.size], atol=0.05):
            raise InputError(args.tilts, None, f"tilt angles differ from those in the PyTom marker file {args.markers} (PyTom orders views by increasing tilt)")

    stack_size, stack_pix = None, None
    if args.stack is not None:
        n_sections, ny, nx, stack_pix = read_stack_header(args.stack)
        if n_sections != tilts.size:
            raise InputError(args.stack, None, f"the stack has {n_sections} sections but {tilts_path} has {tilts.size} tilt angles")
        stack_size = (nx, ny)
    if args.image_size is not None:
        size, source = tuple(args.image_size), "--image-size"
        if min(size) <= 0:
            raise UsageError(f"--image-size must be two positive numbers, got {args.image_size[0]:g} {args.image_size[1]:g}")
    elif markers.image_size is not None:
        size, source = markers.image_size, f"{args.markers} header"
    elif stack_size is not None:
        size, source = stack_size, f"{args.stack} header"
    elif mdoc is not None and mdoc.image_size is not None:
        size, source = mdoc.image_size, f"{args.tilts} ImageSize"
    else:
        advice = getattr(args, "size_advice", "give --image-size NX NY or --stack STACK.mrc")
        raise InputError(args.markers, None, f"image size unknown (the marker file does not record it): {advice}")

    if args.rotation is not None:
        rotation, rot_source = float(args.rotation), "--rotation"
    elif mdoc is not None and mdoc.tilt_axis_angle_deg is not None:
        rotation, rot_source = float(mdoc.tilt_axis_angle_deg), f"{args.tilts} tilt axis angle"
    else:
        rotation, rot_source = None, "estimated from the marker tracks"
    pixel = markers.pixel_size or stack_pix or (mdoc.pixel_size if mdoc else None)
    return Inputs(markers, args.markers, fmt, np.asarray(tilts, dtype=np.float64), tilts_path, (float(size[0]), float(size[1])), source, rotation, rot_source, pixel)


def parse_view_list(text: str, n_views: int, where: str = "--exclude") -> list[int]:
    """IMOD-style 1-based list ``"1-3,40"`` -> sorted 0-based view indices; ``where`` starts
    an error message (the option, or the list line that gave it)."""
    views = set()
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m:
            raise UsageError(f"{where}: {part!r} is not a view number or range (use e.g. 1-3,40; views count from 1)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise UsageError(f"{where}: range {part!r} runs backwards")
        if lo < 1 or hi > n_views:
            raise UsageError(f"{where}: view {lo if lo < 1 else hi} is outside 1..{n_views} (views count from 1, as in IMOD)")
        views.update(range(lo - 1, hi))
    return sorted(views)


@dataclass
class Selection:
    """Which file views and markers are fitted, in fitting order."""

    view_index: np.ndarray  # (n_fit,) file view of each fitted view, fitting order
    marker_index: np.ndarray  # (m_fit,) column of each fitted marker in the MarkerSet
    excluded_by_user: list[int]
    excluded_no_markers: list[int]
    dropped_markers: list[int]  # marker ids
    sorted_by_tilt: bool


def select(inputs: Inputs, exclude: list[int]) -> Selection:
    """Apply --exclude, drop markers seen in < 2 views and views left without markers, order views."""
    tilts = inputs.tilts_deg
    mask = inputs.markers.mask
    keep_view = np.ones(tilts.size, dtype=bool)
    keep_view[exclude] = False
    keep_marker = np.ones(mask.shape[1], dtype=bool)
    no_markers: list[int] = []
    while True:
        seen = mask[keep_view][:, keep_marker]
        few = np.flatnonzero(keep_marker)[seen.sum(axis=0) < 2]
        keep_marker[few] = False
        empty = [v for v in np.flatnonzero(keep_view) if not mask[v, keep_marker].any()]
        if not empty and few.size == 0:
            break
        keep_view[empty] = False
        no_markers += empty
    ids = inputs.markers.marker_ids
    dropped = [ids[i] for i in np.flatnonzero(~keep_marker)]
    if keep_marker.sum() < MIN_MARKERS or keep_view.sum() < 3:
        n_m, n_v = int(keep_marker.sum()), int(keep_view.sum())
        raise InputError(
            inputs.markers_path, None,
            f"only {n_m} marker(s) are seen in 2 or more of {n_v} usable view(s); alignment needs at least {MIN_MARKERS} markers and 3 views"
            + (f" (dropped marker ids {', '.join(map(str, dropped))})" if dropped else ""),
        )
    increasing, decreasing = np.all(np.diff(tilts) >= 0), np.all(np.diff(tilts) <= 0)
    views = np.flatnonzero(keep_view)
    sorted_by_tilt = not (increasing or decreasing)
    if sorted_by_tilt:
        views = views[np.argsort(tilts[views], kind="stable")]
    return Selection(views, np.flatnonzero(keep_marker), list(exclude), sorted(int(v) for v in no_markers), dropped, bool(sorted_by_tilt))


def report_selection(inputs: Inputs, sel: Selection) -> None:
    """Warnings about what ``select`` dropped or re-ordered."""
    if sel.dropped_markers:
        _warn(f"{inputs.markers_path}: dropped {len(sel.dropped_markers)} marker(s) seen in fewer than 2 fitted views (ids {', '.join(map(str, sel.dropped_markers))})")
    if sel.excluded_no_markers:
        nums = ", ".join(str(v + 1) for v in sel.excluded_no_markers)
        _warn(f"view(s) {nums} (1-based) have no markers and are excluded; their transforms are interpolated from neighbouring views")
    if sel.sorted_by_tilt:
        step = np.diff(inputs.tilts_deg)
        k = int(np.argmax(step < 0 if inputs.tilts_deg[-1] >= inputs.tilts_deg[0] else step > 0))
        where = f"{inputs.tilts_path}:{k + 2}" if inputs.tilts_path.lower().endswith(("tlt", "rawtlt")) else inputs.tilts_path
        _warn(f"{where}: tilt angles are not in order; views are fitted in order of tilt and written back in file order")


def parse_modes(args, model_name: str) -> dict:
    """Parameter modes from --rotation-mode/--tilt-mode/--scale-mode and --mode NAME=MODE."""
    model = get_model(model_name)
    given: dict[str, tuple[str, str]] = {}

    def add(name, mode, option):
        if name not in model.parameters:
            raise UsageError(f"{option}: model {model.name!r} has no parameter {name!r}; its parameters are {', '.join(model.parameters)}")
        if not MODE_RE.fullmatch(mode):
            raise UsageError(f"{option}: unknown mode {mode!r} for {name}; use free, fixed, shared or group:N")
        if name in given and given[name][0] != mode:
            raise UsageError(f"{option}: {name} is given two modes ({given[name][0]} by {given[name][1]}, {mode})")
        given[name] = (mode, option)

    for name in ("rotation", "tilt", "scale"):
        mode = getattr(args, f"{name}_mode")
        if mode is not None:
            add(name, mode, f"--{name}-mode")
    for item in args.mode or []:
        name, sep, mode = item.partition("=")
        if not sep:
            raise UsageError(f"--mode: expected NAME=MODE, got {item!r}")
        add(name.strip(), mode.strip(), "--mode")
    return {name: mode for name, (mode, _) in given.items()}



def observations_for_fit(inputs: Inputs, sel: Selection):
    """The selected views and markers as ``Observations`` (fitting order), and the markers' ids."""
    ms = inputs.markers
    xy = ms.xy[sel.view_index][:, sel.marker_index]
    mask = ms.mask[sel.view_index][:, sel.marker_index]
    nx, ny = inputs.image_size
    pts = xy[mask]
    outside = int(np.sum((pts[:, 0] < 0) | (pts[:, 0] > nx) | (pts[:, 1] < 0) | (pts[:, 1] > ny)))
    if outside:
        _warn(f"{outside} of {pts.shape[0]} points lie outside the {nx:g} x {ny:g} image; check the image size ({inputs.image_size_source})")
    try:
        obs = Observations(xy, mask, inputs.tilts_deg[sel.view_index], inputs.image_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return obs, [ms.marker_ids[i] for i in sel.marker_index]


def _input_record(args, inputs: Inputs, sel: Selection, obs) -> dict:
    return {
        "markers": args.markers,
        "markers_format": inputs.markers_format,
        "tilts": inputs.tilts_path,
        "stack": args.stack,
        "image_size": list(inputs.image_size),
        "image_size_source": inputs.image_size_source,
        "pixel_size_A": inputs.pixel_size,
        "n_views": int(inputs.tilts_deg.size),
        "n_views_fitted": obs.n_views,
        "excluded_views": sorted(v + 1 for v in set(sel.excluded_by_user) | set(sel.excluded_no_markers)),
        "excluded_by_user": [v + 1 for v in sel.excluded_by_user],
        "excluded_no_markers": [v + 1 for v in sel.excluded_no_markers],
        "n_markers_in_file": inputs.markers.n_markers,
        "n_markers": obs.n_markers,
        "dropped_markers": sel.dropped_markers,
        "n_points_in_file": inputs.markers.n_observations,
        "tilts_sorted_for_fit": sel.sorted_by_tilt,
    }


def _stage_alignment_files(out: OutputSet, result, fv, marker_ids, inputs: Inputs) -> None:
    """Stage the .xf, .tlt, .resid and .xyz of a converged alignment (file view order)."""
    io.write_xf(out.stage(".xf"), fv.xf[:, :, :2], fv.xf[:, :, 2])
    io.write_tlt(out.stage(".tlt"), fv.tilts_deg)
    m_idx, v_idx = np.nonzero(fv.mask.T)  # grouped by marker, views increasing (IMOD's order)
    io.write_resid(out.stage(".resid"), fv.xy[v_idx, m_idx], v_idx, fv.residuals[v_idx, m_idx])
    nx, ny = inputs.image_size
    xyz = result.markers + np.array([nx / 2.0, ny / 2.0, 0.0])  # fid.xyz: x, y in image pixels
    ids = np.asarray(contour_numbers(tuple(marker_ids)))
    io.write_fid_xyz(out.stage(".xyz"), xyz, ids, inputs.pixel_size, (int(round(nx)), int(round(ny))))


def _stage_line(st) -> None:
    """One line per finished stage, on stderr while the alignment runs."""
    if sys.stderr.isatty():
        sys.stderr.write("\r")  # over the running elapsed-time line
    _note(f"  stage {st.name:<8} {st.iterations:4d} iterations {st.seconds:7.2f} s  rms {st.rms_residual_px:.4f} px  {st.status}")


def run_align(args, *, truth=None) -> int:
    """``lmalign align``: read, select, align, report, write. ``truth``: a SyntheticSeries (demo)."""
    model = get_model(args.model)
    modes = parse_modes(args, model.name)
    if args.max_iterations < 1:
        raise UsageError(f"--max-iterations must be at least 1, got {args.max_iterations}")
    skip = {"initial"} if args.no_initial_stage else set()
    skip |= {"joint"} if args.no_joint_stage else set()
    stages = tuple(s for s in ("initial", "main", "tilt", "joint") if s not in skip)
    dtype = "float32" if args.float32 else "float64"
    prefix = args.prefix or os.path.splitext(os.path.basename(args.markers))[0]
    out = OutputSet(args.out_dir, prefix)
    _check_outputs(out, ALIGN_OUTPUTS, (args.markers, args.tilts, args.stack))

    inputs = read_inputs(args)
    sel = select(inputs, parse_view_list(args.exclude, inputs.tilts_deg.size) if args.exclude else [])
    report_selection(inputs, sel)
    obs, marker_ids = observations_for_fit(inputs, sel)

    text = f"lmalign: aligning {obs.n_views} views x {obs.n_markers} markers ({obs.n_observed} points), model {model.name}, stages {', '.join(stages)} ..."
    robust = None
    with _Progress(text):
        try:
            kwargs = dict(model=model, rotation_deg=inputs.rotation_deg, modes=modes, stages=stages,
                          config=LMConfig(max_iterations=args.max_iterations), dtype=dtype)
            if args.robust:
                robust = align_robust(obs, loss=args.robust, group_size=args.robust_group_size, **kwargs)
                result = robust.result
            else:
                result = align_observations(obs, progress=_stage_line, **kwargs)
        except ValueError as e:  # the engine's checks of the problem (modes, sizes)
            raise UsageError(str(e)) from None
        errors = uncertainty(result) if (result.converged and not args.no_errors) else None
    if robust is not None:
        for st in result.stages:
            _stage_line(st)

    fv = expand_to_file_views(result, sel.view_index, inputs.tilts_deg)
    converged = result.converged
    options = {
        "model": model.name,
        "modes": {p: mode for p, mode in zip(model.parameters, model.default_modes, strict=True)} | modes,
        "rotation_deg": inputs.rotation_deg if inputs.rotation_deg is not None else result.rotation_estimated_deg,
        "rotation_source": inputs.rotation_source,
        "stages": list(stages),
        "dtype": dtype,
        "max_iterations": args.max_iterations,
        "command": ["lmalign", *getattr(args, "argv", [])],
    }
    suffixes = tuple(q for q in (ALIGN_OUTPUTS if converged else REPORT_OUTPUTS) if not (args.no_figure and q == ".png"))
    extra = {"outputs": [os.path.basename(p) for p in out.final_paths(suffixes)], "exit_code": EXIT_OK if converged else EXIT_FAILED}
    if robust is not None:
        options["robust"] = {"loss": args.robust, "group_size": args.robust_group_size}
        extra["robust"] = robust.to_dict()
    if truth is not None:
        extra["truth"] = compare_with_truth(result, truth, sel, marker_ids)
        if not truth_ok(extra["truth"]):
            extra["exit_code"] = EXIT_FAILED
    record = build_record(result, fv, marker_ids=marker_ids, inputs=_input_record(args, inputs, sel, obs), options=options,
                          n_worst=args.worst, software=_software(), extra=extra, errors=errors)

    with out:
        if converged:
            _stage_alignment_files(out, result, fv, marker_ids, inputs)
        out.write_text(".json", record_to_json(record))
        if not args.no_figure:
            title = f"{prefix}: {os.path.basename(args.markers)}, {os.path.basename(inputs.tilts_path)}"
            out.write_bytes(".png", render_figure(result, fv, record, title=title, errors=errors))
        written = out.commit()

    print(format_summary(record, per_view=not args.quiet), end="")
    if robust is not None:
        print(robust.to_text())
    if errors is not None:
        tilt_se = errors.parameter_se("tilt")
        print(f" Standard errors (1 sigma): tilt median {np.median(tilt_se):.3f} deg, rotation median "
              f"{np.median(errors.parameter_se('rotation')):.3f} deg, marker z median {np.median(errors.markers_se[:, 2]):.2f} px;"
              f" leave-one-out RMS {errors.loo_rms_px:.3f} px")
    print(" Wrote " + ", ".join(written))
    stale = [p for p in out.final_paths(q for q in ALIGN_OUTPUTS if q not in suffixes) if os.path.exists(p)]
    if stale:
        _warn(f"{', '.join(stale)} are from an earlier run and were not updated")
    if not converged:
        report = out.path(".json") + ("" if args.no_figure else f" and {out.path('.png')}")
        print(f"lmalign: error: alignment did not converge ({result.status}); the report is in {report}, no .xf/.tlt written", file=sys.stderr)
    elif extra["exit_code"] != EXIT_OK:
        print("lmalign: error: the alignment does not match the known truth (see above)", file=sys.stderr)
    return extra["exit_code"]


# =========================================================================== truth (demo)


def compare_with_truth(result, truth, sel: Selection, marker_ids) -> dict:
    """Gauge-free comparison of a solved alignment with the series that generated it."""
    model = get_model(truth.model)
    obs = result.observations
    true_views = truth.views[sel.view_index]
    true_markers = truth.markers[np.asarray(marker_ids) - 1]  # ids are 1..n in the demo files
    with jax.enable_x64(True):
        project = jax.vmap(jax.vmap(model.project, in_axes=(None, 0)), in_axes=(0, None))
        clean = np.asarray(project(jnp.asarray(true_views), jnp.asarray(true_markers)), dtype=np.float64) + obs.center
    fitted = obs.xy + result.residuals  # the solved model's projections
    err = (fitted - clean)[obs.mask]
    model_error = float(np.sqrt(np.mean(err**2)))
    dt = result.tilts_deg - np.degrees(true_views[:, model.index("tilt")])
    tilt_error = float(np.sqrt(np.mean((dt - dt.mean()) ** 2)))
    dr = result.rotation_deg - np.degrees(true_views[:, model.index("rotation")])
    floor = truth.noise_px * result.noise_floor_factor
    lines = [
        f"solved projections vs noise-free truth: {model_error:.3f} px RMS per coordinate (noise {truth.noise_px:.2f} px)",
        f"RMS residual {result.rms_residual_px:.3f} px vs expected noise floor {floor:.3f} px",
        f"tilt angles: {tilt_error:.3f} deg RMS error (after the common offset of {dt.mean():+.3f} deg, a gauge freedom)",
        f"tilt-axis rotation: mean error {dr.mean():+.3f} deg, RMS {np.sqrt(np.mean(dr**2)):.3f} deg",
    ]
    return {
        "noise_px": truth.noise_px,
        "model_error_px": model_error,
        "noise_floor_px": floor,
        "tilt_rms_error_deg": tilt_error,
        "tilt_offset_deg": float(dt.mean()),
        "rotation_mean_error_deg": float(dr.mean()),
        "rotation_rms_error_deg": float(np.sqrt(np.mean(dr**2))),
        "lines": lines,
    }


def truth_ok(t: dict) -> bool:
    """The demo's pass mark: projections within the noise, rotation within 0.5 deg, RMS near the floor."""
    return t["model_error_px"] < t["noise_px"] and abs(t["rotation_mean_error_deg"]) < 0.5 and t["tilt_rms_error_deg"] < 0.5


# =========================================================================== parser


ALIGN_HELP = """\
Align a tilt series on its fiducial markers and write IMOD-compatible files.

Markers: IMOD model (.fid/.mod), model2point text (.pt/.txt: 'contour x y z' or
'object contour x y z', z = 0-based view), CSV (.csv: header marker,view,x,y; view 0-based),
PyTom marker file (.txt), or the measured points of an IMOD residual file (.resid).
Tilts: .tlt/.rawtlt (line k = view k) or SerialEM .mdoc (TiltAngle per ZValue; its tilt axis
angle is used as the starting --rotation). Image size: --image-size, else the .fid header,
else the --stack MRC header, else the .mdoc ImageSize.

Writes <prefix>.xf (raw -> aligned, 4f12.7,2f12.3), <prefix>.tlt (solved tilts), <prefix>.resid
(X Y view dx dy, dx,dy = projected - measured), <prefix>.xyz (IMOD fid.xyz), <prefix>.json (full
record) and <prefix>.png (report figure, unless --no-figure); all or none. The .xf/.tlt have
one line per view of the input, excluded views included: an excluded view gets its nominal tilt
and a transform interpolated (rotation, stretch, shift, linearly in tilt) from its nearest
fitted neighbours.
If the solve does not converge, only the .json and .png are written and the exit status is 1.

Exit status: 0 success, 1 alignment failed, 2 bad input.
"""

ALIGN_EXAMPLE = """\
examples:
  lmalign align BBa.fid --tilts BBa.rawtlt --rotation -12.5 --exclude 1,61 --out-dir align/
  lmalign align beads.csv --tilts TS_01.mdoc --stack TS_01.mrc --tilt-mode group:5
  lmalign align BBa.resid --tilts BBa.tlt --image-size 512 512 --model imod --mode xstretch=fixed
"""


def add_solver_options(p) -> None:
    """Stage, parameter-mode and precision options shared by align and batch."""
    p.add_argument("--no-initial-stage", action="store_true", help="skip the initial stage (markers' x, y held at the 0-degree view)")
    p.add_argument("--no-joint-stage", action="store_true", help="skip the final joint solve of all parameters")
    p.add_argument("--rotation-mode", metavar="MODE", help="free | shared | fixed | group:N (model default when omitted)")
    p.add_argument("--tilt-mode", metavar="MODE", help="free | shared | fixed | group:N")
    p.add_argument("--scale-mode", metavar="MODE", help="free | shared | fixed | group:N")
    p.add_argument("--mode", action="append", metavar="NAME=MODE", help="mode of any view parameter of the model, repeatable (e.g. xstretch=fixed, mag_x=group:4)")
    p.add_argument("--float32", action="store_true", help="solve in single precision (faster on GPUs)")
    p.add_argument("--max-iterations", type=int, default=200, metavar="N", help="Levenberg-Marquardt iteration cap per stage")


def add_robust_options(p) -> None:
    """The robust-fitting options shared by align and batch."""
    p.add_argument("--robust", choices=tuple(LOSSES), help="iteratively reweighted fit that down-weights mis-clicked points (IMOD's RobustFitting uses tukey)")
    p.add_argument("--robust-group-size", type=int, default=10, metavar="N", help="views per group for the robust residual scale (default 10)")


def _add_align(sub):
    p = sub.add_parser("align", help="align a tilt series on its fiducial markers", description=ALIGN_HELP, epilog=ALIGN_EXAMPLE, formatter_class=_Formatter)
    p.add_argument("markers", metavar="MARKERS", help="marker file (.fid, .mod, .csv, .pt, .txt, .resid)")
    p.add_argument("--tilts", metavar="FILE", help="tilt angles: .tlt/.rawtlt or SerialEM .mdoc (required unless MARKERS is a PyTom file)")
    p.add_argument("--image-size", nargs=2, type=float, metavar=("NX", "NY"), help="image size in pixels (overrides the .fid header and the stack)")
    p.add_argument("--stack", metavar="STACK.mrc", help="the raw tilt-series stack; only its header is read (image size, number of views)")
    p.add_argument("--rotation", type=float, metavar="DEG", help="tilt-axis angle in the raw images, degrees counter-clockwise from the y axis (IMOD's RotationAngle); estimated from the tracks (or the .mdoc) when omitted")
    p.add_argument("--model", choices=sorted(MODELS), default="jou", help="projection model")
    p.add_argument("--out-dir", default=".", metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--prefix", metavar="NAME", help="output file stem; default: the marker file's stem")
    p.add_argument("--exclude", metavar="LIST", help="views to leave out, 1-based like IMOD's ExcludeList, e.g. 1-3,40")
    add_solver_options(p)
    p.add_argument("--worst", type=int, default=10, metavar="N", help="number of largest-residual points to list")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-view table in the summary")
    add_robust_options(p)
    p.add_argument("--no-figure", action="store_true", help="do not render the .png report (the slowest output)")
    p.add_argument("--no-errors", action="store_true", help="skip the standard errors and leave-one-out residuals")
    p.set_defaults(run=run_align)

