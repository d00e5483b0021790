"""IMOD tiltalign's patch grid for a local alignment, and the markers each patch takes.

IMOD (tiltalign.f90 ``setupAndDoLocalAlignments``, man page "Local Alignments"): the grid
(TargetPatchSizeXandY, MinSizeOrOverlapXandY) covers the extent of the fiducials' solved (X, Y)
plus a 5 px border, with tiltalign's integer arithmetic; each patch takes the fiducials in a box
of the minimum size about its centre, grown by 40 px until it holds MinFidsTotalAndEachSurface
(``core.local`` has the whole rule).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int

from ..patch_weights import axis_weights

__all__ = [
    "MAX_PATCHES",
    "patch_grid",
    "checked_patch_grid",
    "surfaces",
    "select_patch_markers",
    "marker_shares",
]

#: Most patches a local alignment takes (IMOD's grids are a few dozen to a few hundred); each
#: grows until it holds enough markers, so a finer grid only repeats overlapping solves, and its
#: batched solve holds every patch in memory (about 2 GB for 1,225 patches of 60 markers).
MAX_PATCHES = 2500


def _trunc(value: float) -> int:
    return int(np.trunc(value))


def patch_grid(
    xy: Float[np.ndarray, "markers 2"], patch_size: tuple[int, int], overlap: tuple[float, float]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """IMOD's target-size grid over marker positions ``xy`` (n, 2), image coordinates.

    Returns ((nX, nY), (Xstart, Ystart), (dX, dY), (minimum size x, y)), integers as tiltalign's.
    """
    out = []
    border = 5.0
    for axis in range(2):
        lo, hi = float(np.min(xy[:, axis])) - border, float(np.max(xy[:, axis])) + border
        target, ov = patch_size[axis], overlap[axis]
        extent = hi - lo
        n = max(2, _trunc((extent - target) / (target * (1.0 - ov)) + 1))
        size = _trunc(extent / (n - ov * (n - 1)))
        if size > 1.05 * target:
            n += 1
            size = _trunc(extent / (n - ov * (n - 1)))
        spacing = _trunc((extent - size) / max(1, n - 1) + 1)
        out.append((n, _trunc(lo + size // 2), spacing, size))
    (nx, x0, dx, sx), (ny, y0, dy, sy) = out
    return (nx, ny), (x0, y0), (dx, dy), (sx, sy)


def checked_patch_grid(
    xy: Float[np.ndarray, "markers 2"], patch_size: tuple[int, int], overlap: tuple[float, float]
):
    """:func:`patch_grid` over marker positions ``xy`` (n, 2), image coordinates; a ValueError
    when it has more than ``MAX_PATCHES`` patches (also checked before a solve, on the measured
    positions: ``workflow.local.check_local_grid``)."""
    grid = patch_grid(xy, patch_size, overlap)
    (nx, ny), (px, py) = grid[0], patch_size
    if nx * ny > MAX_PATCHES:
        raise ValueError(
            f"a patch size of {px} x {py} px with overlap {overlap[0]:g}, {overlap[1]:g} "
            f"makes a grid of {nx} x {ny} = {nx * ny} patches over the markers' {np.ptp(xy[:, 0]):.0f} x "
            f"{np.ptp(xy[:, 1]):.0f} px extent, more than {MAX_PATCHES}; use larger patches or less overlap"
        )
    return grid


def surfaces(xyz: Float[np.ndarray, "markers 3"]) -> Int[np.ndarray, " markers"]:
    """0 (bottom) or 1 (top) per marker: side of the least-squares plane z = a + b x + c y."""
    design = np.column_stack([np.ones(len(xyz)), xyz[:, 0], xyz[:, 1]])
    coef = np.linalg.lstsq(design, xyz[:, 2], rcond=None)[0]
    return (xyz[:, 2] > design @ coef).astype(int)


def select_patch_markers(
    xy: Float[np.ndarray, "markers 2"],
    side: Int[np.ndarray, " markers"],
    centre: tuple[int, int],
    min_size: tuple[int, int],
    min_fids: tuple[int, int],
    image_size: tuple[float, float],
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """Markers of one patch: a box about ``centre`` grown by 40 px until it holds ``min_fids``.

    Returns (indices, box size (x, y), enough). ``enough`` is False when even a box 4 times the
    image (tiltalign's limit) does not reach the minimum.

    Step k's box is (min_size + 40 k) wide from ``centre - size // 2``: each edge moves out by
    20 px a step, so the step at which each marker enters is worked out at once, and with it the
    first step that holds the minimum (growing the box step by step took minutes per grid on a
    large field: thousands of steps for each of thousands of patches).
    """
    nx0, ny0 = int(min_size[0]), int(min_size[1])
    # the last step tiltalign takes: the first whose box is at least twice the image both ways
    last = max(0, _ceil_steps(2 * image_size[0] - nx0, 40), _ceil_steps(2 * image_size[1] - ny0, 40))

    def box(k: int) -> tuple[np.ndarray, tuple[int, int]]:
        nxp, nyp = nx0 + 40 * k, ny0 + 40 * k
        x0, y0 = centre[0] - nxp // 2, centre[1] - nyp // 2
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x0 + nxp) & (xy[:, 1] >= y0) & (xy[:, 1] <= y0 + nyp)
        return np.flatnonzero(inside), (nxp, nyp)

    enters = _entry_steps(xy, centre, (nx0, ny0))
    need = [_kth(enters, min_fids[0])]
    if min_fids[1] > 0:
        need += [_kth(enters[side == k], min_fids[1]) for k in (0, 1)]
    step = max(need)
    if step <= last:
        idx, size = box(int(step))
        return idx, size, True
    idx, size = box(last)
    return idx, size, False


def _ceil_steps(distance: float, step: int) -> int:
    """The fewest whole steps of ``step`` px that cover ``distance`` px (0 for none needed)."""
    return max(0, int(np.ceil(distance / step)))


def _entry_steps(xy: np.ndarray, centre: tuple[int, int], size0: tuple[int, int]) -> np.ndarray:
    """(markers,) the first step k at which each marker lies in the box of step k (size
    ``size0 + 40 k`` from ``centre - size // 2``, edges included), as
    :func:`select_patch_markers` grows it."""
    k = np.zeros(len(xy), np.int64)
    lows, highs = [], []
    for axis in range(2):
        lo = centre[axis] - size0[axis] // 2
        lows.append(lo)
        highs.append(lo + size0[axis])
        k = np.maximum(k, np.ceil((lo - xy[:, axis]) / 20.0))
        k = np.maximum(k, np.ceil((xy[:, axis] - lo - size0[axis]) / 20.0))
    k = k.astype(np.int64)

    def inside(k):
        ok = np.ones(len(xy), bool)
        for axis in range(2):
            ok &= (xy[:, axis] >= lows[axis] - 20 * k) & (xy[:, axis] <= highs[axis] + 20 * k)
        return ok

    # the divisions round: settle each step by the comparisons the box itself makes
    k = np.where((k > 0) & inside(k - 1), k - 1, k)
    return np.where(inside(k), k, k + 1)


def _kth(steps: np.ndarray, count: int) -> float:
    """The step at which ``count`` of the markers entering at ``steps`` are in (0 for none
    needed; infinity when there are fewer)."""
    if count <= 0:
        return 0
    if steps.size < count:
        return np.inf
    return int(np.partition(steps, count - 1)[count - 1])


def marker_shares(
    xy: Float[np.ndarray, "markers 2"],
    n_patches: tuple[int, int],
    start: tuple[int, int],
    spacing: tuple[int, int],
) -> Float[np.ndarray, "markers patches"]:
    """The share of each patch in each marker's position as tilt blends them (its bilinear patch
    weights at the marker's (X, Y), image coordinates): (n_markers, nX nY), patch ``j nX + i``,
    each row summing to 1 (``core.local_apply`` has tilt's rule)."""
    nx, ny = n_patches
    cx, fx = axis_weights(np.asarray(xy[:, 0], float), start[0], spacing[0], nx)
    cy, fy = axis_weights(np.asarray(xy[:, 1], float), start[1], spacing[1], ny)
    along_x = np.zeros((len(xy), nx))
    along_y = np.zeros((len(xy), ny))
    rows = np.arange(len(xy))
    along_x[rows, cx], along_y[rows, cy] = 1 - fx, 1 - fy
    along_x[rows, cx + 1] += fx
    along_y[rows, cy + 1] += fy
    return (along_y[:, :, None] * along_x[:, None, :]).reshape(len(xy), ny * nx)
