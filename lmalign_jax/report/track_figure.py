"""The PNG figure of a bead tracking: the seed view with the chosen beads numbered, the tracks,
and how many beads were found in each view (matplotlib imported only when drawing)."""

from __future__ import annotations

import io as _io

import numpy as np
from jaxtyping import Float

from ..track.tracking import TrackResult

__all__ = ["render_track_figure"]

#: Largest side, in pixels, the seed view is shown at (it is block-averaged down to it).
MAX_IMAGE_PX = 1024


def _display(image: np.ndarray) -> tuple[np.ndarray, int]:
    img = np.asarray(image, dtype=np.float32)
    f = max(1, int(np.ceil(max(img.shape) / MAX_IMAGE_PX)))
    ny, nx = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    small = img[:ny, :nx].reshape(ny // f, f, nx // f, f).mean(axis=(1, 3)) if f > 1 else img
    return small, f


def render_track_figure(
    track: TrackResult, seed_image: Float[np.ndarray, "rows columns"], tilts_deg, title: str = ""
) -> bytes:
    """PNG bytes of the tracking figure.

    Args:
        track: the tracking.
        seed_image: (NY, NX) the seed view (shown block-averaged to at most 1024 px).
        tilts_deg: (n_views,) nominal tilts, degrees.
        title: the figure's title (e.g. the stack's name).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_img, ax_tracks, ax_count = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1.1, 1.0]})
    small, f = _display(seed_image)
    lo, hi = np.percentile(small, [1, 99]) if small.size else (0.0, 1.0)
    ny, nx = small.shape
    ax_img.imshow(small, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=(0, nx * f, 0, ny * f))
    seed = track.xy[track.seed_view]
    ax_img.scatter(track.candidates[:, 0], track.candidates[:, 1], s=30, facecolors="none", edgecolors="0.6")
    for b, (x, y) in enumerate(seed):
        if np.isfinite(x):
            ax_img.scatter([x], [y], s=60, facecolors="none", edgecolors="tab:red")
            ax_img.annotate(str(b + 1), (x, y), xytext=(4, 4), textcoords="offset points", color="yellow")
    ax_img.set_title(
        f"view {track.seed_view + 1} ({tilts_deg[track.seed_view]:g} deg): {track.n_beads} chosen of "
        f"{track.candidates.shape[0]} found"
    )
    ax_img.set_xlabel("x (px)")
    ax_img.set_ylabel("y (px)")
    for b in range(track.n_beads):
        pts = track.xy[:, b]
        ok = np.isfinite(pts[:, 0])
        if ok.any():
            ax_tracks.plot(pts[ok, 0], pts[ok, 1], "-", lw=0.8)
    ax_tracks.set_xlim(0, nx * f)
    ax_tracks.set_ylim(0, ny * f)
    ax_tracks.set_aspect("equal")
    ax_tracks.set_title(f"tracks ({track.found.sum()} points)")
    ax_tracks.set_xlabel("x (px)")
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    ax_count.bar(tilts, track.beads_per_view, width=0.8 * float(np.min(np.abs(np.diff(tilts))) or 1.0))
    ax_count.axhline(track.n_beads, color="0.5", lw=0.8, ls="--")
    ax_count.set_xlabel("tilt (deg)")
    ax_count.set_ylabel("beads found")
    ax_count.set_title("beads found per view")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
