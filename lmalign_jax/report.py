"""Reports of an alignment: the JSON record, the terminal summary, the PNG figure.

An :class:`~lmalign_jax.core.result.AlignmentResult` covers the views that were fitted, possibly
re-ordered by tilt. :func:`expand_to_file_views` maps it back onto every view of the input
files, in file order, with a transform for each excluded view interpolated from its neighbours
in tilt. :func:`build_record` turns that into one JSON-ready ``dict`` (the single source of the
numbers shown by :func:`format_summary` and written to ``<prefix>.json``); :func:`render_figure`
draws the PNG report.

Conventions: views are 0-based in the record (``"view"``) with IMOD's 1-based number beside
(``"view_number"``); angles in degrees; lengths in pixels; residual = projected - measured.
"""

from __future__ import annotations

import io as _io
import json
import math
from dataclasses import dataclass

import numpy as np

from .core.result import AlignmentResult

__all__ = [
    "FileViews",
    "expand_to_file_views",
    "interpolate_transforms",
    "aligned_model_xy",
    "build_record",
    "record_to_json",
    "format_summary",
    "render_figure",
]


# --------------------------------------------------------------------------- file-order views


@dataclass(frozen=True, eq=False)
class FileViews:
    """An alignment on every view of the input, in file order (n = all views, m = markers).

    Attributes:
        view_index: (n_fit,) file view of each view of the result (result row k = file view
            ``view_index[k]``).
        nominal_tilts_deg: (n,) the tilt file's angles.
        excluded: (n,) bool, views left out of the fit (by the user or for lack of markers).
        tilts_deg: (n,) solved tilt; the nominal tilt for an excluded view.
        parameters: name -> (n,) solved view parameters (degrees for angles, else model units),
            NaN for excluded views.
        xf: (n, 2, 3) IMOD transforms raw -> aligned, ``[A | D]`` about the image centre;
            interpolated for excluded views.
        xy: (n, m, 2) measured positions that were fitted, NaN elsewhere.
        mask: (n, m) bool, True where ``xy`` was fitted.
        residuals: (n, m, 2) projected - measured, NaN where not fitted.
    """

    view_index: np.ndarray
    nominal_tilts_deg: np.ndarray
    excluded: np.ndarray
    tilts_deg: np.ndarray
    parameters: dict
    xf: np.ndarray
    xy: np.ndarray
    mask: np.ndarray
    residuals: np.ndarray

    @property
    def n_views(self) -> int:
        return self.nominal_tilts_deg.size


def _polar(a: np.ndarray) -> tuple[float, np.ndarray]:
    """A = R(phi) P with P symmetric positive (polar decomposition): (phi radians, P (2, 2))."""
    u, s, vt = np.linalg.svd(a)
    if np.linalg.det(u @ vt) < 0:  # a reflection: keep R a rotation, P absorbs the sign
        u[:, -1] *= -1
        s[-1] *= -1
    r = u @ vt
    return math.atan2(r[1, 0], r[0, 0]), vt.T @ np.diag(s) @ vt


def interpolate_transforms(xf: np.ndarray, tilts_deg: np.ndarray, targets_deg: np.ndarray) -> np.ndarray:
    """Transforms at tilts ``targets_deg`` interpolated from known ones, linearly in tilt.

    xf: (k, 2, 3) known ``[A | D]`` at ``tilts_deg`` (k,); returns (t, 2, 3). Each ``A`` is split
    into a rotation and a symmetric stretch (``A = R(phi) P``); the rotation angle, the entries of
    ``P`` and the shift ``D`` are interpolated between the two known views nearest in tilt on
    either side. Outside the known range the nearest known transform is copied.
    """
    xf = np.asarray(xf, dtype=np.float64)
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    targets = np.atleast_1d(np.asarray(targets_deg, dtype=np.float64))
    order = np.argsort(tilts, kind="stable")
    tilts, xf = tilts[order], xf[order]
    polar = [_polar(a) for a in xf[:, :, :2]]
    phi = np.unwrap([p[0] for p in polar])
    stretch = np.stack([p[1] for p in polar])
    out = np.empty((targets.size, 2, 3))
    for k, t in enumerate(targets):
        hi = int(np.searchsorted(tilts, t, side="left"))
        if hi <= 0 or hi >= tilts.size:
            out[k] = xf[0 if hi <= 0 else -1]
            continue
        lo = hi - 1
        span = tilts[hi] - tilts[lo]
        w = 0.5 if span <= 0 else (t - tilts[lo]) / span
        angle = (1 - w) * phi[lo] + w * phi[hi]
        c, s = math.cos(angle), math.sin(angle)
        out[k, :, :2] = np.array([[c, -s], [s, c]]) @ ((1 - w) * stretch[lo] + w * stretch[hi])
        out[k, :, 2] = (1 - w) * xf[lo, :, 2] + w * xf[hi, :, 2]
    return out


