"""The PNG report figure of an alignment (matplotlib is imported here only, when drawing).

Its cost grows no faster than the number of points: each track panel is one ``LineCollection``
and the residual vectors one ``quiver``; beyond ``MAX_TRACK_POINTS`` points the track panels
draw every k-th marker, and beyond ``MAX_ARROWS`` points the vector panel draws the longest
residuals and a regular sample of the rest; each such panel says so in its title.
"""

from __future__ import annotations

import io as _io
import math
import textwrap
import threading

import numpy as np

from ..core.result import AlignmentResult
from .views import FileViews, aligned_model_xy

#: Most points the two track panels draw (every k-th marker beyond).
MAX_TRACK_POINTS = 20_000
#: Most residual arrows drawn: the ``MAX_ARROWS // 5`` longest and a regular sample of the rest.
MAX_ARROWS = 5_000


def track_sample(mask: np.ndarray, max_points: int = MAX_TRACK_POINTS) -> tuple[np.ndarray, int]:
    """Markers whose tracks are drawn and the step k between them.

    mask: (n_views, n_markers) bool, fitted points. Every marker (k = 1) when they hold at most
    ``max_points`` points, else every k-th marker, k the smallest step that keeps the drawn
    points within ``max_points``. Returns (marker indices (p,), k).
    """
    counts = mask.sum(axis=0)
    step = max(1, math.ceil(int(counts.sum()) / max(max_points, 1)))
    while step < counts.size and int(counts[::step].sum()) > max_points:
        step += 1
    return np.arange(0, counts.size, step), step


def arrow_sample(lengths: np.ndarray, max_arrows: int = MAX_ARROWS) -> np.ndarray:
    """Indices of the residual arrows drawn, of ``lengths`` (N,) residual lengths (px).

    All of them when N <= ``max_arrows``; else the ``max_arrows // 5`` longest and an evenly
    spaced sample of the others, ``max_arrows`` in all, in increasing index order.
    """
    n = lengths.size
    if n <= max_arrows:
        return np.arange(n)
    n_longest = max_arrows // 5
    longest = np.argpartition(np.nan_to_num(lengths, nan=-np.inf), n - n_longest)[n - n_longest :]  # O(N)
    others = np.ones(n, dtype=bool)
    others[longest] = False
    rest = np.flatnonzero(others)
    spaced = rest[np.linspace(0, rest.size - 1, max_arrows - n_longest).astype(np.int64)]
    return np.union1d(longest, spaced)


def _tracks(x: np.ndarray, y: np.ndarray, mask: np.ndarray, markers: np.ndarray) -> tuple[list, list]:
    """Line segments (one (k, 2) array per marker) and their colours, for a LineCollection.

    x, y: (n_views, n_markers) or broadcastable; mask: (n_views, n_markers); markers: (p,)."""
    x = np.broadcast_to(x, mask.shape)
    y = np.broadcast_to(y, mask.shape)
    segments = [np.column_stack([x[mask[:, i], i], y[mask[:, i], i]]) for i in markers]
    return segments, [f"C{k % 10}" for k in range(len(markers))]


def _sample_note(n_drawn: int, n_markers: int) -> str:
    return "" if n_drawn == n_markers else f"\n({n_drawn} of {n_markers} markers drawn, evenly spaced)"


def prefetch_matplotlib() -> None:
    """Start importing the matplotlib modules ``render_figure`` uses in a background thread, so a
    command that will draw the figure pays for that import (about 0.3 s) while it reads and
    solves. Safe to call more than once; ``render_figure`` works without it."""
    global _prefetch
    if _prefetch is None:
        _prefetch = threading.Thread(target=_import_matplotlib, name="lmalign-matplotlib", daemon=True)
        _prefetch.start()


def _import_matplotlib() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401, PLC0415
        import matplotlib.collections  # noqa: F401, PLC0415
        import matplotlib.figure  # noqa: F401, PLC0415
    except Exception:  # noqa: BLE001 - render_figure will import again and report it
        pass


_prefetch: threading.Thread | None = None


