"""Back-projection where each voxel column has its own blend of affine projections: how IMOD's
``tilt`` applies a local alignment (LOCALFILE).

A separate path from :func:`lmalign_jax.recon.reconstruct` (whose kernels are being rewritten for
speed elsewhere). For voxel column (y, x) and view v the sampled position in the globally ALIGNED
view is ``sum_k w_k(y, x) (M[p_k(y, x), v] X + D[p_k(y, x), v])`` (centred pixels), X the voxel's
centred position: for a local file, p_k and w_k are the four patches around (x, y) and their
bilinear weights and M, D each patch's projection and transform
(``lmalign_jax.core.local_apply.local_sampling`` builds them from tilt.f90's formulas). Rows are
filtered as in weighted FBP (``recon.filters``), each view weighted by its angular increment.

Two entry points. :func:`backproject_local` takes an aligned stack in memory (one view's
positions for the whole volume, (NZ, NY, NX, 2) floats, at a time). :func:`reconstruct_local`
streams from the raw stack as :func:`lmalign_jax.recon.reconstruct` does, reusing its pieces:
the slab plan (:func:`~lmalign_jax.recon.fbp.plan_slabs`, ``memory_bytes``), the one-pass
resampling and filtering of a band of aligned rows (``_kernels.resample_filter_view``, each view's
mean subtracted as there, so that the outside of a resampled view reads as its mean) and the slab writer
(``out.write_rows``, any layout of :func:`lmalign_jax.io.mrc_volume.stream_volume`). A voxel column
samples rows near its own y, off by what the local transforms move it in y (bounded from the
sampling matrices over the volume's extent, :func:`row_margin`): each pass resamples its rows
plus that margin, and each slab is back-projected from that band.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates
from jaxtyping import Float

from . import _kernels
from .fbp import (
    _bin_view,
    _check_transforms,
    _finish_slab,
    _finite_view,
    _positive_int,
    _raw_band,
    plan_slabs,
    slice_count,
)
from .filters import angular_increments, filter_response, sirt_like_response
from .sheets import (
    DEFAULT_TOLERANCE_PX,
    PatchGrid,
    accumulate_sheets,
    drift_rates,
    local_position,
    plan_sheets,
    sheet_margin,
    sheets_per_block,
)

__all__ = [
    "LocalSampling",
    "backproject_local",
    "reconstruct_local",
    "reconstruct_local_in_memory",
    "row_margin",
]


class LocalSampling(NamedTuple):
    """Where each voxel column samples each view (module docstring).

    mats: (n_patches, n_views, 2, 3); shifts: (n_patches, n_views, 2), pixels of the volume's grid;
    patches: (NY, NX, 4) int patch indices; weights: (NY, NX, 4), summing to 1; grid: tilt's
    patch grid (:class:`lmalign_jax.recon.sheets.PatchGrid`) when the patches come from one, which
    lets :func:`reconstruct_local` read through sheets (``recon.sheets``) instead of sampling
    every voxel.
    """

    mats: np.ndarray
    shifts: np.ndarray
    patches: np.ndarray
    weights: np.ndarray
    grid: PatchGrid | None = None


@jax.jit
def _accumulate(filtered, mats, shifts, patches, weights, xyz):
    """Sum over views of each voxel's sampled value. filtered (V, NY, NX); mats (P, V, 2, 3);
    shifts (P, V, 2); patches, weights (NY, NX, 4); xyz (NZ, NY, NX, 3) centred voxel positions."""
    ny, nx = filtered.shape[1:]

    def view(total, data):
        image, m, d = data  # (NY, NX), (P, 2, 3), (P, 2)
        m_eff = jnp.einsum("yxk,yxkij->yxij", weights, m[patches])
        d_eff = jnp.einsum("yxk,yxki->yxi", weights, d[patches])
        pos = jnp.einsum("yxij,zyxj->zyxi", m_eff, xyz) + d_eff
        col = pos[..., 0] + nx / 2 - 0.5
        row = pos[..., 1] + ny / 2 - 0.5
        return total + map_coordinates(image, [row, col], order=1, mode="constant", cval=0.0), None

    total = jnp.zeros(xyz.shape[:3], filtered.dtype)
    total, _ = jax.lax.scan(view, total, (filtered, jnp.moveaxis(mats, 1, 0), jnp.moveaxis(shifts, 1, 0)))
    return total


def backproject_local(
    aligned: Float[np.ndarray, "views ny nx"],
    tilts_deg: Float[np.ndarray, " views"],
    sampling: LocalSampling,
    thickness: int,
    *,
    filter: str | None = "ramp",
    radial=None,
    dtype=jnp.float32,
) -> Float[np.ndarray, "nz ny nx"]:
    """Weighted back-projection of an aligned stack, each voxel column sampling as ``sampling`` says.

    Args:
        aligned: (n_views, NY, NX) the stack after the global ``.xf`` (tilt's input ``.ali``).
        tilts_deg: (n_views,) tilts for the angular weighting.
        sampling: :class:`LocalSampling` for this (NY, NX) grid.
        thickness: NZ, slices of the volume.
        filter, radial: row filter and IMOD's radial fall-off (``recon.filters.filter_response``).
    Returns:
        (NZ, NY, NX) volume; voxel (k, j, i) centred at (i + 0.5 - NX/2, j + 0.5 - NY/2,
        k + 0.5 - NZ/2), the frame of ``lmalign_jax.recon.reconstruct``.
    """
    aligned = np.asarray(aligned)
    n_views, ny, nx = aligned.shape
    if int(thickness) < 1:
        raise ValueError(f"thickness must be a positive number of slices, got {thickness}")
    if sampling.patches.shape != (ny, nx, 4) or sampling.mats.shape[1] != n_views:
        raise ValueError(
            f"sampling is for {sampling.patches.shape[:2]} columns and {sampling.mats.shape[1]} views, "
            f"the stack has {(ny, nx)} and {n_views}"
        )
    nz = int(thickness)
    n_pad, response = filter_response(nx, filter, radial)
    weight = angular_increments(tilts_deg)
    rows = jnp.asarray(aligned, dtype)
    spectrum = jnp.fft.rfft(rows, n=n_pad, axis=-1) * jnp.asarray(response, dtype)
    filtered = jnp.fft.irfft(spectrum, n=n_pad, axis=-1)[..., :nx] * jnp.asarray(weight, dtype)[:, None, None]
    x = np.arange(nx) + 0.5 - nx / 2
    y = np.arange(ny) + 0.5 - ny / 2
    z = np.arange(nz) + 0.5 - nz / 2
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    out = _accumulate(
        filtered,
        jnp.asarray(sampling.mats, dtype),
        jnp.asarray(sampling.shifts, dtype),
        jnp.asarray(sampling.patches, jnp.int32),
        jnp.asarray(sampling.weights, dtype),
        jnp.asarray(np.stack([xx, yy, zz], -1), dtype),
    )
    return np.asarray(out)


def _bin(view: np.ndarray, b: int) -> np.ndarray:
    ny, nx = view.shape[0] // b, view.shape[1] // b
    return view[: ny * b, : nx * b].reshape(ny, b, nx, b).mean(axis=(1, 3))


def reconstruct_local_in_memory(
    stack,
    xf_A: Float[np.ndarray, "views 2 2"],
    xf_shift: Float[np.ndarray, "views 2"],
    tilts_deg: Float[np.ndarray, " views"],
    sampling: LocalSampling,
    thickness: float,
    *,
    binning: int = 1,
    filter: str | None = "ramp",
    radial=None,
    dtype=jnp.float32,
) -> Float[np.ndarray, "nz ny nx"]:
    """The reference of :func:`reconstruct_local`: every raw view (binned, its mean subtracted)
    resampled whole into the globally aligned frame (bilinear, ``x' = A (x - c) + D + c``, shifts in
    unbinned pixels), then
    :func:`backproject_local`; the whole volume in memory."""
    a = np.asarray(xf_A, np.float64)
    d = np.asarray(xf_shift, np.float64)
    b = int(binning)
    views = [_bin(np.asarray(stack[v], np.float64), b) for v in range(a.shape[0])]
    views = [view - view.mean() for view in views]  # outside the raw view reads as its mean
    ny, nx = views[0].shape
    # the raw view's centre in binned pixels, as the streamed and global paths take it (not the
    # binned view's: they differ when a side is not a multiple of the binning)
    cx, cy = np.shape(stack)[2] / 2 / b, np.shape(stack)[1] / 2 / b
    x = np.arange(nx) + 0.5 - nx / 2
    y = np.arange(ny) + 0.5 - ny / 2
    gx, gy = np.meshgrid(x, y)
    aligned = np.empty((len(views), ny, nx))
    for v, image in enumerate(views):
        inv = np.linalg.inv(a[v])
        raw = np.einsum("ij,jyx->iyx", inv, np.stack([gx - d[v, 0] / b, gy - d[v, 1] / b]))
        coords = [jnp.asarray(raw[1] + cy - 0.5), jnp.asarray(raw[0] + cx - 0.5)]
        aligned[v] = np.asarray(
            map_coordinates(jnp.asarray(image), coords, order=1, mode="constant", cval=0.0)
        )
    nz = slice_count(thickness, b)
    return backproject_local(aligned, tilts_deg, sampling, nz, filter=filter, radial=radial, dtype=dtype)


class _SheetReader:
    """The sheet back-projection of one volume: its position model (tilt's patch weights), and
    per slab height the sheet plan (from :func:`lmalign_jax.recon.sheets.drift_rates`), or None where
    sheets cannot meet the tolerance (columns out of order, rows too far apart)."""

    #: Smallest du/dx (aligned px per column) for which the columns' order is trusted.
    MIN_SLOPE = 0.05

    def __init__(self, sampling: LocalSampling, tilts_deg, shape, tolerance_px: float, dtype):
        n_y, n_x = sampling.grid.n[1], sampling.grid.n[0]
        n_views = sampling.mats.shape[1]
        m = np.asarray(sampling.mats, np.float64)
        shifts = np.asarray(sampling.shifts, np.float64)
        params = np.concatenate([m[..., 0], m[..., 1], m[..., 2], shifts], -1)
        self.params = jnp.asarray(params.reshape(n_y, n_x, n_views, 8), dtype)
        self.prepare, self.position = local_position(sampling.grid)
        self.tilts, self.shape, self.tolerance, self.dtype = tilts_deg, shape, tolerance_px, dtype
        self.n_views = n_views
        self.reach = row_margin(sampling, shape) + 2  # + the sheets' columns beyond the volume
        self.plans: dict[int, tuple] = {}

    def usable(self, rows: int) -> bool:
        if rows not in self.plans:
            drift = drift_rates(
                self.params, self.prepare, self.position, self.shape, self.n_views, rows, self.dtype
            )
            self.plans[rows] = None
            if drift.slope > self.MIN_SLOPE:
                nz, _, nx = self.shape
                block = min(32, 1 << max(0, (nz - 1).bit_length()))  # no block beyond the volume
                while True:
                    plan = plan_sheets(drift.rates, self.tolerance, max_block=block, offset=drift.offset)
                    margin = sheet_margin(plan, self.tilts)
                    n_sheets = sum(sheets_per_block(plan.block, n) for n in plan.spacing)
                    # a block's sheets held at most like two slabs (the slab plan's memory)
                    if n_sheets * (nx + 2) <= 2 * nz * nx or block == 1:
                        break
                    block //= 2
                if plan.bound_px <= self.tolerance:  # else rows too far apart for any sheet
                    self.plans[rows] = (plan, margin)
        return self.plans[rows] is not None

    def __call__(self, band, band0, take, x, z, z_chunk):
        plan, margin = self.plans[len(take)]
        chunk = 1 << (min(z_chunk, plan.block).bit_length() - 1)  # a power of two dividing the block
        y = jnp.asarray(take + 0.5 - self.shape[1] / 2, self.dtype)
        return accumulate_sheets(
            band,
            band0,
            self.params,
            y,
            x,
            z,
            prepare=self.prepare,
            position=self.position,
            plan=plan,
            z_chunk=chunk,
            margin=margin,
            reach=self.reach,
        )


def row_margin(sampling: LocalSampling, shape: tuple[int, int, int]) -> int:
    """Rows (whole, plus 2 for the interpolation) by which any voxel of a ``shape`` (NZ, NY, NX)
    volume samples away from its own y: ``|M_y X + D_y - y|`` bounded per patch and view over the
    volume's extent (a blend of patches lies between them)."""
    nz, ny, nx = shape
    half = np.array([nx / 2.0, ny / 2.0, nz / 2.0])
    my = np.asarray(sampling.mats, np.float64)[..., 1, :] - np.array([0.0, 1.0, 0.0])
    bound = np.abs(my) @ half + np.abs(np.asarray(sampling.shifts, np.float64)[..., 1])
    return int(np.ceil(bound.max())) + 2


@partial(jax.jit, static_argnames=("z_chunk",))
def _accumulate_band(band, band0, mats, shifts, patches, weights, x, y, z, *, z_chunk):
    """Sum over views of each voxel's sampled value for the voxels of some rows, from a band of
    aligned rows of every view (band row = sampled centred y - ``band0``).

    band (V, NX + 2, B + 2) in ``_kernels.column_band``'s layout; mats (P, V, 2, 3), shifts
    (P, V, 2); patches, weights (rows, NX, 4); x (NX,), y (rows,), z (NZ,) centred voxel
    coordinates. For a voxel column the sampled position is
    affine in z, ``base + z slope`` (the blend of the patches' affine maps), so each view's
    columns get ``base`` and ``slope`` once and every z chunk reads them; the bilinear reads are
    four 1-D gathers into the zero-padded band (as ``_kernels.resample_filter_view``: exact
    inside, falling to zero over one sample outside, zero beyond). Returns (NZ, rows, NX).
    """
    n_views, nx, n_band = band.shape[0], band.shape[1] - 2, band.shape[2] - 2
    rows, nz = y.shape[0], z.shape[0]
    dt = band.dtype
    flat = band.reshape(n_views, -1)

    def columns(m, d):  # (P, 2, 3), (P, 2) -> base, slope (2, rows, NX)
        m_eff = jnp.einsum("yxk,yxkij->ijyx", weights, m[patches])
        d_eff = jnp.einsum("yxk,yxki->iyx", weights, d[patches])
        base = m_eff[:, 0] * x[None, None, :] + m_eff[:, 1] * y[None, :, None] + d_eff
        return base + jnp.array([nx / 2 - 0.5, -band0], dt)[:, None, None], m_eff[:, 2]

    base, slope = jax.vmap(columns, in_axes=(1, 1))(mats, shifts)  # (V, 2, rows, NX)
    n_chunks = -(-nz // z_chunk)
    zs = jnp.pad(z, (0, n_chunks * z_chunk - nz)).reshape(n_chunks, z_chunk)

    def chunk(zc):
        def one_view(v, acc):
            col = base[v, 0][None] + zc[:, None, None] * slope[v, 0][None]
            row = base[v, 1][None] + zc[:, None, None] * slope[v, 1][None]
            return acc + _kernels.sample_bilinear(flat[v], row, col, n_band, nx)  # columns leading

        return jax.lax.fori_loop(0, n_views, one_view, jnp.zeros((z_chunk, rows, nx), dt))

    return jax.lax.map(chunk, zs).reshape(n_chunks * z_chunk, rows, nx)[:nz]


def reconstruct_local(
    stack,
    xf_A: Float[np.ndarray, "views 2 2"],
    xf_shift: Float[np.ndarray, "views 2"],
    tilts_deg: Float[np.ndarray, " views"],
    sampling: LocalSampling,
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
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    dtype=jnp.float32,
):
    """A tomogram from the RAW stack, its global ``.xf``/tilts and a local sampling, streamed.

    Arguments as :func:`lmalign_jax.recon.reconstruct` (``sirtlike``: IMOD's SIRT-like filter;
    SIRT is :mod:`lmalign_jax.recon.local_sirt`; ``out`` an array or a writer with
    ``write_rows``; ``memory_bytes`` bounds the views and slabs held at once, plus the rows of
    :func:`row_margin` per pass) and ``sampling`` made for the binned grid. With
    ``sampling.grid`` and ``tolerance_px`` > 0 voxels are read through sheets
    (:mod:`lmalign_jax.recon.sheets`), each sampled position within ``tolerance_px`` aligned
    pixels of its own (first order); otherwise, or where sheets cannot be used (a view whose
    columns do not project in order, or patches so rough that a sheet's rows alone pass the
    tolerance), every voxel samples its own position. Returns ``out`` (a
    new ``(NZ, NY', NX')`` array when not given), equal to :func:`reconstruct_local_in_memory`
    to float32 rounding when every voxel samples its own position.
    """
    n_views, ny, nx = (int(s) for s in np.shape(stack))
    b = _positive_int(binning, "binning")
    ny_b, nx_b = ny // b, nx // b
    if sampling.patches.shape != (ny_b, nx_b, 4) or sampling.mats.shape[1] != n_views:
        raise ValueError(
            f"sampling is for {sampling.patches.shape[:2]} columns and {sampling.mats.shape[1]} views, "
            f"the binned stack has {(ny_b, nx_b)} and {n_views}"
        )
    mats = jnp.asarray(sampling.mats, dtype)
    d_local = jnp.asarray(sampling.shifts, dtype)
    nz = slice_count(thickness, b)
    sheets = None
    if tolerance_px > 0 and sampling.grid is not None:
        tilts = np.asarray(tilts_deg, np.float64)
        sheets = _SheetReader(sampling, tilts, (nz, ny_b, nx_b), tolerance_px, dtype)

    def accumulate(device_band, band0, take, x, z, z_chunk):
        if sheets is not None and sheets.usable(len(take)):
            return sheets(device_band, band0, take, x, z, z_chunk)
        return _accumulate_band(
            device_band,
            band0,
            mats,
            d_local,
            jnp.asarray(sampling.patches[take], jnp.int32),
            jnp.asarray(sampling.weights[take], dtype),
            x,
            jnp.asarray(take + 0.5 - ny_b / 2, dtype),
            z,
            z_chunk=z_chunk,
        )

    return stream_backprojection(
        stack,
        xf_A,
        xf_shift,
        tilts_deg,
        thickness,
        accumulate,
        lambda shape: row_margin(sampling, shape),
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


def stream_backprojection(
    stack,
    xf_A,
    xf_shift,
    tilts_deg,
    thickness,
    accumulate,
    margin_of,
    *,
    binning=1,
    filter="ramp",
    radial=None,
    sirtlike=None,
    out=None,
    memory_bytes=None,
    slab_rows=None,
    progress=None,
    dtype=jnp.float32,
):
    """The streaming loop shared by back-projections whose voxels sample their own positions
    (local alignment, a deformation model's warp) and by the X-tilted read of the untilted
    back-projection (``recon.xtilt_backprojection``): per pass, every view's aligned rows of the
    pass plus ``margin_of((NZ, NY', NX'))`` rows each side, resampled and filtered once; per
    slab, ``accumulate(band, band0, rows, x, z, z_chunk)`` -> (NZ, len(rows), NX') with band row
    = sampled centred y - ``band0``; slabs handed to ``out``."""
    if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__"):
        stack = np.asarray(stack)
    n_views, ny, nx = (int(s) for s in stack.shape)
    a, d, t = _check_transforms(n_views, xf_A, xf_shift, tilts_deg)
    b = _positive_int(binning, "binning")
    nz = slice_count(thickness, b)
    ny_b, nx_b = ny // b, nx // b
    shape = (nz, ny_b, nx_b)
    if out is None:
        out = np.empty(shape, np.float32)
    plan = plan_slabs(n_views, ny_b, nx_b, nz, memory_bytes, slab_rows)
    rows, margin = plan.slab_rows, int(margin_of(shape))
    band_rows = plan.pass_rows + 2 * margin
    z_chunk = _kernels.choose_z_chunk(nz, nx_b, rows, _kernels.POSITIONWISE_CHUNK_ELEMS)
    n_pad, response = filter_response(nx_b, filter, radial)
    if sirtlike is not None:
        response = sirt_like_response(response, _positive_int(sirtlike, "sirtlike"), nx_b)
    resp = jnp.asarray(response, dtype)
    increments = angular_increments(t)
    a_inv = np.linalg.inv(a)
    centre = np.array([nx / 2.0, ny / 2.0]) / b
    shifts = d / b
    x = jnp.asarray(np.arange(nx_b) + 0.5 - nx_b / 2, dtype)
    z = jnp.asarray(np.arange(nz) + 0.5 - nz / 2, dtype)
    # the pass's band in _kernels.column_band's layout, which resample_filter_view returns: no
    # transposes; the padding and the rows outside the image stay zero
    band = np.zeros((n_views, nx_b + 2, band_rows + 2), np.float32)
    means = np.full(n_views, np.nan)
    for p0 in range(0, ny_b, plan.pass_rows):
        p_rows = min(plan.pass_rows, ny_b - p0)
        b0 = p0 - margin  # aligned row of band row 0; rows outside the image stay zero
        lo, hi = max(0, b0), min(ny_b, b0 + band_rows)
        kept = slice(lo - b0, hi - b0)  # band rows inside the image
        inside = slice(1 + kept.start, 1 + kept.stop)  # the same rows of the padded band
        band[:, :, 1 : inside.start] = 0.0
        band[:, :, inside.stop : -1] = 0.0
        # each view is dispatched before the previous one's result is fetched (as recon.reconstruct)
        pending = None
        for v in range(n_views):
            r0, r1 = _raw_band(a_inv[v], shifts[v], centre, lo, hi - lo, nx_b, ny_b)
            if np.isnan(means[v]) and (r0, r1) != (0, ny_b):
                means[v] = _bin_view(_finite_view(stack, v, 0, ny), b, ny_b, nx_b).mean(dtype=np.float64)
            raw = _finite_view(stack, v, r0 * b, r1 * b)
            raw = raw if b == 1 else _bin(np.asarray(raw, np.float64), b)
            if np.isnan(means[v]):
                means[v] = raw.mean(dtype=np.float64)
            # the view's mean subtracted, as the global path: outside the raw view reads as it
            params = _kernels.view_params(a_inv[v], shifts[v], centre, increments[v], means[v], b0, r0)
            res = _kernels.resample_filter_view(
                jnp.asarray(raw, dtype),
                jnp.asarray(params, dtype),
                resp,
                ny_out=ny_b,
                nx_out=nx_b,
                n_pad=n_pad,
                rows=band_rows,
                slab_rows=band_rows,
                keep_mean=False,
            )
            if pending is not None:
                band[pending[0], 1:-1, inside] = np.asarray(pending[1])[0, :, kept]
            pending = (v, res)
        band[pending[0], 1:-1, inside] = np.asarray(pending[1])[0, :, kept]
        device_band = jnp.asarray(band, dtype)
        band0 = jnp.asarray(b0 - ny_b / 2 + 0.5, dtype)
        # each slab is dispatched before the previous one is fetched and written
        pending = None
        for j0 in range(p0, p0 + p_rows, rows):
            n_rows = min(rows, p0 + p_rows - j0)
            take = np.minimum(np.arange(j0, j0 + rows), ny_b - 1)  # the last slab padded, cut below
            vol = accumulate(device_band, band0, take, x, z, z_chunk)
            if pending is not None:
                _finish_slab(out, *pending, progress, ny_b)
            pending = (j0, n_rows, vol)
        _finish_slab(out, *pending, progress, ny_b)
    return out
