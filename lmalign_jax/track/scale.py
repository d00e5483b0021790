"""The bead diameter from the image itself: the scale of the strongest scale-normalised LoG responses.

The bead response ``b_sigma`` (:mod:`lmalign_jax.track.filters`) is scale-normalised, so a blob
responds most at the scale that matches its size (Lindeberg 1998, "Feature detection with
automatic scale selection", IJCV 30:79-116): ``sigma = 0.301 D`` for a projected sphere of
diameter ``D``. :func:`estimate_bead_diameter` evaluates ``b_sigma`` on a geometric ladder of
scales (ratio ``2^(1/6)``), and at each scale takes the mean of the ``top`` largest *bead-like*
local maxima (3 x 3 maximum, round and with a bead's ring profile as in
:mod:`lmalign_jax.track.find`, so edges and filaments, whose response does not depend on the
scale, do not count) that are significant at that scale (above the threshold of
:mod:`lmalign_jax.track.find` for that scale's own noise level; missing ones count as 0, so two
strong ice blobs do not outvote sixteen beads,
and pure noise votes for nothing and gives NaN). That curve against ``log sigma`` peaks near the
bead scale. Each significant maximum at the best scale then picks its own scale (the maximum of
the responses at its pixel across the ladder, refined by a parabola in ``log sigma``), and the
median of those is the answer, ``D = sigma / 0.301``: the per-bead maxima are sharper than the
mean curve, whose top is flat for Gaussian-like beads and pulled up by merged pairs.

Since many beads vote, a few large blobs (ice, cell features) do not move the answer; but the
beads must outvote them: in the tests 5 beads beat two ice blobs of twice their contrast, 3 did
not, and an image without beads reports the size of its largest round features. ``top`` (64) caps
the votes: with 16, a 1k cryo-dose view with 14 ice blobs 2.5-5 bead diameters wide (each darker
than a bead) and ~30 detectable beads reported the ice's size (30 px for 8-px beads); with 32 or
64, 8.0 px. Only the central
``region_px x region_px`` pixels are analysed, so a 4k image costs as much as a 1k one. A Gaussian bead of
standard deviation ``s`` is reported as ``D = s / 0.301 = 3.3 s``.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lmalign_jax.track.filters import SIGMA_PER_DIAMETER, bead_responses, response_statistics
from lmalign_jax.track.find import (
    EXPECTED_FALSE_PEAKS,
    MAX_RING_FRACTION,
    MAX_RING_SPREAD,
    MIN_ISOTROPY,
    RING_RADIUS_SIGMAS,
)
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
    return jax.lax.top_k(values, min(top, values.size))


@partial(jax.jit, static_argnames=("border", "top"))
def _top_bead_like_maxima(maps, steps, ring_offsets, border, top):
    """(2, S, top) largest bead-like maxima of ``maps`` (S, Y + 2 border, X + 2 border) and of ``-maps``,
    and their (2, S, top) flat indices into the (Y, X) interior.

    Bead-like as in :func:`lmalign_jax.track.find.find_beads`, on the pixel grid: a 3 x 3 maximum,
    Hessian isotropy >= MIN_ISOTROPY on a stencil of step ``steps[s]`` (``round(sigma)``), and the
    ring of radius ``2 sigma`` (``ring_offsets[s]``: 16 nearest pixels, opposite ones averaged)
    below MAX_RING_FRACTION of the peak with a spread below MAX_RING_SPREAD of it. -inf pads.
    """
    per_map = jax.vmap(partial(_bead_like_top, border=border, top=top))
    (vb, ib), (vd, idk) = per_map(maps, steps, ring_offsets), per_map(-maps, steps, ring_offsets)
    return jnp.stack([vb, vd]), jnp.stack([ib, idk])


def _scale_analysis(image, diameters_px, top, region_px):
    """Significant bead-like maxima at every scale, for both polarities.

    Returns ``(values, profiles)``: (2, n, top) values of the ``top`` largest significant maxima at
    each of the n scales (NaN where missing; ``[0]`` bright, ``[1]`` dark), and (2, n, top, n) the
    response of every scale at each of those maxima's pixels (sign applied).
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
    ring_offsets = np.stack(
        [np.round(ring * np.sin(angles)), np.round(ring * np.cos(angles))], axis=2
    ).astype(np.int32)
    values, flat = _top_bead_like_maxima(maps, steps, ring_offsets, border, int(top))
    values, flat = np.asarray(values, dtype=np.float64), np.asarray(flat)
    # Only maxima above the noise threshold of their own scale count, so pure noise votes for nothing.
    host = np.asarray(maps)
    floor = np.zeros(sigmas.size)
    for i in range(sigmas.size):
        noise, roughness = response_statistics(host[i, border:-border:2, border:-border:2])
        roughness = min(roughness / 4.0, 3.0 / sigmas[i] ** 2)  # measured on a grid of step 2
        floor[i] = false_peak_threshold(crop.size, roughness, EXPECTED_FALSE_PEAKS) * noise
    values = np.where(values > floor[None, :, None], values, np.nan)
    width = host.shape[2] - 2 * border
    rows, cols = flat // width + border, flat % width + border  # (2, n, top)
    profiles = np.moveaxis(host[:, rows, cols], 0, -1).astype(np.float64)  # (2, n, top, n)
    profiles[1] *= -1.0
    return values, profiles


