"""Diez et al. (paper eq. 2): p - c = s R(alpha) P Ry(theta) Rx(phi) X, no shift.

``phi`` is the declination of the tilt axis out of the x-y plane, one value for all views
by default. The model has no shift term, so observations must already be centred.
"""

import jax.numpy as jnp

from ..geometry import rotate2, rotate_x, rotate_y
from ._base import ProjectionModel


def project(view, xyz):
    """Image position (2, ...); view = (scale, rotation, tilt, declination)."""
    scale, rotation, tilt, declination = view
    u, v, _ = rotate_y(tilt, *rotate_x(declination, *xyz))
    px, py = rotate2(rotation, u, v)
    return jnp.stack([scale * px, scale * py])


MODEL = ProjectionModel(
    name="diez",
    parameters=("scale", "rotation", "tilt", "declination"),
    kinds=("ratio", "angle", "angle", "angle"),
    neutral=(1.0, 0.0, 0.0, 0.0),
    default_modes=("free", "free", "free", "shared"),
    gauge=("scale",),
    gauge_marker_z=False,
    project=project,
    shift_parameters=None,
    description="global tilt-axis declination, per-view scale and rotation, no shift (Diez et al., eq. 2)",
)
