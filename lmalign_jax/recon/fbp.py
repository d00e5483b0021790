"""Filtered back-projection of aligned tilt series (see the package docstring for the design)."""

from __future__ import annotations

import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from .filters import angular_increments, filter_response

__all__ = ["reconstruct", "fbp_2d"]

# Bytes of output one slab may hold when slab_rows is not given.
_SLAB_BYTES = 256 << 20
_MAX_SLAB_ROWS = 64


def _float_dtype(dtype) -> np.dtype:
    """The floating dtype JAX will actually use (float64 only when x64 is enabled)."""
    dt = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    if dt.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {np.dtype(dtype)}")
    return dt


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_transforms(n_views: int, xf_A, xf_shift, tilts_deg):
    a = np.asarray(xf_A, dtype=np.float64)
    d = np.asarray(xf_shift, dtype=np.float64)
    t = np.asarray(tilts_deg, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (2, 2):
        raise ValueError(f"xf_A must have shape (n_views, 2, 2), got {a.shape}")
    if d.ndim != 2 or d.shape[1] != 2:
        raise ValueError(f"xf_shift must have shape (n_views, 2), got {d.shape}")
    if t.ndim != 1:
        raise ValueError(f"tilts_deg must be 1-D (one angle per view), got shape {t.shape}")
    counts = {"stack": n_views, "xf_A": a.shape[0], "xf_shift": d.shape[0], "tilts_deg": t.shape[0]}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{k} has {v}" for k, v in counts.items())
        raise ValueError(f"view count mismatch: {detail}")
    for name, arr in (("xf_A", a), ("xf_shift", d), ("tilts_deg", t)):
        if not np.all(np.isfinite(arr)):
            bad = np.flatnonzero(~np.all(np.isfinite(arr.reshape(arr.shape[0], -1)), axis=1))
            raise ValueError(f"{name} has non-finite values in view(s) {bad.tolist()}")
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    scale = np.maximum(np.abs(a).reshape(-1, 4).max(axis=1), 1e-300)
    singular = np.abs(det) <= 1e-12 * scale**2
    if np.any(singular):
        raise ValueError(f"xf_A is singular in view(s) {np.flatnonzero(singular).tolist()}")
    return a, d, t


def _bin_view(view: np.ndarray, b: int, ny_b: int, nx_b: int) -> np.ndarray:
    if b == 1:
        return view
    block = view[: ny_b * b, : nx_b * b].reshape(ny_b, b, nx_b, b)
    return block.mean(axis=(1, 3), dtype=np.float64)


def reconstruct(
    stack,
    xf_A,
    xf_shift,
    tilts_deg,
    thickness,
    *,
    binning=1,
    filter="ramp",
    radial=None,
    out=None,
    slab_rows=None,
    dtype=jnp.float32,
    progress=None,
):
    """Reconstruct a tomogram from a raw tilt series and its IMOD alignment by weighted FBP.

    Parameters
    ----------
    stack : array-like (n_views, NY, NX)
        Raw images, ``stack[view, row, column]`` (numpy array or memmap; read one view at a time).
        Values are back-projected as they are (no log, no contrast inversion).
    xf_A, xf_shift : (n_views, 2, 2), (n_views, 2)
        IMOD .xf transforms, raw -> aligned about the raw image centre ``c = (NX/2, NY/2)``:
        ``x' = A (x - c) + D + c``; shifts in unbinned pixels. In the aligned frame the tilt axis
        is the y axis.
    tilts_deg : (n_views,)
        Tilt angles in degrees (any order; dose-symmetric series are fine).
    thickness : float
        Tomogram thickness in **unbinned** pixels (IMOD's convention); the volume has
        ``NZ = round(thickness / binning)`` slices (at least 1).
    binning : int
        Average the stack in ``binning x binning`` blocks first (trailing pixels that do not fill a
        block are dropped); shifts are divided by the binning. The voxel size is the pixel size
        times the binning.
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann", None}
        See :mod:`lmalign_jax.recon.filters`.
    radial : (cutoff, falloff) or None
        IMOD's radial filter in cycles/pixel of the binned data: unchanged up to ``cutoff``, then a
        Gaussian fall-off of sigma ``falloff``.
    out : array-like (NZ, NY // binning, NX // binning), optional
        Preallocated output (e.g. the array yielded by :func:`lmalign_jax.io.mrc.create_volume`),
        filled slab by slab. A new numpy array of ``dtype`` is allocated when omitted.
    slab_rows : int, optional
        Rows (y) per slab; by default at most 64 and about 256 MiB of output per slab.
    dtype : floating dtype
        Compute dtype (float64 is honoured only when JAX's x64 mode is enabled by the caller).
    progress : callable(done_rows, total_rows), optional
        Called after each slab is written.

    Returns
    -------
    The volume ``(NZ, NY', NX')`` (``out`` when given). Voxel ``(k, j, i)`` is centred at
    ``(x, y, z) = (i + 0.5 - NX'/2, j + 0.5 - NY'/2, k + 0.5 - NZ/2)`` in the specimen frame with
    ``x' - xc = x cos(theta) + z sin(theta)`` and ``y' - yc = y`` (units: binned pixels).

    Raises
    ------
    ValueError
        For inconsistent or invalid input (view counts, shapes, thickness, non-finite values,
        singular transforms, wrong ``out`` shape), always before anything is written to ``out``.
    """
    if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
        stack = np.asarray(stack)
    if len(stack.shape) != 3:
        raise ValueError(f"stack must be 3-D (n_views, NY, NX), got shape {tuple(stack.shape)}")
    n_views, ny, nx = (int(s) for s in stack.shape)
    if n_views < 1 or ny < 1 or nx < 1:
        raise ValueError(f"stack is empty: shape {tuple(stack.shape)}")
    if np.dtype(stack.dtype).kind not in "fiub":
        raise ValueError(f"stack must hold real numbers, got dtype {stack.dtype}")
    a, d, t = _check_transforms(n_views, xf_A, xf_shift, tilts_deg)
    b = _positive_int(binning, "binning")
    try:
        thick = float(thickness)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"thickness must be a number of pixels, got {thickness!r}") from exc
    if not np.isfinite(thick) or thick <= 0:
        raise ValueError(f"thickness must be positive and finite (unbinned pixels), got {thickness!r}")
    nz = max(1, int(round(thick / b)))
    ny_b, nx_b = ny // b, nx // b
    if ny_b < 1 or nx_b < 1:
        raise ValueError(f"binning {b} is larger than the images ({ny} x {nx})")
    dt = _float_dtype(dtype)
    n_pad, response = filter_response(nx_b, filter, radial)
    increments = angular_increments(t)
    if slab_rows is None:
        rows = max(1, min(_MAX_SLAB_ROWS, _SLAB_BYTES // (nz * nx_b * 4)))
        if rows > 8:
            rows -= rows % 8
    else:
        rows = _positive_int(slab_rows, "slab_rows")
    rows = min(rows, ny_b)
    shape = (nz, ny_b, nx_b)
    if out is None:
        out = np.empty(shape, dtype=dt)
    elif tuple(getattr(out, "shape", ())) != shape:
        raise ValueError(f"out has shape {tuple(getattr(out, 'shape', ()))}, expected {shape} (NZ, NY, NX)")
    if progress is not None and not callable(progress):
        raise ValueError("progress must be callable(done_rows, total_rows) or None")

    # Stage 1: every view resampled once into the aligned frame, filtered along x, weighted.
    # Kept as (n_views, NX', NY' + pad) so a slab of rows is a contiguous-row block per detector x.
    n_slabs = -(-ny_b // rows)
    ny_pad = n_slabs * rows
    q = np.zeros((n_views, nx_b, ny_pad), dtype=dt)
    a_inv = np.linalg.inv(a)
    centre = np.array([nx / 2.0, ny / 2.0]) / b
    shifts = d / b
    resp = jnp.asarray(response, dtype=dt)
    for v in range(n_views):
        view = np.asarray(stack[v])
        if view.dtype.kind == "f" and not np.all(np.isfinite(view)):
            raise ValueError(f"stack view {v} contains non-finite values")
        img = jnp.asarray(_bin_view(view, b, ny_b, nx_b), dtype=dt)
        res = _kernels.resample_filter_view(
            img,
            jnp.asarray(a_inv[v], dtype=dt),
            jnp.asarray(shifts[v], dtype=dt),
            jnp.asarray(centre, dtype=dt),
            jnp.asarray(increments[v], dtype=dt),
            resp,
            ny_out=ny_b,
            nx_out=nx_b,
            n_pad=n_pad,
        )
        q[v, :, :ny_b] = np.asarray(res)

    # Stage 2: back-project slab by slab, rows innermost.
    theta = np.deg2rad(t)
    cos_t = jnp.asarray(np.cos(theta), dtype=dt)
    sin_t = jnp.asarray(np.sin(theta), dtype=dt)
    z_chunk = _kernels.choose_z_chunk(nz, nx_b, rows)
    for s in range(n_slabs):
        j0 = s * rows
        j1 = min(ny_b, j0 + rows)
        block = jnp.asarray(q[:, :, j0 : j0 + rows])
        vol = _kernels.backproject(block, cos_t, sin_t, nz=nz, nx=nx_b, z_chunk=z_chunk)
        out[:, j0:j1, :] = np.asarray(vol)[:, : j1 - j0, :]
        if progress is not None:
            progress(j1, ny_b)
    return out


def fbp_2d(sinogram, angles_deg, *, filter="ramp", radial=None, output_shape=None, dtype=jnp.float32):
    """Filtered back-projection of plain parallel-beam sinograms (no alignment, no mean removal).

    Parameters
    ----------
    sinogram : (n_views, n_det) or (n_views, n_rows, n_det)
        One projection per view; a 3-D input is a batch of sinograms sharing the angles (the
        rows of a tilt series) and is reconstructed rows-innermost like :func:`reconstruct`.
        Detector sample ``m`` is at ``t = m + 0.5 - n_det/2``; outside the detector the data are
        taken as zero.
    angles_deg : (n_views,)
        Projection angles, degrees. Views are weighted by their angular increments.
    output_shape : (nz, nx), optional
        Slice shape; default ``(n_det, n_det)``. Pixel ``(k, i)`` is at
        ``x = i + 0.5 - nx/2``, ``z = k + 0.5 - nz/2`` and is seen by view ``theta`` at
        ``t = x cos(theta) + z sin(theta)``.

    Returns
    -------
    numpy array ``(nz, nx)`` or ``(nz, n_rows, nx)``.

    Relation to scikit-image: for an odd detector size ``n`` (where skimage's centre ``n // 2``
    and ours ``n/2 - 0.5`` coincide), ``skimage.transform.iradon(s.T, theta)`` (ramp filter,
    linear interpolation) equals ``fbp_2d(s, -theta)`` inside the reconstruction circle:
    skimage's image row ``r`` is our ``z`` and its column our ``x``, and its detector coordinate
    is ``x cos(theta) - z sin(theta)``. Its ramp (``2 H``) times ``pi / (2 n_views)`` is our ``H``
    times the angular increment ``pi / n_views``.
    """
    sino = np.asarray(sinogram)
    if sino.ndim not in (2, 3):
        raise ValueError(f"sinogram must be (n_views, n_det) or (n_views, n_rows, n_det), got {sino.shape}")
    if not np.all(np.isfinite(sino)):
        raise ValueError("sinogram contains non-finite values")
    batched = sino.ndim == 3
    if not batched:
        sino = sino[:, None, :]
    n_views, n_rows, n_det = sino.shape
    ang = np.asarray(angles_deg, dtype=np.float64)
    if ang.ndim != 1 or ang.shape[0] != n_views:
        raise ValueError(f"angles_deg has {ang.size} values for {n_views} views")
    increments = angular_increments(ang)
    if output_shape is None:
        nz, nx = n_det, n_det
    else:
        nz, nx = (_positive_int(s, "output_shape") for s in output_shape)
    dt = _float_dtype(dtype)
    n_pad, response = filter_response(n_det, filter, radial)
    q = _filter_sinogram(
        jnp.asarray(sino, dtype=dt),
        jnp.asarray(response, dtype=dt),
        jnp.asarray(increments, dtype=dt),
        n_pad=n_pad,
    )
    theta = np.deg2rad(ang)
    z_chunk = _kernels.choose_z_chunk(nz, nx, n_rows)
    vol = _kernels.backproject(
        q,
        jnp.asarray(np.cos(theta), dtype=dt),
        jnp.asarray(np.sin(theta), dtype=dt),
        nz=nz,
        nx=nx,
        z_chunk=z_chunk,
    )
    vol = np.asarray(vol)
    return vol if batched else vol[:, 0, :]


@partial(jax.jit, static_argnames=("n_pad",))
def _filter_sinogram(sino, response, increments, *, n_pad):
    """(n_views, n_rows, n_det) -> filtered, weighted (n_views, n_det, n_rows)."""
    filtered = _kernels.filter_rows(sino, response, n_pad) * increments[:, None, None]
    return jnp.transpose(filtered, (0, 2, 1))
