"""How IMOD's ``tilt`` applies a local alignment file, and markers fitted through it.

From tilt.f90 (GitHub ``LabShare-Archive/IMOD``, ``local_factors`` and ``localProjFactors``):

1. Weights. A point at centred (x, y) takes 1-based pixel indices ``ix = nint(x + nx/2 + 0.5)``
   (likewise iy); ``ixt = clamp(ix - Xstart, 0, (nX - 1) dX)``, cell ``c = min(ixt // dX, nX - 2)``
   (0-based), ``fx = (ixt - c dX) / dX``; same in y. The four patch centres around the point get
   bilinear weights (1-fy)(1-fx), (1-fy)fx, fy(1-fx), fy fx; beyond the outer centres the weights
   stay at the edge. They depend on the untilted (x, y) only.
2. Each of the four patches projects the point with its own angles, t = tilt + dt_p,
   a = xtilt + dxt_p, and z factors (the patch's, replacing the global ones; used only when a
   global z-factor file is given, as tilt does):
   ``Px = x cos t + y sin a sin t + z (cos a sin t + xz)``, ``Py = y cos a - z sin a + z yz``.
3. The patch's transform maps that into the globally aligned stack, ``Q_p = A_p P + D_p`` (about
   the image centre); the position used is ``sum_p f_p Q_p`` (positions are blended, not
   transform parameters).

Without a local file the same formulas with unit transforms and zero deltas give the global
projection, so one function judges both.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float

from ..io.imod_local import LocalAlignment
from ..patch_weights import axis_weights

__all__ = [
    "column_sampling",
    "uniform_patches",
    "local_sampling",
    "patch_weights",
    "local_projection_matrices",
    "with_x_tilts",
    "project_through_local",
    "fit_markers_through_local",
]


def patch_weights(
    local: LocalAlignment, xy_image: Float[np.ndarray, "points 2"]
) -> tuple[np.ndarray, np.ndarray]:
    """The four patches around each point and their weights, as tilt computes them.

    xy_image: (n, 2) untilted (x, y) in image coordinates (pixels, origin at the corner).
    Returns (patches (n, 4) int, weights (n, 4)), patch index ``j nX + i``.
    """
    nx, ny = local.n_patches
    cx, fx = axis_weights(xy_image[:, 0], local.start[0], local.spacing[0], nx)
    cy, fy = axis_weights(xy_image[:, 1], local.start[1], local.spacing[1], ny)
    patches = np.stack([cy * nx + cx, cy * nx + cx + 1, (cy + 1) * nx + cx, (cy + 1) * nx + cx + 1], 1)
    weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], 1)
    return patches, weights


def local_projection_matrices(
    local: LocalAlignment | None,
    tilts_deg: Float[np.ndarray, " views"],
    xtilts_deg: Float[np.ndarray, " views"] | None = None,
    z_factors: Float[np.ndarray, "views 2"] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per patch and view, the affine map of a centred 3-D point to its aligned position.

    Returns (M (n_patches, n_views, 2, 3), D (n_patches, n_views, 2)): position = M X + D with
    M = A_p [[cos t, sin a sin t, cos a sin t + xz], [0, cos a, -sin a + yz]]. ``local`` None:
    one patch with unit transforms (the global projection), z factors ``z_factors`` (V, 2) when
    given. With ``local``, as tilt: when ``z_factors`` are given (tilt's ZFACTORFILE) each patch
    takes the file's own (``local.z_factors``), none when the file has none.
    """
    n_views = len(tilts_deg)
    xt = np.zeros(n_views) if xtilts_deg is None else np.asarray(xtilts_deg, float)
    if local is None:
        dt = np.zeros((1, n_views))
        dxt = np.zeros((1, n_views))
        a_mat = np.broadcast_to(np.eye(2), (1, n_views, 2, 2))
        shift = np.zeros((1, n_views, 2))
        zf = None if z_factors is None else np.asarray(z_factors, float)[None]
    else:
        if local.n_views != n_views:
            raise ValueError(f"local alignment has {local.n_views} views, the global one {n_views}")
        dt = local.delta_tilt_deg
        dxt = np.zeros_like(dt) if local.delta_xtilt_deg is None else local.delta_xtilt_deg
        a_mat, shift = local.transforms[..., :2], local.transforms[..., 2]
        # tilt.f90: given a z-factor file, each patch uses its own z factors from the local file,
        # zero when the file has none
        zf = None if z_factors is None else local.z_factors
    t = np.radians(np.asarray(tilts_deg, float)[None] + dt)
    a = np.radians(xt[None] + dxt)
    xz, yz = (0.0, 0.0) if zf is None else (zf[..., 0], zf[..., 1])
    zero = np.zeros_like(t)
    proj = np.stack(
        [
            np.stack([np.cos(t), np.sin(a) * np.sin(t), np.cos(a) * np.sin(t) + xz], -1),
            np.stack([zero, np.cos(a), -np.sin(a) + yz], -1),
        ],
        -2,
    )
    return np.einsum("pvij,pvjk->pvik", a_mat, proj), np.asarray(shift, float)


