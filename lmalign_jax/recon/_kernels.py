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
import numpy as np
from jax import lax

__all__ = [
    "sample_bilinear",
    "column_band",
    "filter_rows",
    "resample_filter_view",
    "view_params",
    "VIEW_PARAMS",
    "backproject",
    "sum_grouped_reads",
    "choose_z_chunk",
    "BACKPROJECT_CHUNK_ELEMS",
    "BACKPROJECT_INDEX_BYTES",
    "POSITIONWISE_CHUNK_ELEMS",
    "reprojection_taps",
    "reproject",
    "choose_reproject_z_chunk",
]


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


#: Order of a view's values in the ``params`` vector of :func:`resample_filter_view`.
VIEW_PARAMS = ("a00", "a01", "a10", "a11", "dx", "dy", "cx", "cy", "weight", "mean", "row0", "band0")


def view_params(a_inv, shift, center, weight, mean, row0, band0):
    """The ``params`` vector of :func:`resample_filter_view` (numpy float64, in
    :data:`VIEW_PARAMS` order): one transfer per view instead of one per value."""
    a = [float(v) for v in (*(a_inv[0][0], a_inv[0][1], a_inv[1][0], a_inv[1][1]), *shift, *center)]
    return [*a, float(weight), float(mean), float(row0), float(band0)]


def sample_bilinear(flat, col, row, n_cols: int, n_rows: int):
    """Bilinear samples of an image of ``n_rows x n_cols`` zero-padded by one sample on each side
    and flattened (``flat``: ``(n_rows + 2) * (n_cols + 2)``), at fractional pixel indices
    ``col``, ``row`` (any broadcastable shapes): four 1-D gathers, falling to zero outside as
    :func:`_linear_index` says."""
    width = n_cols + 2
    ix, fx = _linear_index(col, n_cols)
    iy, fy = _linear_index(row, n_rows)
    k = iy * width + ix
    p00, p01, p10, p11 = flat[k], flat[k + 1], flat[k + width], flat[k + width + 1]
    top = p00 + fx * (p01 - p00)
    return top + fy * (p10 + fx * (p11 - p10) - top)


def column_band(band):
    """Aligned rows ``band (V, B, NX)`` in the layout of the position-by-position back-projections
    (``recon.local_backprojection``, ``recon.warp_backprojection``, ``recon.sheets``): zero-padded
    by one sample on each side and columns leading, ``(V, NX + 2, B + 2)``, rows contiguous (what
    :func:`resample_filter_view` returns for one slab of the whole band, so a streamed band is
    filled without a transpose). :func:`sample_bilinear` reads it with rows and columns exchanged."""
    return jnp.pad(jnp.transpose(band, (0, 2, 1)), ((0, 0), (1, 1), (1, 1)))