def scale_curve(image, diameters_px, *, signs=(1.0,), top: int = 64, region_px: int = 1024) -> np.ndarray:
    """Mean of the ``top`` strongest significant bead-like responses (0 for missing ones) at each
    scale, per sign.

    Args:
        image: (NY, NX) array.
        diameters_px: (n,) bead diameters to try, pixels.
        signs: +1 for bright beads, -1 for dark (one curve each; the filtering is shared).
        top: how many maxima are averaged at each scale.
        region_px: only the central ``region_px x region_px`` pixels are analysed.

    Returns:
        (len(signs), n) float64, in image units (0 where no maximum is significant).
    """
    values, _ = _scale_analysis(image, diameters_px, top, region_px)
    return np.stack(
        [np.sum(np.nan_to_num(values[0 if sg > 0 else 1], nan=0.0), axis=1) / float(top) for sg in signs]
    )


def _peak_of(curve, log_d) -> float:
    """log diameter of the maximum of ``curve`` over ``log_d`` (parabola through the top three)."""
    i = int(np.argmax(curve))
    if 0 < i < curve.size - 1:
        left, mid, right = curve[i - 1], curve[i], curve[i + 1]
        denom = left - 2.0 * mid + right
        if denom < 0:
            return float(log_d[i] + np.clip(0.5 * (left - right) / denom, -0.5, 0.5) * (log_d[1] - log_d[0]))
    return float(log_d[i])


def estimate_bead_diameter(
    image,
    *,
    polarity: str = "auto",
    min_diameter_px: float = 3.0,
    max_diameter_px: float | None = None,
    top: int = 64,
    region_px: int = 1024,
) -> float:
    """Bead diameter in pixels, from the scale at which round features respond most (see module docstring).

    Args:
        image: (NY, NX) array, ``image[row, column]``; at least 8 x 8 pixels.
        polarity: "dark", "bright", or "auto" (the polarity with the stronger peak response).
        min_diameter_px, max_diameter_px: the range searched, pixels; the largest defaults to
            ``min(64, min(NY, NX) / 4)`` (at least twice the smallest).
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
    smallest = float(min_diameter_px)
    largest = (
        max(min(64.0, min(img.shape) / 4.0), 2.0 * smallest)
        if max_diameter_px is None
        else float(max_diameter_px)
    )
    if not (0 < smallest < largest):
        raise ValueError(f"need 0 < min_diameter_px < max_diameter_px, got {smallest} and {largest}")
    n = int(math.floor(math.log(largest / smallest) / math.log(SCALE_STEP))) + 1
    diameters = smallest * SCALE_STEP ** np.arange(max(n, 3))
    signs = {"bright": (1.0,), "dark": (-1.0,), "auto": (1.0, -1.0)}[polarity]
    values, profiles = _scale_analysis(img, diameters, top, region_px)
    curves = np.sum(np.nan_to_num(values, nan=0.0), axis=2) / float(top)  # (2, n)
    j = max((0 if sg > 0 else 1 for sg in signs), key=lambda k: float(np.max(curves[k])))
    if not np.max(curves[j]) > 0:
        return float("nan")
    # Each significant maximum at the best scale picks its own scale; the median ignores the few
    # that are merged pairs or blobs.
    i = int(np.argmax(curves[j]))
    log_d = np.log(diameters)
    own = [_peak_of(profiles[j, i, k], log_d) for k in range(values.shape[2]) if np.isfinite(values[j, i, k])]
    return float(math.exp(np.median(own)))
