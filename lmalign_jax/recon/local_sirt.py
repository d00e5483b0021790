"""SIRT through a local alignment: the re-projector is the exact transpose of the local
back-projector (``jax.linear_transpose``), as :mod:`lmalign_jax.recon.sirt` does for the global
geometry.

With a local alignment a voxel's rays reach the aligned rows of neighbouring y slabs (the local
transforms move it in y), so the slabs are no longer independent problems. :func:`sirt_local`
solves the whole volume at once, in memory (the reference); :func:`sirt_local_streamed` does the
same iterations slab by slab (each iteration projects every slab into one residual stack, then
updates every slab), holding the aligned views whole and the iterate in a scratch file
(:func:`local_sirt_bytes` says how much memory). The iteration is :mod:`lmalign_jax.recon.sirt`'s:
``x <- x + lam C A^T R (b - A x)``, ``R = 1 / (A 1)``, ``C = 1 / (A^T 1)``, from zero, ``positivity``
clipping at zero; ``b`` the aligned, unfiltered, unweighted views.
"""

from __future__ import annotations

import errno
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from .fbp import _check_transforms, _finite_view, _positive_int, _write_slab, slice_count
from .filters import filter_response
from .local_backprojection import LocalSampling, _accumulate_band, _bin, row_margin
from .sirt import SirtOptions

__all__ = ["local_backprojector", "local_sirt_bytes", "sirt_local", "sirt_local_streamed"]


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
    z_chunk = _kernels.choose_z_chunk(nz, nx, ny, _kernels.POSITIONWISE_CHUNK_ELEMS)
    return lambda views: _accumulate_band(_kernels.column_band(views), *args, z_chunk=z_chunk)


def local_sirt_bytes(n_views: int, shape: tuple[int, int, int], slab_rows: int = 32) -> int:
    """Memory of :func:`sirt_local_streamed` for a ``shape`` volume: five float32 stacks of the
    aligned views (b, the residual, R, and two while R and C are set up) and a few slabs."""
    nz, ny, nx = shape
    return 4 * (5 * n_views * ny * nx + 6 * nz * min(slab_rows, ny) * nx)


def _aligned_views(stack, xf_A, xf_shift, tilts_deg, b: int, options: SirtOptions, dtype) -> np.ndarray:
    """The raw views (binned ``b``) resampled whole into the aligned frame, unfiltered and
    unweighted, each view's mean subtracted (kept with ``positivity``), as SIRT fits them."""
    n_views, ny, nx = (int(s) for s in stack.shape)
    a, d, _ = _check_transforms(n_views, xf_A, xf_shift, tilts_deg)
    ny_b, nx_b = ny // b, nx // b
    n_pad, response = filter_response(nx_b, None)
    a_inv = np.linalg.inv(a)
    centre = np.array([nx / 2.0, ny / 2.0]) / b
    views = np.empty((n_views, ny_b, nx_b), np.float32)
    for v in range(n_views):
        raw = _finite_view(stack, v, 0, ny)
        raw = raw if b == 1 else _bin(np.asarray(raw, np.float64), b)
        mean = float(np.mean(raw, dtype=np.float64))
        params = _kernels.view_params(a_inv[v], d[v] / b, centre, 1.0, mean, 0, 0)
        res = _kernels.resample_filter_view(
            jnp.asarray(raw, dtype),
            jnp.asarray(params, dtype),
            jnp.asarray(response, dtype),
            ny_out=ny_b,
            nx_out=nx_b,
            n_pad=n_pad,
            rows=ny_b,
            slab_rows=ny_b,
            keep_mean=options.positivity,
        )
        views[v] = np.asarray(res)[0].T  # one slab of every row
    return views


def _solve(b, *, backproject, options: SirtOptions):
    """SIRT from zero through ``backproject`` (``A^T``; ``A`` its transpose): (volume, the
    R-weighted residual before and after each iteration). One compiled call per iteration, each
    waited for, so that a signal stops a command between iterations."""
    x, r_w, c_w, r0 = _start(b, backproject=backproject)
    lam = jnp.asarray(options.relaxation, b.dtype)
    residuals = [r0]
    for _ in range(options.iterations):
        x, r = _step(x, b, r_w, c_w, lam, backproject=backproject, positivity=options.positivity)
        residuals.append(r.block_until_ready())
    return x, jnp.stack(residuals)