def expand_to_file_views(result: AlignmentResult, view_index, nominal_tilts_deg) -> FileViews:
    """Map ``result`` (fitted views only, any order) onto all views of the input, in file order."""
    view_index = np.asarray(view_index, dtype=np.int64)
    nominal = np.asarray(nominal_tilts_deg, dtype=np.float64)
    n, m = nominal.size, result.observations.n_markers
    if view_index.shape != (result.observations.n_views,) or len(set(view_index.tolist())) != view_index.size:
        raise ValueError("view_index must give a distinct file view for every view of the result")
    excluded = np.ones(n, dtype=bool)
    excluded[view_index] = False
    model = result.model
    parameters = {}
    for name in model.parameters:
        values = np.full(n, np.nan)
        values[view_index] = result.parameter(name)
        parameters[name] = values
    tilts = nominal.copy()
    tilts[view_index] = result.tilts_deg
    xf = np.empty((n, 2, 3))
    xf[view_index] = result.xf
    if excluded.any():
        xf[excluded] = interpolate_transforms(result.xf, nominal[view_index], nominal[excluded])
    xy = np.full((n, m, 2), np.nan)
    xy[view_index] = result.observations.xy
    mask = np.zeros((n, m), dtype=bool)
    mask[view_index] = result.observations.mask
    residuals = np.full((n, m, 2), np.nan)
    residuals[view_index] = result.residuals
    return FileViews(view_index, nominal, excluded, tilts, parameters, xf, xy, mask, residuals)


def aligned_model_xy(fv: FileViews, markers: np.ndarray, center) -> tuple[np.ndarray, np.ndarray]:
    """Measured points mapped by the ``.xf`` and where the solved markers say they should be.

    Returns ``(aligned, ideal)``, both (n, m, 2) image pixels: ``aligned = A (p - c) + D + c``;
    ``ideal = (x cos t + z sin t, y) + c`` with (x, y, z) = ``markers`` (m, 3) and t the solved
    tilt (MODEL.md, "Outputs"). NaN where not fitted.
    """
    c = np.asarray(center, dtype=np.float64)
    a, d = fv.xf[:, :, :2], fv.xf[:, :, 2]
    aligned = np.einsum("vij,vmj->vmi", a, fv.xy - c) + d[:, None, :] + c
    t = np.radians(fv.tilts_deg)[:, None]  # (n, 1)
    x, y, z = markers[:, 0], markers[:, 1], markers[:, 2]
    ideal = np.stack([x * np.cos(t) + z * np.sin(t), np.broadcast_to(y, (t.size, y.size))], axis=-1) + c
    ideal = np.where(fv.mask[..., None], ideal, np.nan)
    return aligned, ideal


# --------------------------------------------------------------------------- the record


def _stats(lengths: np.ndarray) -> dict:
    lengths = lengths[np.isfinite(lengths)]
    if lengths.size == 0:
        return {"n_points": 0, "mean_residual_px": None, "rms_residual_px": None, "max_residual_px": None}
    return {
        "n_points": int(lengths.size),
        "mean_residual_px": float(lengths.mean()),
        # per-component RMS, as rms_residual_px of the whole fit (|r|^2 has two components)
        "rms_residual_px": float(np.sqrt(np.mean(lengths**2) / 2.0)),
        "max_residual_px": float(lengths.max()),
    }


