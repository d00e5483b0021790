"""jou plus a smooth per-view in-plane warp: second-order polynomial terms in the image.

    (u, v, _) = Ry(theta) X                         (the tilt-axis frame of view j)
    p - c = s R(alpha) [(u, v) + W_j(u, v)] + d
    W_j(u, v) = sum_k w_jk m_k(u / L, v / L),   m = (a^2, a b, b^2) for each of the u and v rows

with ``L = WARP_LENGTH_PX`` (1000 px): each of the six coefficients is the displacement, in
pixels, that its term causes 1000 px from the centre. The affine part of an image distortion
(scale and rotation) is the rigid model's already; the warp adds only the quadratic terms,
in the tilt-axis frame, where the symmetries below are exact.

Smoothness. Per-view coefficients are free, tied together by a penalty across neighbouring
views in the order they are fitted (file order; tilt order when the file's tilts are not
monotonic, which align warns of): residual rows ``(w_{j-1} - 2 w_j + w_{j+1}) /
WARP_CURVATURE_PX`` for every coefficient, so a second difference of ``WARP_CURVATURE_PX``
costs as much as a 1 px marker residual. A warp that drifts linearly with the view index is
not penalised; one that changes abruptly is. On rigid data the penalty keeps the warp's
effective number of parameters small.

Gauge (MODEL.md, "Gauge freedoms"). With markers free, a quadratic change of the specimen
that every view sees as the same function of its own (u, v) is an exact symmetry:
``y -> y + a y^2`` moves every view's v by ``a v^2``, and ``(x, z) -> (1 + e y) (x, z)``
moves every view's u by ``e u v``; both are traded against a constant ``warp_v_vv`` and
``warp_u_uv``. Those two (and scale, shifts, tilt as for jou) are fixed at the reference
view. ``x -> x + f y^2, z -> z + g y^2`` moves u by ``(f cos theta + g sin theta) v^2``:
not constant across views, so the smoothness penalty (not the data) decides that two-dimensional
freedom; no further parameter is fixed. For a thin specimen more changes are nearly symmetric
(a doming of z, an in-plane quadratic change of x, y, seen through 1/cos theta); they too
vary smoothly with the tilt and are settled by the penalty, and they do not change the
predicted positions. A translation of the markers along z is no longer exact (the warp is
evaluated at the projected position), so the reporting frame keeps z (see core/frame.py).
Tilting the specimen (``tilt_offset``) leaves (u, v) unchanged and stays exact.
"""

import jax.numpy as jnp

from ..deformation_parameters import WARP_PARAMETERS
from ..geometry import rotate2, rotate_y
from ._base import ProjectionModel
from .jou import MODEL as JOU
from .jou import tilt_offset

#: Length (pixels) at which a warp coefficient is the displacement it causes.
WARP_LENGTH_PX = 1000.0
#: Second difference across three neighbouring views that costs as much as a 1 px residual.
WARP_CURVATURE_PX = 0.02


def warp_offsets(coefficients, u, v):
    """W(u, v): the warp's displacement (du, dv) in pixels at tilt-axis-frame positions (u, v);
    ``coefficients`` is a sequence of the six ``WARP_PARAMETERS`` values (pixels)."""
    a, b = u / WARP_LENGTH_PX, v / WARP_LENGTH_PX
    uu, uv, vv = a * a, a * b, b * b
    cu_uu, cu_uv, cu_vv, cv_uu, cv_uv, cv_vv = coefficients
    return cu_uu * uu + cu_uv * uv + cu_vv * vv, cv_uu * uu + cv_uv * uv + cv_vv * vv


def project(view, xyz):
    """Image position (2, ...); view = (scale, rotation, tilt, dx, dy, six warp coefficients)."""
    scale, rotation, tilt, dx, dy = view[:5]
    u, v, _ = rotate_y(tilt, *xyz)
    du, dv = warp_offsets(view[5:], u, v)
    px, py = rotate2(rotation, u + du, v + dv)
    return jnp.stack([scale * px + dx, scale * py + dy])


def second_differences(values, columns, curvature_px):
    """Smoothness rows: second differences along the views (axis 0) of ``values[:, columns]``
    divided by ``curvature_px``, flattened: ((n_views - 2) * len(columns),)."""
    w = values[:, jnp.asarray(columns)]
    return ((w[:-2] - 2.0 * w[1:-1] + w[2:]) / curvature_px).reshape(-1)


def smoothness(views):
    """The warp's penalty rows for views (n_views, 11), model units."""
    return second_differences(views, range(5, 11), WARP_CURVATURE_PX)


MODEL = ProjectionModel(
    name="warp",
    parameters=JOU.parameters + WARP_PARAMETERS,
    kinds=JOU.kinds + ("length",) * 6,
    neutral=JOU.neutral + (0.0,) * 6,
    default_modes=JOU.default_modes + ("free",) * 6,
    gauge=JOU.gauge + ("warp_u_uv", "warp_v_vv"),
    gauge_marker_z=True,
    project=project,
    tilt_offset=tilt_offset,
    regularization=smoothness,
    z_translation_symmetry=False,
    xy_translation_symmetry=False,
    scale_symmetry=False,
    description="jou plus a smooth per-view quadratic in-plane warp (deformation model)",
)
