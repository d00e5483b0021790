"""The specimen of the realistic simulator: a slab of ice with gold beads on both surfaces, ice
blobs, a carbon film and a textured mid-plane, drawn on the host with numpy
(:func:`cryo_specimen`). How it is imaged and rendered into a raw stack, and the physics of the
optical depths, are in :mod:`lmalign_jax.simulation.cryo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

__all__ = ["CryoSpecimen", "cryo_specimen", "ICE_DIAMETERS", "LATTICE_PERIOD", "CARBON_EDGE_WIDTH"]

#: Diameters of the ice blobs, in bead diameters (uniform draw).
ICE_DIAMETERS = (2.5, 5.0)
#: Lattice period, in bead diameters.
LATTICE_PERIOD = 1.2
#: Width of the carbon film's edge (standard deviation of the smooth step), pixels.
CARBON_EDGE_WIDTH = 0.7


@dataclass(frozen=True, eq=False)
class CryoSpecimen:
    """A slab with gold beads on both surfaces, ice blobs, a carbon film and a textured mid-plane.

    beads: (n, 3) float64 bead centres ``(x, y, z)``, pixels from the specimen centre.
    bead_diameter_px: bead diameter, pixels.
    pairs: (k, 2) int indices into ``beads`` of pairs placed on opposite surfaces so that they
        overlap in projection at ``pair_tilts_deg`` (k,).
    ice: (m, 3) centres of the ice spheres; ``ice_diameter_px`` (m,) their diameters.
    carbon: ``(nx, ny, offset, z)``: the film covers ``nx x + ny y > offset`` at height ``z``
        (unit normal ``(nx, ny)``), or None.
    texture: (TY, TX) float32 optical depth of the mid-plane layer on a grid of step
        ``texture_step_px`` whose sample ``[0, 0]`` sits at specimen point ``texture_origin``
        ``(x, y)``; periodic beyond it.
    thickness_px: slab thickness, pixels.
    """

    beads: Float[np.ndarray, "beads 3"]
    bead_diameter_px: float
    pairs: np.ndarray
    pair_tilts_deg: np.ndarray
    ice: Float[np.ndarray, "blobs 3"]
    ice_diameter_px: Float[np.ndarray, " blobs"]
    carbon: tuple[float, float, float, float] | None
    texture: np.ndarray
    texture_step_px: float
    texture_origin: tuple[float, float]
    thickness_px: float


def _gaussian_field(rng, shape, sigma_samples) -> np.ndarray:
    """Periodic Gaussian random field of unit variance with a Gaussian correlation of
    ``sigma_samples`` grid steps (white noise times a Gaussian transfer function)."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma_samples) ** 2 * (kx * kx + ky * ky))
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * transfer, s=shape)
    sd = float(np.std(f))
    return f / sd if sd > 0 else f


