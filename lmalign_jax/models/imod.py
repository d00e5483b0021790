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
is free too: ``far_gauge``). The fit's residuals do not change.

Reporting frame. The gauge holds those entries where the stages before the joint one left
them (the tilt stage moves them with the markers held), which differs from draw to draw of the
noise. With tilt and x-stretch free in every view (the default), the solution is reported
mapped by the exact symmetry behind the gauge (``frame_map``): a linear map B of the
specimen's x-z plane (markers (x, z) -> B^-1 (x, z)) under which each view's projection row
w = (cos t, c sin t) becomes w B = rho (cos t', c sin t'): a new tilt t', the length rho taken
up by the x-stretch, (1 + e') = (1 + e) rho. B is the map under which the tilts and stretches
are likeliest, given that nominal tilts are typically good to 0.2 degrees and x-stretches within
1%: the least sum of their squared deviations from nominal and from 0 in those units
(``likeliest_map``). Stretches alone would not do: on a series tilted 30..60 degrees the least
squared stretch came with tilts 3.8 degrees off nominal and a specimen 62% too thick. The
reported tilts and stretches, and their standard errors, are those of one reproducible frame,
in which the gauge's views have no special standing. The map is exact only with no beam tilt
(which mixes the projected z into y); with one, the solution keeps the gauge's values. The
y-shear of z (absorbed by skew) is not mapped: it stays where the gauge holds skew, which moved
by 2e-5 rad at the far view between noise draws of a 41-view series, 4% of a skew's error.
"""

import jax
import jax.numpy as jnp

from ..geometry import rotate2, rotate_x, rotate_y
from ._base import FrameMap, ProjectionModel


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


_TILT, _COMPRESSION, _STRETCH, _BEAMTILT = 2, 5, 6, 8


def _projection_row(tilt, compression):
    """(cos t, c sin t) (2, ...): the specimen x-z row of a view's projected x."""
    return jnp.stack([jnp.cos(tilt), compression * jnp.sin(tilt)])


#: How far the nominal tilts (radians) and the x-stretches are taken to be off, typically: the
#: frame's least-squares criterion weighs their squared deviations by these.
TILT_SPREAD_RAD = 0.0035  # 0.2 degrees
STRETCH_SPREAD = 0.01
#: Gauss-Newton steps of that fit; it starts at the solution, close to its answer.
_FRAME_STEPS = 8


def likeliest_map(views, nominal_tilts_rad, view_mask=None):
    """The x-z map B - I (4,) of the reporting frame (module docstring): the B whose tilts and
    x-stretches deviate least from nominal and from 0, sum ((t' - t_nominal) / TILT_SPREAD_RAD)^2
    + (e' / STRETCH_SPREAD)^2 over the views, by Gauss-Newton from B = I. views (n, 9), nominal
    (n,) radians, ``view_mask`` (n,) the real views of a padded series (None: all). Where the
    tilts do not determine it (all alike) only the turn that zeroes their mean deviation; zeros
    when a view has a beam tilt (the map is not exact)."""
    dtype = views.dtype
    real = jnp.ones(views.shape[0], bool) if view_mask is None else view_mask
    compression = jnp.where(views[:, _COMPRESSION] == 0, 1.0, views[:, _COMPRESSION])  # padded views
    rows = _projection_row(views[:, _TILT], compression).T  # (n, 2)
    eye = jnp.eye(2, dtype=dtype)

    def residuals(change):
        tilt, stretch = _mapped_tilts_and_stretches(views, change)
        tilt = (tilt - nominal_tilts_rad) / TILT_SPREAD_RAD
        stretch = stretch / STRETCH_SPREAD
        return jnp.where(real[:, None], jnp.stack([tilt, stretch], axis=1), 0.0).reshape(-1)

    jacobian = jax.jacfwd(residuals)(jnp.zeros(4, dtype))
    eigenvalues = jnp.linalg.eigvalsh(jacobian.T @ jacobian)
    determined = eigenvalues[0] > 1e-9 * eigenvalues[-1]

    def gradient(change):  # of the criterion (half of it): J^T r
        values, pull = jax.vjp(residuals, change)
        return pull(values)[0]

    def gauss_newton(_, start):
        def step(_, change):
            jacobian = jax.jacfwd(residuals)(change)
            normal = jnp.where(determined, jacobian.T @ jacobian, jnp.eye(4, dtype=dtype))
            return change - jnp.linalg.solve(normal, jacobian.T @ residuals(change))

        return jax.lax.fori_loop(0, _FRAME_STEPS, step, start)

    def tangent_solve(linear, value):  # the criterion's Hessian, 4 x 4, built column by column
        hessian = jax.vmap(linear)(jnp.eye(4, dtype=dtype)).T
        return jnp.linalg.solve(jnp.where(determined, hessian, jnp.eye(4, dtype=dtype)), value)

    # differentiated implicitly at the optimum (gradient 0), not through the iterations
    change = jax.lax.custom_root(gradient, jnp.zeros(4, dtype), gauss_newton, tangent_solve)
    # the turn alone: the tilts' mean deviation from nominal to 0 (angles of the rows, as the
    # turn adds to them whatever the compression)
    angle = jnp.arctan2(rows[:, 1], rows[:, 0])
    wanted = jnp.arctan2(compression * jnp.sin(nominal_tilts_rad), jnp.cos(nominal_tilts_rad))
    phi = -jnp.sum(jnp.where(real, angle - wanted, 0.0)) / jnp.maximum(jnp.sum(real), 1)
    turn = jnp.array([[jnp.cos(phi), jnp.sin(phi)], [-jnp.sin(phi), jnp.cos(phi)]]) - eye
    change = jnp.where(determined, change, turn.reshape(4))
    return jnp.where(jnp.all(views[:, _BEAMTILT] == 0), change, 0.0)


def _mapped_tilts_and_stretches(views, scalars):
    """Each view's (tilt, x-stretch) (2, n) under the x-z map B = I + scalars."""
    b = jnp.eye(2, dtype=views.dtype) + scalars.reshape(2, 2)
    compression = jnp.where(views[:, _COMPRESSION] == 0, 1.0, views[:, _COMPRESSION])  # padded views
    row = _projection_row(views[:, _TILT], compression).T @ b  # (n, 2)
    along, across = row[:, 0], row[:, 1] / compression
    return jnp.stack([jnp.arctan2(across, along), (1 + views[:, _STRETCH]) * jnp.hypot(along, across) - 1])


def map_xz(views, xyz, scalars):
    """The equivalent solution (views (n, 9), markers (m, 3)) under the x-z map B = I + scalars."""
    tilt, stretch = _mapped_tilts_and_stretches(views, scalars)
    views = views.at[:, _TILT].set(tilt).at[:, _STRETCH].set(stretch)
    b = jnp.eye(2, dtype=views.dtype) + scalars.reshape(2, 2)
    xz = jnp.linalg.solve(b, jnp.stack([xyz[:, 0], xyz[:, 2]]))  # (2, m)
    return views, xyz.at[:, 0].set(xz[0]).at[:, 2].set(xz[1])


MODEL = ProjectionModel(
    name="imod",
    parameters=("scale", "rotation", "tilt", "dx", "dy", "compression", "xstretch", "skew", "beamtilt"),
    kinds=("ratio", "angle", "angle", "length", "length", "ratio", "ratio", "angle", "angle"),
    neutral=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0),
    default_modes=("free", "free", "free", "free", "free", "fixed", "free", "free", "fixed"),
    gauge=("scale", "dx", "dy", "compression", "xstretch", "skew"),
    gauge_marker_z=True,
    far_gauge=(("tilt", "xstretch"), ("tilt", "xstretch", "skew")),
    frame_map=FrameMap(needs=("tilt", "xstretch"), scalars=likeliest_map, apply=map_xz),
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