def build_record(
    result: AlignmentResult,
    fv: FileViews,
    *,
    marker_ids,
    inputs: dict,
    options: dict,
    n_worst: int = 10,
    software: dict | None = None,
    extra: dict | None = None,
    errors=None,
) -> dict:
    """Everything about one alignment as a JSON-ready dict.

    ``inputs`` and ``options`` describe the run (files, image size, exclusions, modes...) and
    are stored as given; ``marker_ids`` (m,) are the markers' ids in the input file.
    ``errors`` (an ``uncertainty.Uncertainty`` of ``result``) adds standard errors per view
    parameter and marker coordinate and leave-one-out residuals.
    """
    model = result.model
    obs = result.observations
    lengths = np.linalg.norm(fv.residuals, axis=-1)
    all_lengths = lengths[fv.mask]
    mean = float(all_lengths.mean()) if all_lengths.size else float("nan")
    sd = float(all_lengths.std(ddof=1)) if all_lengths.size > 1 else float("nan")
    center = obs.center
    aligned, ideal = aligned_model_xy(fv, result.markers, center)
    dev = (aligned - ideal)[fv.mask]

    views = []
    for v in range(fv.n_views):
        entry = {
            "view": v,
            "view_number": v + 1,
            "excluded": bool(fv.excluded[v]),
            "nominal_tilt_deg": float(fv.nominal_tilts_deg[v]),
            "tilt_deg": float(fv.tilts_deg[v]),
            "delta_tilt_deg": float(fv.tilts_deg[v] - fv.nominal_tilts_deg[v]),
            "parameters": {name: float(fv.parameters[name][v]) for name in model.parameters},
            **_stats(lengths[v][fv.mask[v]]),
            "xf": [float(x) for x in (*fv.xf[v, :, :2].ravel(), *fv.xf[v, :, 2])],
        }
        if errors is not None and not fv.excluded[v]:
            k = int(np.flatnonzero(fv.view_index == v)[0])
            entry["standard_errors"] = {name: float(errors.parameter_se(name)[k]) for name in model.parameters}
        views.append(entry)

    markers = []
    for i in range(obs.n_markers):
        x, y, z = (float(u) for u in result.markers[i])
        markers.append(
            {"index": i, "id": int(marker_ids[i]), "x": x, "y": y, "z": z, "n_views": int(fv.mask[:, i].sum()), **_stats(lengths[:, i][fv.mask[:, i]])}
        )
        if errors is not None:
            markers[-1]["standard_errors"] = dict(zip(("x", "y", "z"), (float(e) for e in errors.markers_se[i]), strict=True))

    worst = []
    for p in result.worst_points(n_worst):
        v = int(fv.view_index[p["view"]])
        worst.append(
            {
                "marker": p["marker"],
                "marker_id": int(marker_ids[p["marker"]]),
                "view": v,
                "view_number": v + 1,
                "x": p["x"],
                "y": p["y"],
                "dx": p["dx"],
                "dy": p["dy"],
                "residual_px": p["length"],
                "sds_above_mean": (p["length"] - mean) / sd if sd > 0 else None,
            }
        )
        if errors is not None:
            loo = errors.loo_residuals[p["view"], p["marker"]]
            worst[-1]["leave_one_out_residual_px"] = float(np.hypot(loo[0], loo[1]))

    stages = [
        {
            "name": s.name,
            "iterations": s.iterations,
            "accepted": s.accepted,
            "seconds": s.seconds,
            "status": s.status,
            "rms_residual_px": s.rms_residual_px,
            "n_free": s.n_free,
        }
        for s in result.stages
    ]
    rotation = fv.parameters["rotation"][~fv.excluded]
    summary = {
        "status": result.status,
        "converged": result.converged,
        "rms_residual_px": result.rms_residual_px,
        "mean_residual_px": result.mean_residual_px,
        "sd_residual_px": sd,
        "n_points": obs.n_observed,
        "n_free": result.n_free,
        "noise_floor_factor": result.noise_floor_factor,
        "sigma_px": result.sigma_px,
        "rotation_estimated_deg": result.rotation_estimated_deg,
        "rotation_mean_deg": float(np.mean(rotation)),
        "tilt_range_deg": [float(fv.tilts_deg.min()), float(fv.tilts_deg.max())],
        "solve_seconds": float(sum(s.seconds for s in result.stages)),
        # the .xf applied to the measured points vs (x cos t + z sin t, y) of the solved markers
        "aligned_check_rms_px": {
            "x": float(np.sqrt(np.mean(dev[:, 0] ** 2))) if dev.size else None,
            "y": float(np.sqrt(np.mean(dev[:, 1] ** 2))) if dev.size else None,
        },
    }
    record = {
        "software": dict(software or {}),
        "inputs": dict(inputs),
        "model": {
            "name": model.name,
            "description": model.description,
            "parameters": list(model.parameters),
            "units": {p: ("deg" if k == "angle" else "px" if k == "length" else "ratio") for p, k in zip(model.parameters, model.kinds, strict=True)},
        },
        "options": dict(options),
        "stages": stages,
        "summary": summary,
        "views": views,
        "markers": markers,
        "worst_points": worst,
    }
    if errors is not None:
        summary["leave_one_out_rms_px"] = errors.loo_rms_px
        summary["standard_errors_note"] = (
            "1-sigma, from sigma^2 (J^T J)^-1 with sigma = RMS residual corrected for the free "
            "parameters; tilts relative to their mean offset from nominal"
        )
    record.update(extra or {})
    return record


