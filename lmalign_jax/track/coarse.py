"""Coarse shifts between neighbouring views: cross-correlation of binned, band-passed whole views.

The stage moves between views by tens of pixels, more than a bead search window should cover.
As IMOD's ``tiltxcorr`` does before bead tracking (its man page: "cross-correlation of
successive views ... to obtain a coarse alignment"), each view is binned (``factor x factor``
block means, so a 4k view is correlated at 512 px), edge-tapered, band-passed with the bead
filter of :mod:`lmalign_jax.track.filters` (``sigma^2 q^2 exp(-sigma^2 q^2 / 2)``, which removes
the mean and gradients and keeps bead-sized detail) and correlated with its neighbour in
Fourier space. Unlike ``tiltxcorr`` the views are not stretched by the cosine ratio: the tracker
only needs the shift to within its search radius, and the tilt geometry is predicted by the
fitted alignment afterwards.

Shift convention: ``shift[k] = s`` means the content of view ``b`` lies at the positions it had in
view ``a`` plus ``s`` (pixels, IMOD image coordinates: x along columns, y along rows).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int, Real

__all__ = ["bin_view", "binning_factor", "neighbour_shifts"]


def binning_factor(image_size: tuple[int, int], target_px: int = 512) -> int:
    """The smallest integer binning that brings the larger image side to ``target_px`` or below."""
    return max(1, int(math.ceil(max(image_size) / float(target_px))))


def bin_view(view: Real[ArrayLike, "rows columns"], factor: int) -> Float[np.ndarray, "brows bcolumns"]:
    """Mean of ``factor x factor`` blocks of one view (rows and columns beyond a whole block are
    dropped), float32. Reads the view once (a memory-mapped view stays on disk until then)."""
    f = int(factor)
    v = np.asarray(view)
    ny, nx = (v.shape[0] // f) * f, (v.shape[1] // f) * f
    block = v[:ny, :nx].astype(np.float32, copy=False)
    if f == 1:
        return np.array(block, dtype=np.float32, copy=True)
    return block.reshape(ny // f, f, nx // f, f).mean(axis=(1, 3), dtype=np.float32)


@partial(jax.jit, static_argnames=("max_shift",))
def _shifts(a, b, sigma, max_shift):
    n, ny, nx = a.shape
    ty = 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * (jnp.arange(ny) + 0.5) / ny)
    tx = 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * (jnp.arange(nx) + 0.5) / nx)
    taper = jnp.sqrt(ty[:, None] * tx[None, :])  # Hann in each direction, square-rooted: wide flat top

    def prepare(img):
        img = img - jnp.mean(img, axis=(1, 2), keepdims=True)
        return jnp.fft.rfft2(img * taper)

    ky = jnp.fft.fftfreq(ny)[:, None]
    kx = jnp.fft.rfftfreq(nx)[None, :]
    q2 = (2.0 * jnp.pi) ** 2 * (ky * ky + kx * kx)
    band = (sigma * sigma) * q2 * jnp.exp(-0.5 * sigma * sigma * q2)
    corr = jnp.fft.irfft2(prepare(b) * jnp.conj(prepare(a)) * band * band, s=(ny, nx))
    ry = jnp.fft.fftfreq(ny, 1.0 / ny)[:, None]
    rx = jnp.fft.fftfreq(nx, 1.0 / nx)[None, :]
    allowed = (jnp.abs(ry) <= max_shift) & (jnp.abs(rx) <= max_shift)
    flat = jnp.where(allowed[None], corr, -jnp.inf).reshape(n, -1)
    idx = jnp.argmax(flat, axis=1)
    iy, ix = idx // nx, idx % nx

    def at(dy, dx):
        return corr[jnp.arange(n), (iy + dy) % ny, (ix + dx) % nx]

    c, left, r, d, u = at(0, 0), at(0, -1), at(0, 1), at(-1, 0), at(1, 0)
    den_x, den_y = left - 2.0 * c + r, d - 2.0 * c + u
    fx = jnp.where(den_x < 0, jnp.clip(0.5 * (left - r) / jnp.where(den_x < 0, den_x, -1.0), -0.5, 0.5), 0.0)
    fy = jnp.where(den_y < 0, jnp.clip(0.5 * (d - u) / jnp.where(den_y < 0, den_y, -1.0), -0.5, 0.5), 0.0)
    sx = jnp.where(ix > nx // 2, ix - nx, ix) + fx
    sy = jnp.where(iy > ny // 2, iy - ny, iy) + fy
    return jnp.stack([sx, sy], axis=1)


def neighbour_shifts(
    binned: Float[ArrayLike, "views brows bcolumns"],
    pairs: Int[ArrayLike, "pairs 2"],
    factor: int,
    bead_diameter_px: float,
) -> Float[np.ndarray, "pairs 2"]:
    """Shift of view ``b`` against view ``a`` for each pair ``(a, b)`` of binned views.

    Args:
        binned: (n_views, BY, BX) views binned by ``factor`` (:func:`bin_view`).
        pairs: (k, 2) view indices ``(a, b)``.
        factor: the binning, so the shifts come back in unbinned pixels.
        bead_diameter_px: unbinned bead diameter; sets the band-pass scale.

    Returns:
        (k, 2) float64 shifts ``(dx, dy)`` in unbinned pixels (content of ``b`` = content of ``a``
        moved by the shift), searched up to a quarter of the binned image each way.
    """
    views = np.asarray(binned, dtype=np.float32)
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if p.shape[0] == 0:
        return np.zeros((0, 2))
    sigma = max(1.0, 0.301 * float(bead_diameter_px) / float(factor))
    max_shift = int(min(views.shape[1:]) // 4)
    out = _shifts(jnp.asarray(views[p[:, 0]]), jnp.asarray(views[p[:, 1]]), jnp.float32(sigma), max_shift)
    return np.asarray(out, dtype=np.float64) * float(factor)
