"""Realistic raw cryo-ET tilt series of gold beads: dose-limited counts, textured specimen, ice, carbon.

What the images hold (bright-field transmission, gold dark on bright)
--------------------------------------------------------------------
Each raw view is an image of electron counts. Its expected value at a pixel is
``dose * exp(-tau)``, ``dose`` the incident electrons per pixel per view, ``tau`` the optical depth
(line integral of an absorption coefficient along the beam) through the specimen there; the counts
are Poisson with that mean (``dose=None``: the noise-free mean). ``tau`` is the sum of

* the **slab** of ice: ``slab_optical_depth / cos(theta)`` (a slab of thickness ``t`` is crossed
  over ``t / cos(theta)``, so the image darkens with tilt, as ``exp(-t / (lambda cos theta))`` in
  real data);
* the **specimen texture**, a thin layer at the slab's mid-plane (``z = 0``): band-limited Gaussian
  noise at the bead scale and at 4 bead diameters, and a hexagonal lattice of period 1.2 bead
  diameters (a virus or protein lattice) in patches covering about a third of the area; sampled at
  the specimen point seen by each pixel (so it moves with the specimen under tilt) and scaled by
  ``1 / cos(theta)``;
* the **gold beads**, solid spheres of diameter ``D`` on the two surfaces of the slab
  (``z = +-thickness / 2``): the line integral through a sphere of radius ``R`` at distance ``r``
  from its centre is the chord ``2 sqrt(R^2 - r^2)`` whatever the direction, so a bead adds
  ``bead_optical_depth * chord / D`` (``bead_optical_depth`` through its centre), averaged over
  ``oversample x oversample`` points per pixel;
* **ice blobs**, spheres 2.5-5 bead diameters wide sitting on either surface (contamination),
  ``ice_optical_depth`` through their centres;
* a **carbon film** on the top surface covering a half-plane whose straight edge crosses the field,
  ``carbon_optical_depth / cos(theta)`` beyond a smooth step one pixel wide.

Calibration: with the defaults, a bead's centre pixel sits 4.0 +- 0.1 standard deviations of the
background (texture and counting noise, per pixel, at 0 degrees; 8 specimens of 384 x 384 px)
below its surroundings at 200 e/px, as gold does in real cryo-ET images (about 4), and 1.6 +- 0.15
at 30 e/px (cryo dose).

Geometry (``/work/shared/MODEL.md``, as :func:`lmalign_jax.simulation.phantom.project_stack`)
--------------------------------------------------------------------------------------------
A specimen point ``(x, y, z)`` (pixels from the specimen centre) is seen in the aligned frame of
view ``v`` (tilt ``theta``) at ``(x cos(theta) + z sin(theta), y)`` from the image centre, and the
IMOD ``.xf`` ``(A, D)`` maps raw image points ``p`` to aligned ones, ``q = A (p - c) + D``,
``c = (NX/2, NY/2)``; raw pixel ``(r, c)`` is centred at ``(c + 0.5, r + 0.5)``. The true raw
position of a bead is therefore ``p = A^-1 (q - D) + c``: those are the positions the truth
(:class:`StackTruth`) records and a bead finder should report.

Computation
-----------
The specimen (positions, texture grid) is drawn once on the host with numpy. The expected image is
computed in JAX, ``vmap``-ed over a batch of views: one texture lookup (bilinear, on a grid of
``D / 4`` px, 0.5 to 2) and the carbon step per pixel, and for the beads and ice blobs one fixed-size
window each, added into the image with a scatter. Batches are sized to stay within
``memory_bytes``; each finished view is written into ``out`` (e.g. a memory-mapped MRC), so a
large stack never sits in memory. Poisson counts are drawn per view on the host
(``numpy.random.Generator.poisson``, several times faster than ``jax.random.poisson`` on a CPU),
seeded per view so a view does not depend on the batching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates
from jaxtyping import ArrayLike, Bool, Float

from .cryo_specimen import CARBON_EDGE_WIDTH, ICE_DIAMETERS, CryoSpecimen, cryo_specimen

__all__ = [
    "CryoSpecimen",
    "Imaging",
    "StackTruth",
    "cryo_specimen",
    "bead_truth",
    "render_stack",
    "CryoSeries",
    "simulate_cryo_series",
]


@dataclass(frozen=True)
class Imaging:
    """How a :class:`CryoSpecimen` is imaged (all optical depths are dimensionless).

    dose: incident electrons per pixel per view (cryo-ET: 20-40 at the detector's pixel of a
        binned series); None gives the noise-free expected counts.
    bead_optical_depth: through a bead's centre (0.5: 39% darker than its surroundings).
    ice_optical_depth: through an ice blob's centre.
    carbon_optical_depth: of the carbon film at 0 degrees.
    slab_optical_depth: of the ice slab at 0 degrees (grows as 1 / cos(tilt)).
    background: scale of the specimen texture (1: the default texture, 0: a flat specimen).
    oversample: samples per pixel along each axis for the beads and ice (pixel integration).
    """

    dose: float | None = 30.0
    bead_optical_depth: float = 0.5
    ice_optical_depth: float = 0.8
    carbon_optical_depth: float = 0.3
    slab_optical_depth: float = 0.3
    background: float = 1.0
    oversample: int = 3

    def __post_init__(self):
        if self.dose is not None and not (math.isfinite(self.dose) and self.dose > 0):
            raise ValueError(f"dose must be a positive number of electrons per pixel, got {self.dose}")
        for name in ("bead_optical_depth", "ice_optical_depth", "carbon_optical_depth", "slab_optical_depth"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not (math.isfinite(self.background) and self.background >= 0):
            raise ValueError(f"background must be >= 0, got {self.background}")
        if int(self.oversample) < 1:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")


@dataclass(frozen=True, eq=False)
class StackTruth:
    """Where every bead is in every raw view, and whether it can be seen cleanly.

    xy: (n_views, n_beads, 2) float64 true bead centres in raw IMOD image coordinates, pixels
        (origin at the lower-left corner, pixel (r, c) centred at (c + 0.5, r + 0.5)).
    visible: (n_views, n_beads) bool: the whole bead lies inside the image (centre at least
        ``D / 2`` from every border).
    nearest_px: (n_views, n_beads) distance to the nearest other bead centre in that view
        (inf with one bead): below ``D`` the two overlap.
    near_feature: (n_views, n_beads) bool: the bead's centre is within one bead diameter of an
        ice blob's disc or of the carbon edge (its surroundings are not flat).
    ice_xy: (n_views, n_ice, 2) ice blob centres, raw image coordinates.
    """

    xy: Float[np.ndarray, "views beads 2"]
    visible: Bool[np.ndarray, "views beads"]
    nearest_px: Float[np.ndarray, "views beads"]
    near_feature: Bool[np.ndarray, "views beads"]
    ice_xy: Float[np.ndarray, "views blobs 2"] = field(default_factory=lambda: np.zeros((0, 0, 2)))


def _raw_positions(points, a, d, theta, centre) -> np.ndarray:
    """(n_views, n, 2) raw image positions of specimen points ``points`` (n, 3)."""
    x, y, z = points.T
    q = np.stack(
        [
            x[None] * np.cos(theta)[:, None] + z[None] * np.sin(theta)[:, None],
            np.broadcast_to(y, (theta.size, x.size)),
        ],
        axis=-1,
    )
    return np.einsum("vij,vnj->vni", np.linalg.inv(a), q - d[:, None, :]) + centre


def _check_alignment(xf_A, xf_shift, tilts_deg, image_size):
    a = np.asarray(xf_A, dtype=np.float64)
    d = np.asarray(xf_shift, dtype=np.float64)
    t = np.radians(np.asarray(tilts_deg, dtype=np.float64).reshape(-1))
    if a.shape != (t.size, 2, 2) or d.shape != (t.size, 2):
        raise ValueError(
            f"need xf_A (n, 2, 2) and xf_shift (n, 2) for n = {t.size} tilts, got {a.shape} and {d.shape}"
        )
    nx, ny = (int(s) for s in image_size)
    if nx < 1 or ny < 1:
        raise ValueError(f"image_size must be two positive sizes (NX, NY), got {image_size}")
    return a, d, t, nx, ny


def bead_truth(
    specimen: CryoSpecimen,
    xf_A: Float[ArrayLike, "views 2 2"],
    xf_shift: Float[ArrayLike, "views 2"],
    tilts_deg: Float[ArrayLike, " views"],
    image_size,
) -> StackTruth:
    """The true raw position of every bead in every view, its visibility and surroundings.

    Args as for :func:`render_stack`. See :class:`StackTruth`.
    """
    a, d, t, nx, ny = _check_alignment(xf_A, xf_shift, tilts_deg, image_size)
    centre = np.array([nx / 2.0, ny / 2.0])
    dia = specimen.bead_diameter_px
    xy = _raw_positions(specimen.beads, a, d, t, centre)
    r = 0.5 * dia
    visible = (xy[..., 0] >= r) & (xy[..., 0] <= nx - r) & (xy[..., 1] >= r) & (xy[..., 1] <= ny - r)
    n = xy.shape[1]
    gaps = np.linalg.norm(xy[:, :, None, :] - xy[:, None, :, :], axis=-1)
    gaps[:, np.arange(n), np.arange(n)] = np.inf
    nearest = gaps.min(axis=2) if n > 1 else np.full(xy.shape[:2], np.inf)
    ice_xy = _raw_positions(specimen.ice, a, d, t, centre)
    scale = np.sqrt(np.abs(np.linalg.det(np.linalg.inv(a))))  # raw px per specimen px
    to_ice = np.linalg.norm(xy[:, :, None, :] - ice_xy[:, None, :, :], axis=-1)  # (v, n, m)
    near = np.any(
        to_ice < (0.5 * specimen.ice_diameter_px[None, None, :] + dia) * scale[:, None, None], axis=2
    )
    if specimen.carbon is not None:
        cnx, cny, offset, zc = specimen.carbon
        # the bead's specimen position on the film plane, seen along the beam (exact for a
        # similarity .xf): distance of the projected bead to the projected edge line
        x, y, z = specimen.beads.T
        qx = x[None] * np.cos(t)[:, None] + z[None] * np.sin(t)[:, None]
        xs = (qx - zc * np.sin(t)[:, None]) / np.cos(t)[:, None]
        signed = cnx * xs + cny * y[None] - offset
        # distance in the aligned image: across the edge the specimen is squeezed by cos in x
        grad = np.hypot(cnx / np.cos(t), cny)[:, None]
        near |= np.abs(signed) / grad * scale[:, None] < dia
    return StackTruth(xy=xy, visible=visible, nearest_px=nearest, near_feature=near, ice_xy=ice_xy)


def _sphere_windows(centres_q, start, radius, optical_depth, a, d, centre, window, k):
    """Pixel-averaged optical depth of spheres in fixed windows of one view.

    centres_q: (n, 2) aligned centred positions; start: (n, 2) int raw (col, row) of each window's
    first pixel; radius, optical_depth: (n,). Returns (n, window, window) ``[row, col]``.
    """
    sub = (jnp.arange(k) + 0.5) / k
    offs = (jnp.arange(window)[:, None] + sub[None, :]).reshape(-1)  # (window k,)
    cols = start[:, 0:1].astype(centres_q.dtype) + offs[None, :] - centre[0]  # (n, wk)
    rows = start[:, 1:2].astype(centres_q.dtype) + offs[None, :] - centre[1]
    qx = a[0, 0] * cols[:, None, :] + a[0, 1] * rows[:, :, None] + d[0]  # (n, wk rows, wk cols)
    qy = a[1, 0] * cols[:, None, :] + a[1, 1] * rows[:, :, None] + d[1]
    r2 = (qx - centres_q[:, 0, None, None]) ** 2 + (qy - centres_q[:, 1, None, None]) ** 2
    rad = radius[:, None, None]
    chord = 2.0 * jnp.sqrt(jnp.maximum(rad * rad - r2, 0.0))
    per_length = (optical_depth / (2.0 * radius))[:, None, None]
    n = centres_q.shape[0]
    return (per_length * chord).reshape(n, window, k, window, k).mean(axis=(2, 4))


def _add_windows(image, values, start):
    """Add (n, w, w) windows at raw (col, row) ``start`` (n, 2) into ``image``; outside parts dropped."""
    ny, nx = image.shape
    w = values.shape[1]
    rows = start[:, 1, None, None] + jnp.arange(w)[None, :, None] + jnp.zeros((1, 1, w), jnp.int32)
    cols = start[:, 0, None, None] + jnp.arange(w)[None, None, :] + jnp.zeros((1, w, 1), jnp.int32)
    outside = (rows < 0) | (rows >= ny) | (cols < 0) | (cols >= nx)
    rows = jnp.where(outside, ny, rows)  # an index past the end is dropped (never wrapped)
    cols = jnp.where(outside, nx, cols)
    return image.at[rows, cols].add(values, mode="drop")


def _one_view(a, d, theta, beads, ice, ice_radius, texture, params, *, shape, bead_window, ice_window, k):
    """Expected optical depth of one view (NY, NX) (see the module docstring)."""
    ny, nx = shape
    dtype = texture.dtype
    (bead_tau, bead_radius, ice_tau, carbon_tau, slab_tau, background, step, ox, oy, cnx, cny, coff, cz) = (
        params[i] for i in range(13)
    )
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    centre = jnp.array([nx / 2.0, ny / 2.0], dtype=dtype)
    cols = jnp.arange(nx, dtype=dtype)[None, :] + 0.5 - centre[0]
    rows = jnp.arange(ny, dtype=dtype)[:, None] + 0.5 - centre[1]
    qx = a[0, 0] * cols + a[0, 1] * rows + d[0]
    qy = a[1, 0] * cols + a[1, 1] * rows + d[1]
    tex = map_coordinates(texture, [(qy - oy) / step, (qx / cos - ox) / step], order=1, mode="wrap")
    tau = slab_tau / cos + background * tex / cos
    s = cnx * (qx - cz * sin) / cos + cny * qy - coff
    tau = tau + carbon_tau / cos * 0.5 * (
        1.0 + jax.scipy.special.erf(s / (math.sqrt(2.0) * CARBON_EDGE_WIDTH))
    )
    a_inv = jnp.linalg.inv(a)
    for points, radius, depth, window in (
        (
            beads,
            jnp.full(beads.shape[0], bead_radius, dtype),
            jnp.full(beads.shape[0], bead_tau, dtype),
            bead_window,
        ),
        (ice, ice_radius, jnp.full(ice.shape[0], ice_tau, dtype), ice_window),
    ):
        if points.shape[0] == 0:
            continue
        q = jnp.stack([points[:, 0] * cos + points[:, 2] * sin, points[:, 1]], axis=1)
        p = (q - d) @ a_inv.T + centre
        start = jnp.floor(p - 0.5 * window).astype(jnp.int32) + 1
        tau = _add_windows(tau, _sphere_windows(q, start, radius, depth, a, d, centre, window, k), start)
    return tau


@partial(jax.jit, static_argnames=("shape", "bead_window", "ice_window", "k"))
def _expected_counts(
    a, d, theta, beads, ice, ice_radius, texture, params, dose, *, shape, bead_window, ice_window, k
):
    one = partial(_one_view, shape=shape, bead_window=bead_window, ice_window=ice_window, k=k)
    tau = jax.vmap(one, in_axes=(0, 0, 0, None, None, None, None, None))(
        a, d, theta, beads, ice, ice_radius, texture, params
    )
    return dose * jnp.exp(-tau)


def render_stack(
    specimen: CryoSpecimen,
    imaging: Imaging,
    xf_A: Float[ArrayLike, "views 2 2"],
    xf_shift: Float[ArrayLike, "views 2"],
    tilts_deg: Float[ArrayLike, " views"],
    image_size,
    *,
    seed: int = 0,
    out=None,
    memory_bytes: int = 1 << 28,
) -> tuple[Float[np.ndarray, "views rows cols"], StackTruth]:
    """The raw tilt series of ``specimen`` seen through a known alignment, and its truth.

    Args:
        specimen: from :func:`cryo_specimen`.
        imaging: dose and contrasts (:class:`Imaging`).
        xf_A, xf_shift: (n_views, 2, 2) and (n_views, 2) IMOD transforms, raw -> aligned (the
            misalignment; e.g. :func:`lmalign_jax.simulation.phantom.series_alignment`).
        tilts_deg: (n_views,) true tilt angles, degrees.
        image_size: ``(NX, NY)``, pixels.
        seed: seed of the Poisson counts (view ``v`` uses ``SeedSequence([seed, v])``).
        out: optional ``(n_views, NY, NX)`` array filled view by view (a memory-mapped MRC);
            float32 otherwise.
        memory_bytes: rough bound on the working memory of one batch of views.

    Returns:
        ``(stack, truth)``: ``stack[view, row, column]`` electron counts (expected counts when
        ``imaging.dose`` is None) and the :class:`StackTruth` (:func:`bead_truth`).
    """
    a, d, t, nx, ny = _check_alignment(xf_A, xf_shift, tilts_deg, image_size)
    if out is None:
        out = np.zeros((t.size, ny, nx), dtype=np.float32)
    elif tuple(out.shape) != (t.size, ny, nx):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(t.size, ny, nx)}")
    truth = bead_truth(specimen, a, d, np.degrees(t), (nx, ny))
    reach = float(np.max(np.linalg.norm(np.linalg.inv(a), 2, axis=(1, 2)))) if t.size else 1.0
    dia = specimen.bead_diameter_px
    # Window sizes are static (compiled in): rounded up to multiples of 4 so that series whose
    # scales differ slightly share one compilation; the ice window is sized for the largest blob.
    bead_window = 4 * math.ceil((dia * reach + 3) / 4)
    largest_ice = max(ICE_DIAMETERS[1] * dia, float(np.max(specimen.ice_diameter_px, initial=1.0)))
    ice_window = 4 * math.ceil((largest_ice * reach + 3) / 4)
    carbon = specimen.carbon or (1.0, 0.0, 1e9, 0.0)
    im = imaging
    params = np.array(
        [
            im.bead_optical_depth,
            0.5 * dia,
            im.ice_optical_depth,
            im.carbon_optical_depth if specimen.carbon is not None else 0.0,
            im.slab_optical_depth,
            im.background,
            specimen.texture_step_px,
            specimen.texture_origin[0],
            specimen.texture_origin[1],
            *carbon,
        ],
        dtype=np.float32,
    )
    per_view = 12 * 4 * nx * ny + 4 * (specimen.beads.shape[0] * (bead_window * im.oversample) ** 2)
    batch = max(1, min(t.size, int(memory_bytes // max(per_view, 1))))
    consts = [
        jnp.asarray(x, dtype=jnp.float32)
        for x in (specimen.beads, specimen.ice, 0.5 * specimen.ice_diameter_px)
    ]
    texture = jnp.asarray(specimen.texture)
    dose = 1.0 if im.dose is None else float(im.dose)
    for first in range(0, t.size, batch):
        sl = slice(first, min(t.size, first + batch))
        mean = np.asarray(
            _expected_counts(
                jnp.asarray(a[sl], jnp.float32),
                jnp.asarray(d[sl], jnp.float32),
                jnp.asarray(t[sl], jnp.float32),
                *consts,
                texture,
                jnp.asarray(params),
                jnp.float32(dose),
                shape=(ny, nx),
                bead_window=bead_window,
                ice_window=ice_window,
                k=int(im.oversample),
            )
        )
        for i, v in enumerate(range(sl.start, sl.stop)):
            if im.dose is None:
                out[v] = mean[i]
            else:
                rng = np.random.default_rng(np.random.SeedSequence([int(seed), v]))
                out[v] = rng.poisson(mean[i].astype(np.float64)).astype(np.float32)
    return out, truth


@dataclass(frozen=True, eq=False)
class CryoSeries:
    """A realistic raw tilt series with everything that made it.

    stack: (n_views, NY, NX) float32 electron counts; truth: the beads per view (:class:`StackTruth`);
    xf_A, xf_shift: (n_views, 2, 2), (n_views, 2) the true raw -> aligned IMOD transforms (the
    misalignment); tilts_deg: (n_views,) true tilts; series: the
    :class:`~lmalign_jax.simulation.synthetic.SyntheticSeries` (nominal tilts in
    ``series.observations.tilts_deg``, true view parameters, markers = the beads); specimen.
    """

    stack: Float[np.ndarray, "views rows cols"]
    truth: StackTruth
    xf_A: Float[np.ndarray, "views 2 2"]
    xf_shift: Float[np.ndarray, "views 2"]
    tilts_deg: Float[np.ndarray, " views"]
    series: object
    specimen: CryoSpecimen


def simulate_cryo_series(
    *,
    n_views: int = 61,
    image_size=(1024, 1024),
    n_beads: int = 40,
    bead_diameter_px: float = 8.0,
    thickness_px: float = 100.0,
    close_pairs: float = 0.2,
    tilt_range=(-60.0, 60.0),
    rotation_deg: float = -12.0,
    shift_px: float = 20.0,
    imaging: Imaging | None = None,
    seed: int = 0,
    out=None,
) -> CryoSeries:
    """One call from options to a realistic raw stack and its truth: a specimen
    (:func:`cryo_specimen`), a "jou" series through it with per-view shifts of sd ``shift_px``
    (:func:`lmalign_jax.simulation.synthetic.simulate`, markers = the beads, no marker noise),
    its exact ``.xf`` (:func:`lmalign_jax.simulation.phantom.series_alignment`) and the stack
    (:func:`render_stack`, into ``out`` when given, e.g. a memory-mapped MRC)."""
    from .phantom import series_alignment
    from .synthetic import simulate

    specimen = cryo_specimen(
        image_size,
        n_beads=n_beads,
        bead_diameter_px=bead_diameter_px,
        thickness_px=thickness_px,
        close_pairs=close_pairs,
        tilt_range=tilt_range,
        seed=seed,
    )
    series = simulate(
        n_views=n_views,
        tilt_range=tilt_range,
        image_size=image_size,
        rotation_deg=rotation_deg,
        shift_px=shift_px,
        noise_px=0.0,
        markers=specimen.beads,
        seed=seed,
    )
    a, d, tilts = series_alignment(series)
    stack, truth = render_stack(specimen, imaging or Imaging(), a, d, tilts, image_size, seed=seed, out=out)
    return CryoSeries(stack, truth, a, d, tilts, series, specimen)
