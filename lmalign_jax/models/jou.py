"""Jou et al. eq. 3 (the default): p - c = s R(alpha) P Ry(theta) X + d."""

import jax.numpy as jnp

from ..geometry import project_z, rot2, rot_y
from ._base import ProjectionModel


def project(view, xyz):
    """Image position (2,) of marker ``xyz`` (3,) in a view (scale, rotation, tilt, dx, dy)."""
    scale, rotation, tilt, dx, dy = view
    return scale * (rot2(rotation) @ project_z(rot_y(tilt) @ xyz)) + jnp.stack([dx, dy])


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
