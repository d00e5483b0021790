"""Back-projection through a deformation model's per-view warp (``--model warp``), position by
position, as :mod:`lmalign_jax.recon.local_backprojection` does for a local alignment.

The warp model (``lmalign_jax.models.warp``) sees a specimen point X in view j at
``p - c = s R(alpha) [(u, v) + W_j(u, v)] + d``, ``(u, v) = (x cos t + z sin t, y)``, and the
view's ``.xf`` ``[A | D]`` (a least-squares affine map, which absorbs the warp's mean linear
part) takes ``p`` into the aligned frame. So voxel X samples the aligned view at

    M_j ((u, v) + W_j(u, v)) + e_j,   M_j = A s R(alpha),   e_j = A d + D,

which for a zero warp is the rigid model's ``(u, v)`` up to the ``.xf`` fit. :class:`WarpSampling`
holds M, e, the tilt and the six coefficients per view; :func:`reconstruct_warp` streams like
``reconstruct_local`` (same slab plan, bands widened by :func:`warp_row_margin`). With an X-axis
tilt a per view (IMOD tilt's XTILTFILE minus XAXISTILT) the voxel is first tilted about X, as
tilt does: ``(u, v) = (x cos t + (y sin a + z cos a) sin t, y cos a - z sin a)``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from .local_backprojection import stream_backprojection

__all__ = ["WarpSampling", "warp_row_margin", "reconstruct_warp"]

#: ``lmalign_jax.models.warp.WARP_LENGTH_PX``: a coefficient is the displacement 1000 px out
#: (recon does not import the models; the value is pinned by a test).
WARP_LENGTH_PX = 1000.0


class WarpSampling(NamedTuple):
    """Per view (unbinned pixels): mats (V, 2, 2) M, offsets (V, 2) e, tilts_deg (V,),
    coefficients (V, 6) in ``models.warp.WARP_PARAMETERS`` order (zeros: no warp) and X-axis
    tilts (V,) in degrees (None: none)."""

    mats: np.ndarray
    offsets: np.ndarray
    tilts_deg: np.ndarray
    coefficients: np.ndarray
    x_tilts_deg: np.ndarray | None = None


def _x_tilt_cos_sin(s: WarpSampling) -> tuple[np.ndarray, np.ndarray]:
    """(cos a, sin a) of each view's X-axis tilt, (V,) float64 (1, 0 without)."""
    a = (
        np.zeros(len(s.tilts_deg))
        if s.x_tilts_deg is None
        else np.radians(np.asarray(s.x_tilts_deg, np.float64))
    )
    return np.cos(a), np.sin(a)


def _positions(s: WarpSampling, x, y, z, binning: float):
    """Aligned positions (2, ...) of centred binned voxel coordinates x, y, z (broadcast), in
    binned pixels, for every view (leading axis)."""
    t = np.radians(np.asarray(s.tilts_deg, np.float64))[:, None, None, None]
    ca, sa = (c[:, None, None, None] for c in _x_tilt_cos_sin(s))
    depth = y * sa + z * ca  # the voxel's z once tilted about X
    u, v = np.broadcast_arrays((x * np.cos(t) + depth * np.sin(t)) * binning, (y * ca - z * sa) * binning)
    a, b = u / WARP_LENGTH_PX, v / WARP_LENGTH_PX
    c = np.asarray(s.coefficients, np.float64)[:, :, None, None, None]
    uu, uv, vv = a * a, a * b, b * b
    U = u + c[:, 0] * uu + c[:, 1] * uv + c[:, 2] * vv
    V = v + c[:, 3] * uu + c[:, 4] * uv + c[:, 5] * vv
    m, e = np.asarray(s.mats)[:, :, :, None, None, None], np.asarray(s.offsets)[:, :, None, None, None]
    return (m[:, 0, 0] * U + m[:, 0, 1] * V + e[:, 0]) / binning, (
        m[:, 1, 0] * U + m[:, 1, 1] * V + e[:, 1]
    ) / binning


def warp_row_margin(s: WarpSampling, shape: tuple[int, int, int], binning: int = 1) -> int:
    """Rows by which a voxel of a ``shape`` (NZ, NY, NX) binned volume samples away from its
    own y: the largest ``|aligned y - y|`` on a 9 x 9 x 3 grid over the volume (the position is
    quadratic in x, y, z), plus 25% and 2 rows for what lies between grid points and the
    interpolation."""
    nz, ny, nx = shape
    x = np.linspace(-nx / 2, nx / 2, 9)[None, None, :]
    y = np.linspace(-ny / 2, ny / 2, 9)[None, :, None]
    z = np.linspace(-nz / 2, nz / 2, 3)[:, None, None]
    _, row = _positions(s, x, y, z, binning)
    return int(np.ceil(1.25 * np.abs(row - y[None]).max())) + 2


