"""The bead diameter from the image itself: the scale of the strongest scale-normalised LoG responses.

The bead response ``b_sigma`` (:mod:`lmalign_jax.track.filters`) is scale-normalised, so a blob
responds most at the scale that matches its size (Lindeberg 1998, "Feature detection with
automatic scale selection", IJCV 30:79-116): ``sigma = 0.301 D`` for a projected sphere of
diameter ``D``. :func:`estimate_bead_diameter` evaluates ``b_sigma`` on a geometric ladder of
scales (ratio ``2^(1/6)``), and at each scale takes the mean of the ``top`` largest *round* local
maxima (3 x 3 maximum, Hessian isotropy ``mu_2 / mu_1 >= 0.5`` as in
:mod:`lmalign_jax.track.peaks`, so edges and filaments, whose response does not depend on the
scale, do not count). The curve of that mean against ``log sigma`` peaks at the bead scale; a
parabola through the best scale and its two neighbours refines it, and ``D = sigma / 0.301``.

Since many beads vote, a few large blobs (ice, cell features) do not move the answer; but the
image must hold at least about ``top`` beads in the analysed region (the central
``region_px x region_px`` pixels, so a 4k image costs as much as a 1k one). A Gaussian bead of
standard deviation ``s`` is reported as ``D = s / 0.301 = 3.3 s``.
"""

from __future__ import annotations

import math

import numpy as np

from lmalign_jax.track.filters import SIGMA_PER_DIAMETER, bead_responses
from lmalign_jax.track.find import MIN_ISOTROPY

__all__ = ["estimate_bead_diameter", "scale_curve"]

#: Ratio between successive scales of the ladder.
SCALE_STEP = 2.0 ** (1.0 / 6.0)


def _round_maxima_mean(m, top: int) -> float:
    """Mean of the ``top`` largest round 3 x 3 maxima of one (Y, X) map (with a one-pixel border)."""
    m = np.asarray(m, dtype=np.float64)
    c = m[1:-1, 1:-1]
    ny, nx = m.shape
    is_max = np.ones(c.shape, dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                is_max &= c >= m[1 + dr : ny - 1 + dr, 1 + dc : nx - 1 + dc]
    hxx = m[1:-1, 2:] - 2.0 * c + m[1:-1, :-2]
    hyy = m[2:, 1:-1] - 2.0 * c + m[:-2, 1:-1]
    hxy = 0.25 * (m[2:, 2:] - m[2:, :-2] - m[:-2, 2:] + m[:-2, :-2])
    mean = -0.5 * (hxx + hyy)
    spread = np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy * hxy)
    is_max &= ((mean - spread) >= MIN_ISOTROPY * (mean + spread)) & ((mean + spread) > 0)
    values = c[is_max]
    if values.size == 0:
        return 0.0
    k = min(int(top), values.size)
    return float(np.mean(np.partition(values, values.size - k)[values.size - k :]))


def scale_curve(image, diameters_px, *, signs=(1.0,), top: int = 16, region_px: int = 1024) -> np.ndarray:
    """Mean of the ``top`` strongest round responses at the scale of each diameter, for each sign.

    Args:
        image: (NY, NX) array.
        diameters_px: (n,) bead diameters to try, pixels.
        signs: +1 for bright beads, -1 for dark (one curve each; the filtering is shared).
        top: how many maxima are averaged at each scale.
        region_px: only the central ``region_px x region_px`` pixels are analysed.

    Returns:
        (len(signs), n) float64, in image units.
    """
    img = np.asarray(image)
    ny, nx = img.shape
    r0, c0 = max(0, (ny - region_px) // 2), max(0, (nx - region_px) // 2)
    crop = img[r0 : r0 + region_px, c0 : c0 + region_px]
    sigmas = SIGMA_PER_DIAMETER * np.asarray(diameters_px, dtype=np.float64)
    maps = bead_responses(crop, tuple(sigmas), border=1)
    curves = np.zeros((len(signs), sigmas.size))
    for i in range(sigmas.size):
        response = np.asarray(maps[i])
        for j, sign in enumerate(signs):
            curves[j, i] = _round_maxima_mean(float(sign) * response, top)
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
