"""Jou et al. eq. 3 (the default): p - c = s R(alpha) P Ry(theta) X + d."""

import jax.numpy as jnp

from ..geometry import rot_y, rotate2, rotate_y
from ._base import ProjectionModel


def project(view, xyz):
    """Image position (2, ...) of markers ``xyz`` (3, ...); view = (scale, rotation, tilt, dx, dy)."""
    scale, rotation, tilt, dx, dy = view
    u, v, _ = rotate_y(tilt, *xyz)
    px, py = rotate2(rotation, u, v)
    return jnp.stack([scale * px + dx, scale * py + dy])


def tilt_offset(views, xyz, delta):
    """Equivalent solution with every tilt increased by ``delta``: markers rotated by Ry(-delta)."""
    views = views.at[:, 2].add(delta)
    return views, xyz @ rot_y(-delta).T


MODEL = ProjectionModel(
    name="jou",
    parameters=("scale", "rotation", "tilt", "dx", "dy"),
    kinds=("ratio", "angle", "angle", "length", "length"),
    neutral=(1.0, 0.0, 0.0, 0.0, 0.0),
    default_modes=("free", "free", "free", "free", "free"),
    gauge=("scale", "dx", "dy"),
    gauge_marker_z=True,
    project=project,
    tilt_offset=tilt_offset,
    description="per-view scale, in-plane rotation, tilt and 2-D shift (Jou et al. eq. 3)",
)