@partial(jax.jit, static_argnames=("ny_out", "nx_out", "n_pad", "rows", "slab_rows", "keep_mean"))
def resample_filter_view(img, params, response, *, ny_out, nx_out, n_pad, rows, slab_rows, keep_mean):
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
    params : (12,)
        The view's values in :data:`VIEW_PARAMS` order (:func:`view_params`): the inverse
        ``a_inv`` of the .xf matrix ``A`` (aligned -> raw about the centre, row by row); the .xf
        shift ``D`` and centre ``c`` in these (binned) pixels (the centre is raw ``(NX/2,
        NY/2)`` divided by the binning); the weight (the view's angular increment, radians,
        multiplied in after filtering); the view's mean; the first aligned row wanted
        (``row0``); the raw row ``img`` starts at (``band0``). Integers are exact in float32
        up to 2^24.
    response : (n_pad // 2 + 1,)
        Filter response on the rfft grid.
    ny_out, nx_out, rows : int
        Aligned image size (binned) and the number of aligned rows wanted.
    slab_rows : int
        Rows per slab of the output (``rows`` is a multiple of it).

    Returns
    -------
    (rows // slab_rows, nx_out, slab_rows) array: the filtered, weighted aligned rows cut into
    slabs of ``slab_rows`` rows, each **transposed** so that detector x is the leading axis and
    rows (y) are contiguous, the layout :func:`backproject` wants (slab ``s`` of every view is
    then one contiguous block of the caller's ``(n_slabs, n_views, nx_out, slab_rows)`` array).
    Aligned sample ``(j, m)`` is at ``x' - c = (m + 0.5 - nx_out/2, row0 + j + 0.5 - ny_out/2)``.
    """
    dt = img.dtype
    nyr, nxr = img.shape
    p = params.astype(dt)
    mean, row0, band0 = p[9], p[10], p[11]
    img = img - mean
    padded = jnp.pad(img, 1)
    t = jnp.arange(nx_out, dtype=dt) + (0.5 - nx_out / 2)
    y = jnp.arange(rows, dtype=dt) + row0 + (0.5 - ny_out / 2)
    px = t[None, :] - p[4]
    py = y[:, None] - p[5]
    # raw image coordinate, then fractional pixel index (pixel c has its centre at c + 0.5)
    ux = p[0] * px + p[1] * py + (p[6] - 0.5)
    uy = p[2] * px + p[3] * py + (p[7] - 0.5) - band0
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
    filtered = filter_rows(aligned, response, n_pad) * p[8]
    if keep_mean:
        filtered = filtered + mean
    return filtered.reshape(rows // slab_rows, slab_rows, nx_out).transpose(0, 2, 1)


# Views summed per loop step of the back-projection: the accumulator is loaded and stored once
# per group instead of once per view (benchmarks/recon_kernel_bench.py, 1k x 64 rows x 256
# thick, CPU seconds under load ~5 on 2 cores: 4 views a step 1.3-1.5x one view a step, 2, 8
# and 16 slower than 4).
_VIEW_GROUP = 4


@partial(jax.jit, static_argnames=("nz", "nx", "z_chunk"))
def backproject(q, cos_t, sin_t, *, nz, nx, z_chunk, z_offset=0.0):
    """Back-project filtered, weighted views with rows innermost.

    ``q`` is ``(n_views, nd, rows)``: for every view and detector sample, the values of all rows
    of the slab. For each view and each (z, x) voxel column, one detector position, index and
    interpolation weight is computed and used for every row (single-axis tilt), so the inner loop
    is a contiguous vector operation over rows. Volume z is processed in chunks of ``z_chunk``
    slices (the accumulator stays in cache). Inside a chunk the indices and weights of every
    view are computed first (kept out of the gathers' fused loop, which would otherwise
    recompute them for every row); then views are summed ``_VIEW_GROUP`` at a time in one fused
    expression before the accumulator is touched, each view's value being ``a + frac (b - a)``
    with ``a, b`` the two neighbouring detector samples gathered from the same array (exact
    linear interpolation); each finished chunk is transposed to volume order while it is still
    in cache. Views are padded with zeros to whole groups (they add exactly zero).

    ``z_offset``: the depth of the slab's centre (0: the volume's); the slices lie at
    ``z_offset + k + 0.5 - nz / 2``.

    Returns ``(nz, rows, nx)``.
    """
    n_views, nd, rows = q.shape
    dt = q.dtype
    group = min(_VIEW_GROUP, n_views)
    n_groups = -(-n_views // group)
    pad = n_groups * group - n_views
    cos_t = jnp.pad(cos_t.astype(dt), (0, pad))
    sin_t = jnp.pad(sin_t.astype(dt), (0, pad))
    # one zero sample at each end, and zero views to fill the last group
    qp = jnp.pad(q, ((0, pad), (1, 1), (0, 0))).reshape(n_groups, group, nd + 2, rows)
    x = jnp.arange(nx, dtype=dt) + (0.5 - nx / 2)
    centre = nd / 2 - 0.5
    n_chunks = -(-nz // z_chunk)

    def chunk(z0):
        z = (z0 + jnp.arange(z_chunk)).astype(dt) + (0.5 - nz / 2) + jnp.asarray(z_offset, dt)
        u = cos_t[:, None, None] * x[None, None, :] + sin_t[:, None, None] * z[None, :, None] + centre
        idx, frac = lax.optimization_barrier(_linear_index(u, nd))
        idx = idx.reshape(n_groups, group, z_chunk, nx)
        frac = frac.reshape(n_groups, group, z_chunk, nx)

        return sum_grouped_reads(lambda g, j: qp[g, j], idx, frac, rows)

    out = lax.map(chunk, jnp.arange(n_chunks, dtype=jnp.int32) * z_chunk)
    return out.reshape(n_chunks * z_chunk, rows, nx)[:nz]


def sum_grouped_reads(source, idx, frac, rows: int):
    """The back-projection's inner loop over views, ``_VIEW_GROUP`` at a time: for view ``j`` of
    group ``g``, ``source(g, j)`` is a ``(n, rows)`` array and ``idx, frac (n_groups, group,
    z_chunk, nx)`` the first of its two neighbouring samples and the weight of the second; each
    (z, x) adds ``a + frac (b - a)`` over all rows, the group's views summed in one fused
    expression before the accumulator is touched. Returns ``(z_chunk, rows, nx)``."""
    n_groups, group, z_chunk, nx = idx.shape

    def one_group(g, acc):
        total = None
        for j in range(group):
            i, row = idx[g, j], source(g, j)
            a, b = row[i], row[i + 1]
            term = a + frac[g, j][..., None] * (b - a)
            total = term if total is None else total + term
        return acc + total

    acc = lax.fori_loop(0, n_groups, one_group, jnp.zeros((z_chunk, nx, rows), frac.dtype))
    return jnp.transpose(acc, (0, 2, 1))


#: Accumulator size (values) of the z chunks of :func:`backproject` (8 MiB of float32). Measured
#: on one 64-row slab, 61 views, 256 thick, taking turns in one process, 10 rounds (2 cores,
#: load ~1.3): CPU seconds at 2048 px 0.64 with 16 slices a chunk against 0.81 with 4 (2 MiB),
#: at 1024 px 0.293 with 32 against 0.329 with 8.
BACKPROJECT_CHUNK_ELEMS = 1 << 21

#: Bytes of the index and weight of every view per (z, x) that a chunk of :func:`backproject`
#: holds (8 per view, slice and column): the larger accumulators above stop where these would
#: pass 16 MiB (thin slabs of wide images, which a small ``--memory`` gives).
BACKPROJECT_INDEX_BYTES = 16 << 20

#: Accumulator size of the chunks of the position-by-position back-projections (local alignment,
#: warps, their SIRT; 2 MiB), whose sheets and reads were tuned with it; also the smallest chunk
#: :func:`backproject` is given.
POSITIONWISE_CHUNK_ELEMS = 1 << 19


def choose_z_chunk(
    nz: int, nx: int, rows: int, target_elems: int = BACKPROJECT_CHUNK_ELEMS, n_views: int | None = None
) -> int:
    """z slices per chunk: an accumulator of about ``target_elems`` values, at most 128 slices.
    With ``n_views`` (:func:`backproject`, which holds every view's index and weight for a chunk)
    fewer where those would pass :data:`BACKPROJECT_INDEX_BYTES`, but never fewer than a
    :data:`POSITIONWISE_CHUNK_ELEMS` accumulator gives."""
    per_slice = max(1, nx * rows)
    chunk = target_elems // per_slice
    if n_views is not None:
        by_index = BACKPROJECT_INDEX_BYTES // (8 * max(1, n_views) * max(1, nx))
        chunk = max(min(chunk, by_index), POSITIONWISE_CHUNK_ELEMS // per_slice)
    return int(max(1, min(nz, 128, chunk)))


# Above this many taps per detector sample (views steeper than ~83 degrees) the re-projector's
# weights are computed tap by tap instead of all at once (memory), and the taps loop is not unrolled.
_MAX_UNROLLED_TAPS = 16


def reprojection_taps(cos_t, nx: int) -> int:
    """Voxel columns :func:`reproject` reads per detector sample and z slice: the footprint of
    the back-projector's linear-interpolation weights, ``ceil(2 / |cos|)`` for the steepest view,
    at most ``nx + 2`` (every column and the zero column beyond each end). ``cos_t`` must hold
    concrete values (numpy or a JAX array outside ``jit``)."""
    try:
        smallest = float(np.min(np.abs(np.asarray(cos_t, dtype=np.float64))))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        raise ValueError("reprojection_taps needs concrete cos_t (call it outside jit)") from None
    if smallest * (nx + 2) <= 2:
        return nx + 2
    return int(min(nx + 2, np.ceil(2 / smallest)))


def choose_reproject_z_chunk(nz: int, n_views: int, nd: int, taps: int) -> int:
    """z slices per step of :func:`reproject`: its weights and indices of every view, ``8 n_views
    nd taps`` bytes per slice, about 4 MiB (512 x 64 rows x 128 thick, 61 views at +-60 degrees,
    4 taps: 2 slices a step 0.059 s, 4 0.063 s, 1 0.089 s, 8 0.092 s, 16 0.14 s; 1024 x 256
    thick: 2 slices 1.65 back-projections, 1 1.90, 4 1.72, 8 3.55), at most 4, and at most 16
    gathers unrolled per view (compilation time for steep views)."""
    per_slice = n_views * nd * min(taps, _MAX_UNROLLED_TAPS)
    return int(max(1, min(nz, 4, 16 // taps, (1 << 19) // max(1, per_slice))))


def _tap_weights(cos_t, sin_t, z, first, j, *, nx, nd):
    """Linear-interpolation weights and padded column indices of taps ``first + j``.

    ``cos_t, sin_t, first`` broadcast against ``z`` (slice positions) and the detector samples
    ``m`` on the axis after; the weight of column ``i`` for sample ``m`` is the back-projector's,
    ``max(0, 1 - |u - m|)`` with ``u = x_i cos + z sin + nd/2 - 0.5`` computed as it does. Columns
    outside the slice are clipped to the zero column beyond either end (index 0 or ``nx + 1``).
    """
    i = first + j
    u = cos_t * (i + (0.5 - nx / 2)) + (sin_t * z + (nd / 2 - 0.5))
    m = jnp.arange(nd, dtype=u.dtype)
    weight = jnp.maximum(1 - jnp.abs(u - m), 0)
    column = (jnp.clip(i, -1, nx) + 1).astype(jnp.int32)
    return column, weight


@partial(jax.jit, static_argnames=("nd", "taps", "z_chunk"))
def reproject(volume, cos_t, sin_t, *, nd, taps, z_chunk):
    """Re-project a slab with rows innermost: the exact transpose of :func:`backproject`.

    ``volume`` is ``(nz, rows, nx)``; returns ``(n_views, nd, rows)``. The back-projector gives
    voxel ``(z, x)`` the weight ``max(0, 1 - |u - m|)`` of detector sample ``m``, with ``u = x
    cos + z sin + nd/2 - 0.5`` (its zero padding beyond the detector ends gives exactly this for
    the samples ``0 .. nd-1``). In one z slice ``u`` steps by ``cos`` from column to column, so
    sample ``m`` collects the columns whose ``u`` lies in ``(m - 1, m + 1)``: at most ``ceil(2 /
    |cos|)`` consecutive columns starting after ``x = (m - 1 - z sin - nd/2 + 0.5) / cos`` (the
    other end for ``cos < 0``). Each is a gather of all rows of that column, weighted and summed
    over the chunk's z slices and the taps in one fused expression (the back-projector's
    gathers, transposed). ``taps`` (static, :func:`reprojection_taps`) must cover the steepest
    view; a view whose footprint is wider than the slice (``|cos| (nx + 1) < 2``, e.g. 90
    degrees) reads every column from the zero column before the first, which is exact when
    ``taps == nx + 2``. Weights and indices of every view are computed once per chunk of
    ``z_chunk`` slices, outside the gathers' loop.
    """
    nz, rows, nx = volume.shape
    dt = volume.dtype
    n_views = cos_t.shape[0]
    cos_t, sin_t = cos_t.astype(dt), sin_t.astype(dt)
    n_chunks = -(-nz // z_chunk)
    # (n_chunks, z_chunk, nx + 2, rows): rows contiguous, a zero column at each end of x, zero
    # slices filling the last chunk
    slabs = jnp.pad(jnp.transpose(volume, (0, 2, 1)), ((0, n_chunks * z_chunk - nz), (1, 1), (0, 0)))
    slabs = slabs.reshape(n_chunks, z_chunk, nx + 2, rows)
    m = jnp.arange(nd, dtype=dt)
    wide = jnp.abs(cos_t) * (nx + 1) < 2
    safe_cos = jnp.where(wide, 1, cos_t)
    reach = jnp.where(wide, 0, 1 / jnp.abs(safe_cos))  # half footprint, in columns
    unrolled = taps <= _MAX_UNROLLED_TAPS

    def chunk(acc, step):
        c0, slab = step
        z = (c0 * z_chunk + jnp.arange(z_chunk)).astype(dt) + (0.5 - nz / 2)
        c, s = cos_t[:, None, None], sin_t[:, None, None]
        # the first column whose u can exceed m - 1 (or fall below m + 1 for cos < 0)
        centre_col = (m - (s * z[None, :, None] + (nd / 2 - 0.5))) / safe_cos[:, None, None] + (nx / 2 - 0.5)
        first = jnp.floor(centre_col - reach[:, None, None]) + 1
        first = jnp.where(wide[:, None, None], -1, first)  # (n_views, z_chunk, nd)
        zz = z[None, :, None]
        if unrolled:
            # (n_views, z_chunk, taps, nd)
            j = jnp.arange(taps, dtype=dt)[:, None]
            cols, weights = lax.optimization_barrier(
                _tap_weights(c[..., None], s[..., None], zz[..., None], first[:, :, None, :], j, nx=nx, nd=nd)
            )

        def one_view(v, acc):
            def add_tap(total, col, w):
                for k in range(z_chunk):
                    total = total + w[k, :, None] * slab[k][col[k]]
                return total

            if unrolled:
                total = None
                for j in range(taps):
                    total = add_tap(0 if total is None else total, cols[v, :, j], weights[v, :, j])
            else:

                def one_tap(j, total):
                    col, w = lax.optimization_barrier(
                        _tap_weights(c[v], s[v], zz[0], first[v], j.astype(dt), nx=nx, nd=nd)
                    )
                    return add_tap(total, col, w)

                total = lax.fori_loop(0, taps, one_tap, jnp.zeros((nd, rows), dt))
            return acc.at[v].add(total)

        return lax.fori_loop(0, n_views, one_view, acc), None

    acc, _ = lax.scan(chunk, jnp.zeros((n_views, nd, rows), dt), (jnp.arange(n_chunks), slabs))
    return acc
