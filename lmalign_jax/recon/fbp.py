"""Filtered back-projection of aligned tilt series (see the package docstring for the design)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from . import sirt as _sirt
from .filters import angular_increments, filter_response, sirt_like_response

__all__ = ["reconstruct", "fbp_2d", "plan_slabs", "SlabPlan", "default_memory_bytes"]

_MAX_SLAB_ROWS = 64
#: Largest |entry| of a transform's matrix, its inverse or its shift (pixels) that is reconstructed.
MAX_XF_ENTRY = 1e30


def slice_count(thickness: float, binning: int) -> int:
    """NZ of a volume ``thickness`` unbinned pixels thick in ``binning``-pixel voxels, as IMOD's
    tilt divides THICKNESS by IMAGEBINNED (whole numbers, rounded down: 5 px at bin 2 make 2
    slices, 7 make 3; Python's round made 2 and 4), at least 1 (a fractional thickness: its
    whole pixels)."""
    return max(1, math.floor(float(thickness) + 1e-9) // int(binning))


#: A transform matrix is singular when |det| is at most this times its largest entry squared.
SINGULAR_RTOL = 1e-12


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
    largest, _, singular, inverse = transform_measures(a, d)
    _check_magnitude(largest)
    if np.any(singular):
        raise ValueError(f"xf_A is singular in view(s) {np.flatnonzero(singular).tolist()}")
    _check_magnitude(inverse)
    return a, d, t


def transform_measures(a, d):
    """Per view of matrices ``a`` (n, 2, 2) and shifts ``d`` (n, 2): the largest |entry| of both,
    the determinant, whether the matrix is singular (|det| at most ``SINGULAR_RTOL`` times its
    largest entry squared) and the size of its inverse's largest entry (inf when singular), each
    (n,). The reconstruction's checks of ``.xf``, record and local transforms share them."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        scale = np.abs(a).reshape(-1, 4).max(axis=1)
        singular = ~(np.abs(det) > SINGULAR_RTOL * scale**2)
        inverse = np.where(singular, np.inf, scale / np.abs(det))  # the adjugate's entries are a's
    largest = np.abs(np.concatenate([a.reshape(-1, 4), np.asarray(d, np.float64)], axis=1)).max(axis=1)
    return largest, det, singular, inverse


def _check_magnitude(sizes) -> None:
    """ValueError for views whose transform ``sizes`` (n,) are beyond ``MAX_XF_ENTRY``: float32
    holds the resampling's coordinates, which they would overflow."""
    huge = sizes > MAX_XF_ENTRY
    if np.any(huge):
        raise ValueError(
            f"the transforms of view(s) {np.flatnonzero(huge).tolist()} have a shift or scale "
            f"beyond {MAX_XF_ENTRY:g} (not an alignment; a float32 reconstruction would overflow)"
        )


def _bin_view(view: np.ndarray, b: int, ny_b: int, nx_b: int) -> np.ndarray:
    if b == 1:
        return view
    block = view[: ny_b * b, : nx_b * b].reshape(ny_b, b, nx_b, b)
    return block.mean(axis=(1, 3), dtype=np.float64)