def with_x_tilts(
    mats: Float[np.ndarray, "patches views 2 3"], xtilts_deg: Float[np.ndarray, " views"]
) -> Float[np.ndarray, "patches views 2 3"]:
    """Per-patch maps of a centred point applied after tilting it about X by each view's X-axis
    tilt a (degrees): ``M Rx(a)``, ``Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]``,
    which turns the rigid ``[[cos t, 0, sin t], [0, 1, 0]]`` into tilt's projection with X-axis
    tilt (``local_projection_matrices`` without z factors)."""
    a = np.radians(np.asarray(xtilts_deg, float))
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    rx = np.stack(
        [np.stack([one, zero, zero], -1), np.stack([zero, c, -s], -1), np.stack([zero, s, c], -1)], -2
    )
    return np.einsum("pvij,vjk->pvik", mats, rx)


def uniform_patches(
    mats: Float[np.ndarray, "1 views 2 3"],
    shifts: Float[np.ndarray, "1 views 2"],
    image_size: tuple[float, float],
) -> tuple[LocalAlignment, np.ndarray, np.ndarray]:
    """One affine map per view (``local_projection_matrices(None, ...)``'s) as a 2 x 2 grid of
    equal patches over an ``image_size`` (nx, ny) image, for the local back-projector: (grid,
    mats (4, V, 2, 3), shifts (4, V, 2)), as ``core.shape_apply.shape_patches`` returns them."""
    n_views = mats.shape[1]
    grid = LocalAlignment(
        (2, 2),
        (0.0, 0.0),
        (float(image_size[0]), float(image_size[1])),
        0.0,
        np.zeros((4, n_views)),
        np.broadcast_to(np.eye(2, 3), (4, n_views, 2, 3)).copy(),
    )
    return grid, np.repeat(mats, 4, axis=0), np.repeat(shifts, 4, axis=0)


def project_through_local(
    local: LocalAlignment | None,
    xyz: Float[np.ndarray, "points 3"],
    tilts_deg: Float[np.ndarray, " views"],
    image_size: tuple[float, float],
    xtilts_deg: Float[np.ndarray, " views"] | None = None,
    z_factors: Float[np.ndarray, "views 2"] | None = None,
) -> Float[np.ndarray, "views points 2"]:
    """Aligned-stack positions (centred, pixels) of centred 3-D points (n, 3), as tilt computes them."""
    xyz = np.asarray(xyz, float)
    mats, shifts = local_projection_matrices(local, tilts_deg, xtilts_deg, z_factors)
    if local is None:
        return np.einsum("vij,nj->vni", mats[0], xyz) + shifts[0][:, None]
    patches, weights = patch_weights(local, xyz[:, :2] + np.asarray(image_size) / 2)
    pos = np.einsum("pvij,nj->pvni", mats, xyz) + shifts[:, :, None]  # (P, V, n, 2)
    n = np.arange(len(xyz))
    return sum(weights[None, :, k, None] * pos[patches[:, k], :, n].transpose(1, 0, 2) for k in range(4))