def render_figure(
    result: AlignmentResult, fv: FileViews, record: dict, *, title: str = "", errors=None
) -> bytes:
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

    drawn, _ = track_sample(fv.mask)
    note = _sample_note(drawn.size, obs.n_markers)

    section = record.get("misregistration")
    rows = 3 if section else 2
    fig = Figure(figsize=(15, 9.5 * rows / 2), dpi=100)
    top = 1 - (1 - (0.87 if note else 0.9)) * 2 / rows
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.06 * 2 / rows, top=top, wspace=0.28, hspace=0.35)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3)
    for ax in axes.ravel():
        ax.locator_params(nbins=4)  # tick labels are most of the drawing time: fewer of them
    fig.suptitle(
        (title + "\n" if title else "")
        + f"model {record['model']['name']}: mean residual {s['mean_residual_px']:.3f} px"
        f" (sd {s['sd_residual_px']:.3f}),"
        f" RMS {s['rms_residual_px']:.3f} px per coordinate, {s['n_points']} points; {s['status']}",
        fontsize=11,
    )

    ax = axes[0, 0]
    view_mean = np.array(
        [v["mean_residual_px"] if v["mean_residual_px"] is not None else np.nan for v in record["views"]],
        dtype=float,
    )
    # one collection of thick lines, drawn as bars (``bar`` makes one patch per view)
    ax.vlines(numbers[kept], 0, view_mean[kept], color="tab:blue", lw=3, label="mean |residual| of the view")
    ax.axhline(
        s["mean_residual_px"], color="k", lw=1, ls="--", label=f"overall mean {s['mean_residual_px']:.3f}"
    )
    if fv.excluded.any():
        ax.plot(
            numbers[fv.excluded],
            np.zeros(int(fv.excluded.sum())),
            "x",
            color="tab:gray",
            ms=8,
            label="excluded view",
        )
    if wv.size:
        ax.plot(wv + 1, lengths[wv, wm], "o", mfc="none", mec="tab:red", label="worst points")
    ax.set(xlabel="view (1-based)", ylabel="residual (px)", title="Residual per view")
    ax.legend(fontsize=8)

    from matplotlib.collections import LineCollection

    ax = axes[0, 1]
    segments, colors = _tracks(aligned[..., 0], aligned[..., 1], fv.mask, drawn)
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.8))
    if wv.size:
        ax.plot(aligned[wv, wm, 0], aligned[wv, wm, 1], "o", mfc="none", mec="tab:red", ms=8)
    ax.autoscale_view()
    ax.set(
        xlabel="aligned x (px)",
        ylabel="aligned y (px)",
        title="Marker tracks after alignment (should be horizontal)" + note,
    )
    ax.set_aspect("equal", adjustable="datalim")

    ax = axes[0, 2]
    dy = aligned[..., 1] - ideal[..., 1]
    segments, colors = _tracks(nominal[:, None], dy, fv.mask, drawn)
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.7, alpha=0.8))
    if wv.size:
        ax.plot(nominal[wv], dy[wv, wm], "o", mfc="none", mec="tab:red", ms=8, label="worst points")
        ax.legend(fontsize=8, loc="upper left")
    ax.autoscale_view()
    ax.axhline(0, color="k", lw=0.8)
    ax.set(
        xlabel="nominal tilt (deg)",
        ylabel="aligned y - marker y (px)",
        title="Aligned y of each marker (should be flat)" + note,
    )

    ax = axes[1, 0]
    ax.plot(nominal[kept], fv.tilts_deg[kept] - nominal[kept], "o-", ms=3, label="solved - nominal")
    if errors is not None:
        ax.errorbar(
            nominal[fv.view_index],
            fv.tilts_deg[fv.view_index] - nominal[fv.view_index],
            yerr=errors.parameter_se("tilt"),
            fmt="none",
            ecolor="tab:gray",
            lw=0.8,
            label="1 standard error",
        )
    if fv.excluded.any():
        ax.plot(
            nominal[fv.excluded],
            np.zeros(int(fv.excluded.sum())),
            "x",
            color="tab:gray",
            ms=8,
            label="excluded (nominal used)",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="nominal tilt (deg)", ylabel="tilt change (deg)", title="Solved vs nominal tilt")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    ax.plot(nominal[kept], fv.parameters["rotation"][kept], "o-", ms=3, label="solved")
    if errors is not None:
        ax.errorbar(
            nominal[fv.view_index],
            fv.parameters["rotation"][fv.view_index],
            yerr=errors.parameter_se("rotation"),
            fmt="none",
            ecolor="tab:gray",
            lw=0.8,
            label="1 standard error",
        )
    start = record["options"].get("rotation_deg")
    if start is not None:
        ax.axhline(
            start,
            color="tab:orange",
            ls="--",
            lw=1,
            label=f"start ({record['options'].get('rotation_source')}) {start:.2f}",
        )
    ax.set(xlabel="nominal tilt (deg)", ylabel="tilt-axis rotation (deg)", title="Rotation per view")
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    pts = fv.xy[fv.mask]
    res = fv.residuals[fv.mask]
    ln = np.linalg.norm(res, axis=-1)
    finite = ln[np.isfinite(ln)]
    scale = 0.08 * max(obs.image_size) / max(float(finite.max()) if finite.size else 1.0, 1e-9)
    shown, n_vectors = arrow_sample(ln), ln.size
    pts, res, ln = pts[shown], res[shown], ln[shown]
    q = ax.quiver(
        pts[:, 0],
        pts[:, 1],
        res[:, 0] * scale,
        res[:, 1] * scale,
        ln,
        angles="xy",
        scale_units="xy",
        scale=1,
        cmap="viridis",
        width=0.003,
    )
    fig.colorbar(q, ax=ax, label="|residual| (px)")
    for p in worst:
        ax.plot(p["x"], p["y"], "o", mfc="none", mec="tab:red", ms=9)
        ax.annotate(
            f"m{p['marker_id']} v{p['view_number']}",
            (p["x"], p["y"]),
            fontsize=7,
            color="tab:red",
            xytext=(4, 4),
            textcoords="offset points",
        )
    nx, ny = obs.image_size
    ax.set(
        xlim=(0, nx),
        ylim=(0, ny),
        xlabel="x (px)",
        ylabel="y (px)",
        title=f"Residual vectors x{scale:.3g} on the raw images"
        + (
            ""
            if shown.size == n_vectors
            else f"\n({shown.size} of {n_vectors}: {MAX_ARROWS // 5} longest + an even sample)"
        ),
    )
    ax.set_aspect("equal")
    ax.title.set_fontsize(9 if shown.size < n_vectors else 12)

    if section:
        _draw_misregistration(fig, axes[2], section)

    buf = _io.BytesIO()
    # zlib level 1: a third of the encoding time of the default level 6, files ~7% larger
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def _draw_misregistration(fig, axes, section: dict) -> None:
    """The predicted misregistration: the x-y map at z = 0, the z profile at the centre, and the
    near-degenerate directions in words."""
    grid = section["map"]
    x, y, z = (np.asarray(grid[k], dtype=float) for k in ("x_px", "y_px", "z_px"))
    plane = np.array([[np.nan if v is None else v for v in row] for row in grid["xy_map_px"]], dtype=float)
    ax = axes[0]
    image = ax.imshow(
        plane,
        origin="lower",
        extent=(x[0], x[-1], y[0], y[-1]),
        aspect="equal",
        cmap="magma",
        interpolation="bilinear",
    )
    fig.colorbar(image, ax=ax, label="misregistration (px)")
    ax.set(
        xlabel="x from the tomogram centre (px)",
        ylabel="y (px)",
        title="Predicted misregistration at z = 0\n(1 sd of a point's projection, RMS over views)",
    )
    ax.title.set_fontsize(10)
    ax = axes[1]
    profile = np.array([np.nan if v is None else v for v in grid["z_profile_px"]], dtype=float)
    ax.plot(z, profile, "o-", ms=3)
    ax.set_ylim(bottom=0)
    ax.set(
        xlabel="z from the tomogram centre (px)", ylabel="misregistration (px)", title="Along z at x = y = 0"
    )
    ax = axes[2]
    ax.axis("off")
    words = [d["text"] for d in section["near_degenerate"]] or ["none: the data tell every parameter apart"]
    body = "\n".join(textwrap.fill("- " + w, 60) for w in words[:4])
    title = "Near-degenerate directions\n\n"
    ax.text(0, 1, title + body, va="top", ha="left", fontsize=9, transform=ax.transAxes)
