"""Gold beads in one image: matched filter, significant peaks, sub-pixel positions, bead-likeness.

Coordinates
-----------
Positions are IMOD image coordinates in pixels (``/work/shared/MODEL.md``): x along the columns,
y along the rows, origin at the lower-left corner of the image; pixel ``(row r, column c)`` of
``image[r, c]`` (the layout of a view read by :func:`lmalign_jax.io.mrc.read_stack`, and of
:func:`lmalign_jax.simulation.phantom.project_stack`) covers ``[c, c+1) x [r, r+1)``, so its centre
is ``(c + 0.5, r + 0.5)``. A bead projected by ``project_stack`` at raw position ``p`` is found at
``p``.

The procedure (:func:`find_beads`)
---------------------------------
1. **Matched filter.** The bead response ``b`` at the bead scale ``sigma = 0.301 D`` (``D`` the
   bead diameter in pixels) and at twice that scale (:mod:`lmalign_jax.track.filters`): one FFT
   of the image, two inverse FFTs. The score map is ``b`` for bright beads and ``-b`` for dark
   ones.
2. **Significance.** The noise level ``s`` and roughness of ``b`` are estimated robustly (median
   absolute deviations); the threshold ``u s`` is the one above which 0.01 noise maxima are
   expected in the whole image (:func:`lmalign_jax.track.peaks.false_peak_threshold`), unless
   ``min_score`` is given. The noise level is local where the image is quieter than typical:
   ``s(x)`` follows the mean ``|b|`` (clipped at ``4 s``) under a Gaussian of
   ``LOCAL_NOISE_DIAMETERS`` bead diameters, scaled so that its median is ``s``, and capped at
   ``s`` (:func:`lmalign_jax.track.filters.local_noise`): beads away from the lattice and ice
   patches need less (realistic 1k views, benchmarks/find_beads_bench.py: 83% -> 97% of beads
   found at 60 degrees and 200 e/px, 73% -> 83% at 0 degrees and 30 e/px, still no false ones).
   The threshold applies to the fitted peak value of step 4 over ``s`` at the peak (pixels
   down to ``0.9 u s(x)`` are candidates); positions come from the unscaled map. Scores are
   reported in units of ``s(x)`` (a signal-to-noise ratio).
3. **Non-maximum suppression** over squares of half-width ``max(1, round(D / 2))``.
4. **Sub-pixel position** from a quadratic through the 3 x 3 scores around each peak.
5. **Bead-likeness.** A peak is kept only if
   (a) it is round: the isotropy ``mu_2 / mu_1`` of the quadratic through the scores at offsets
   ``h (-1, 0, 1)^2``, ``h = max(1, round(sigma))``, is at least 0.5 (an edge or a filament gives
   a ridge, ~0; two merged beads an elongated peak; the wide stencil makes the curvature large
   against the noise);
   (b) its radial profile is a bead's: on the circle of radius ``2 sigma``, where the filtered
   image of a bead crosses zero, the mean of each pair of opposite points (8 pairs, bilinear)
   stays below 0.35 of the peak and their spread below 0.5 of it (on a ridge, along an edge or
   the rim of a large blob, the pair along the ridge is near the peak and the pair across it
   negative). Calibration: over 141 true beads at 5-7 noise sigmas the largest values were 0.24
   and 0.41, while points on a step edge twice the bead contrast reached 0.3-0.9 and 0.5-1.5;
   (c) it has the size of a bead: its score at the bead scale exceeds its score at twice the
   scale. For a projected sphere of the given diameter the ratio is 1.83 (1.56 for a Gaussian
   bead); for a Gaussian blob ``k`` times wider than a matched bead it falls below 1 once
   ``k > 1.4``, so ice blobs and bead clusters larger than a bead are rejected, and a straight
   edge (whose scale-normalised response does not depend on the scale) sits at 1;
   (d) it is not crowded: no other significant peak of the same polarity lies within
   ``min_separation_px`` (default ``1.5 D``), so touching beads and beads beside an edge or on
   the rim of another feature, whose centres are biased, are dropped together;
   (e) it lies wholly inside the image: its centre is at least ``D / 2`` from every border (the
   mirrored extension doubles the noise at the border and halves a bead cut by it).
6. **Polarity.** Gold is dark on a bright background in bright-field cryo-EM images, bright in
   the phantom projections here (line integrals of density). With ``polarity="auto"`` both are
   tried on the same filtered map and the one that yields more accepted beads wins (ties: the
   larger sum of scores, then "dark"). A bead's own filter response has a ring of the opposite
   sign, but a ring is a ridge and fails (a), so the wrong polarity finds few beads.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import ArrayLike, Float, Real

from lmalign_jax.track.filters import (
    SIGMA_PER_DIAMETER,
    bead_responses,
    local_noise,
    response_statistics,
    working_dtype,
)
from lmalign_jax.track.peaks import crowded, false_peak_threshold, fit_peaks, peak_masks, ring_profile

__all__ = [
    "find_beads",
    "MIN_ISOTROPY",
    "MIN_SCALE_RATIO",
    "RING_RADIUS_SIGMAS",
    "MAX_RING_FRACTION",
    "MAX_RING_SPREAD",
    "EXPECTED_FALSE_PEAKS",
]

#: Smallest ``mu_2 / mu_1`` of the peak quadratic for a round feature.
MIN_ISOTROPY = 0.5
#: Smallest score(sigma) / score(2 sigma) for a feature no larger than a bead.
MIN_SCALE_RATIO = 1.0
#: Radius of the profile ring, in filter scales: the filtered image of a bead crosses zero there.
RING_RADIUS_SIGMAS = 2.0
#: Largest value on that ring (mean of opposite points), as a fraction of the peak, for a bead.
MAX_RING_FRACTION = 0.35
#: Largest spread (max - min) of the ring values, as a fraction of the peak, for a bead.
MAX_RING_SPREAD = 0.5
#: Expected number of pure-noise peaks above the automatic threshold, per image.
EXPECTED_FALSE_PEAKS = 0.01
#: Scale (Gaussian sd, in bead diameters) of the local noise level the scores are divided by; 0: one
#: noise level for the whole image.
LOCAL_NOISE_DIAMETERS = 4.0
_POLARITIES = ("auto", "dark", "bright")


def _empty():
    return np.zeros((0, 2), dtype=np.float64), np.zeros(0, dtype=np.float64)


def _patches(score, rows, cols, border, step):
    """(n, 3, 3) values of ``score`` at offsets ``step * (-1, 0, 1)`` around interior pixels (rows, cols)."""
    offset = step * (np.arange(3) - 1)
    r = rows[:, None, None] + border + offset[None, :, None]
    c = cols[:, None, None] + border + offset[None, None, :]
    return score[r, c].astype(np.float64)


def _detect(mask, maps, sign, sigma, step, min_separation, border, half):
    """Accepted peaks among the pixels of ``mask`` (NY, NX) of the score map ``sign * maps[0]``.

    ``maps``: (2, NY + 2 border, NX + 2 border) numpy responses at the bead scale and twice it;
    ``sign``: +1 bright, -1 dark. Returns ``(positions (n, 2) x, y in image coordinates, scores
    (n,) in map units)``, unsorted. Only the values needed are gathered, never a negated copy.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return _empty()
    patches = sign * _patches(maps[0], rows, cols, border, 1)
    offsets, values, _ = fit_peaks(patches)
    # The shape test uses a stencil as wide as the filter: the curvature it measures then grows
    # as step^2 while the noise on the differences does not, so ridges are told from peaks.
    _, _, isotropy = fit_peaks(sign * _patches(maps[0], rows, cols, border, step))
    wide = sign * maps[1][rows + border, cols + border].astype(np.float64)
    positions = np.stack([cols + 0.5 + offsets[:, 0], rows + 0.5 + offsets[:, 1]], axis=1)
    ring = sign * ring_profile(maps[0], positions, RING_RADIUS_SIGMAS * sigma, border)
    keep = (isotropy >= MIN_ISOTROPY) & (patches[:, 1, 1] > MIN_SCALE_RATIO * wide)
    keep &= np.max(ring, axis=1) < MAX_RING_FRACTION * values
    keep &= np.ptp(ring, axis=1) < MAX_RING_SPREAD * values
    ny, nx = maps.shape[1] - 2 * border, maps.shape[2] - 2 * border
    inside = (
        (positions[:, 0] >= half)
        & (positions[:, 0] <= nx - half)
        & (positions[:, 1] >= half)
        & (positions[:, 1] <= ny - half)
    )
    keep &= inside & ~crowded(positions, min_separation)
    return positions[keep], values[keep]