def _transpose(backproject, b):
    """``A``, the transpose of ``backproject``, for views shaped as ``b``."""
    zeros = jnp.zeros_like(b)
    return lambda x: jax.linear_transpose(backproject, zeros)(x)[0]


@partial(jax.jit, static_argnames=("backproject",))
def _start(b, *, backproject):
    """x = 0, ``R = 1 / (A 1)``, ``C = 1 / (A^T 1)`` and the weighted residual of x = 0."""
    project = _transpose(backproject, b)
    volume_shape = jax.eval_shape(backproject, jnp.zeros_like(b))
    ray_length = project(jnp.ones(volume_shape.shape, b.dtype))
    r_w = jnp.where(ray_length > 1e-6, 1.0 / jnp.where(ray_length > 1e-6, ray_length, 1.0), 0.0)
    hits = backproject(jnp.ones_like(b))
    c_w = jnp.where(hits > 1e-6, 1.0 / jnp.where(hits > 1e-6, hits, 1.0), 0.0)
    return jnp.zeros(volume_shape.shape, b.dtype), r_w, c_w, jnp.sum(r_w * b * b)


@partial(jax.jit, static_argnames=("backproject", "positivity"))
def _step(x, b, r_w, c_w, lam, *, backproject, positivity: bool):
    """One SIRT iteration: the new x and its weighted residual."""
    project = _transpose(backproject, b)
    x = x + lam * c_w * backproject(r_w * (b - project(x)))
    if positivity:
        x = jnp.maximum(x, 0.0)
    d = b - project(x)
    return x, jnp.sum(r_w * d * d)


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
    nz = slice_count(thickness, b)
    ny_b, nx_b = ny // b, nx // b
    views = _aligned_views(stack, xf_A, xf_shift, tilts_deg, b, options, dtype)
    backproject = local_backprojector(sampling, (nz, ny_b, nx_b), dtype)
    volume, residuals = _solve(jnp.asarray(views, dtype), backproject=backproject, options=options)
    volume = np.asarray(volume)
    if out is None:
        out = np.empty(volume.shape, np.float32)
    _write_slab(out, 0, volume)
    return out, np.asarray(residuals)


@partial(jax.jit, static_argnames=("z_chunk", "n_band"))
def _project_band(vol, band0, mats, shifts, patches, weights, x, y, z, *, z_chunk, n_band):
    """``A`` for one slab: the exact transpose of :func:`_accumulate_band` (a slab (NZ, rows, NX) ->
    a band (V, n_band, NX) of aligned rows)."""
    zeros = jnp.zeros((mats.shape[1], n_band, x.shape[0]), vol.dtype)

    def back(band):
        return _accumulate_band(
            _kernels.column_band(band), band0, mats, shifts, patches, weights, x, y, z, z_chunk=z_chunk
        )

    return jax.linear_transpose(back, zeros)(vol)[0]


def _scratch_volume(path: str, shape) -> np.memmap:
    """A float32 scratch array of ``shape`` memory-mapped from a new file at ``path``, its blocks
    allocated first: a full disk is then an OSError (ENOSPC) here, not a SIGBUS part-way through
    (writing a sparse map's page on a full file system kills the process)."""
    import os

    nbytes = 4 * int(np.prod(shape))
    allocate = getattr(os, "posix_fallocate", None)  # not on macOS or Windows
    with open(path, "wb") as f:
        try:
            if allocate is None:
                raise OSError(errno.EOPNOTSUPP, "no posix_fallocate")
            allocate(f.fileno(), 0, nbytes)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            f.truncate(nbytes)  # a file system without allocation (EOPNOTSUPP): sparse, as before
    return np.memmap(path, np.float32, "r+", shape=tuple(shape))