def _texture(rng, half_extent, diameter) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The mid-plane texture (optical depth, before the ``background`` scale) covering
    ``|x| <= half_extent[0]``, ``|y| <= half_extent[1]``: fine and coarse noise plus a lattice."""
    step = float(min(2.0, max(0.5, diameter / 4.0)))
    shape = tuple(int(math.ceil(2.0 * h / step)) + 2 for h in (half_extent[1], half_extent[0]))
    fine = _gaussian_field(rng, shape, 0.35 * diameter / step)
    coarse = _gaussian_field(rng, shape, 4.0 * diameter / step)
    patches = _gaussian_field(rng, shape, 6.0 * diameter / step)
    origin = (-half_extent[0], -half_extent[1])
    ys = origin[1] + step * np.arange(shape[0])[:, None]
    xs = origin[0] + step * np.arange(shape[1])[None, :]
    k = 2.0 * np.pi / (LATTICE_PERIOD * diameter)
    angle = rng.uniform(0.0, np.pi / 3.0)
    lattice = (
        sum(
            np.cos(k * (np.cos(angle + a) * xs + np.sin(angle + a) * ys))
            for a in (0.0, np.pi / 3, 2 * np.pi / 3)
        )
        / 3.0
    )
    envelope = 1.0 / (1.0 + np.exp(-(patches - 0.45) / 0.15))  # ~1/3 of the area
    texture = 0.03 * fine + 0.05 * coarse + 0.04 * lattice * envelope
    return texture.astype(np.float32), step, origin


def cryo_specimen(
    image_size,
    *,
    n_beads: int = 20,
    bead_diameter_px: float = 8.0,
    thickness_px: float = 60.0,
    close_pairs: float = 0.2,
    n_ice: int | None = None,
    carbon_edge: bool = True,
    tilt_range=(-60.0, 60.0),
    field_margin: float = 1.1,
    seed: int = 0,
) -> CryoSpecimen:
    """A random slab specimen for raw images of ``image_size`` ``(NX, NY)`` pixels.

    Args:
        image_size: ``(NX, NY)`` of the raw views, pixels.
        n_beads: number of gold beads (pairs included).
        bead_diameter_px: their diameter, pixels.
        thickness_px: slab thickness; beads sit on ``z = +-thickness / 2`` at random.
        close_pairs: fraction of the beads placed in pairs, one on each surface, at nearly the same
            y and ``thickness * tan(t)`` apart in x, so that they overlap in the view at tilt ``t``
            (drawn in 0.3-0.85 of the tilt range); other beads keep 2 diameters from every bead.
        n_ice: ice blobs (default: one per 256 x 256 px of field, at least 1).
        carbon_edge: a carbon film with a straight edge across the field.
        tilt_range: ``(min, max)`` tilts, degrees (for the pairs and the texture's extent).
        field_margin: beads and ice spread over ``field_margin`` times the field at 0 degrees, so
            some enter or leave the image with tilt.
        seed: random seed.
    """
    nx, ny = (float(s) for s in image_size)
    d = float(bead_diameter_px)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"bead_diameter_px must be positive, got {bead_diameter_px}")
    if n_beads < 0 or not 0 <= close_pairs <= 1:
        raise ValueError(f"need n_beads >= 0 and close_pairs in [0, 1], got {n_beads} and {close_pairs}")
    rng = np.random.default_rng(seed)
    half = 0.5 * field_margin * np.array([nx, ny])
    top = 0.5 * float(thickness_px)
    max_tilt = np.radians(max(abs(tilt_range[0]), abs(tilt_range[1])))
    n_pairs = int(round(0.5 * close_pairs * n_beads))
    beads, pairs, pair_tilts = [], [], []

    def free(p, min_distance):
        return not beads or np.min(np.linalg.norm(np.asarray(beads)[:, :2] - p[:2], axis=1)) >= min_distance

    for _ in range(n_pairs):
        for _ in range(500):
            t = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.85) * max_tilt
            first = np.array([*rng.uniform(-half, half), top])
            second = first + np.array([2.0 * top * np.tan(t), rng.uniform(-0.3, 0.3) * d, -2.0 * top])
            if np.all(np.abs(second[:2]) <= half) and free(first, 2 * d) and free(second, 2 * d):
                pairs.append((len(beads), len(beads) + 1))
                pair_tilts.append(np.degrees(t))
                beads += [first, second]
                break
    for _ in range(10_000):
        if len(beads) >= n_beads:
            break
        p = np.array([*rng.uniform(-half, half), rng.choice([-top, top])])
        if free(p, 2 * d):
            beads.append(p)
    if len(beads) < n_beads:
        raise ValueError(
            f"cannot place {n_beads} beads of {d:g} px 2 diameters apart in {nx:g} x {ny:g} px; "
            "use fewer beads or a larger image"
        )
    m = max(1, int(round(nx * ny / 256.0**2))) if n_ice is None else int(n_ice)
    ice_d = rng.uniform(*ICE_DIAMETERS, m) * d
    ice = np.column_stack(
        [rng.uniform(-half, half, (m, 2)), rng.choice([-1.0, 1.0], m) * (top + 0.5 * ice_d)]
    ).reshape(-1, 3)
    carbon = None
    if carbon_edge:
        angle = rng.uniform(0, 2 * np.pi)
        normal = np.array([np.cos(angle), np.sin(angle)])
        # the edge crosses the field 25-40% of the way in from the border it faces
        reach = 0.5 * abs(normal[0]) * nx + 0.5 * abs(normal[1]) * ny
        carbon = (float(normal[0]), float(normal[1]), float(rng.uniform(0.2, 0.5) * reach), top)
    # The texture covers every specimen point a view can see at z = 0: the aligned frame holds the
    # field's corners and shifts of a few tens of px, stretched by 1 / cos(max tilt) in x.
    radius = 0.5 * math.hypot(nx, ny) + 0.1 * max(nx, ny) + 64.0
    stretch = 1.0 / max(math.cos(max_tilt), 0.2)
    texture, step, origin = _texture(rng, (radius * stretch, radius), d)
    return CryoSpecimen(
        beads=np.asarray(beads, dtype=np.float64).reshape(-1, 3),
        bead_diameter_px=d,
        pairs=np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        pair_tilts_deg=np.asarray(pair_tilts, dtype=np.float64),
        ice=ice.astype(np.float64),
        ice_diameter_px=ice_d.astype(np.float64),
        carbon=carbon,
        texture=texture,
        texture_step_px=step,
        texture_origin=origin,
        thickness_px=float(thickness_px),
    )
