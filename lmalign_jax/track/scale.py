"""The bead diameter from the image itself: the scale of the strongest scale-normalised LoG responses.

The bead response ``b_sigma`` (:mod:`lmalign_jax.track.filters`) is scale-normalised, so a blob
responds most at the scale that matches its size (Lindeberg 1998, "Feature detection with
automatic scale selection", IJCV 30:79-116): ``sigma = 0.301 D`` for a projected sphere of
diameter ``D``. :func:`estimate_bead_diameter` evaluates ``b_sigma`` on a geometric ladder of
scales (ratio ``2^(1/6)``), and at each scale takes the mean of the ``top`` largest *bead-like*
local maxima (3 x 3 maximum, round and with a bead's ring profile as in
:mod:`lmalign_jax.track.find`, so edges and filaments, whose response does not depend on the
scale, do not count) that are
significant at that scale (above the threshold of :mod:`lmalign_jax.track.find` for that scale's
own noise level; missing ones count as 0, so two strong ice blobs do not outvote sixteen beads,
and pure noise votes for nothing and gives NaN). The curve of that mean against ``log sigma`` peaks at the bead scale; a
parabola through the best scale and its two neighbours refines it, and ``D = sigma / 0.301``.

Since many beads vote, a few large blobs (ice, cell features) do not move the answer; but the
image must hold at least about ``top`` beads in the analysed region (the central
``region_px x region_px`` pixels, so a 4k image costs as much as a 1k one). A Gaussian bead of
standard deviation ``s`` is reported as ``D = s / 0.301 = 3.3 s``.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lmalign_jax.track.filters import SIGMA_PER_DIAMETER, bead_responses, response_statistics
from lmalign_jax.track.find import EXPECTED_FALSE_PEAKS, MAX_RING_FRACTION, MAX_RING_SPREAD, MIN_ISOTROPY, RING_RADIUS_SIGMAS
from lmalign_jax.track.peaks import false_peak_threshold

__all__ = ["estimate_bead_diameter", "scale_curve"]

#: Ratio between successive scales of the ladder.
SCALE_STEP = 2.0 ** (1.0 / 6.0)


def _bead_like_top(m, step, ring_offsets, border, top):
    """``top`` largest bead-like maxima of one map ``m`` (Y + 2 border, X + 2 border); -inf pads.

    ``step``: traced int, the Hessian stencil step; ``ring_offsets``: (16, 2) traced (dr, dc).
    """
    ny, nx = m.shape[0] - 2 * border, m.shape[1] - 2 * border

    def at(dr, dc):
        start = (jnp.asarray(border + dr, dtype=jnp.int32), jnp.asarray(border + dc, dtype=jnp.int32))
        return jax.lax.dynamic_slice(m, start, (ny, nx))

    c = at(0, 0)
    is_max = jnp.ones(c.shape, dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                is_max &= c >= at(dr, dc)
    h = step
    hxx = at(0, h) - 2.0 * c + at(0, -h)
    hyy = at(h, 0) - 2.0 * c + at(-h, 0)
    hxy = 0.25 * (at(h, h) - at(h, -h) - at(-h, h) + at(-h, -h))
    mean = -0.5 * (hxx + hyy)
    spread = jnp.sqrt(0.25 * (hxx - hyy) ** 2 + hxy * hxy)
    is_max &= ((mean - spread) >= MIN_ISOTROPY * (mean + spread)) & ((mean + spread) > 0)
    ring = jnp.stack([0.5 * (at(*ring_offsets[k]) + at(*ring_offsets[k + 8])) for k in range(8)])
    ring_max, ring_min = jnp.max(ring, axis=0), jnp.min(ring, axis=0)
    is_max &= (ring_max < MAX_RING_FRACTION * c) & (ring_max - ring_min < MAX_RING_SPREAD * c)
    values = jnp.where(is_max, c, -jnp.inf).reshape(-1)
    return jax.lax.top_k(values, min(top, values.size))[0]


@partial(jax.jit, static_argnames=("border", "top"))
def _top_bead_like_maxima(maps, steps, ring_offsets, border, top):
    """(2, S, top) largest bead-like maxima of ``maps`` (S, Y + 2 border, X + 2 border) and of ``-maps``.

    Bead-like as in :func:`lmalign_jax.track.find.find_beads`, on the pixel grid: a 3 x 3 maximum,
    Hessian isotropy >= MIN_ISOTROPY on a stencil of step ``steps[s]`` (``round(sigma)``), and the
    ring of radius ``2 sigma`` (``ring_offsets[s]``: 16 nearest pixels, opposite ones averaged)
    below MAX_RING_FRACTION of the peak with a spread below MAX_RING_SPREAD of it. -inf pads.
    """
    per_map = jax.vmap(partial(_bead_like_top, border=border, top=top))
    return jnp.stack([per_map(maps, steps, ring_offsets), per_map(-maps, steps, ring_offsets)])


def scale_curve(image, diameters_px, *, signs=(1.0,), top: int = 16, region_px: int = 1024) -> np.ndarray:
    """Mean of the ``top`` strongest significant round responses (0 for missing ones) at each scale, per sign.

    Args:
        image: (NY, NX) array.
        diameters_px: (n,) bead diameters to try, pixels.
        signs: +1 for bright beads, -1 for dark (one curve each; the filtering is shared).
        top: how many maxima are averaged at each scale.
        region_px: only the central ``region_px x region_px`` pixels are analysed.

    Returns:
        (len(signs), n) float64, in image units (0 where no maximum is significant).
    """
    img = np.asarray(image)
    ny, nx = img.shape
    r0, c0 = max(0, (ny - region_px) // 2), max(0, (nx - region_px) // 2)
    crop = img[r0 : r0 + region_px, c0 : c0 + region_px]
    sigmas = SIGMA_PER_DIAMETER * np.asarray(diameters_px, dtype=np.float64)
    border = int(math.ceil(RING_RADIUS_SIGMAS * float(np.max(sigmas)))) + 2
    maps = bead_responses(crop, tuple(float(x) for x in sigmas), border=border)
    steps = np.maximum(1, np.round(sigmas)).astype(np.int32)
    angles = 2.0 * np.pi * np.arange(16) / 16.0
    ring = RING_RADIUS_SIGMAS * sigmas[:, None]
    ring_offsets = np.stack([np.round(ring * np.sin(angles)), np.round(ring * np.cos(angles))], axis=2).astype(np.int32)
    best = np.asarray(_top_bead_like_maxima(maps, steps, ring_offsets, border, int(top)), dtype=np.float64)
    # Only maxima above the noise threshold of their own scale count, so pure noise votes for nothing.
    host = np.asarray(maps)
    floor = np.zeros(sigmas.size)
    for i in range(sigmas.size):
        noise, roughness = response_statistics(host[i, border:-border:2, border:-border:2])
        roughness = min(roughness / 4.0, 3.0 / sigmas[i] ** 2)  # measured on a grid of step 2
        floor[i] = false_peak_threshold(crop.size, roughness, EXPECTED_FALSE_PEAKS) * noise
    best = np.where(best > floor[None, :, None], best, np.nan)
    curves = np.zeros((len(signs), sigmas.size))
    for j, sign in enumerate(signs):
        rows = best[0 if sign > 0 else 1]
        curves[j] = np.sum(np.nan_to_num(rows, nan=0.0), axis=1) / float(top)  # missing ones count 0
    return curves


def estimate_bead_diameter(
    image,
    *,
    polarity: str = "auto",
    min_diameter_px: float = 3.0,
    max_diameter_px: float | None = None,
    top: int = 16,
    region_px: int = 1024,
) -> float:
    """Bead diameter in pixels, from the scale at which round features respond most (see module docstring).

    Args:
        image: (NY, NX) array, ``image[row, column]``; at least 8 x 8 pixels.
        polarity: "dark", "bright", or "auto" (the polarity with the stronger peak response).
        min_diameter_px, max_diameter_px: the range searched, pixels; the largest defaults to
            ``min(64, min(NY, NX) / 4)``.
        top: how many round maxima are averaged at each scale (the image needs about that many beads).
        region_px: only the central ``region_px x region_px`` pixels are analysed.

    Returns:
        The diameter ``D`` in pixels (a projected sphere of diameter ``D`` gives ``D``); NaN when no
        round feature is found at any scale.
    """
    if polarity not in ("auto", "dark", "bright"):
        raise ValueError(f"polarity must be 'auto', 'dark' or 'bright', got {polarity!r}")
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 8:
        raise ValueError(f"image must be a 2-D array of at least 8 x 8 pixels, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values")
    largest = min(64.0, min(img.shape) / 4.0) if max_diameter_px is None else float(max_diameter_px)
    smallest = float(min_diameter_px)
    if not (0 < smallest < largest):
        raise ValueError(f"need 0 < min_diameter_px < max_diameter_px, got {smallest} and {largest}")
    n = int(math.floor(math.log(largest / smallest) / math.log(SCALE_STEP))) + 1
    diameters = smallest * SCALE_STEP ** np.arange(max(n, 3))
    signs = {"bright": (1.0,), "dark": (-1.0,), "auto": (1.0, -1.0)}[polarity]
    curves = scale_curve(img, diameters, signs=signs, top=top, region_px=region_px)
    curve = max(curves, key=lambda c: float(np.max(c)))
    if not np.max(curve) > 0:
        return float("nan")
    i = int(np.argmax(curve))
    log_d = math.log(diameters[i])
    if 0 < i < curve.size - 1:
        left, mid, right = curve[i - 1], curve[i], curve[i + 1]
        denom = left - 2.0 * mid + right
        if denom < 0:
            log_d += float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5)) * math.log(SCALE_STEP)
    return float(math.exp(log_d))