def sirt_local_streamed(
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
    slab_rows: int = 32,
    scratch_dir: str | None = None,
    progress=None,
    dtype=jnp.float32,
):
    """:func:`sirt_local` slab by slab, exactly: each iteration projects every slab into one
    residual stack (the views are held whole: b, the residual and R, three (V, NY', NX') float32
    stacks) and then updates every slab from it; the iterate and C live in memory-mapped scratch
    files in ``scratch_dir`` (removed at the end). Returns (``out``, the R-weighted residual
    before each iteration and after the last)."""
    import os
    import tempfile

    n_views, ny, nx = (int(s) for s in stack.shape)
    b_ = _positive_int(binning, "binning")
    nz = slice_count(thickness, b_)
    ny_b, nx_b = ny // b_, nx // b_
    shape = (nz, ny_b, nx_b)
    b = _aligned_views(stack, xf_A, xf_shift, tilts_deg, b_, options, dtype)
    rows = int(min(max(1, slab_rows), ny_b))
    margin = row_margin(sampling, shape)
    n_band = rows + 2 * margin
    z_chunk = _kernels.choose_z_chunk(nz, nx_b, rows, _kernels.POSITIONWISE_CHUNK_ELEMS)
    mats, shifts = jnp.asarray(sampling.mats, dtype), jnp.asarray(sampling.shifts, dtype)
    xs = jnp.asarray(np.arange(nx_b) + 0.5 - nx_b / 2, dtype)
    zs = jnp.asarray(np.arange(nz) + 0.5 - nz / 2, dtype)
    slabs = []
    for j0 in range(0, ny_b, rows):
        take = np.minimum(np.arange(j0, j0 + rows), ny_b - 1)
        b0 = j0 - margin
        geometry = (
            jnp.asarray(b0 - ny_b / 2 + 0.5, dtype),
            mats,
            shifts,
            jnp.asarray(sampling.patches[take], jnp.int32),
            jnp.asarray(sampling.weights[take], dtype),
            xs,
            jnp.asarray(take + 0.5 - ny_b / 2, dtype),
            zs,
        )
        lo, hi = max(0, b0), min(ny_b, b0 + n_band)
        slabs.append((j0, min(rows, ny_b - j0), b0, lo, hi, geometry))

    def back(band_full, slab):
        j0, n, b0, lo, hi, geometry = slab
        band = np.zeros((n_views, n_band, nx_b), np.float32)
        band[:, lo - b0 : hi - b0] = band_full[:, lo:hi]
        band = _kernels.column_band(jnp.asarray(band, dtype))
        return np.asarray(_accumulate_band(band, *geometry, z_chunk=z_chunk))[:, :n]

    def project_into(total, vol, slab):
        j0, n, b0, lo, hi, geometry = slab
        full = np.zeros((nz, rows, nx_b), np.float32)
        full[:, :n] = vol
        band = np.asarray(_project_band(jnp.asarray(full, dtype), *geometry, z_chunk=z_chunk, n_band=n_band))
        total[:, lo:hi] += band[:, lo - b0 : hi - b0]

    ray = np.zeros_like(b)
    for slab in slabs:
        project_into(ray, np.ones((nz, slab[1], nx_b), np.float32), slab)
    r_w = np.where(ray > 1e-6, 1.0 / np.where(ray > 1e-6, ray, 1.0), 0.0).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix=".lmalign-sirt-", dir=scratch_dir) as tmp:
        x = _scratch_volume(os.path.join(tmp, "x.f32"), shape)
        c_w = _scratch_volume(os.path.join(tmp, "c.f32"), shape)
        ones = np.ones_like(b)
        for slab in slabs:
            hits = back(ones, slab)
            c_w[:, slab[0] : slab[0] + slab[1]] = np.where(
                hits > 1e-6, 1.0 / np.where(hits > 1e-6, hits, 1.0), 0.0
            )
        x[...] = 0.0
        residuals = []
        for _ in range(options.iterations + 1):
            d = b.copy()
            for slab in slabs:
                project_into(d, -x[:, slab[0] : slab[0] + slab[1]], slab)
            residuals.append(float(np.sum(r_w * d * d)))
            if len(residuals) > options.iterations:
                break
            d *= r_w
            for slab in slabs:
                j0, n = slab[0], slab[1]
                update = x[:, j0 : j0 + n] + options.relaxation * c_w[:, j0 : j0 + n] * back(d, slab)
                x[:, j0 : j0 + n] = np.maximum(update, 0.0) if options.positivity else update
        if out is None:
            out = np.empty(shape, np.float32)
        for slab in slabs:
            j0, n = slab[0], slab[1]
            _write_slab(out, j0, np.array(x[:, j0 : j0 + n]))
            if progress is not None:
                progress(j0 + n, ny_b)
        del x, c_w
    return out, np.asarray(residuals)
