"""A shape model's alignment (``models.shape``) as patches of tilt's kind, for the reconstruction.

The shape model projects a point through its per-view height ``z_j = z (1 + k_j / L) + q_j(x, y)``:
``p - c = s R(alpha) (x cos t + z_j sin t, y) + d``. Through the record's ``.xf`` (``A``, ``D``),
its position in the globally aligned stack is ``Q(X) = A [s R (x cos t + z_j sin t, y) + d] + D``:
affine in z for every column (x, y), quadratic in x and y through ``q_j``. On a grid of patches
``SHAPE_PATCH_PX`` apart each patch carries the tangent of that map at its centre (exact in z,
the column's height scale ``1 + k_j / L`` included), and tilt's bilinear patch weights blend the
positions (``core.local_apply``), so the local back-projector applies the shape. Between centres
the blend of tangents departs from ``q_j sin t`` by at most ``beta h^2 / 4`` (``beta`` the sum of
a view's quadratic coefficients over ``L^2``, times ``|sin t|``, ``h`` the spacing): the spacing is
chosen to keep that within ``tolerance_px`` (0.05 px by default; 128 px serves dome coefficients
up to 12 px), but no finer than ``MAX_PATCHES_PER_AXIS`` patches across the image.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Bool, Float

from ..deformation_parameters import rigid_part_through_xf
from ..io.imod_local import LocalAlignment
from ..models.shape import SHAPE_LENGTH_PX

__all__ = ["MAX_PATCHES_PER_AXIS", "SHAPE_PATCH_PX", "shape_patches"]

#: Largest spacing (unbinned pixels) of the patches that carry a shape alignment.
SHAPE_PATCH_PX = 128.0
#: Most patches across each axis of the image (memory: patches x views x 8 values).
MAX_PATCHES_PER_AXIS = 64


def shape_patches(
    parameters: dict,
    fitted: Bool[np.ndarray, " views"],
    tilts_deg: Float[np.ndarray, " views"],
    xf: Float[np.ndarray, "views 2 3"],
    image_size: tuple[float, float],
    tolerance_px: float = 0.05,
) -> tuple[LocalAlignment, np.ndarray, np.ndarray]:
    """The shape alignment of a record as patches: (grid, mats (P, V, 2, 3), shifts (P, V, 2)).

    parameters: the record's per-view parameters (name -> (V,) values: scale, rotation and tilt in
    degrees, dx, dy, shrink, dome_* in pixels); fitted: (V,) the views the fit solved (the others
    are projected rigidly at ``tilts_deg``, the record's tilts, as the global reconstruction does);
    xf: the record's (V, 2, 3) transforms; image_size: (nx, ny) unbinned pixels; tolerance_px: the
    largest departure of a blended position from the model's (module docstring). ``grid`` is a
    unit local alignment whose patch layout (``n_patches``, ``start``, ``spacing``, image
    corner origin) ``core.local_apply.patch_weights`` reads; position = mats X + shifts for a
    centred point X, unbinned pixels, as ``core.local_apply.local_projection_matrices``.
    """
    n_views = len(tilts_deg)

    def per_view(name, default):
        return np.where(fitted, np.asarray(parameters[name], float), default)

    t = np.radians(np.where(fitted, np.asarray(parameters["tilt"], float), tilts_deg))
    c, s = np.cos(t), np.sin(t)
    length = SHAPE_LENGTH_PX
    k, bxx, bxy, byy = (per_view(n, 0.0) for n in ("shrink", "dome_xx", "dome_xy", "dome_yy"))
    beta = float(np.max((np.abs(bxx) + np.abs(bxy) + np.abs(byy)) * np.abs(s), initial=0.0)) / length**2
    step = SHAPE_PATCH_PX if beta == 0 else min(SHAPE_PATCH_PX, math.sqrt(4 * tolerance_px / beta))
    nx, ny = (min(MAX_PATCHES_PER_AXIS, max(2, math.ceil(size / step) + 1)) for size in image_size)
    spacing = tuple(size / (n - 1) for size, n in zip(image_size, (nx, ny), strict=True))
    centres_x = np.arange(nx) * spacing[0] - image_size[0] / 2
    centres_y = np.arange(ny) * spacing[1] - image_size[1] / 2
    cx, cy = (c.ravel() for c in np.meshgrid(centres_x, centres_y))  # (P,), X fastest
    outer, offset = rigid_part_through_xf(parameters, fitted, xf)  # (V, 2, 2), (V, 2)
    a, b = cx[:, None] / length, cy[:, None] / length  # (P, 1)
    q = bxx * a * a + bxy * a * b + byy * b * b  # (P, V)
    qx, qy = (2 * bxx * a + bxy * b) / length, (bxy * a + 2 * byy * b) / length
    zero, one = np.zeros_like(q), np.ones_like(q)
    inner = np.stack(  # the tangent of (x cos t + z_j sin t, y) at each centre: (P, V, 2, 3)
        [
            np.stack([c + s * qx, s * qy, s * (1 + k / length) * one], -1),
            np.stack([zero, one, zero], -1),
        ],
        -2,
    )
    inner_shift = np.stack([s * (q - qx * cx[:, None] - qy * cy[:, None]), zero], -1)  # (P, V, 2)
    mats = np.einsum("vij,pvjk->pvik", outer, inner)
    shifts = np.einsum("vij,pvj->pvi", outer, inner_shift) + offset[None]
    grid = LocalAlignment(
        (nx, ny),
        (image_size[0] / 2 + centres_x[0], image_size[1] / 2 + centres_y[0]),
        spacing,
        0.0,
        np.zeros((nx * ny, n_views)),
        np.broadcast_to(np.eye(2, 3), (nx * ny, n_views, 2, 3)).copy(),
    )
    return grid, mats, shifts
