"""Predicted misregistration: how far a tomogram point's projections are from where they belong.

A point X = (x, y, z) of the tomogram projects in view j to p_j(X) = project(v_j, X) (the
fitted model, MODEL.md). The alignment's uncertainty makes each p_j(X) uncertain; to first
order its covariance is G_j C_j G_j^T with G_j = dp_j/dv_j (2, k) and C_j the covariance of
view j's parameters in the reporting frame (``covariance.alignment_covariance``). The
misregistration of X is the root mean square over the fitted views of the standard error of
its projected position (the 2-D length, not one coordinate):

    m(X) = sqrt( (1/n_views) sum_j trace(G_j C_j G_j^T) )          pixels

Only the per-view blocks C_j are needed, so the cost is O(n_views k^2) per point, linear in the
number of points; points are processed in fixed-size batches (``jax.lax.map``) so memory stays
bounded.

Tomogram coordinates (the convention of ``recon`` and MODEL.md "Pixels and the tomogram"):
pixels of the tilt series (unbinned), origin at the tomogram centre, which is the specimen
origin of the result (it projects onto the image centre in the reference view; the markers
have mean z 0); x across the tilt axis, y along it, z along the beam at zero tilt, with the
sign that makes the aligned x of a point x cos(theta) + z sin(theta). Voxel (k, j, i) of a
tomogram (NZ, NY, NX) is the point (i + 0.5 - NX/2, j + 0.5 - NY/2, k + 0.5 - NZ/2), times
the binning.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from .. import compiled_cache
from ..core.result import AlignmentResult
from ..models import ProjectionModel
from .covariance import AlignmentCovariance, alignment_covariance

_POINT_BATCH = 4096

#: What the numbers mean, for records and reports.
DEFINITION = (
    "predicted misregistration: standard error (1 sigma, 2-D length) of a tomogram point's "
    "projected position, root mean square over the fitted views, px; from the alignment's "
    "parameter covariance in the frame the alignment is reported in"
)
#: The tomogram coordinates points are given in.
COORDINATES = (
    "px of the tilt series (unbinned) from the tomogram centre; x across the tilt axis, y along "
    "it, z along the beam at zero tilt, signed so that a point's aligned x is x cos(tilt) + "
    "z sin(tilt) (IMOD's convention)"
)


@partial(jax.jit, static_argnames=("model",))
def _misregistration_core(views, covariance, points, *, model: ProjectionModel):
    """m(X) (p,) for points (p, 3), views (n, k), covariance (n, k, k)."""

    def one_point(point):
        jac = jax.vmap(jax.jacfwd(lambda v: model.project(v, point)))(views)  # (n, 2, k)
        variance = jnp.einsum("nik,nkl,nil->n", jac, covariance, jac)
        return jnp.sqrt(jnp.maximum(jnp.mean(variance), 0.0))

    return jax.lax.map(one_point, points, batch_size=_POINT_BATCH)


def misregistration(
    result: AlignmentResult | AlignmentCovariance, points_xyz: Float[np.ndarray, "points 3"]
) -> Float[np.ndarray, " points"]:
    """Predicted misregistration (px) of tomogram points ``points_xyz`` (n, 3), in pixels of the
    tilt series from the tomogram centre (module docstring): the standard error of each point's
    projected position, root mean square over the fitted views. ``result``: a solved alignment
    (its covariance is computed here) or its ``AlignmentCovariance`` (reuse it for many calls)."""
    cov = result if isinstance(result, AlignmentCovariance) else alignment_covariance(result)
    points = np.asarray(points_xyz, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points_xyz must have shape (n, 3), got {points.shape}")
    if points.shape[0] == 0:
        return np.zeros(0)
    with jax.enable_x64(True):
        values = compiled_cache.call(
            _misregistration_core,
            np.asarray(cov.views, np.float64),
            np.asarray(cov.view_covariance, np.float64),
            points,
            model=cov.model,
        )
        return np.asarray(values, np.float64)


def map_extent(image_size, markers_xyz: np.ndarray) -> tuple[float, float, float]:
    """Half-widths (px) of the coarse map: the image's half size in x and y; in z 1.5 times
    the markers' largest |z|, at least an eighth of the smaller image side."""
    nx, ny = (float(s) for s in image_size)
    z = float(np.max(np.abs(markers_xyz[:, 2]))) if len(markers_xyz) else 0.0
    return nx / 2, ny / 2, max(1.5 * z, min(nx, ny) / 8)


def misregistration_map(
    cov: AlignmentCovariance, image_size, markers_xyz: np.ndarray, *, n_xy: int = 9, n_z: int = 9
) -> dict:
    """The coarse map stored in the record: m on an ``n_xy`` x ``n_xy`` grid of (x, y) at z = 0
    (``xy_map_px`` (n_xy rows over y, n_xy columns over x)) and along z at x = y = 0
    (``z_profile_px`` (n_z,)); coordinates in px from the tomogram centre."""
    half_x, half_y, half_z = map_extent(image_size, markers_xyz)
    x = np.linspace(-half_x, half_x, n_xy)
    y = np.linspace(-half_y, half_y, n_xy)
    z = np.linspace(-half_z, half_z, n_z)
    gx, gy = np.meshgrid(x, y)
    plane = np.column_stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)])
    line = np.column_stack([np.zeros(n_z), np.zeros(n_z), z])
    values = misregistration(cov, np.concatenate([plane, line]))
    return {
        "x_px": x.tolist(),
        "y_px": y.tolist(),
        "xy_map_px": values[: gx.size].reshape(gx.shape).tolist(),
        "z_px": z.tolist(),
        "z_profile_px": values[gx.size :].tolist(),
    }
