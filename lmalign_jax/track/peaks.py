"""Peaks of a bead-response map: significance threshold, non-maximum suppression, sub-pixel fit.

Significance threshold
----------------------
Where a response map ``b`` is stationary Gaussian noise of standard deviation ``s`` and
roughness ``lambda = Var(db/dx) / s^2`` (per pixel^2), the expected number of local maxima
above ``u s`` in an area of ``A`` pixels is, for large ``u``, the expected Euler characteristic
of the excursion set (Adler 1981; Worsley et al. 1996, "A unified statistical approach for
determining significant signals in images of cerebral activation", Hum. Brain Mapp. 4:58-73):

    E[N(u)] = A lambda u exp(-u^2 / 2) / (2 pi)^(3/2).

:func:`false_peak_threshold` solves ``E[N(u)] = expected_false`` for ``u``, so the threshold grows
with the image size (about 5 noise sigmas for 256^2 pixels, 6 for 4k x 4k) instead of being a
fixed number that floods large images with noise peaks.

Non-maximum suppression
-----------------------
A pixel is a peak when it equals the maximum of the map over the ``(2 r + 1)^2`` square around
it (a separable max filter, ``jax.lax.reduce_window``) and exceeds the threshold: one
vectorised comparison, no loop over pixels.

Sub-pixel fit
-------------
On the 3 x 3 values ``v`` around a peak, central differences give the gradient ``g`` and the
Hessian ``H`` (``H_xy`` from the four corners) of the quadratic through them; its maximum lies at
``delta = -H^-1 g`` (clipped to half a pixel) with value ``v_0 + g . delta / 2``. The
eigenvalues ``mu_1 >= mu_2`` of ``-H`` also measure the peak's shape: ``mu_2 / mu_1`` (the
*isotropy*) is 1 for a round peak and near 0 for a ridge (an edge, a filament, two beads that
merge); a value <= 0 means the point is not a proper maximum.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["false_peak_threshold", "peak_masks", "fit_peaks", "ring_profile", "crowded"]


def false_peak_threshold(n_pixels: float, roughness: float, expected_false: float = 0.05) -> float:
    """Threshold ``u`` (in noise sigmas) with ``expected_false`` noise maxima above it in ``n_pixels``.

    Solves ``n_pixels * roughness * u * exp(-u^2/2) / (2 pi)^1.5 = expected_false`` for ``u`` >= 1
    by bisection (the left side decreases for ``u`` > 1); returns at least 3.
    """
    scale = max(float(n_pixels) * float(roughness), 1e-300) / (2.0 * math.pi) ** 1.5
    log_target = math.log(float(expected_false))

    def excess(u):
        return math.log(scale * u) - 0.5 * u * u - log_target

    lo, hi = 1.0, 40.0
    if excess(lo) <= 0:
        return 3.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return max(3.0, hi)


@partial(jax.jit, static_argnames=("radius", "border"))
def _peak_masks(response, threshold, radius, border):
    ny, nx = response.shape
    window = 2 * radius + 1
    masks = []
    for score in (response, -response):  # bright, dark
        low = jnp.array(-jnp.inf, dtype=score.dtype)
        m = jax.lax.reduce_window(score, low, jax.lax.max, (window, 1), (1, 1), "SAME")
        m = jax.lax.reduce_window(m, low, jax.lax.max, (1, window), (1, 1), "SAME")
        is_peak = (score >= m) & (score > threshold)
        masks.append(is_peak[border : ny - border, border : nx - border])
    return jnp.stack(masks)


def peak_masks(response, threshold: float, radius: int, border: int = 1) -> np.ndarray:
    """Peaks of ``response`` (bright) and of ``-response`` (dark) above ``threshold``.

    A peak is a pixel that is the maximum of its ``(2 radius + 1)^2`` neighbourhood.

    Args:
        response: (NY + 2 border, NX + 2 border) map (a bead response with its border).
        threshold: smallest value a peak may have (same units as ``response``).
        radius: half-width of the suppression window, pixels (>= 1).
        border: pixels on each side of ``response`` that are context only, never peaks.

    Returns:
        (2, NY, NX) bool numpy array for the interior pixels: ``[0]`` bright, ``[1]`` dark peaks.
    """
    response = jnp.asarray(response)
    threshold = jnp.asarray(threshold, dtype=response.dtype)
    return np.asarray(_peak_masks(response, threshold, max(1, int(radius)), int(border)))


def fit_peaks(patches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadratic sub-pixel fit of 3 x 3 patches centred on peaks.

    Args:
        patches: (n, 3, 3) values, ``patches[i, 1 + dy, 1 + dx]`` at offset ``(dx, dy)`` pixels.

    Returns:
        ``(offsets, values, isotropy)``: (n, 2) float64 ``(dx, dy)`` of the maximum from the centre
        pixel, each in [-0.5, 0.5]; (n,) interpolated peak values; (n,) ``mu_2 / mu_1`` (see
        module docstring; <= 0 where the quadratic has no maximum).
    """
    v = np.asarray(patches, dtype=np.float64).reshape(-1, 3, 3)
    gx = 0.5 * (v[:, 1, 2] - v[:, 1, 0])
    gy = 0.5 * (v[:, 2, 1] - v[:, 0, 1])
    hxx = v[:, 1, 2] - 2.0 * v[:, 1, 1] + v[:, 1, 0]
    hyy = v[:, 2, 1] - 2.0 * v[:, 1, 1] + v[:, 0, 1]
    hxy = 0.25 * (v[:, 2, 2] - v[:, 2, 0] - v[:, 0, 2] + v[:, 0, 0])
    det = hxx * hyy - hxy * hxy
    safe = np.where(det > 0, det, 1.0)
    dx = np.where(det > 0, -(hyy * gx - hxy * gy) / safe, 0.0)
    dy = np.where(det > 0, -(hxx * gy - hxy * gx) / safe, 0.0)
    offsets = np.clip(np.stack([dx, dy], axis=1), -0.5, 0.5)
    values = v[:, 1, 1] + 0.5 * (gx * offsets[:, 0] + gy * offsets[:, 1])
    # eigenvalues of -H: mean +- half the spread
    mean = -0.5 * (hxx + hyy)
    spread = np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy * hxy)
    mu1, mu2 = mean + spread, mean - spread
    isotropy = np.where(mu1 > 0, mu2 / np.where(mu1 > 0, mu1, 1.0), 0.0)
    return offsets, values, isotropy


