"""The PNG overlay of beads found in one view (matplotlib is imported here only, when drawing)."""

from __future__ import annotations

import io as _io

import numpy as np

__all__ = ["render_bead_overlay", "MAX_OVERLAY_PX"]

#: Longest side of the image drawn; larger views are shown block-averaged.
MAX_OVERLAY_PX = 2048


def render_bead_overlay(image, positions, diameter_px: float, title: str = "") -> bytes:
    """PNG of ``image`` (NY, NX) (row 0 at the bottom, as IMOD shows it) with a circle around
    each of ``positions`` (n, 2) (x, y in IMOD image coordinates, pixels).
    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change); the display is
    clipped to the 0.5-99.5 percentiles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import EllipseCollection
    from matplotlib.figure import Figure

    img = np.asarray(image, dtype=np.float32)
    ny, nx = img.shape
    step = max(1, int(np.ceil(max(ny, nx) / MAX_OVERLAY_PX)))
    shown = (
        img[: ny - ny % step, : nx - nx % step].reshape(ny // step, step, nx // step, step).mean(axis=(1, 3))
    )
    lo, hi = np.percentile(
        shown[:: max(1, shown.shape[0] // 512), :: max(1, shown.shape[1] // 512)], [0.5, 99.5]
    )
    fig = Figure(figsize=(9, 9.4 * ny / max(nx, 1) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    extent = (0.0, (nx - nx % step), 0.0, (ny - ny % step))
    ax.imshow(shown, cmap="gray", origin="lower", extent=extent, vmin=lo, vmax=hi, interpolation="nearest")
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if p.shape[0]:
        # 1.6 bead diameters, at least 1.5% of the image so beads stay visible in a large view
        size = np.full(p.shape[0], max(1.6 * float(diameter_px), 0.015 * max(nx, ny)))
        ax.add_collection(
            EllipseCollection(
                size,
                size,
                np.zeros(p.shape[0]),
                units="xy",
                offsets=p,
                offset_transform=ax.transData,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=0.8,
            )
        )
    ax.set(xlim=(0, nx), ylim=(0, ny), xlabel="x (px)", ylabel="y (px)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
