"""What an IMOD local alignment file holds for a solved alignment, patch by patch: each patch's
transform (and, for a projection with a height term, its z factors) fitted to where the patch's
solution puts points into the globally aligned stack; and the global ``.xf`` and z factors of a
flattened series, fitted the same way (:func:`flattened_pair`). Used by
:func:`lmalign_jax.core.local.align_local` and by ``workflow.local`` for a flattened series."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..io.imod_local import ZFAC_NEGLIGIBLE
from ..models import ProjectionModel
from .result import AlignmentResult, fit_image_transforms

__all__ = ["project_points", "global_z_factors", "flattened_pair", "patch_file_maps"]

_PROJECTORS: dict = {}


def project_points(model: ProjectionModel, views: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """(n_views, n_points, 2) centred image positions of points xyz (n, 3) in views (n_views, k), float64
    (one compiled call per model and shape: op-by-op dispatch compiled every operation anew)."""
    if model not in _PROJECTORS:
        _PROJECTORS[model] = jax.jit(
            lambda v, x: jnp.moveaxis(model.project(v.T[:, :, None], x.T[:, None, :]), 0, -1)
        )
    with jax.enable_x64(True):
        out = _PROJECTORS[model](jnp.asarray(views, jnp.float64), jnp.asarray(xyz, jnp.float64))
        return np.asarray(out, np.float64)


def _ideal_to_aligned(
    model,
    patch_views,
    global_xf,
    centre,
    size,
    z_range,
    with_z: bool = False,
    tilt_change_rad: float = 0.0,
    x_tilt_rad: float = 0.0,
):
    """(n_views, 2, 3) local transforms: patch's ideal projection -> globally aligned position, and
    with ``with_z`` the patch's (n_views, 2) z factors (else None).

    On a 3 x 3 grid of the patch at the two heights ``z_range``, the positions its solution puts
    into the aligned stack are fitted by tilt's projection of the patch (the patch's tilt): without
    z factors ``A (x cos t + z sin t, y) + D`` (a projection that varies with height beyond that
    formula, luther's magnifications, is then spread over x and y), with them
    ``A (x cos t + z (sin t + xz), y + z yz) + D``, linear in (A, D, A (xz, yz)), exact where the
    projection is affine in the point (every model that takes a local alignment), as tiltalign
    writes a patch's z factors with its transform. ``tilt_change_rad`` c: tilt's frame is a
    flattened series' (its .tlt adds c to the tilts, its volume is the solved one turned by c about
    y): the same positions, heights measured in that frame, as ``workflow.record_markers.z_factors``
    regresses the global ones. ``x_tilt_rad`` a: tilt also tilts that volume about X by a (its
    .xtilt), so a point's projection is the ideal one of the point turned back by a, and the height
    its z factors multiply is the tilted volume's, ``z cos a - y sin a``."""
    gx, gy = np.meshgrid(np.linspace(-0.5, 0.5, 3) * size[0], np.linspace(-0.5, 0.5, 3) * size[1])
    pts = np.stack([gx.ravel() + centre[0], gy.ravel() + centre[1]], 1)
    xyz = np.concatenate([np.column_stack([pts, np.full(len(pts), z)]) for z in z_range])  # centred
    raw = project_points(model, patch_views, xyz)  # (V, n, 2) centred raw positions under the patch solution
    aligned = np.einsum("vij,vnj->vni", global_xf[:, :, :2], raw) + global_xf[:, None, :, 2]
    c = tilt_change_rad
    x = xyz[:, 0] * np.cos(c) - xyz[:, 2] * np.sin(c)  # tilt's frame (c = 0: the solved one)
    z = xyz[:, 0] * np.sin(c) + xyz[:, 2] * np.cos(c)
    tilt = patch_views[:, model.index("tilt")] + c
    height = z * np.cos(x_tilt_rad) - xyz[:, 1] * np.sin(x_tilt_rad)  # what tilt's z factors multiply
    ideal = np.stack(
        [
            x[None] * np.cos(tilt)[:, None] + z[None] * np.sin(tilt)[:, None],
            np.broadcast_to(xyz[:, 1], (len(tilt), len(xyz))),
        ],
        -1,
    )
    if not with_z:
        return fit_image_transforms(ideal, aligned), None
    # aligned = [ideal, z] (centred per view, for the conditioning) @ C: C's rows A^T and w = A (xz, yz)
    height = np.broadcast_to(height, ideal.shape[:2])
    design = np.concatenate([ideal, height[..., None]], -1)
    d_mean, a_mean = design.mean(axis=1, keepdims=True), aligned.mean(axis=1, keepdims=True)
    d, q = design - d_mean, aligned - a_mean
    dt = np.swapaxes(d, 1, 2)
    coef = np.linalg.solve(dt @ d, dt @ q)  # (V, 3, 2)
    a = np.swapaxes(coef[:, :2], 1, 2)  # (V, 2, 2)
    w = coef[:, 2]  # (V, 2)
    shift = a_mean[:, 0] - np.einsum("vij,vj->vi", a, d_mean[:, 0, :2]) - w * d_mean[:, 0, 2:]
    zfac = np.einsum("vij,vj->vi", np.linalg.pinv(a), w)  # (a degenerate patch map: no traceback)
    return np.concatenate([a, shift[:, :, None]], axis=2), zfac