def ring_profile(score, positions, radius: float, border: int, n_angles: int = 16) -> np.ndarray:
    """Values of a map on a circle around each point, averaged over opposite points.

    Args:
        score: (NY + 2 border, NX + 2 border) map; interior pixel ``(r, c)`` is centred at image
            coordinates ``(c + 0.5, r + 0.5)``.
        positions: (n, 2) centres ``(x, y)``, image coordinates.
        radius: circle radius, pixels (``radius + 1 <= border`` keeps every sample on the map).
        border: context pixels on each side of ``score``.
        n_angles: samples on the circle (even), bilinear interpolation.

    Returns:
        (n, n_angles // 2) float64: the mean of the two samples at angles ``a`` and ``a + pi`` for
        ``a = 2 pi k / n_angles``. For a round bead every entry is near the filter's zero crossing;
        for a point on a ridge (an edge, a filament, the rim of a large blob) the entry along the
        ridge is near the peak value.
    """
    s = np.asarray(score)
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    angles = 2.0 * np.pi * np.arange(n_angles) / n_angles
    cols = p[:, 0:1] + radius * np.cos(angles)[None, :] - 0.5 + border  # (n, n_angles)
    rows = p[:, 1:2] + radius * np.sin(angles)[None, :] - 0.5 + border
    c0 = np.clip(np.floor(cols).astype(np.int64), 0, s.shape[1] - 2)
    r0 = np.clip(np.floor(rows).astype(np.int64), 0, s.shape[0] - 2)
    fc, fr = np.clip(cols - c0, 0.0, 1.0), np.clip(rows - r0, 0.0, 1.0)

    def at(r, c):
        return s[r, c].astype(np.float64)  # gather, then widen: never a float64 copy of the map

    values = (
        (1 - fr) * (1 - fc) * at(r0, c0)
        + (1 - fr) * fc * at(r0, c0 + 1)
        + fr * (1 - fc) * at(r0 + 1, c0)
        + fr * fc * at(r0 + 1, c0 + 1)
    )
    half = n_angles // 2
    return 0.5 * (values[:, :half] + values[:, half:])


def crowded(positions, min_distance: float, block: int = 1024) -> np.ndarray:
    """Which points have another point closer than ``min_distance``.

    Args:
        positions: (n, 2) points, pixels.
        min_distance: pixels; <= 0 flags nothing.

    Returns:
        (n,) bool. Points are sorted by x and compared block by block with the points whose x
        lies within ``min_distance`` of the block, so the cost stays near ``n log n`` for points
        spread over an image.
    """
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    n = p.shape[0]
    flag = np.zeros(n, dtype=bool)
    if n < 2 or not min_distance > 0:
        return flag
    order = np.argsort(p[:, 0], kind="stable")
    q = p[order]
    d2 = float(min_distance) ** 2
    for start in range(0, n, block):
        stop = min(n, start + block)
        lo = int(np.searchsorted(q[:, 0], q[start, 0] - min_distance, side="left"))
        hi = int(np.searchsorted(q[:, 0], q[stop - 1, 0] + min_distance, side="right"))
        diff = q[start:stop, None, :] - q[None, lo:hi, :]
        close = np.sum(diff * diff, axis=2) < d2
        own = np.arange(start, stop)[:, None] == np.arange(lo, hi)[None, :]
        flag[order[start:stop]] = np.any(close & ~own, axis=1)
    return flag
