"""IMOD-like model: jou plus per-view compression, x-stretch, skew and a beam tilt.

    p - c = s R(alpha) K(e, k) P Rx(beta) Ry(theta) diag(1, 1, comp) X + d

``comp`` scales the specimen thickness (z) in each view, ``K`` is an image distortion with
x-stretch ``e`` and skew ``k`` (the x and y axes turned by +k/2 and -k/2, so the angle
between them changes by k), and ``beta`` tilts the beam about x after the specimen tilt
(one value for all views). These are the distortions IMOD's tiltalign offers.

Gauge. Because K acts on the image, per-view stretch and skew absorb an affine change of the
markers' z, z -> (1 + eps) z + b x + c y, exactly: scaling or x-shearing z turns each view's
projection direction (a new tilt) and changes its length (a new x-stretch), and a y-shear of
z adds y to the image x row (absorbed by skew and rotation). All three vanish at zero tilt,
so fixing the reference view cannot remove them; with tilt and x-stretch free per view they
are fixed at the view of largest nominal |tilt| (tilt and x-stretch there, and skew when it
is free too: ``far_gauge``). The fit's residuals do not change; the reported tilts are those
whose far-view tilt is the nominal one.
"""

import jax.numpy as jnp

from ..geometry import rotate2, rotate_x, rotate_y
from ._base import ProjectionModel


def distort(stretch, skew, u, v):
    """K (u, v): the x axis maps to (1 + e)(cos k/2, sin k/2), the y axis to (sin k/2, cos k/2)."""
    c, s = jnp.cos(skew / 2), jnp.sin(skew / 2)
    return (1 + stretch) * c * u + s * v, (1 + stretch) * s * u + c * v


def project(view, xyz):
    """Image position (2, ...).

    view = (scale, rotation, tilt, dx, dy, compression, xstretch, skew, beamtilt).
    """
    scale, rotation, tilt, dx, dy, compression, stretch, skew, beamtilt = view
    x, y, z = xyz
    u, v, _ = rotate_x(beamtilt, *rotate_y(tilt, x, y, compression * z))
    px, py = rotate2(rotation, *distort(stretch, skew, u, v))
    return jnp.stack([scale * px + dx, scale * py + dy])


MODEL = ProjectionModel(
    name="imod",
    parameters=("scale", "rotation", "tilt", "dx", "dy", "compression", "xstretch", "skew", "beamtilt"),
    kinds=("ratio", "angle", "angle", "length", "length", "ratio", "ratio", "angle", "angle"),
    neutral=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0),
    default_modes=("free", "free", "free", "free", "free", "fixed", "free", "free", "fixed"),
    gauge=("scale", "dx", "dy", "compression", "xstretch", "skew"),
    gauge_marker_z=True,
    far_gauge=(("tilt", "xstretch"), ("tilt", "xstretch", "skew")),
    # tiltalign's relative group sizes (cos(tilt) ** power): (name, blocks, linear)
    group_size_power=(
        ("tilt", 0.0, 1.0),
        ("compression", 0.0, 1.0),
        ("xstretch", 1.5, 1.5),
        ("skew", 1.0, 0.0),
    ),
    project=project,
    description="jou plus per-view compression, x-stretch, skew and beam tilt (IMOD tiltalign's options)",
)
