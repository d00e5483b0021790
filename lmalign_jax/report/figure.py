"""The PNG report figure of an alignment (matplotlib is imported here only, when drawing)."""

from __future__ import annotations

import io as _io

import numpy as np

from ..core.result import AlignmentResult
from .views import FileViews, aligned_model_xy


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
