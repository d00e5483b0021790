"""Beads in a large image: detection on a binned copy, centres refined at full resolution.

:func:`find_beads_large` bins an image larger than ``max_detection_px`` by an integer factor
``b`` (block means; at most ``D / 4`` so a binned bead stays 4 px wide or more), runs
:func:`lmalign_jax.track.find_beads` on it with the bead diameter ``D / b``, and then centres
every detection on the full-resolution image: all bead windows (``w x w``, ``w`` about
``4 D + 2 b``) in one batched FFT, the same scale-normalised Laplacian of Gaussian as the
detection (:mod:`lmalign_jax.track.filters`, scale ``0.301 D``), the extreme of the bead's
polarity within ``b + 1`` px of the binned position, and the 3 x 3 quadratic sub-pixel fit of
:func:`lmalign_jax.track.peaks.fit_peaks`. Binned pixel ``(r, c)`` covers full-resolution
pixels ``[b c, b c + b) x [b r, b r + b)``, so a binned position ``(x, y)`` is ``(b x, b y)`` at full
resolution (IMOD image coordinates both). Images at most ``max_detection_px`` on their longer
side go straight to :func:`find_beads`.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Real

from lmalign_jax.track.filters import SIGMA_PER_DIAMETER, _fft_friendly
from lmalign_jax.track.find import find_beads
from lmalign_jax.track.peaks import fit_peaks

__all__ = ["find_beads_large", "refine_centres", "MAX_DETECTION_PX", "MIN_BINNED_DIAMETER_PX"]

#: Longest side searched without binning, pixels.
MAX_DETECTION_PX = 2048
#: Smallest bead diameter after binning, pixels.
MIN_BINNED_DIAMETER_PX = 4.0


@partial(jax.jit, static_argnames=("sigma", "reach"))
def _window_peaks(windows, sigma, reach):
    """(n, 3, 3) responses around each window's strongest response of either sign within
    ``reach`` px of its centre, that peak's (row, col), and the sign (+1 bright, -1 dark)."""
    n, w, _ = windows.shape
    x = windows - jnp.mean(windows, axis=(1, 2), keepdims=True)
    ky = jnp.fft.fftfreq(w)[:, None]
    kx = jnp.fft.rfftfreq(w)[None, :]
    q2 = (2.0 * jnp.pi) ** 2 * (ky * ky + kx * kx)
    transfer = (sigma * sigma) * q2 * jnp.exp(-0.5 * (sigma * sigma) * q2)
    resp = jnp.fft.irfft2(jnp.fft.rfft2(x) * transfer, s=(w, w)).astype(windows.dtype)
    c = w // 2
    centre = resp[:, c - reach : c + reach + 1, c - reach : c + reach + 1]
    sign = jnp.where(resp[:, c, c] >= 0, 1.0, -1.0).astype(windows.dtype)
    flat = jnp.argmax(sign[:, None, None] * centre.reshape(n, -1)[:, None, :], axis=-1)[:, 0]
    r = flat // (2 * reach + 1) + c - reach
    col = flat % (2 * reach + 1) + c - reach
    offs = jnp.arange(3) - 1
    patches = resp[
        jnp.arange(n)[:, None, None], r[:, None, None] + offs[None, :, None], col[:, None, None] + offs
    ]
    return sign[:, None, None] * patches, r, col, sign


def refine_centres(
    image: Real[ArrayLike, "rows cols"],
    guesses: Float[ArrayLike, "beads 2"],
    bead_diameter_px: float,
    reach: int,
) -> Float[np.ndarray, "beads 2"]:
    """Bead centres near ``guesses`` (n, 2) (x, y, IMOD image coordinates) at full resolution.

    Each bead's window is centred on its guess; the response extreme (of the sign found at the
    guess) within ``reach`` px is fitted to sub-pixel precision. Windows reaching past the image
    repeat its border pixels. Returns (n, 2) float64 positions.
    """
    img = np.asarray(image, dtype=np.float32)
    g = np.asarray(guesses, dtype=np.float64).reshape(-1, 2)
    if g.shape[0] == 0:
        return g.copy()
    d = float(bead_diameter_px)
    w = _fft_friendly(int(math.ceil(4.0 * d)) + 2 * int(reach) + 8)
    w += w % 2
    ny, nx = img.shape
    c0 = np.floor(g[:, 0]).astype(np.int64) - w // 2  # the guess's pixel sits at index w // 2
    r0 = np.floor(g[:, 1]).astype(np.int64) - w // 2
    idx = np.arange(w)
    rows = np.clip(r0[:, None] + idx[None, :], 0, ny - 1)
    cols = np.clip(c0[:, None] + idx[None, :], 0, nx - 1)
    windows = img[rows[:, :, None], cols[:, None, :]]
    patches, r, c, _ = _window_peaks(jnp.asarray(windows), SIGMA_PER_DIAMETER * d, int(reach))
    offsets, _, _ = fit_peaks(np.asarray(patches, dtype=np.float64))
    return np.stack(
        [c0 + np.asarray(c) + 0.5 + offsets[:, 0], r0 + np.asarray(r) + 0.5 + offsets[:, 1]], axis=1
    ).astype(np.float64)


def find_beads_large(
    image: Real[ArrayLike, "rows cols"],
    bead_diameter_px: float,
    *,
    max_detection_px: int = MAX_DETECTION_PX,
    **options,
) -> tuple[Float[np.ndarray, "beads 2"], Float[np.ndarray, " beads"]]:
    """:func:`lmalign_jax.track.find_beads` for images of any size (see the module docstring).

    ``options`` go to ``find_beads`` (polarity, max_beads, ...; separations in full-resolution
    pixels). Returns ``(positions (n, 2), scores (n,))`` as ``find_beads`` does, scores from the
    binned detection.
    """
    img = np.asarray(image)
    d = float(bead_diameter_px)
    if img.ndim != 2:
        raise ValueError(f"image must be a 2-D array (NY, NX), got shape {img.shape}")
    b = min(math.ceil(max(img.shape) / max(int(max_detection_px), 1)), int(d // MIN_BINNED_DIAMETER_PX))
    if b <= 1:
        return find_beads(img, d, **options)
    ny, nx = (s - s % b for s in img.shape)
    binned = img[:ny, :nx].astype(np.float32).reshape(ny // b, b, nx // b, b).mean(axis=(1, 3))
    if options.get("min_separation_px") is not None:
        options = dict(options, min_separation_px=options["min_separation_px"] / b)
    pos, scores = find_beads(binned, d / b, **options)
    return refine_centres(img, b * pos, d, b + 1), scores
