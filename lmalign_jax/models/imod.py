"""IMOD-like model: jou plus per-view compression, x-stretch, skew and a beam tilt.

    p - c = s R(alpha) K(e, k) P Rx(beta) Ry(theta) diag(1, 1, comp) X + d

``comp`` scales the specimen thickness (z) in each view, ``K`` is an image distortion with
x-stretch ``e`` and skew ``k`` (the x and y axes turned by +k/2 and -k/2, so the angle
between them changes by k), and ``beta`` tilts the beam about x after the specimen tilt
(one value for all views). These are the distortions IMOD's tiltalign offers.
"""

import jax.numpy as jnp

from ..geometry import project_z, rot2, rot_x, rot_y
from ._base import ProjectionModel


def distortion(stretch, skew):
    """Image distortion K (2, 2): columns are the images of the x and y axes."""
    c, s = jnp.cos(skew / 2), jnp.sin(skew / 2)
    return jnp.array([[(1 + stretch) * c, s], [(1 + stretch) * s, c]])


def project(view, xyz):
    """Image position (2,); view = (scale, rotation, tilt, dx, dy, compression, xstretch, skew, beamtilt)."""
    scale, rotation, tilt, dx, dy, compression, stretch, skew, beamtilt = view
    compressed = xyz * jnp.stack([jnp.ones_like(compression), jnp.ones_like(compression), compression])
    flat = project_z(rot_x(beamtilt) @ (rot_y(tilt) @ compressed))
    return scale * (rot2(rotation) @ (distortion(stretch, skew) @ flat)) + jnp.stack([dx, dy])


MODEL = ProjectionModel(
    name="imod",
    parameters=("scale", "rotation", "tilt", "dx", "dy", "compression", "xstretch", "skew", "beamtilt"),
    kinds=("ratio", "angle", "angle", "length", "length", "ratio", "ratio", "angle", "angle"),
    neutral=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0),
    default_modes=("free", "free", "free", "free", "free", "fixed", "free", "free", "fixed"),
    gauge=("scale", "dx", "dy", "compression", "xstretch", "skew"),
    gauge_marker_z=True,
    project=project,
    description="jou plus per-view compression, x-stretch, skew and beam tilt (IMOD tiltalign's options)",
)