def default_memory_bytes() -> int:
    """The memory budget when none is given: half the memory available now, at most 4 GB
    and at least 512 MB (``MemAvailable`` of ``/proc/meminfo``; 4 GB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = 8 << 30
    return int(min(4 << 30, max(512 << 20, available // 2)))


@dataclass(frozen=True)
class SlabPlan:
    """How a reconstruction is cut to fit a memory budget.

    ``slab_rows`` y rows are back-projected at once (the output slab, ``nz x slab_rows x nx``
    float32); ``pass_rows`` rows of every view are resampled and filtered at once (``n_views x
    nx x pass_rows`` float32), a multiple of ``slab_rows``. When ``pass_rows < ny`` the raw views
    are read once per pass (only the band of raw rows each pass needs).
    """

    slab_rows: int
    pass_rows: int
    n_passes: int
    bytes_needed: int


def plan_slabs(n_views, ny, nx, nz, memory_bytes=None, slab_rows=None) -> SlabPlan:
    """Slab and pass sizes for a ``(nz, ny, nx)`` volume from ``n_views`` views in
    ``memory_bytes`` (default :func:`default_memory_bytes`).

    A slab costs about 4 copies of its output (the device result, its host copy and two blocks
    queued for writing) and is given at most half the budget (and 64 rows: larger slabs were no
    faster; slabs of 6-8 rows cost 2.5x the CPU time of 64 at 1k x 256, so a small budget goes
    to slabs first); the filtered views of a pass get the rest. Below the smallest workable size
    (one slab of 8 rows), the budget is exceeded rather than failing; ``bytes_needed`` says by
    how much.
    """
    budget = default_memory_bytes() if memory_bytes is None else int(memory_bytes)
    row_bytes = 4 * nz * nx
    if slab_rows is None:
        rows = max(1, min(_MAX_SLAB_ROWS, (budget // 2) // (4 * row_bytes)))
        if rows > 8:
            rows -= rows % 8
    else:
        rows = _positive_int(slab_rows, "slab_rows")
    rows = min(rows, ny)
    slab_cost = 4 * rows * row_bytes
    view_row_bytes = 4 * n_views * nx
    pass_rows = max(rows, (max(0, budget - slab_cost) // view_row_bytes) // rows * rows)
    pass_rows = min(pass_rows, -(-ny // rows) * rows)
    n_passes = -(-ny // pass_rows)
    return SlabPlan(rows, pass_rows, n_passes, slab_cost + pass_rows * view_row_bytes)


def _raw_band(a_inv, shift, centre, row0, rows, nx_b, ny_b):
    """Binned raw rows ``[r0, r1)`` that aligned rows ``row0 .. row0 + rows`` can read from
    (the corners of that band mapped back through the .xf, plus a 2-row margin, clipped)."""
    xs = np.array([0.0, nx_b]) - nx_b / 2
    ys = np.array([row0, row0 + rows], dtype=np.float64) - ny_b / 2
    px, py = np.meshgrid(xs - shift[0], ys - shift[1])
    uy = a_inv[1, 0] * px + a_inv[1, 1] * py + centre[1]
    r0 = int(np.clip(np.floor(uy.min()) - 2, 0, ny_b))
    r1 = int(np.clip(np.ceil(uy.max()) + 2, 0, ny_b))
    return (r0, max(r1, r0 + 1)) if r1 > r0 else (0, 1)


def _write_slab(out, j0, block):
    if not np.all(np.isfinite(block)):  # float32 overflow: finite but huge pixels, shifts or scales
        raise ValueError(
            f"the tomogram is not finite from row {j0} on (values beyond float32's range: are the stack's "
            "pixel values or the transforms' shifts absurdly large?)"
        )
    if hasattr(out, "write_rows"):
        out.write_rows(j0, block)
    else:
        out[:, j0 : j0 + block.shape[1], :] = block


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
    sirtlike=None,
    sirt=None,
    out=None,
    slab_rows=None,
    memory_bytes=None,
    dtype=jnp.float32,
    progress=None,
):
    """Reconstruct a tomogram from a raw tilt series and its IMOD alignment by weighted FBP
    (or SIRT).

    Parameters
    ----------
    stack : array-like (n_views, NY, NX)
        Raw images, ``stack[view, row, column]`` (numpy array or memmap; read a band of rows of
        one view at a time). Values are back-projected as they are (no log, no contrast
        inversion).
    xf_A, xf_shift : (n_views, 2, 2), (n_views, 2)
        IMOD .xf transforms, raw -> aligned about the raw image centre ``c = (NX/2, NY/2)``:
        ``x' = A (x - c) + D + c``; shifts in unbinned pixels. In the aligned frame the tilt axis
        is the y axis.
    tilts_deg : (n_views,)
        Tilt angles in degrees (any order; dose-symmetric series are fine).
    thickness : float
        Tomogram thickness in **unbinned** pixels (IMOD's convention); the volume has
        ``NZ = slice_count(thickness, binning)`` slices (whole pixels over the binning, rounded down, as
        IMOD's tilt; at least 1).
    binning : int
        Average the stack in ``binning x binning`` blocks first (trailing pixels that do not fill a
        block are dropped); shifts are divided by the binning. The voxel size is the pixel size
        times the binning.
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann", None}
        See :mod:`lmalign_jax.recon.filters`.
    radial : (cutoff, falloff) or None
        IMOD's radial filter in cycles/pixel of the binned data: unchanged up to ``cutoff``, then a
        Gaussian fall-off of sigma ``falloff``.
    sirtlike : int, optional
        Replace the filter by the SIRT-like filter equivalent to this many SIRT iterations
        (:func:`lmalign_jax.recon.filters.sirt_like_response`), at the cost of one FBP.
    sirt : lmalign_jax.recon.sirt.SirtOptions, optional
        Reconstruct each slab by SIRT instead (:mod:`lmalign_jax.recon.sirt`); ``filter``,
        ``radial`` and ``sirtlike`` are then not used.
    out : array-like (NZ, NY // binning, NX // binning), or a writer, optional
        Preallocated output filled slab by slab, or an object with ``write_rows(j0, block)``
        (:class:`lmalign_jax.io.mrc_volume.VolumeWriter`), which then receives each slab ``(NZ, rows,
        NX')`` while the next is computed. A new numpy array of ``dtype`` is allocated when
        omitted.
    slab_rows : int, optional
        Rows (y) per slab; by default from ``memory_bytes`` (:func:`plan_slabs`).
    memory_bytes : int, optional
        Memory budget for the views and slabs held at once (:func:`plan_slabs`); default
        :func:`default_memory_bytes`. Not counted: the Python/JAX process itself (~0.4 GB) and
        compiled code.
    dtype : floating dtype
        Compute dtype (float64 is honoured only when JAX's x64 mode is enabled by the caller).
    progress : callable(done_rows, total_rows), optional
        Called after each slab is handed to ``out``.

    Returns
    -------
    ``out`` (a new ``(NZ, NY', NX')`` array when not given). Voxel ``(k, j, i)`` is centred at
    ``(x, y, z) = (i + 0.5 - NX'/2, j + 0.5 - NY'/2, k + 0.5 - NZ/2)`` in the specimen frame with
    ``x' - xc = x cos(theta) + z sin(theta)`` and ``y' - yc = y`` (units: binned pixels).

    Raises
    ------
    ValueError
        For inconsistent or invalid input (view counts, shapes, thickness, non-finite values,
        singular transforms, wrong ``out`` shape), always before anything is written to ``out``
        (except non-finite pixel values, found when their view is read, and a tomogram that
        overflows float32, found as its slabs are written).
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
    nz = slice_count(thick, b)
    ny_b, nx_b = ny // b, nx // b
    if ny_b < 1 or nx_b < 1:
        raise ValueError(f"binning {b} is larger than the images ({ny} x {nx})")
    dt = _float_dtype(dtype)
    if sirt is None:
        n_pad, response = filter_response(nx_b, filter, radial)
        if sirtlike is not None:
            response = sirt_like_response(response, _positive_int(sirtlike, "sirtlike"), nx_b)
        increments = angular_increments(t)
    else:
        n_pad, response = filter_response(nx_b, None)
        increments = np.ones(n_views)
    plan = plan_slabs(n_views, ny_b, nx_b, nz, memory_bytes, slab_rows)
    rows = plan.slab_rows
    shape = (nz, ny_b, nx_b)
    if out is None:
        out = np.empty(shape, dtype=dt)
    elif tuple(getattr(out, "shape", ())) != shape:
        raise ValueError(f"out has shape {tuple(getattr(out, 'shape', ()))}, expected {shape} (NZ, NY, NX)")
    if progress is not None and not callable(progress):
        raise ValueError("progress must be callable(done_rows, total_rows) or None")

    a_inv = np.linalg.inv(a)
    centre = np.array([nx / 2.0, ny / 2.0]) / b
    shifts = d / b
    resp = jnp.asarray(response, dtype=dt)
    theta = np.deg2rad(t)
    cos_t = jnp.asarray(np.cos(theta), dtype=dt)
    sin_t = jnp.asarray(np.sin(theta), dtype=dt)
    z_chunk = _kernels.choose_z_chunk(nz, nx_b, rows, n_views=n_views)
    if sirt is None:
        solve_slab = partial(_kernels.backproject, cos_t=cos_t, sin_t=sin_t, nz=nz, nx=nx_b, z_chunk=z_chunk)
    else:
        solve_slab = partial(_sirt.sirt_slab, cos_t=cos_t, sin_t=sin_t, nz=nz, nx=nx_b, options=sirt)
    means = np.full(n_views, np.nan)
    keep_mean = sirt is not None and sirt.positivity
    # the pass's filtered views, cut into slabs: q[s, v] is slab s of view v, (NX', rows), so a
    # slab of every view is one contiguous block
    q = np.zeros((plan.pass_rows // rows, n_views, nx_b, rows), dtype=dt)
    for p0 in range(0, ny_b, plan.pass_rows):
        p_rows = min(plan.pass_rows, ny_b - p0)
        # Stage 1: the pass's rows of every view, resampled once into the aligned frame,
        # filtered along x and weighted. Each view is dispatched before the previous one's
        # result is fetched, so reading a view overlaps the computation of the one before.
        pending = None
        for v in range(n_views):
            r0, r1 = _raw_band(a_inv[v], shifts[v], centre, p0, p_rows, nx_b, ny_b)
            if np.isnan(means[v]) and (r0, r1) != (0, ny_b):
                means[v] = _bin_view(_finite_view(stack, v, 0, ny), b, ny_b, nx_b).mean(dtype=np.float64)
            band = _bin_view(_finite_view(stack, v, r0 * b, r1 * b), b, r1 - r0, nx_b)
            if np.isnan(means[v]):
                means[v] = band.mean(dtype=np.float64)
            params = _kernels.view_params(a_inv[v], shifts[v], centre, increments[v], means[v], p0, r0)
            res = _kernels.resample_filter_view(
                jnp.asarray(band, dtype=dt),
                jnp.asarray(params, dtype=dt),
                resp,
                ny_out=ny_b,
                nx_out=nx_b,
                n_pad=n_pad,
                rows=plan.pass_rows,
                slab_rows=rows,
                keep_mean=keep_mean,
            )
            if pending is not None:
                q[:, pending[0]] = np.asarray(pending[1])
            pending = (v, res)
        q[:, pending[0]] = np.asarray(pending[1])
        # Stage 2: back-project (or solve) slab by slab, rows innermost. The next slab is
        # dispatched before the previous one is fetched and handed to the writer, so device
        # work, the host copy and the disk write overlap.
        pending = None
        for s, j0 in enumerate(range(p0, p0 + p_rows, rows)):
            vol = solve_slab(jnp.asarray(q[s]))
            if pending is not None:
                _finish_slab(out, *pending, progress, ny_b)
            pending = (j0, min(rows, p0 + p_rows - j0), vol)
        if pending is not None:
            _finish_slab(out, *pending, progress, ny_b)
    return out


def _finish_slab(out, j0, n_rows, vol, progress, ny_b):
    _write_slab(out, j0, np.asarray(vol)[:, :n_rows, :])
    if progress is not None:
        progress(j0 + n_rows, ny_b)


def non_finite_view_problem(v: int) -> str:
    """The message for non-finite pixels in (0-based) view ``v``, named 1-based as .xf/.tlt lines."""
    return f"stack view {v + 1} (section {v} counting from 0) contains non-finite values"


def _finite_view(stack, v: int, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0 .. r1`` of view ``v``, checked for non-finite values (named by the view's number
    in its file: a stack of some views, ``io.mrc.ViewSubset``, says which with ``stack_view``)."""
    view = np.asarray(stack[v, r0:r1] if r0 or r1 != stack.shape[1] else stack[v])
    if view.dtype.kind == "f" and not np.all(np.isfinite(view)):
        raise ValueError(non_finite_view_problem(stack.stack_view(v) if hasattr(stack, "stack_view") else v))
    return view


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
    z_chunk = _kernels.choose_z_chunk(nz, nx, n_rows, n_views=q.shape[0])
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
