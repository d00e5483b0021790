"""Bead centres in one view: batched FFT cross-correlation of bead windows with an averaged bead.

Windows
-------
A window of size ``W`` around a position ``(x, y)`` (IMOD image coordinates, pixel ``(r, c)``
centred at ``(c + 0.5, r + 0.5)``) covers columns ``c0 .. c0 + W - 1`` with ``c0 = floor(x) - W/2``
(rows likewise); pixels outside the image repeat the nearest edge pixel. Window index ``W/2``
is the pixel that contains the position.

Template
--------
:func:`bead_template` averages the windows of the beads found on the seed view after moving
each bead, by a Fourier phase shift, so that its centre lies on the centre of pixel ``W/2``; the
background (the median of the window's outer ring) is subtracted, the average is moved onto its
own centre of point symmetry (below), multiplied by a soft disc of radius ``0.5 D + 2`` px and
made zero-mean inside it. The averaged bead is
sharper in noise than any one bead, as in IMOD's ``beadtrack``, which correlates each bead with
the average of the beads already tracked (its man page, "average of previous beads").

Why the template is re-centred, and why its disc is small
---------------------------------------------------------
Every centre is found relative to the template, so an off-centre template moves every bead of
the series by the same amount. The seed positions it is averaged at come from the detector,
whose centres on a textured specimen are off by ~0.2 px each; with 6-15 beads their mean is off
by ~0.1 px, which was the bias of (+0.13, +0.09) px measured on realistic stacks (20 views of
256 px, 6 beads). A bead is point-symmetric, so the average is shifted (Fourier phase, three
times) to the point about which it is symmetric: the peak of its correlation with its own point
reflection about pixel ``W/2`` is at twice its offset. The disc of ``0.5 D + 2`` px (it was
``0.75 D + 2``) keeps less of the textured background around the bead in the correlation: on
the same realistic stacks the centring RMS fell by ~12% (0.18 -> 0.16 px at 200 e/px, 0.46 ->
0.40 px at 30 e/px) and the alignment error from the tracks by ~9%.

Correlation and centre
----------------------
:func:`correlate_windows` correlates every window of a view with the template in one batched,
jit-compiled FFT (``irfft2(rfft2(w) * conj(rfft2(t0)))``, ``t0`` the template rolled so its
centre is at index 0), so the correlation peaks at the bead's window index. The peak is the
largest value within ``search_px`` of the predicted position; its sub-pixel position comes from
a three-point Gaussian fit along each axis (a parabola through the logarithms; a parabola
through the values where a value is not positive). For a Gaussian bead and a Gaussian template
the correlation is Gaussian and the fit exact. Each bead also gets

* ``amplitude``: the peak over the template's own energy ``sum t^2`` (about 1 for an average
  bead, 0 for no bead; negative for the opposite contrast);
* ``snr``: the peak over the robust standard deviation (RMS clipped at 3 sigma) of the
  correlation in the window away from the peak (farther than ``2 D``);
* ``rival``: the largest correlation within ``2 D`` of the peak but farther than ``0.9 D`` from
  it, over the peak: near 1 when a second bead sits beside this one (ambiguous).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int, Real

__all__ = ["window_size", "extract_windows", "bead_template", "correlate_windows", "WindowMatch"]

#: Standard deviation of a unit Gaussian truncated at +-3 (the clipped-RMS correction).
CLIPPED_SD = 0.98658
#: Radius of the template's soft disc: this many bead diameters plus 2 px (module docstring).
TEMPLATE_RADIUS_PER_DIAMETER = 0.5
#: Times the averaged bead is moved onto its centre of point symmetry (module docstring).
RECENTRE_ITERATIONS = 3


def window_size(bead_diameter_px: float, search_px: float) -> int:
    """Window side (an even number with prime factors 2, 3, 5): room for the search and a bead."""
    need = int(math.ceil(2.0 * search_px + 2.5 * bead_diameter_px + 4))
    n = max(16, need + need % 2)
    while True:
        k = n
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1 and n % 2 == 0:
            return n
        n += 1


def extract_windows(
    view: Real[ArrayLike, "rows columns"], positions: Float[ArrayLike, "beads 2"], size: int
) -> tuple[Float[np.ndarray, "beads size size"], Int[np.ndarray, "beads 2"]]:
    """Windows ``(n, W, W)`` float32 of one view around ``positions`` (n, 2) ``(x, y)``, and their
    origins ``(c0, r0)`` (n, 2) (see the module docstring; edge pixels repeat outside the view)."""
    v = np.asarray(view)
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    half = int(size) // 2
    origin = np.floor(p).astype(np.int64) - half
    offsets = np.arange(int(size))
    cols = np.clip(origin[:, 0:1] + offsets[None, :], 0, v.shape[1] - 1)  # (n, W)
    rows = np.clip(origin[:, 1:2] + offsets[None, :], 0, v.shape[0] - 1)
    windows = v[rows[:, :, None], cols[:, None, :]].astype(np.float32, copy=False)
    return windows, origin


def bead_template(
    windows: Float[ArrayLike, "beads size size"],
    origins: Int[ArrayLike, "beads 2"],
    positions: Float[ArrayLike, "beads 2"],
    bead_diameter_px: float,
) -> Float[np.ndarray, "size size"]:
    """The averaged, zero-mean, disc-masked bead (W, W) float64, centred on pixel ``W/2``.

    Args:
        windows, origins: from :func:`extract_windows` at ``positions``.
        positions: (n, 2) the beads' centres ``(x, y)`` in the view, pixels.
        bead_diameter_px: bead diameter, pixels.
    """
    w = np.asarray(windows, dtype=np.float64)
    n, size, _ = w.shape
    half = size // 2
    frac = np.asarray(positions, dtype=np.float64) - np.asarray(origins) - 0.5 - half  # (n, 2)
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    yy, xx = np.mgrid[0:size, 0:size] - half
    r = np.hypot(xx, yy)
    ring = r >= half - 2
    background = np.median(w[:, ring], axis=1)
    spectra = np.fft.rfft2(w - background[:, None, None])
    phase = np.exp(2j * np.pi * (kx[None] * frac[:, 0, None, None] + ky[None] * frac[:, 1, None, None]))
    radius = TEMPLATE_RADIUS_PER_DIAMETER * float(bead_diameter_px) + 2.0
    disc = 1.0 / (1.0 + np.exp((r - radius) / 0.75))
    mean_spectrum = np.mean(spectra * phase, axis=0)
    for _ in range(RECENTRE_ITERATIONS):
        offset = _symmetry_offset(np.fft.irfft2(mean_spectrum, s=(size, size)) * disc)
        mean_spectrum = mean_spectrum * np.exp(2j * np.pi * (kx * offset[0] + ky * offset[1]))
    average = np.fft.irfft2(mean_spectrum, s=(size, size))
    t = average * disc
    return t - disc * (np.sum(t) / np.sum(disc))


def _symmetry_offset(image: np.ndarray) -> np.ndarray:
    """(dx, dy) of the centre of point symmetry of ``image`` (W, W) from the centre of pixel
    ``W/2``: the image correlated with its point reflection about that pixel peaks at twice it."""
    size = image.shape[0]
    flipped = np.roll(image[::-1, ::-1], 1, axis=(0, 1))  # index i -> W - i = 2 (W/2) - i
    corr = np.fft.irfft2(np.fft.rfft2(image) * np.conj(np.fft.rfft2(flipped)), s=image.shape)
    corr = np.fft.fftshift(corr)  # zero shift at index W/2
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    if not (0 < px < size - 1 and 0 < py < size - 1):
        return np.zeros(2)
    fx = _three_point(corr[py, px - 1], corr[py, px], corr[py, px + 1])
    fy = _three_point(corr[py - 1, px], corr[py, px], corr[py + 1, px])
    return 0.5 * np.array([px - size // 2 + fx, py - size // 2 + fy], dtype=np.float64)


@partial(jax.jit, static_argnames=("size",))
def _correlate(windows, template_spectrum, centres, search, near, far, size):
    n = windows.shape[0]
    w = windows - jnp.mean(windows, axis=(1, 2), keepdims=True)
    corr = jnp.fft.irfft2(jnp.fft.rfft2(w) * template_spectrum[None], s=(size, size))
    idx = jnp.arange(size, dtype=windows.dtype)
    dy = idx[None, :, None] - centres[:, 1, None, None]
    dx = idx[None, None, :] - centres[:, 0, None, None]
    inside = dx * dx + dy * dy <= search * search
    flat = jnp.where(inside, corr, -jnp.inf).reshape(n, -1)
    peak = jnp.argmax(flat, axis=1)
    py, px = peak // size, peak % size
    ry = idx[None, :, None] - py[:, None, None].astype(windows.dtype)
    rx = idx[None, None, :] - px[:, None, None].astype(windows.dtype)
    r2 = rx * rx + ry * ry
    rival_zone = (r2 > near * near) & (r2 <= far * far)
    rival = jnp.max(jnp.where(rival_zone, corr, -jnp.inf).reshape(n, -1), axis=1)
    # Noise of the correlation away from the peak: an RMS clipped at 3 sigma twice (a median would
    # need a sort, 5x slower here on a CPU), corrected for the clipping of a Gaussian.
    away = (r2 > far * far).reshape(n, -1)
    values = corr.reshape(n, -1)
    count = jnp.maximum(jnp.sum(away, axis=1), 1)
    centred = values - (jnp.sum(jnp.where(away, values, 0.0), axis=1) / count)[:, None]
    sq = jnp.where(away, centred * centred, 0.0)
    sigma = jnp.sqrt(jnp.sum(sq, axis=1) / count)
    for _ in range(2):
        kept = away & (centred * centred <= 9.0 * sigma[:, None] ** 2)
        sigma = jnp.sqrt(jnp.sum(jnp.where(kept, sq, 0.0), axis=1) / jnp.maximum(jnp.sum(kept, axis=1), 1))
        sigma = sigma / CLIPPED_SD
    rows = jnp.clip(py[:, None] + jnp.arange(-1, 2)[None, :], 0, size - 1)  # (n, 3)
    cols = jnp.clip(px[:, None] + jnp.arange(-1, 2)[None, :], 0, size - 1)
    patch = corr[jnp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return jnp.stack([px, py], axis=1), patch, rival, sigma


def _three_point(left, mid, right):
    """Sub-pixel offset of a peak from three samples: Gaussian fit, parabola where not positive."""
    positive = (left > 0) & (mid > 0) & (right > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll, lm, lr = (np.log(np.where(positive, v, 1.0)) for v in (left, mid, right))
        den_g = ll - 2.0 * lm + lr
        den_p = left - 2.0 * mid + right
        g = np.where(den_g < 0, 0.5 * (ll - lr) / np.where(den_g < 0, den_g, -1.0), 0.0)
        p = np.where(den_p < 0, 0.5 * (left - right) / np.where(den_p < 0, den_p, -1.0), 0.0)
    return np.clip(np.where(positive, g, p), -0.5, 0.5)


class WindowMatch:
    """The correlation of every window of a view with the template (see the module docstring).

    Attributes (numpy): ``positions`` (n, 2) ``(x, y)`` image coordinates; ``amplitude``, ``snr``,
    ``rival`` (n,).
    """

    __slots__ = ("positions", "amplitude", "snr", "rival")

    def __init__(self, positions, amplitude, snr, rival):
        self.positions, self.amplitude, self.snr, self.rival = positions, amplitude, snr, rival


def correlate_windows(
    windows: Float[ArrayLike, "beads size size"],
    origins: Int[ArrayLike, "beads 2"],
    template: Float[ArrayLike, "size size"],
    predicted: Float[ArrayLike, "beads 2"],
    search_px: float,
    bead_diameter_px: float,
) -> WindowMatch:
    """Centre every bead of a view by correlation with ``template`` near its predicted position.

    Args:
        windows, origins: (n, W, W) and (n, 2) from :func:`extract_windows` at ``predicted``.
        template: (W, W) from :func:`bead_template`.
        predicted: (n, 2) predicted positions ``(x, y)``, pixels.
        search_px: the peak is searched within this distance of the prediction.
        bead_diameter_px: bead diameter, pixels (sets the rival and noise zones).
    """
    w = np.asarray(windows, dtype=np.float32)
    n, size, _ = w.shape
    if n == 0:
        e = np.zeros(0)
        return WindowMatch(np.zeros((0, 2)), e, e, e)
    t = np.asarray(template, dtype=np.float64)
    t0 = np.roll(t, (-(size // 2), -(size // 2)), axis=(0, 1))
    spectrum = np.conj(np.fft.rfft2(t0)).astype(np.complex64)
    origin = np.asarray(origins, dtype=np.float64)
    centres = np.asarray(predicted, dtype=np.float64) - origin - 0.5
    d = float(bead_diameter_px)
    pix, patch, rival, noise = _correlate(
        jnp.asarray(w),
        jnp.asarray(spectrum),
        jnp.asarray(centres, dtype=jnp.float32),
        jnp.float32(search_px),
        jnp.float32(0.9 * d),
        jnp.float32(2.0 * d),
        size,
    )
    pix, patch = np.asarray(pix, dtype=np.float64), np.asarray(patch, dtype=np.float64)
    rival, noise = np.asarray(rival, dtype=np.float64), np.asarray(noise, dtype=np.float64)
    peak = patch[:, 1, 1]
    fx = _three_point(patch[:, 1, 0], peak, patch[:, 1, 2])
    fy = _three_point(patch[:, 0, 1], peak, patch[:, 2, 1])
    positions = origin + pix + np.stack([fx, fy], axis=1) + 0.5
    energy = float(np.sum(t * t))
    with np.errstate(divide="ignore", invalid="ignore"):
        amplitude = peak / energy if energy > 0 else np.zeros(n)
        # a flat window (a blank view: no correlation at all) has no peak, not an infinitely clear one
        snr = np.where(noise > 0, peak / noise, np.where(peak > 0, np.inf, 0.0))
        ratio = np.where(peak > 0, np.maximum(rival, 0.0) / peak, 1.0)
    return WindowMatch(positions, amplitude, snr, ratio)
