"""SIRT through a local alignment: the re-projector is the exact transpose of the local
back-projector (``jax.linear_transpose``), as :mod:`lmalign_jax.recon.sirt` does for the global
geometry.

With a local alignment a voxel's rays reach the aligned rows of neighbouring y slabs (the local
transforms move it in y), so the slabs are no longer independent problems: this solves the whole
volume at once, in memory (:func:`local_sirt_bytes` says how much; the caller refuses a
``--memory`` below it). The iteration is :mod:`lmalign_jax.recon.sirt`'s:
``x <- x + lam C A^T R (b - A x)``, ``R = 1 / (A 1)``, ``C = 1 / (A^T 1)``, from zero, ``positivity``
clipping at zero; ``b`` the aligned, unfiltered, unweighted views.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from .fbp import _check_transforms, _finite_view, _positive_int, _write_slab
from .filters import filter_response
from .local_backprojection import LocalSampling, _accumulate_band, _bin
from .sirt import SirtOptions

__all__ = ["local_backprojector", "local_sirt_bytes", "sirt_local"]


def local_backprojector(sampling: LocalSampling, shape: tuple[int, int, int], dtype=jnp.float32):
    """``A^T`` for a whole ``shape`` (NZ, NY, NX) volume: views (V, NY, NX) in the aligned frame ->
    volume, plain (unweighted, unfiltered) back-projection through ``sampling``; linear in the views."""
    nz, ny, nx = shape
    args = (
        jnp.asarray(-ny / 2 + 0.5, dtype),
        jnp.asarray(sampling.mats, dtype),
        jnp.asarray(sampling.shifts, dtype),
        jnp.asarray(sampling.patches, jnp.int32),
        jnp.asarray(sampling.weights, dtype),
        jnp.asarray(np.arange(nx) + 0.5 - nx / 2, dtype),
        jnp.asarray(np.arange(ny) + 0.5 - ny / 2, dtype),
        jnp.asarray(np.arange(nz) + 0.5 - nz / 2, dtype),
    )
    z_chunk = _kernels.choose_z_chunk(nz, nx, ny)
    return lambda views: _accumulate_band(views, *args, z_chunk=z_chunk)


def local_sirt_bytes(n_views: int, shape: tuple[int, int, int]) -> int:
    """Memory of :func:`sirt_local` for a ``shape`` volume: about 5 volumes and 4 view stacks
    of float32 (iterate, weights, update, transposes), plus the back-projector's per-view columns."""
    nz, ny, nx = shape
    return 4 * (5 * nz * ny * nx + 4 * n_views * ny * nx + 4 * n_views * ny * nx)


@partial(jax.jit, static_argnames=("backproject", "options"))
def _solve(b, *, backproject, options: SirtOptions):
    zeros = jnp.zeros_like(b)
    volume_shape = jax.eval_shape(backproject, zeros)

    def project(x):
        return jax.linear_transpose(backproject, zeros)(x)[0]

    dt = b.dtype
    ray_length = project(jnp.ones(volume_shape.shape, dt))
    r_w = jnp.where(ray_length > 1e-6, 1.0 / jnp.where(ray_length > 1e-6, ray_length, 1.0), 0.0)
    hits = backproject(jnp.ones_like(b))
    c_w = jnp.where(hits > 1e-6, 1.0 / jnp.where(hits > 1e-6, hits, 1.0), 0.0)
    lam = jnp.asarray(options.relaxation, dt)

    def step(i, carry):
        x, res = carry
        d = b - project(x)
        x = x + lam * c_w * backproject(r_w * d)
        if options.positivity:
            x = jnp.maximum(x, 0.0)
        d = b - project(x)
        return x, res.at[i + 1].set(jnp.sum(r_w * d * d))

    x0 = jnp.zeros(volume_shape.shape, dt)
    res0 = jnp.zeros(options.iterations + 1, dt).at[0].set(jnp.sum(r_w * b * b))
    return jax.lax.fori_loop(0, options.iterations, step, (x0, res0))


def sirt_local(
    stack,
    xf_A,
    xf_shift,
    tilts_deg,
    sampling: LocalSampling,
    thickness: float,
    options: SirtOptions,
    *,
    binning: int = 1,
    out=None,
    dtype=jnp.float32,
):
    """SIRT of the raw ``stack`` through its global ``.xf`` and a local ``sampling`` (for the binned
    grid), the whole volume at once. Returns (``out`` filled, or a new (NZ, NY', NX') array;
    the R-weighted residual before and after each iteration)."""
    n_views, ny, nx = (int(s) for s in stack.shape)
    a, d, _ = _check_transforms(n_views, xf_A, xf_shift, tilts_deg)
    b = _positive_int(binning, "binning")
    nz = max(1, int(round(float(thickness) / b)))
    ny_b, nx_b = ny // b, nx // b
    n_pad, response = filter_response(nx_b, None)
    a_inv = np.linalg.inv(a)
    centre = np.array([nx / 2.0, ny / 2.0]) / b
    views = np.empty((n_views, ny_b, nx_b), np.float32)
    for v in range(n_views):
        raw = _finite_view(stack, v, 0, ny)
        raw = raw if b == 1 else _bin(np.asarray(raw, np.float64), b)
        mean = float(np.mean(raw, dtype=np.float64))
        res = _kernels.resample_filter_view(
            jnp.asarray(raw, dtype),
            jnp.asarray(a_inv[v], dtype),
            jnp.asarray(d[v] / b, dtype),
            jnp.asarray(centre, dtype),
            jnp.asarray(1.0, dtype),
            jnp.asarray(response, dtype),
            jnp.asarray(mean, dtype),
            jnp.asarray(0, jnp.int32),
            jnp.asarray(0, jnp.int32),
            ny_out=ny_b,
            nx_out=nx_b,
            n_pad=n_pad,
            rows=ny_b,
            keep_mean=options.positivity,
        )
        views[v] = np.asarray(res).T
    backproject = local_backprojector(sampling, (nz, ny_b, nx_b), dtype)
    volume, residuals = _solve(jnp.asarray(views, dtype), backproject=backproject, options=options)
    volume = np.asarray(volume)
    if out is None:
        out = np.empty(volume.shape, np.float32)
    _write_slab(out, 0, volume)
    return out, np.asarray(residuals)