def _noise_and_threshold(img, response, sigma, min_score):
    """Noise level of the bead response (image units) and the score threshold (noise sigmas)."""
    noise, roughness = response_statistics(response)
    # Rounding of the image values, after the filter's white-noise gain 1 / (sigma sqrt(2 pi)):
    # the noise level is never taken below that (a constant image then has no peaks, a noiseless
    # one keeps its beads).
    gain = 1.0 / (sigma * math.sqrt(2.0 * math.pi))  # noise std of b for unit white noise
    floor = 16.0 * np.finfo(working_dtype(img)).eps * float(np.max(np.abs(img))) * gain
    noise = max(noise, floor)
    if min_score is not None:
        return noise, float(min_score)
    # White noise, the roughest possible, gives Var(db/dx) / Var(b) = 3 / sigma^2 after this filter.
    roughness = min(roughness, 3.0 / sigma**2) if math.isfinite(roughness) else 3.0 / sigma**2
    return noise, false_peak_threshold(img.size, roughness, EXPECTED_FALSE_PEAKS)


def find_beads(
    image: Real[ArrayLike, "rows columns"],
    bead_diameter_px: float,
    *,
    polarity: str = "auto",
    max_beads: int | None = None,
    min_separation_px: float | None = None,
    min_score: float | None = None,
) -> tuple[Float[np.ndarray, "beads 2"], Float[np.ndarray, " beads"]]:
    """Find gold beads in one image (see the module docstring for the procedure).

    Args:
        image: (NY, NX) array, ``image[row, column]`` (one view of a stack), any real dtype, any
            size; float64 is used throughout only when JAX's x64 mode is on.
        bead_diameter_px: bead diameter in pixels (> 0), e.g. from :func:`estimate_bead_diameter`.
        polarity: "dark" (gold in bright-field cryo-EM), "bright", or "auto" (decided from the
            image: the polarity with more accepted beads).
        max_beads: keep at most this many, the highest scores.
        min_separation_px: features closer than this (centre to centre, pixels) are a cluster and
            all are dropped; default ``1.5 * bead_diameter_px``; 0 keeps close pairs.
        min_score: smallest score, in noise standard deviations of the filtered image; default:
            the threshold above which 0.01 noise peaks are expected in the whole image.

    Returns:
        ``(positions, scores)``: (n, 2) float64 ``(x, y)`` in IMOD image coordinates, pixels (origin
        at the lower-left corner of the image, pixel ``(r, c)`` centred at ``(c + 0.5, r + 0.5)``);
        (n,) float64 scores (bead response over the noise level), highest first. Empty arrays
        (shapes (0, 2), (0,)) when there is no bead, the image is constant, or it is smaller than
        3 x 3.
    """
    if polarity not in _POLARITIES:
        raise ValueError(f"polarity must be one of {_POLARITIES}, got {polarity!r}")
    diameter = float(bead_diameter_px)
    if not (math.isfinite(diameter) and diameter > 0):
        raise ValueError(f"bead_diameter_px must be a positive number, got {bead_diameter_px!r}")
    if max_beads is not None and int(max_beads) < 0:
        raise ValueError(f"max_beads must be >= 0, got {max_beads}")
    separation = 1.5 * diameter if min_separation_px is None else float(min_separation_px)
    if not separation >= 0:
        raise ValueError(f"min_separation_px must be >= 0, got {min_separation_px!r}")
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be a 2-D array (NY, NX), got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
        raise ValueError(f"image must hold real numbers, got dtype {img.dtype}")
    if min(img.shape) < 3 or max_beads == 0:
        return _empty()
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values")

    sigma = SIGMA_PER_DIAMETER * diameter
    step = max(1, int(round(sigma)))  # the step of the isotropy stencil
    border = int(math.ceil(RING_RADIUS_SIGMAS * sigma)) + 2  # room for the ring and the stencil
    responses = bead_responses(img, (sigma, 2.0 * sigma), border=border)
    maps = np.asarray(responses)
    noise, u = _noise_and_threshold(img, maps[0, border:-border, border:-border], sigma, min_score)
    if not noise > 0:  # an all-zero view (blank, dark): nothing to find, and no scale to find it on
        return _empty()
    # The noise level about every pixel (a textured patch raises it there only); positions come
    # from the unscaled map, so a varying level cannot move a peak.
    level = np.full(maps.shape[1:], noise, dtype=np.float64)
    if LOCAL_NOISE_DIAMETERS:
        level = local_noise(maps[0], noise, LOCAL_NOISE_DIAMETERS * diameter).astype(np.float64)
        # relative to the image's robust noise level (a mean |b| over a heavy-tailed texture is
        # larger than its MAD; only the variation over the image is wanted from it), and never
        # above it: the image-wide level already keeps textured areas free of false beads, and
        # raising it there lost faint beads at cryo dose; quiet areas get their own lower level
        level *= noise / float(np.median(level[border:-border, border:-border]))
        level = np.minimum(level, noise)
    radius = max(1, int(round(0.5 * diameter)))

    # Candidates from a slightly lower pixel threshold; the fitted peak value decides (step 4).
    masks = peak_masks(responses[0], 0.9 * u * float(np.min(level)), radius, border=border)
    interior = level[border:-border, border:-border]
    masks = masks & (np.abs(maps[0, border:-border, border:-border]) >= 0.9 * u * interior)[None]
    found = {}
    for i, (name, sign) in enumerate((("bright", 1.0), ("dark", -1.0))):
        if polarity in ("auto", name):
            pos, val = _detect(masks[i], maps, sign, sigma, step, separation, border, 0.5 * diameter)
            col = np.clip(pos[:, 0].astype(np.int64), 0, img.shape[1] - 1) + border
            row = np.clip(pos[:, 1].astype(np.int64), 0, img.shape[0] - 1) + border
            snr = val / level[row, col]
            found[name] = (pos[snr >= u], snr[snr >= u])
    if polarity == "auto":

        def strength(name):
            pos, val = found[name]
            return (pos.shape[0], float(np.sum(val)), name == "dark")

        chosen = max(found, key=strength)
    else:
        chosen = polarity
    positions, scores = found[chosen]
    order = np.argsort(-scores, kind="stable")
    if max_beads is not None:
        order = order[: int(max_beads)]
    return positions[order], scores[order]