def fit_markers_through_local(
    local: LocalAlignment | None,
    aligned_xy: Float[np.ndarray, "views markers 2"],
    mask: Bool[np.ndarray, "views markers"],
    tilts_deg: Float[np.ndarray, " views"],
    image_size: tuple[float, float],
    start_xyz: Float[np.ndarray, "markers 3"],
    xtilts_deg: Float[np.ndarray, " views"] | None = None,
    z_factors: Float[np.ndarray, "views 2"] | None = None,
    rounds: int = 4,
    point_weights: Float[np.ndarray, "views markers"] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each marker's 3-D position fitted to its aligned positions through the local alignment.

    aligned_xy: (n_views, n_markers, 2) measured points mapped into the globally aligned stack,
    centred. For fixed patch weights the position is linear in X, so each marker is a 3-unknown
    linear least squares; the weights are then recomputed from the new (x, y), ``rounds`` times.
    ``point_weights``: each point's weight in that fit (a robust fit's, squared; default 1 on
    ``mask``; a marker whose points all weigh 0 is fitted with each alike). Returns (xyz
    (n_markers, 3) centred, residuals (n_views, n_markers, 2), NaN where missing).
    """
    mats, shifts = local_projection_matrices(local, tilts_deg, xtilts_deg, z_factors)
    xyz = np.array(start_xyz, float)
    w = np.asarray(mask, float)
    if point_weights is not None:  # a marker none of whose points carries weight: each point alike
        weighted = np.where(mask, point_weights, 0.0)
        w = np.where((weighted.sum(axis=0) > 0)[None], weighted, w)
    n = np.arange(xyz.shape[0])
    for _ in range(rounds):
        if local is None:
            m_eff = np.broadcast_to(mats[0][:, None], (len(tilts_deg), len(n), 2, 3))
            d_eff = np.broadcast_to(shifts[0][:, None], (len(tilts_deg), len(n), 2))
        else:
            patches, weights = patch_weights(local, xyz[:, :2] + np.asarray(image_size) / 2)
            m_eff = sum(weights[:, k, None, None, None] * mats[patches[:, k]] for k in range(4)).transpose(
                1, 0, 2, 3
            )
            d_eff = sum(weights[:, k, None, None] * shifts[patches[:, k]] for k in range(4)).transpose(
                1, 0, 2
            )
        target = np.where(mask[..., None], aligned_xy, 0.0) - d_eff  # (V, M, 2)
        normal = np.einsum("vm,vmia,vmib->mab", w, m_eff, m_eff)
        rhs = np.einsum("vm,vmia,vmi->ma", w, m_eff, target)
        # A tiny ridge keeps a marker seen at one angle only solvable (its z is then 0 + ridge).
        ridge = 1e-12 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(3)
        xyz = np.linalg.solve(normal + ridge, rhs[..., None])[..., 0]
    predicted = np.einsum("vmij,mj->vmi", m_eff, xyz) + d_eff
    return xyz, np.where(mask[..., None], predicted - aligned_xy, np.nan)


def local_sampling(
    local: LocalAlignment | None,
    tilts_deg: Float[np.ndarray, " views"],
    grid_shape: tuple[int, int],
    binning: int = 1,
    xtilts_deg: Float[np.ndarray, " views"] | None = None,
    z_factors: Float[np.ndarray, "views 2"] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What each voxel column of a (NY, NX) grid of ``binning``-pixel voxels samples, for
    ``lmalign_jax.recon.local_backprojection`` (its ``LocalSampling`` fields, in order).

    Returns (mats (P, V, 2, 3), shifts (P, V, 2) in binned pixels, patches (NY, NX, 4),
    weights (NY, NX, 4)); the weights are tilt's, from each column centre in unbinned pixels.
    ``local`` None: one patch, the global projection.
    """
    mats, shifts = local_projection_matrices(local, tilts_deg, xtilts_deg, z_factors)
    if local is None:
        ny, nx = grid_shape
        patches = np.zeros((ny, nx, 4), np.int32)
        weights = np.zeros((ny, nx, 4))
        weights[..., 0] = 1.0
        return mats, shifts / float(binning), patches, weights
    return column_sampling(local, mats, shifts, grid_shape, binning)


def column_sampling(
    grid: LocalAlignment,
    mats: Float[np.ndarray, "patches views 2 3"],
    shifts: Float[np.ndarray, "patches views 2"],
    grid_shape: tuple[int, int],
    binning: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`local_sampling` of any per-patch maps (position = mats X + shifts, unbinned pixels) on
    ``grid``'s patch layout: (mats, shifts in binned pixels, patches (NY, NX, 4), weights (NY, NX,
    4)), tilt's weights from each column centre in unbinned pixels."""
    ny, nx = grid_shape
    b = float(binning)
    gx, gy = np.meshgrid((np.arange(nx) + 0.5) * b, (np.arange(ny) + 0.5) * b)
    patches, weights = patch_weights(grid, np.column_stack([gx.ravel(), gy.ravel()]))
    return mats, shifts / b, patches.reshape(ny, nx, 4).astype(np.int32), weights.reshape(ny, nx, 4)
