"""JAX kernels of the reconstruction: row filtering, view resampling and back-projection.

All functions are pure and jit-compiled with the array shapes as the only static inputs, so
they run unchanged on CPU or GPU. None of them touches global JAX settings; the floating dtype
is whatever the caller passes in.

Geometry used throughout (all lengths in output pixels, i.e. after binning):

* detector sample ``m`` of an aligned row of ``nd`` samples sits at ``t = m + 0.5 - nd/2``
  (relative to the aligned image centre);
* voxel ``(k, i)`` of a slice sits at ``x = i + 0.5 - nx/2``, ``z = k + 0.5 - nz/2``;
* view ``v`` sees that voxel at ``t = x cos(theta_v) + z sin(theta_v)``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["filter_rows", "resample_filter_view", "backproject", "choose_z_chunk"]


def filter_rows(rows, response, n_pad: int):
    """Filter ``rows (..., n)`` along the last axis with a real response on the rfft grid of
    ``n_pad`` samples (zero padding, linear convolution for ``n_pad >= 2 n``)."""
    n = rows.shape[-1]
    spec = jnp.fft.rfft(rows, n=n_pad, axis=-1)
    out = jnp.fft.irfft(spec * response.astype(rows.dtype), n=n_pad, axis=-1)[..., :n]
    return out.astype(rows.dtype)


def _linear_index(u, n: int):
    """Clamp fractional sample positions ``u`` for linear interpolation into an array of ``n``
    samples padded with one zero on each side.

    Returns ``(idx, frac)``: the value is ``(1 - frac) * padded[idx] + frac * padded[idx + 1]``,
    exact linear interpolation inside, falling linearly to zero over the one sample beyond
    each end, and exactly zero further out.
    """
    lo, hi = jnp.asarray(-1.0, u.dtype), jnp.asarray(n, u.dtype)
    u = jnp.minimum(jnp.maximum(u, lo), hi)
    i0 = jnp.minimum(jnp.floor(u), hi - 1)
    return i0.astype(jnp.int32) + 1, u - i0


@partial(jax.jit, static_argnames=("ny_out", "nx_out", "n_pad", "rows", "keep_mean"))
def resample_filter_view(
    img, a_inv, shift, center, weight, response, mean, row0, band0, *, ny_out, nx_out, n_pad, rows, keep_mean
):
    """Resample rows ``row0 .. row0 + rows`` of one view into the aligned frame (bilinear), filter
    them along x, weight them.

    Parameters
    ----------
    img : (n_band, nxr)
        Raw (already binned) rows ``band0 .. band0 + n_band`` of the view: every raw row the
        aligned rows asked for can reach. ``mean`` (the whole view's mean) is subtracted first,
        so the region outside the raw image, read as zero, stands for the mean level (fewer edge
        artefacts after filtering); with ``keep_mean`` it is added back after filtering (the
        unfiltered views SIRT fits, where the outside then reads as the mean).
    a_inv : (2, 2)
        Inverse of the .xf matrix ``A`` (aligned -> raw about the centre).
    shift : (2,)
        The .xf shift ``D`` in these (binned) pixels.
    center : (2,)
        The .xf centre ``c`` in these pixels (raw ``(NX/2, NY/2)`` divided by the binning).
    weight : scalar
        The view's angular increment (radians), multiplied in after filtering.
    response : (n_pad // 2 + 1,)
        Filter response on the rfft grid.
    mean, row0, band0 : scalars
        The view's mean; the first aligned row wanted; the raw row ``img`` starts at.
    ny_out, nx_out, rows : int
        Aligned image size (binned) and the number of aligned rows wanted.

    Returns
    -------
    (nx_out, rows) array: the filtered, weighted aligned rows, **transposed** so that detector
    x is the leading axis and rows (y) are contiguous, the layout :func:`backproject` wants.
    Aligned sample ``(j, m)`` is at ``x' - c = (m + 0.5 - nx_out/2, row0 + j + 0.5 - ny_out/2)``.
    """
    dt = img.dtype
    nyr, nxr = img.shape
    img = img - mean.astype(dt)
    padded = jnp.pad(img, 1)
    t = jnp.arange(nx_out, dtype=dt) + (0.5 - nx_out / 2)
    y = (jnp.arange(rows) + row0).astype(dt) + (0.5 - ny_out / 2)
    px = t[None, :] - shift[0]
    py = y[:, None] - shift[1]
    # raw image coordinate, then fractional pixel index (pixel c has its centre at c + 0.5)
    ux = a_inv[0, 0] * px + a_inv[0, 1] * py + (center[0] - 0.5)
    uy = a_inv[1, 0] * px + a_inv[1, 1] * py + (center[1] - 0.5) - band0.astype(dt)
    ix, fx = _linear_index(ux, nxr)
    iy, fy = _linear_index(uy, nyr)
    # one flat index per output pixel and its three neighbours at +1, +W, +W+1: 1-D gathers
    # (25% less CPU than 2-D (row, column) gathers here, the same values)
    width = nxr + 2
    flat = padded.ravel()
    k = iy * width + ix
    p00, p01, p10, p11 = flat[k], flat[k + 1], flat[k + width], flat[k + width + 1]
    top = p00 + fx * (p01 - p00)
    bottom = p10 + fx * (p11 - p10)
    aligned = top + fy * (bottom - top)
    filtered = filter_rows(aligned, response, n_pad) * weight.astype(dt)
    if keep_mean:
        filtered = filtered + mean.astype(dt)
    return filtered.T


@partial(jax.jit, static_argnames=("nz", "nx", "z_chunk"))
def backproject(q, cos_t, sin_t, *, nz, nx, z_chunk):
    """Back-project filtered, weighted views with rows innermost.

    ``q`` is ``(n_views, nd, rows)``: for every view and detector sample, the values of all rows
    of the slab. For each view and each (z, x) voxel column, one detector position, index and
    interpolation weight is computed and used for every row (single-axis tilt), so the inner loop
    is a contiguous vector operation over rows. Volume z is processed in chunks of ``z_chunk``
    slices (the accumulator stays in cache), views are summed in a loop inside a chunk, and each
    finished chunk is transposed to volume order while it is still in cache.

    Returns ``(nz, rows, nx)``.
    """
    n_views, nd, rows = q.shape
    dt = q.dtype
    cos_t, sin_t = cos_t.astype(dt), sin_t.astype(dt)
    zero = jnp.zeros((n_views, 1, rows), dt)
    qp = jnp.concatenate([zero, q, zero], axis=1)  # one zero sample at each end
    qd = jnp.concatenate([qp[:, 1:] - qp[:, :-1], zero], axis=1)  # forward differences
    x = jnp.arange(nx, dtype=dt) + (0.5 - nx / 2)
    centre = nd / 2 - 0.5
    n_chunks = -(-nz // z_chunk)

    def chunk(z0):
        z = (z0 + jnp.arange(z_chunk)).astype(dt) + (0.5 - nz / 2)

        def one_view(v, acc):
            u = cos_t[v] * x[None, :] + sin_t[v] * z[:, None] + centre
            idx, frac = _linear_index(u, nd)
            return acc + qp[v][idx] + frac[..., None] * qd[v][idx]

        acc = lax.fori_loop(0, n_views, one_view, jnp.zeros((z_chunk, nx, rows), dt))
        return jnp.transpose(acc, (0, 2, 1))

    out = lax.map(chunk, jnp.arange(n_chunks, dtype=jnp.int32) * z_chunk)
    return out.reshape(n_chunks * z_chunk, rows, nx)[:nz]


def choose_z_chunk(nz: int, nx: int, rows: int, target_elems: int = 1 << 18) -> int:
    """z slices per chunk: an accumulator of about ``target_elems`` values (1 MiB of float32,
    about the L2 cache; 4 MiB was 20% slower at 1024 x 64 rows), at most 128 slices."""
    return int(max(1, min(nz, 128, target_elems // max(1, nx * rows))))
