"""Matched filtering of one image for gold beads: a scale-normalised Laplacian of Gaussian in Fourier space.

The filter
----------
For a scale ``sigma`` (pixels) the *bead response* of an image ``f`` is

    b_sigma = -sigma^2 * laplacian(G_sigma * f),      G_sigma = exp(-r^2 / (2 sigma^2)) / (2 pi sigma^2)

computed as one product in Fourier space: with ``k`` in cycles per pixel and ``q^2 = (2 pi |k|)^2``,

    B_sigma(k) = F(k) * sigma^2 q^2 exp(-sigma^2 q^2 / 2).

It is positive at the centre of a bright blob and negative at a dark one; it is zero for a
constant or a linear ramp (the transfer function vanishes at ``k = 0`` and the Laplacian of a plane
is zero), so smooth illumination gradients do not matter. The ``sigma^2`` factor makes responses
at different scales comparable (Lindeberg's scale normalisation): a blob gives its largest
response at the scale that matches its size. For the projection of a solid sphere of diameter
``D`` (a gold bead), ``p(r) = 2 sqrt(R^2 - r^2)``, the response at its centre is largest at
``sigma = 0.301 D`` (:data:`SIGMA_PER_DIAMETER`, found by numerical integration; a flat disc
would give ``D / (2 sqrt 2) = 0.354 D``, a Gaussian of standard deviation ``s`` gives ``s``).

Boundaries and precision
------------------------
Before the FFT a least-squares plane is subtracted and the image is extended by mirror
reflection (``symmetric``) by a margin of ``4 sigma_max + 2`` pixels, then to a size whose only
prime factors are 2, 3 and 5. The plane removal keeps the mirrored image nearly smooth, so the
periodic FFT does not see a jump at the borders. The image is filtered in float32 unless it is
float64 with JAX's x64 mode on: one forward FFT of the padded image and one inverse FFT per
scale, so a 4k x 4k image needs a few hundred MB at most. The same code runs on CPU and GPU.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SIGMA_PER_DIAMETER", "bead_responses", "response_statistics", "working_dtype"]

#: LoG scale (px) at which a projected sphere of diameter 1 px responds most (see module docstring).
SIGMA_PER_DIAMETER = 0.301
#: Median absolute deviation -> standard deviation for Gaussian data.
MAD_TO_SIGMA = 1.4826


def working_dtype(image) -> np.dtype:
    """float64 for a float64 image when JAX's x64 mode is on, float32 otherwise."""
    if np.asarray(image).dtype == np.float64 and jax.config.jax_enable_x64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _fft_friendly(n: int) -> int:
    """The smallest integer >= n whose prime factors are all 2, 3 or 5."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def bead_responses(image, sigmas, *, border: int = 1) -> jnp.ndarray:
    """Bead responses ``b_sigma`` of one image at several scales.

    Args:
        image: (NY, NX) array, ``image[row, column]``, any real dtype.
        sigmas: scales in pixels (a sequence of positive floats).
        border: extra pixels of the mirrored extension kept on every side.

    Returns:
        (len(sigmas), NY + 2 border, NX + 2 border) array in :func:`working_dtype`; element
        ``[i, r + border, c + border]`` is the response at pixel ``(r, c)`` of the image for scale
        ``sigmas[i]``, in the image's units (positive for bright blobs).
    """
    img = np.asarray(image)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"image must be a non-empty 2-D array (NY, NX), got shape {img.shape}")
    sig = tuple(float(s) for s in np.atleast_1d(np.asarray(sigmas, dtype=np.float64)))
    if not sig or min(sig) <= 0 or not all(math.isfinite(s) for s in sig):
        raise ValueError(f"sigmas must be positive and finite, got {sigmas}")
    ny, nx = img.shape
    margin = int(math.ceil(4.0 * max(sig))) + 2 + int(border)
    padded = (_fft_friendly(ny + 2 * margin), _fft_friendly(nx + 2 * margin))
    data = jnp.asarray(img.astype(working_dtype(img), copy=False))
    return _responses(data, sig, margin, padded, int(border))


@partial(jax.jit, static_argnames=("sigmas", "margin", "padded", "border"))
def _responses(image, sigmas, margin, padded, border):
    ny, nx = image.shape
    py, px = padded
    dtype = image.dtype
    # Least-squares plane: on a full grid the centred coordinates are orthogonal to each other
    # and to the constant, so each coefficient is a separate projection.
    yc = jnp.arange(ny, dtype=dtype)[:, None] - (ny - 1) / 2.0
    xc = jnp.arange(nx, dtype=dtype)[None, :] - (nx - 1) / 2.0
    x = image - jnp.mean(image)
    gy = jnp.sum(x * yc) / jnp.maximum(jnp.sum(yc * yc) * nx, 1.0)
    gx = jnp.sum(x * xc) / jnp.maximum(jnp.sum(xc * xc) * ny, 1.0)
    x = x - gy * yc - gx * xc
    x = jnp.pad(x, ((margin, py - ny - margin), (margin, px - nx - margin)), mode="symmetric")
    spectrum = jnp.fft.rfft2(x)
    ky = jnp.fft.fftfreq(py).astype(dtype)[:, None]
    kx = jnp.fft.rfftfreq(px).astype(dtype)[None, :]
    q2 = (2.0 * jnp.pi) ** 2 * (ky * ky + kx * kx)
    out = []
    for s in sigmas:
        transfer = (s * s) * q2 * jnp.exp(-0.5 * (s * s) * q2)
        full = jnp.fft.irfft2(spectrum * transfer, s=(py, px)).astype(dtype)
        out.append(full[margin - border : margin + ny + border, margin - border : margin + nx + border])
    return jnp.stack(out)


def _robust_sigma(values) -> float:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    med = np.median(values)
    return MAD_TO_SIGMA * float(np.median(np.abs(values - med)))


def response_statistics(response) -> tuple[float, float]:
    """Noise level and roughness of a bead-response map, robust to the beads themselves.

    Args:
        response: (NY, NX) response map (interior only, no border), NY, NX >= 2 (computed on the
            host with numpy: medians need a sort, which XLA compiles slowly for every shape).

    Returns:
        ``(sigma, roughness)``: ``sigma`` = 1.4826 x the median absolute deviation of the map (its
        standard deviation where it is Gaussian noise, image units); ``roughness`` =
        ``Var(d/dx b) / Var(b)`` per pixel^2 from the same robust estimate of one-pixel
        differences (the second spectral moment that sets how many noise maxima a map has). Maps
        larger than 1024 x 1024 are subsampled on a regular grid.
    """
    b = np.asarray(response)
    ny, nx = b.shape
    stride = max(1, int(math.ceil(math.sqrt(ny * nx / float(1 << 20)))))
    sigma = _robust_sigma(b[::stride, ::stride])
    dx = b[::stride, 1::stride].astype(np.float64) - b[::stride, : nx - 1 : stride]
    dy = b[1::stride, ::stride].astype(np.float64) - b[: ny - 1 : stride, ::stride]
    grad_var = 0.5 * (_robust_sigma(dx) ** 2 + _robust_sigma(dy) ** 2)
    roughness = grad_var / (sigma * sigma) if sigma > 0 else 0.0
    return sigma, roughness


def local_noise(response, global_sigma: float, scale_px: float) -> np.ndarray:
    """Local noise level of a bead-response map, same shape: ``sqrt(pi / 2)`` times the Gaussian-
    weighted mean of ``|b|`` over ``scale_px`` (the standard deviation of Gaussian noise), with
    ``|b|`` clipped at 4 ``global_sigma`` so that beads do not raise it, and never below half of
    ``global_sigma``. A textured patch of the specimen (a lattice, ice) then raises the noise
    level there only, and a quiet area keeps its own lower one."""
    b = jnp.asarray(response)
    s = float(scale_px)
    margin = int(math.ceil(3.0 * s))
    ny, nx = b.shape
    padded = (_fft_friendly(ny + 2 * margin), _fft_friendly(nx + 2 * margin))
    out = _local_noise(b, jnp.asarray(4.0 * global_sigma, b.dtype), s, margin, padded)
    return np.maximum(np.asarray(out), 0.5 * global_sigma)


@partial(jax.jit, static_argnames=("scale", "margin", "padded"))
def _local_noise(b, clip, scale, margin, padded):
    ny, nx = b.shape
    py, px = padded
    a = jnp.minimum(jnp.abs(b), clip)
    a = jnp.pad(a, ((margin, py - ny - margin), (margin, px - nx - margin)), mode="symmetric")
    ky = jnp.fft.fftfreq(py).astype(b.dtype)[:, None]
    kx = jnp.fft.rfftfreq(px).astype(b.dtype)[None, :]
    q2 = (2.0 * jnp.pi) ** 2 * (ky * ky + kx * kx)
    blurred = jnp.fft.irfft2(jnp.fft.rfft2(a) * jnp.exp(-0.5 * scale * scale * q2), s=(py, px))
    return math.sqrt(math.pi / 2.0) * blurred[margin : margin + ny, margin : margin + nx]