def _clean(value):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def record_to_json(record: dict) -> str:
    """The record as indented JSON text (NaN written as null)."""
    return json.dumps(_clean(record), indent=1, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- terminal summary


def _f(value, fmt: str, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-".rjust(width)
    return format(value, fmt).rjust(width)


def _table_parameters(record: dict) -> list[str]:
    """View parameters worth a column besides tilt and rotation: those not fixed, no shifts."""
    modes = record["options"].get("modes", {})
    skip = {"tilt", "rotation", "dx", "dy"}
    return [p for p in record["model"]["parameters"] if p not in skip and modes.get(p, "free") != "fixed"]


def format_summary(record: dict, *, per_view: bool = True) -> str:
    """A tiltalign-style log of the record: stages, per-view table, residual lines, worst points."""
    s, inp, opt = record["summary"], record["inputs"], record["options"]
    out = []
    sw = record.get("software", {})
    out.append(f" {sw.get('name', 'lmalign')} {sw.get('version', '')}, model {record['model']['name']}: {record['model']['description']}")
    out.append(
        f" Markers:  {inp.get('markers')} ({inp.get('markers_format')}): {inp.get('n_markers')} markers,"
        f" {s['n_points']} points fitted"
        + (f"; dropped markers {inp['dropped_markers']} (seen in < 2 views)" if inp.get("dropped_markers") else "")
    )
    n_ex = len(inp.get("excluded_views", []))
    out.append(
        f" Tilts:    {inp.get('tilts')}: {inp.get('n_views')} views"
        + (f", {n_ex} excluded (views {_ranges(inp['excluded_views'])}, 1-based)" if n_ex else ", none excluded")
    )
    size = inp.get("image_size")
    if size:
        out.append(f" Image:    {size[0]:g} x {size[1]:g} px (from {inp.get('image_size_source')})")
    rot = opt.get("rotation_deg")
    out.append(
        f" Rotation: tilt axis {_f(rot, '.2f', 0)} deg to start ({opt.get('rotation_source')}),"
        f" solved mean {s['rotation_mean_deg']:.2f} deg"
    )
    out.append("")
    out.append(" stage     iterations  accepted   seconds    rms px    free  status")
    for st in record["stages"]:
        out.append(
            f" {st['name']:<8}{st['iterations']:>12d}{st['accepted']:>10d}{_f(st['seconds'], '.2f', 10)}"
            f"{_f(st['rms_residual_px'], '.4f', 10)}{st['n_free']:>8d}  {st['status']}"
        )
    if per_view:
        extra = _table_parameters(record)
        units = record["model"]["units"]
        out.append("")
        head = " view  nominal     tilt  deltilt  rotation" + "".join(f"{p[:9]:>10}" for p in extra) + "  points  mean resid"
        out.append(head)
        for v in record["views"]:
            line = f" {v['view_number']:>4}{v['nominal_tilt_deg']:>9.2f}"
            if v["excluded"]:
                out.append(line + f"{v['tilt_deg']:>9.2f}      excluded: transform interpolated from neighbours")
                continue
            line += f"{v['tilt_deg']:>9.2f}{v['delta_tilt_deg']:>9.2f}{v['parameters']['rotation']:>10.2f}"
            for p in extra:
                line += _f(v["parameters"][p], ".2f" if units[p] == "deg" else ".4f", 10)
            line += f"{v['n_points']:>8d}{_f(v['mean_residual_px'], '.3f', 12)}"
            out.append(line)
    out.append("")
    out.append(f" Residual error mean and sd: {_f(s['mean_residual_px'], '.3f', 9)} {_f(s['sd_residual_px'], '.3f', 9)} {s['n_points']:>8d} points")
    out.append(
        f" RMS residual per coordinate: {_f(s['rms_residual_px'], '.3f', 8)} px  (noise-floor factor"
        f" {s['noise_floor_factor']:.3f}: noise estimate {_f(s['sigma_px'], '.3f', 0)} px per coordinate)"
    )
    worst = record["worst_points"]
    if worst:
        out.append("")
        out.append(f" {len(worst)} points with the largest residuals (mean {_f(s['mean_residual_px'], '.3f', 0)}, sd {_f(s['sd_residual_px'], '.3f', 0)}):")
        out.append("   marker   view         X         Y       dx       dy    resid     SDs")
        for p in worst:
            out.append(
                f" {p['marker_id']:>8d} {p['view_number']:>6d}{p['x']:>10.2f}{p['y']:>10.2f}{p['dx']:>9.2f}{p['dy']:>9.2f}"
                f"{p['residual_px']:>9.3f}{_f(p['sds_above_mean'], '.2f', 8)}"
            )
    truth = record.get("truth")
    if truth:
        out.append("")
        out.append(" Compared with the known truth of the synthetic series:")
        for line in truth.get("lines", []):
            out.append("   " + line)
    out.append("")
    out.append(f" Status: {s['status']}")
    return "\n".join(out) + "\n"


def _ranges(numbers) -> str:
    """[1, 2, 3, 7] -> '1-3,7'."""
    numbers = sorted(int(n) for n in numbers)
    parts, start = [], None
    for k, n in enumerate(numbers):
        if start is None:
            start = n
        if k + 1 == len(numbers) or numbers[k + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(parts)


# --------------------------------------------------------------------------- the figure


def render_figure(result: AlignmentResult, fv: FileViews, record: dict, *, title: str = "", errors=None) -> bytes:
    """The PNG report: residual per view, aligned tracks, aligned y flatness, tilts, rotation,
    residual vectors with the worst points highlighted. Uses matplotlib's Agg canvas directly
    (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = record["summary"]
    obs = result.observations
    nominal = fv.nominal_tilts_deg
    kept = ~fv.excluded
    numbers = np.arange(1, fv.n_views + 1)
    lengths = np.linalg.norm(fv.residuals, axis=-1)
    aligned, ideal = aligned_model_xy(fv, result.markers, obs.center)
    worst = record["worst_points"]
    wv = np.array([p["view"] for p in worst], dtype=int)
    wm = np.array([p["marker"] for p in worst], dtype=int)

    fig = Figure(figsize=(15, 9.5), dpi=100)
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.06, top=0.9, wspace=0.28, hspace=0.3)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    fig.suptitle(
        (title + "\n" if title else "")
        + f"model {record['model']['name']}: mean residual {s['mean_residual_px']:.3f} px (sd {s['sd_residual_px']:.3f}),"
        f" RMS {s['rms_residual_px']:.3f} px per coordinate, {s['n_points']} points; {s['status']}",
        fontsize=11,
    )

    ax = axes[0, 0]
    view_mean = np.array([v["mean_residual_px"] if v["mean_residual_px"] is not None else np.nan for v in record["views"]], dtype=float)
    ax.bar(numbers[kept], view_mean[kept], color="tab:blue", width=0.8, label="mean |residual| of the view")
    ax.axhline(s["mean_residual_px"], color="k", lw=1, ls="--", label=f"overall mean {s['mean_residual_px']:.3f}")
    if fv.excluded.any():
        ax.plot(numbers[fv.excluded], np.zeros(int(fv.excluded.sum())), "x", color="tab:gray", ms=8, label="excluded view")
    if wv.size:
        ax.plot(wv + 1, lengths[wv, wm], "o", mfc="none", mec="tab:red", label="worst points")
    ax.set(xlabel="view (1-based)", ylabel="residual (px)", title="Residual per view")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for i in range(obs.n_markers):
        sel = fv.mask[:, i]
        ax.plot(aligned[sel, i, 0], aligned[sel, i, 1], "-", lw=0.8)
    if wv.size:
        ax.plot(aligned[wv, wm, 0], aligned[wv, wm, 1], "o", mfc="none", mec="tab:red", ms=8)
    ax.set(xlabel="aligned x (px)", ylabel="aligned y (px)", title="Marker tracks after alignment (should be horizontal)")
    ax.set_aspect("equal", adjustable="datalim")

    ax = axes[0, 2]
    dy = aligned[..., 1] - ideal[..., 1]
    for i in range(obs.n_markers):
        sel = fv.mask[:, i]
        ax.plot(nominal[sel], dy[sel, i], "-", lw=0.7, alpha=0.8)
    if wv.size:
        ax.plot(nominal[wv], dy[wv, wm], "o", mfc="none", mec="tab:red", ms=8, label="worst points")
        ax.legend(fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="nominal tilt (deg)", ylabel="aligned y - marker y (px)", title="Aligned y of each marker (should be flat)")

    ax = axes[1, 0]
    ax.plot(nominal[kept], fv.tilts_deg[kept] - nominal[kept], "o-", ms=3, label="solved - nominal")
    if errors is not None:
        ax.errorbar(nominal[fv.view_index], fv.tilts_deg[fv.view_index] - nominal[fv.view_index],
                    yerr=errors.parameter_se("tilt"), fmt="none", ecolor="tab:gray", lw=0.8, label="1 standard error")
    if fv.excluded.any():
        ax.plot(nominal[fv.excluded], np.zeros(int(fv.excluded.sum())), "x", color="tab:gray", ms=8, label="excluded (nominal used)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="nominal tilt (deg)", ylabel="tilt change (deg)", title="Solved vs nominal tilt")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    ax.plot(nominal[kept], fv.parameters["rotation"][kept], "o-", ms=3, label="solved")
    if errors is not None:
        ax.errorbar(nominal[fv.view_index], fv.parameters["rotation"][fv.view_index],
                    yerr=errors.parameter_se("rotation"), fmt="none", ecolor="tab:gray", lw=0.8, label="1 standard error")
    start = record["options"].get("rotation_deg")
    if start is not None:
        ax.axhline(start, color="tab:orange", ls="--", lw=1, label=f"start ({record['options'].get('rotation_source')}) {start:.2f}")
    ax.set(xlabel="nominal tilt (deg)", ylabel="tilt-axis rotation (deg)", title="Rotation per view")
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    pts = fv.xy[fv.mask]
    res = fv.residuals[fv.mask]
    ln = np.linalg.norm(res, axis=-1)
    finite = ln[np.isfinite(ln)]
    scale = 0.08 * max(obs.image_size) / max(float(finite.max()) if finite.size else 1.0, 1e-9)
    q = ax.quiver(pts[:, 0], pts[:, 1], res[:, 0] * scale, res[:, 1] * scale, ln, angles="xy", scale_units="xy", scale=1, cmap="viridis", width=0.003)
    fig.colorbar(q, ax=ax, label="|residual| (px)")
    for p in worst:
        ax.plot(p["x"], p["y"], "o", mfc="none", mec="tab:red", ms=9)
        ax.annotate(f"m{p['marker_id']} v{p['view_number']}", (p["x"], p["y"]), fontsize=7, color="tab:red", xytext=(4, 4), textcoords="offset points")
    nx, ny = obs.image_size
    ax.set(xlim=(0, nx), ylim=(0, ny), xlabel="x (px)", ylabel="y (px)", title=f"Residual vectors x{scale:.3g} on the raw images")
    ax.set_aspect("equal")

    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