def _global_pair(result: AlignmentResult, tilt_change_deg: float, x_tilt_deg: float = 0.0):
    """(M (V, 2, 3), z factors (V, 2)) fitted over the solved markers' field: the map of tilt's
    projection with z factors (in a flattened series' frame with ``tilt_change_deg`` and
    ``x_tilt_deg``, the X-axis tilt its .xtilt gives tilt) into the
    stack aligned by ``result.xf`` (:func:`_ideal_to_aligned`); None for no markers."""
    xyz = result.markers
    if not len(xyz):
        return None
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    size = (max(float(hi[0] - lo[0]), 1.0), max(float(hi[1] - lo[1]), 1.0))
    z_range = (float(lo[2]) - 1.0, float(hi[2]) + 1.0)
    centre = (float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2)
    c = np.radians(tilt_change_deg)
    a = np.radians(x_tilt_deg)
    m, zfac = _ideal_to_aligned(result.model, result.views, result.xf, centre, size, z_range, True, c, a)
    return m, np.where(np.isfinite(zfac), zfac, 0.0)


def global_z_factors(result: AlignmentResult) -> np.ndarray | None:
    """(n_views, 2) z factors of ``result``'s global alignment as tilt takes them with its ``.xf``
    and ``.tlt`` (the height-dependent part of its projection beyond tilt's formula: luther's
    magnifications, imod's compression), fitted over the solved markers' field; None when all are
    below :data:`~lmalign_jax.io.imod_local.ZFAC_NEGLIGIBLE` (jou, imod without compression), and
    for the deformation models, whose records carry none (their height term is not affine: a
    shape's dome), as ``workflow.record_markers.z_factors`` writes the ``.zfac``."""
    if result.model.regularization is not None:
        return None
    pair = _global_pair(result, 0.0)
    if pair is None:
        return None
    return pair[1] if np.abs(pair[1]).max() >= ZFAC_NEGLIGIBLE else None


def flattened_pair(
    result: AlignmentResult, tilt_change_deg: float, x_tilt_deg: float = 0.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """A flattened series' ``.xf`` (V, 2, 3) and z factors (V, 2) (its ``.tlt`` adds
    ``tilt_change_deg`` c, its volume is the solved one turned by c), fitted together so that tilt
    places every point where ``result``'s model projects it: the solved ``.xf`` with z factors
    regressed in the turned frame misses by about |x| sin c |xz| (the turned height's x part, which
    no z factor holds), the pair fitted jointly not at all where the projection is affine in the
    point. ``x_tilt_deg``: its ``.xtilt`` value (tilt's X-axis tilt), which changes the height
    tilt's z factors multiply. None where ``result`` has no z factors (:func:`global_z_factors`: the
    solved ``.xf`` is then exact in any frame)."""
    if global_z_factors(result) is None or (tilt_change_deg == 0.0 and x_tilt_deg == 0.0):
        return None
    m, zfac = _global_pair(result, tilt_change_deg, x_tilt_deg)
    # aligned = M (tilt's projection): the new .xf is M^-1 after the solved one
    inverse = np.linalg.inv(m[:, :, :2])
    a = inverse @ result.xf[:, :, :2]
    d = np.einsum("vij,vj->vi", inverse, result.xf[:, :, 2] - m[:, :, 2])
    return np.concatenate([a, d[:, :, None]], axis=2), zfac


def patch_file_maps(
    result: AlignmentResult,
    views: np.ndarray,
    patches,
    with_z: bool,
    tilt_change_deg: float = 0.0,
    global_xf: np.ndarray | None = None,
    x_tilt_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the local file holds for each patch: (transforms (P, V, 2, 3), z factors (P, V, 2) with
    ``with_z``, else None), from the patches' full views (P, V, k) and their reports (centre, box),
    over the solved markers' heights; ``tilt_change_deg``: in a flattened series' frame
    (:func:`_ideal_to_aligned`), into the stack aligned by ``global_xf`` (V, 2, 3; default
    ``result.xf``; a flattened series': :func:`flattened_pair`); ``x_tilt_deg``: its ``.xtilt``
    value."""
    xf = result.xf if global_xf is None else global_xf
    centre_px = result.observations.center
    z_range = (float(result.markers[:, 2].min()) - 1.0, float(result.markers[:, 2].max()) + 1.0)
    maps = [
        _ideal_to_aligned(
            result.model,
            views[p],
            xf,
            (report.centre[0] - centre_px[0], report.centre[1] - centre_px[1]),
            report.box,
            z_range,
            with_z,
            np.radians(tilt_change_deg),
            np.radians(x_tilt_deg),
        )
        for p, report in enumerate(patches)
    ]
    transforms = np.stack([m[0] for m in maps])
    return transforms, (np.stack([m[1] for m in maps]) if with_z else None)
