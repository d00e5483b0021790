"""Luther et al. (paper eq. 1): p - c = R(alpha) P Ry(theta) diag(mx, my, mz) X + d.

A per-view diagonal magnification acts on the specimen before the tilt, so the three axes
may scale differently in each view.
"""

import jax.numpy as jnp

from ..geometry import rotate2, rotate_y
from ._base import ProjectionModel


def project(view, xyz):
    """Image position (2, ...); view = (rotation, tilt, mag_x, mag_y, mag_z, dx, dy)."""
    rotation, tilt, mx, my, mz, dx, dy = view
    x, y, z = xyz
    u, v, _ = rotate_y(tilt, mx * x, my * y, mz * z)
    px, py = rotate2(rotation, u, v)
    return jnp.stack([px + dx, py + dy])


MODEL = ProjectionModel(
    name="luther",
    parameters=("rotation", "tilt", "mag_x", "mag_y", "mag_z", "dx", "dy"),
    kinds=("angle", "angle", "ratio", "ratio", "ratio", "length", "length"),
    neutral=(0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0),
    default_modes=("free", "free", "free", "free", "fixed", "free", "free"),
    gauge=("mag_x", "mag_y", "mag_z", "dx", "dy"),
    gauge_marker_z=True,
    project=project,
    description="per-view diagonal magnification before the tilt (Luther et al., paper eq. 1)",
)
