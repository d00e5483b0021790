"""jou with a slowly changing specimen shape: per-view thinning and doming of the markers' z.

    z_j = z (1 + k_j / L) + q_j(x / L, y / L),   q_j = b_xx a^2 + b_xy a b + b_yy b^2
    p - c = s R(alpha) P Ry(theta) (x, y, z_j) + d

with ``L = SHAPE_LENGTH_PX`` (1000 px): ``shrink`` (k) is the change of z, pixels, of a point
1000 px above the centre plane, and each ``dome_*`` coefficient the z displacement, pixels, of
a point 1000 px from the centre. The specimen thus thins (k < 0) and domes or sags (b) as the
series goes on, e.g. under the beam. Linear terms of z in x, y are not added: per view they
would be a change of tilt, which the rigid model has.

Smoothness. The four coefficients are free per view, tied by a penalty across neighbouring
views in the order they are fitted (file order, i.e. acquisition order for a series recorded
in that order; tilt order when the file's tilts are not monotonic, which align warns of): rows
``(c_{j-1} - 2 c_j + c_{j+1}) / SHAPE_CURVATURE_PX``.

Gauge (MODEL.md). A change of shape common to every view is a change of the markers' z:
``z -> z (1 + e) + q(x, y)`` traded against every view's shrink and dome coefficients. Fixing
all four at the reference view removes it (the reference view's shape is the markers' own;
near 0 degrees z is barely seen anyway). A translation of the markers along z stays exact
(each view's z gains a constant, which its shifts absorb): one marker's z is fixed as for
jou, and the reporting frame moves the mean z to 0. Tilting the specimen (jou's tilt offset)
is no longer exact (the shape is a function of x, y), so the tilt of the reference view is
fixed and no tilt offset is applied.
"""

import jax.numpy as jnp

from ..deformation_parameters import SHAPE_PARAMETERS
from ..geometry import rotate2, rotate_y
from ._base import ProjectionModel
from .jou import MODEL as JOU
from .warp import second_differences

#: Length (pixels) at which a shape coefficient is the z displacement it causes.
SHAPE_LENGTH_PX = 1000.0
#: Second difference across three neighbouring views that costs as much as a 1 px residual.
SHAPE_CURVATURE_PX = 0.02


def deformed_z(coefficients, x, y, z):
    """The markers' z (pixels) in a view with shape ``coefficients`` (shrink, dome_xx, dome_xy, dome_yy)."""
    shrink, b_xx, b_xy, b_yy = coefficients
    a, b = x / SHAPE_LENGTH_PX, y / SHAPE_LENGTH_PX
    return z * (1.0 + shrink / SHAPE_LENGTH_PX) + b_xx * a * a + b_xy * a * b + b_yy * b * b


def project(view, xyz):
    """Image position (2, ...); view = (scale, rotation, tilt, dx, dy, shrink, dome_xx, dome_xy, dome_yy)."""
    scale, rotation, tilt, dx, dy = view[:5]
    x, y, z = xyz
    u, v, _ = rotate_y(tilt, x, y, deformed_z(view[5:], x, y, z))
    px, py = rotate2(rotation, u, v)
    return jnp.stack([scale * px + dx, scale * py + dy])


def smoothness(views):
    """The shape's penalty rows for views (n_views, 9), model units."""
    return second_differences(views, range(5, 9), SHAPE_CURVATURE_PX)


MODEL = ProjectionModel(
    name="shape",
    parameters=JOU.parameters + SHAPE_PARAMETERS,
    kinds=JOU.kinds + ("length",) * 4,
    neutral=JOU.neutral + (0.0,) * 4,
    default_modes=JOU.default_modes + ("free",) * 4,
    gauge=JOU.gauge + SHAPE_PARAMETERS,
    gauge_marker_z=True,
    project=project,
    regularization=smoothness,
    xy_translation_symmetry=False,
    scale_symmetry=False,
    description="jou plus a smooth per-view thinning and doming of the specimen (deformation model)",
)