@partial(jax.jit, static_argnames=("z_chunk", "binning"))
def _accumulate_warp(
    band, band0, mats, offsets, cos_t, sin_t, cos_a, sin_a, coef, x, y, z, *, z_chunk, binning
):
    """Sum over views of each voxel's sampled value (see the module docstring); band (V, NX + 2,
    B + 2) in ``_kernels.column_band``'s layout, band row = sampled centred y - ``band0``; x (NX,),
    y (rows,), z (NZ,) centred binned voxel coordinates. Returns (NZ, rows, NX)."""
    n_views, nx, n_band = band.shape[0], band.shape[1] - 2, band.shape[2] - 2
    rows, nz = y.shape[0], z.shape[0]
    dt = band.dtype
    flat = band.reshape(n_views, -1)
    n_chunks = -(-nz // z_chunk)
    zs = jnp.pad(z, (0, n_chunks * z_chunk - nz)).reshape(n_chunks, z_chunk)
    scale = 1.0 / WARP_LENGTH_PX

    def chunk(zc):
        def one_view(j, acc):
            yc, zcc = y[None, :, None], zc[:, None, None]
            depth = yc * sin_a[j] + zcc * cos_a[j]  # (zc, rows, 1): z tilted about X
            u = (x[None, None, :] * cos_t[j] + depth * sin_t[j]) * binning  # (zc, rows, NX)
            v = (yc * cos_a[j] - zcc * sin_a[j]) * binning  # (zc, rows, 1)
            a, b = u * scale, v * scale
            c = coef[j]
            uu, uv, vv = a * a, a * b, b * b
            uw = u + c[0] * uu + c[1] * uv + c[2] * vv
            vw = v + c[3] * uu + c[4] * uv + c[5] * vv
            m, e = mats[j], offsets[j]
            col = (m[0, 0] * uw + m[0, 1] * vw + e[0]) / binning + (nx / 2 - 0.5)
            row = (m[1, 0] * uw + m[1, 1] * vw + e[1]) / binning - band0
            return acc + _kernels.sample_bilinear(flat[j], row, col, n_band, nx)  # columns leading

        return jax.lax.fori_loop(0, n_views, one_view, jnp.zeros((z_chunk, rows, nx), dt))

    return jax.lax.map(chunk, zs).reshape(n_chunks * z_chunk, rows, nx)[:nz]


def reconstruct_warp(
    stack,
    xf_A,
    xf_shift,
    tilts_deg,
    sampling: WarpSampling,
    thickness: float,
    *,
    binning: int = 1,
    filter: str | None = "ramp",
    radial=None,
    sirtlike: int | None = None,
    out=None,
    memory_bytes: int | None = None,
    slab_rows: int | None = None,
    progress=None,
    dtype=jnp.float32,
):
    """A tomogram from the RAW stack and its ``.xf``/tilts with every voxel sampled through the
    per-view warp ``sampling`` (module docstring); arguments and streaming as
    :func:`lmalign_jax.recon.local_backprojection.reconstruct_local`."""
    n_views = int(np.shape(stack)[0])
    if np.shape(sampling.coefficients) != (n_views, 6) or np.shape(sampling.mats) != (n_views, 2, 2):
        raise ValueError(f"warp sampling must hold {n_views} views (mats (V, 2, 2), coefficients (V, 6))")
    b = int(binning)
    t = np.radians(np.asarray(sampling.tilts_deg, np.float64))
    args = [
        jnp.asarray(sampling.mats, dtype),
        jnp.asarray(sampling.offsets, dtype),
        jnp.asarray(np.cos(t), dtype),
        jnp.asarray(np.sin(t), dtype),
        *(jnp.asarray(c, dtype) for c in _x_tilt_cos_sin(sampling)),
        jnp.asarray(sampling.coefficients, dtype),
    ]
    ny_b = int(np.shape(stack)[1]) // b

    def accumulate(device_band, band0, take, x, z, z_chunk):
        y = jnp.asarray(take + 0.5 - ny_b / 2, dtype)
        return _accumulate_warp(device_band, band0, *args, x, y, z, z_chunk=z_chunk, binning=b)

    return stream_backprojection(
        stack,
        xf_A,
        xf_shift,
        tilts_deg,
        thickness,
        accumulate,
        lambda shape: warp_row_margin(sampling, shape, b),
        binning=binning,
        filter=filter,
        radial=radial,
        sirtlike=sirtlike,
        out=out,
        memory_bytes=memory_bytes,
        slab_rows=slab_rows,
        progress=progress,
        dtype=dtype,
    )
