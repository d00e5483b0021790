"""Back-projection of a specimen tilted about X by the same angle in every view (IMOD tilt's
XAXISTILT, or an ``.xtilt`` of one value), through the frame in which the series is an ordinary
single-axis one.

tilt projects a volume point V = (x, y, z) in a view at tilt t with X-axis tilt a to
``(x cos t + (y sin a + z cos a) sin t, y cos a - z sin a)``: the ordinary projection of the point
W = Rx(a) V = (x, y cos a - z sin a, y sin a + z cos a). So the tomogram is the ordinary (untilted)
back-projection L of the same filtered views read at W: ``V(x, y, z) = L(W)``. Per slab of output
rows, L is back-projected with the global kernel (``_kernels.backproject``: one detector index per
view, x and depth, shared by every row) on the band rows the slab's points reach and on depths
around them, then read bilinearly in (row, depth) at each point; x is shared, so each point takes
four whole rows of L. This is how IMOD's tilt reconstructs a constant X-axis tilt (vertical
slices, then its ``compose``), and it costs about one global back-projection of a slab taller by
``NZ |sin a|`` rows and thicker by ``rows |sin a|`` slices (1.25x the global time on BB's 1.94
degrees), where reads through sheets (``recon.sheets``) must follow the row that moves with depth
in every view (3.2-3.4x; benchmarks/README.md). Where L would cost more than
:data:`MAX_LAB_VOXELS_PER_VOXEL` of its voxels per output voxel (:func:`reads_tilted_cheaply`: a
steep tilt in a tiny memory budget) the reconstruction goes through sheets instead. The one
interpolation more than the global path's is along the volume's (row, depth), as tilt's compose
adds it.

With a local file (or z factors, or a shape's patches) tilt does not compose: it projects each
voxel with its patches' blend, weighted by the voxel's own (x, y), which no untilted L can hold
(its columns would mix rows). :func:`reconstruct_local_x_tilted` keeps those weights and reads
the sheets of ``recon.sheets`` in the frame sheared by the one X-axis tilt, ``(x, y, z + y tan
a)``, where a row's reads keep their detector columns; one interpolation in depth more than the
exact reads, where the unsheared sheets add one across columns.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from .fbp import default_memory_bytes, plan_slabs, slice_count
from .local_backprojection import (
    DEFAULT_TOLERANCE_PX,
    LocalSampling,
    _SheetReader,
    reconstruct_local,
    row_margin,
    stream_backprojection,
)

__all__ = [
    "common_x_tilt",
    "x_tilt_row_margin",
    "lab_extent",
    "lab_bytes",
    "reads_tilted_cheaply",
    "reconstruct_x_tilted",
    "sheared_sampling",
    "sheared_depths",
    "reconstruct_local_x_tilted",
]


def common_x_tilt(
    x_tilts_deg, shape: tuple[int, int, int], tolerance_px: float
) -> tuple[float, float] | None:
    """The one X-axis tilt (degrees) every view of ``x_tilts_deg`` may be read at, and the most a
    voxel of the ``(nz, ny, nx)`` volume then moves (px); None where that exceeds ``tolerance_px``.
    Rotating about X by ``a + da`` instead of ``a`` moves a voxel at row y and height z (from the
    centre) by ``(y sin a + z cos a, y cos a - z sin a) da`` before the tilt: at most ``(|y| +
    |z|) |da|``; the mid-range of the views' tilts halves the largest ``|da|``. A tiltalign .xtilt
    that varies by hundredths of a degree then takes the one-angle reads (a 512 x 512 x 128 volume
    at 0.1 px: within 0.036 deg of each other)."""
    x = np.asarray(x_tilts_deg, np.float64)
    mid = float((x.max() + x.min()) / 2)
    moved = (shape[1] + shape[0]) / 2 * math.radians(float(x.max() - x.min()) / 2)
    return (mid, moved) if moved <= tolerance_px else None


def x_tilt_row_margin(x_tilt_deg: float, shape: tuple[int, int, int]) -> int:
    """Rows by which a point of a ``shape`` (NZ, NY, NX) binned volume reads L away from its own
    row: ``|z sin a| + |y| (1 - cos a)`` at most, plus 4 for L's edge rows and the interpolation."""
    nz, ny, _ = shape
    a = math.radians(float(x_tilt_deg))
    return int(math.ceil(nz / 2 * abs(math.sin(a)) + ny / 2 * (1 - math.cos(a)))) + 4


def lab_extent(x_tilt_deg: float, rows: int, nz: int) -> tuple[int, int]:
    """(rows, slices) of L that a slab of ``rows`` output rows and ``nz`` slices reads: the rows
    ``y cos a - z sin a`` and depths ``y sin a + z cos a`` of its points, with room for the
    interpolation and the whole-slice offset of L's centre; the slices of ``nz``'s parity."""
    a = math.radians(float(x_tilt_deg))
    c, s = math.cos(a), abs(math.sin(a))
    rows_lab = int(math.ceil((rows - 1) * c + nz * s)) + 4
    nz_lab = int(math.ceil((rows - 1) * s + nz * c)) + 6
    return rows_lab, nz_lab + (nz_lab - nz) % 2


def lab_bytes(x_tilt_deg: float, rows: int, nz: int, nx: int) -> int:
    """Memory for L of one slab (float32), twice: itself and its view-sum's working copies."""
    rows_lab, nz_lab = lab_extent(x_tilt_deg, rows, nz)
    return 2 * 4 * rows_lab * nz_lab * nx


@partial(jax.jit, static_argnames=("rows_lab", "nz_lab", "z_chunk"))
def _x_tilted_slab(band, band0, y, z, cos_t, sin_t, cos_a, sin_a, *, rows_lab, nz_lab, z_chunk):
    """(NZ, rows, NX) of the tilted volume at centred rows ``y`` (rows,) and depths ``z`` (NZ,):
    L back-projected from ``band`` (V, NX + 2, B + 2; band row = centred y - ``band0``) on the
    ``rows_lab`` rows and ``nz_lab`` depths the slab's points reach (:func:`lab_extent`), read at
    each point's (y cos a - z sin a, y sin a + z cos a)."""
    n_views, nx = band.shape[0], band.shape[1] - 2
    rows, nz = y.shape[0], z.shape[0]
    dt = band.dtype
    reach = jnp.abs(sin_a) * (nz / 2)
    # L's row 0: one below the lowest row the slab reads (the first row at the deepest |z|)
    start = jnp.floor(y[0] * cos_a - reach - band0).astype(jnp.int32) - 1
    origin = (jnp.int32(0), jnp.int32(1), (1 + start).astype(jnp.int32))  # one index type, with x64 too
    q = jax.lax.dynamic_slice(band, origin, (n_views, nx, rows_lab))
    y_first = band0 + start.astype(dt)  # centred y of L's row 0
    # L's slices on the output's lattice whatever the slab (a whole-slice offset, nz_lab of nz's
    # parity): the same L values, so the volume does not depend on the slab plan (memory)
    z_centre = jnp.round((y[0] + 0.5 * (rows - 1)) * sin_a)
    lab = _kernels.backproject(q, cos_t, sin_t, nz=nz_lab, nx=nx, z_chunk=z_chunk, z_offset=z_centre)
    row = y[None, :] * cos_a - z[:, None] * sin_a - y_first  # (NZ, rows) in L's rows
    depth = y[None, :] * sin_a + z[:, None] * cos_a - z_centre - (0.5 - nz_lab / 2)  # L's slices
    r0 = jnp.clip(jnp.floor(row), 0, rows_lab - 2)
    d0 = jnp.clip(jnp.floor(depth), 0, nz_lab - 2)
    fr = jnp.clip(row - r0, 0.0, 1.0)[..., None]
    fd = jnp.clip(depth - d0, 0.0, 1.0)[..., None]
    flat = lab.reshape(nz_lab * rows_lab, nx)
    k = d0.astype(jnp.int32) * rows_lab + r0.astype(jnp.int32)
    top = flat[k] + fr * (flat[k + 1] - flat[k])
    bottom = flat[k + rows_lab] + fr * (flat[k + rows_lab + 1] - flat[k + rows_lab])
    return top + fd * (bottom - top)


def _slab_rows(x_tilt_deg, n_views, shape, budget: int) -> int:
    """Output rows per slab: the plan's (``fbp.plan_slabs``), halved while the slab and its L pass
    half the budget (down to 8 rows; below, the budget is exceeded, as the plan does)."""
    nz, ny_b, nx_b = shape
    rows = plan_slabs(n_views, ny_b, nx_b, nz, budget).slab_rows
    while rows > 8 and 4 * 4 * rows * nz * nx_b + lab_bytes(x_tilt_deg, rows, nz, nx_b) > budget // 2:
        rows = max(8, rows // 2)
    return rows


#: Most voxels of L per output voxel for which L read tilted is taken over reads through sheets
#: (``recon.sheets``): a coarse guard, not a cost model. Measured at 256 x 256 x 128, 61 views
#: (2026-12-06, ad hoc): default memory, 1.2-2.2 L voxels per voxel, 1.0-1.6 s against 7.0 s
#: through sheets up to 60 deg; in 5 MB (4-row slabs), 5 deg at 3.4: 2.5 s against 6.1; 30 deg
#: at 16.5: 6.1 s against 7.9 (sheets taken, a little slower); 60 deg at 16.7: 19 s against 7.9
#: (each pass resamples its margin of 123 rows again). The ratio alone does not separate the last
#: two; above 8 the sheets' bounded memory is preferred.
MAX_LAB_VOXELS_PER_VOXEL = 8.0


def reads_tilted_cheaply(
    x_tilt_deg: float, n_views: int, shape: tuple[int, int, int], memory_bytes=None
) -> bool:
    """Whether one X-axis tilt of ``x_tilt_deg`` over a ``shape`` (NZ, NY, NX) binned volume is
    cheaper through L read tilted than through sheets, in ``memory_bytes``: L's voxels per output
    voxel, with the slabs the budget allows, at most :data:`MAX_LAB_VOXELS_PER_VOXEL`."""
    budget = default_memory_bytes() if memory_bytes is None else int(memory_bytes)
    nz = shape[0]
    rows = _slab_rows(x_tilt_deg, n_views, shape, budget)
    rows_lab, nz_lab = lab_extent(x_tilt_deg, rows, nz)
    return rows_lab * nz_lab <= MAX_LAB_VOXELS_PER_VOXEL * rows * nz


def reconstruct_x_tilted(
    stack,
    xf_A,
    xf_shift,
    tilts_deg,
    x_tilt_deg: float,
    thickness: float,
    *,
    memory_bytes: int | None = None,
    slab_rows: int | None = None,
    **streaming,
):
    """A tomogram from the RAW stack and its ``.xf``/tilts, the specimen tilted about X by
    ``x_tilt_deg`` in every view (tilt's XTILTFILE value minus XAXISTILT; module docstring).
    ``streaming``: ``binning``, ``filter``, ``radial``, ``sirtlike``, ``out``, ``progress``,
    ``dtype``, as :func:`lmalign_jax.recon.local_backprojection.reconstruct_local` takes them. Each
    slab's L is counted in ``memory_bytes``: slabs get fewer rows where it is large."""
    if not abs(float(x_tilt_deg)) < 90.0:
        raise ValueError(f"the X-axis tilt must be within -90..90 degrees, got {x_tilt_deg!r}")
    dtype = streaming.get("dtype", jnp.float32)
    a = math.radians(float(x_tilt_deg))
    t = np.radians(np.asarray(tilts_deg, np.float64))
    trig = [jnp.asarray(v, dtype) for v in (np.cos(t), np.sin(t))]
    cos_a, sin_a = jnp.asarray(math.cos(a), dtype), jnp.asarray(math.sin(a), dtype)
    budget = default_memory_bytes() if memory_bytes is None else int(memory_bytes)
    n_views, ny, nx = (int(v) for v in np.shape(stack))
    binning = streaming.get("binning", 1)
    b = int(binning) if isinstance(binning, (int, np.integer)) and binning >= 1 else 1
    shape = (slice_count(thickness, b), ny // b, nx // b)
    if slab_rows is None and all(shape):
        slab_rows = _slab_rows(x_tilt_deg, n_views, shape, budget)
    lab = lab_bytes(x_tilt_deg, slab_rows or 1, shape[0], shape[2])

    def accumulate(device_band, band0, take, x, z, z_chunk):
        nz, ny_b, nx_b = z.shape[0], shape[1], x.shape[0]
        rows_lab, nz_lab = lab_extent(x_tilt_deg, len(take), nz)
        lab_chunk = _kernels.choose_z_chunk(nz_lab, nx_b, rows_lab, n_views=n_views)
        y = jnp.asarray(np.asarray(take) + 0.5 - ny_b / 2, dtype)
        return _x_tilted_slab(
            device_band, band0, y, z, *trig, cos_a, sin_a, rows_lab=rows_lab, nz_lab=nz_lab, z_chunk=lab_chunk
        )

    views = (stack, xf_A, xf_shift, tilts_deg, thickness)
    margin_of = partial(x_tilt_row_margin, x_tilt_deg)
    memory = max(1, budget - lab)
    return stream_backprojection(
        *views, accumulate, margin_of, memory_bytes=memory, slab_rows=slab_rows, **streaming
    )


def sheared_sampling(sampling: LocalSampling, x_tilt_deg: float) -> LocalSampling:
    """``sampling`` in the sheared frame ``(x, y, z + y tan a)`` (:func:`reconstruct_local_x_tilted`):
    each patch's map ``M`` times ``[[1, 0, 0], [0, 1, 0], [0, -tan a, 1]]``; the patches, weights
    and grid unchanged (they depend on (x, y), which the shear keeps)."""
    ta = math.tan(math.radians(float(x_tilt_deg)))
    shear = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -ta, 1.0]])
    return sampling._replace(mats=np.einsum("pvij,jk->pvik", np.asarray(sampling.mats, np.float64), shear))


def sheared_depths(x_tilt_deg: float, rows: int, nz: int) -> int:
    """Slices of the sheared frame that a slab of ``rows`` rows and ``nz`` slices reads: its depths
    ``z + y tan a`` around a whole-slice centre (half a slice off the rows' middle at most), with
    a slice to spare beyond the interpolation's each side; of ``nz``'s parity (the output's
    lattice)."""
    ta = abs(math.tan(math.radians(float(x_tilt_deg))))
    n = nz + int(math.ceil((rows - 1) * ta)) + 4
    return n + (n - nz) % 2


@partial(jax.jit, static_argnames=("nz",))
def _read_sheared(lab, y, tan_a, z_centre, *, nz):
    """(nz, rows, NX) of the volume from its sheared slab ``lab`` (NZ', rows, NX) centred at depth
    ``z_centre``: voxel (x, y, z) is ``lab`` at depth ``z + y tan a``, linear between slices."""
    nz_lab, rows = lab.shape[0], lab.shape[1]
    z = jnp.arange(nz, dtype=lab.dtype) + (0.5 - nz / 2)
    depth = z[:, None] + y[None, :] * tan_a - z_centre - (0.5 - nz_lab / 2)  # (nz, rows) in slices
    d0 = jnp.clip(jnp.floor(depth), 0, nz_lab - 2)
    f = jnp.clip(depth - d0, 0.0, 1.0)[..., None]
    flat = lab.reshape(nz_lab * rows, -1)
    k = d0.astype(jnp.int32) * rows + jnp.arange(rows)[None, :]
    return flat[k] + f * (flat[k + rows] - flat[k])


def reconstruct_local_x_tilted(
    stack,
    xf_A,
    xf_shift,
    tilts_deg,
    sampling: LocalSampling,
    x_tilt_deg: float,
    thickness: float,
    *,
    binning: int = 1,
    memory_bytes: int | None = None,
    slab_rows: int | None = None,
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    dtype=jnp.float32,
    **streaming,
):
    """:func:`~lmalign_jax.recon.local_backprojection.reconstruct_local` of a ``sampling`` made
    with one X-axis tilt ``x_tilt_deg`` shared by every view (a local file's per-patch deltas,
    z factors or a shape's patches on top), read through sheets without their second
    interpolation.

    Through sheets a voxel reads its view at the detector column of its slab's centre row: with
    an X-axis tilt a, a row y away reads ``y sin a sin t`` further along x, between the sheets'
    samples (a second interpolation: bead peaks 0.88-0.93 of the exact reads' at 2-7 deg). In the
    sheared frame ``(x, y, z' = z + y tan a)`` a view's x no longer moves with y (the rigid part of
    each patch's map is ``x cos t + z' cos a sin t``), and the patch weights still depend on
    (x, y) alone, as tilt takes them: per slab the sheared volume is read through sheets (on the
    depths its rows reach, :func:`sheared_depths`), then each row at its depths ``z + y tan a``,
    one linear interpolation in depth (peaks about 0.96 of the exact reads', as the untilted
    back-projection read tilted). Where sheets cannot be used (``_SheetReader.usable``) or
    ``tolerance_px`` is 0, :func:`reconstruct_local` itself. ``streaming``: ``filter``,
    ``radial``, ``sirtlike``, ``out``, ``progress`` as there."""
    if not abs(float(x_tilt_deg)) < 90.0:
        raise ValueError(f"the X-axis tilt must be within -90..90 degrees, got {x_tilt_deg!r}")
    common = dict(binning=binning, memory_bytes=memory_bytes, dtype=dtype, **streaming)

    def unsheared(slab_rows):  # the sheets in the volume's own frame (or every voxel read exactly)
        return reconstruct_local(
            stack, xf_A, xf_shift, tilts_deg, sampling, thickness, slab_rows=slab_rows,
            tolerance_px=tolerance_px, **common,
        )  # fmt: skip

    n_views, ny, nx = (int(v) for v in np.shape(stack))
    b = int(binning) if isinstance(binning, (int, np.integer)) and binning >= 1 else 1
    nz, ny_b, nx_b = slice_count(thickness, b), ny // b, nx // b
    if (
        tolerance_px <= 0
        or sampling.grid is None
        or float(x_tilt_deg) == 0.0
        or not (nz and ny_b and nx_b)
        or sampling.patches.shape != (ny_b, nx_b, 4)
    ):
        return unsheared(slab_rows)
    ta = math.tan(math.radians(float(x_tilt_deg)))
    if slab_rows is None:
        slab_rows = plan_slabs(n_views, ny_b, nx_b, nz, memory_bytes).slab_rows
    # the sheared slab (one buffer beside the slab's four copies) at most about twice the slab's
    # depth, whoever chose the rows: fewer rows reach fewer extra depths
    while slab_rows > 8 and (slab_rows - 1) * abs(ta) > nz:
        slab_rows = max(8, slab_rows // 2)
    slab_rows = plan_slabs(n_views, ny_b, nx_b, nz, memory_bytes, slab_rows).slab_rows  # as streamed
    nz_lab = sheared_depths(x_tilt_deg, slab_rows, nz)
    # the sheets' plan over every depth the sheared slabs reach (their drift is taken there)
    nz_all = nz + int(math.ceil(ny_b * abs(ta))) + 4
    tilts = np.asarray(tilts_deg, np.float64)
    sheets = _SheetReader(
        sheared_sampling(sampling, x_tilt_deg), tilts, (nz_all, ny_b, nx_b), tolerance_px, dtype
    )
    # the rows a used voxel reads are the volume's own (the sheared slab's corners beyond them,
    # which no output voxel reads, are read clamped)
    sheets.reach = row_margin(sampling, (nz, ny_b, nx_b)) + 2
    if not sheets.usable(slab_rows):
        return unsheared(slab_rows)
    tan_a = jnp.asarray(ta, dtype)

    def accumulate(device_band, band0, take, x, z, z_chunk):
        y = np.asarray(take, np.float64) + 0.5 - ny_b / 2
        z_centre = float(np.round((y[0] + 0.5 * (len(take) - 1)) * ta))  # whole slices: the output's lattice
        depths = jnp.asarray(z_centre + np.arange(nz_lab) + 0.5 - nz_lab / 2, dtype)
        chunk = _kernels.choose_z_chunk(nz_lab, nx_b, len(take), _kernels.POSITIONWISE_CHUNK_ELEMS)
        lab = sheets(device_band, band0, take, x, depths, chunk)
        return _read_sheared(lab, jnp.asarray(y, dtype), tan_a, jnp.asarray(z_centre, dtype), nz=z.shape[0])

    return stream_backprojection(
        stack,
        xf_A,
        xf_shift,
        tilts_deg,
        thickness,
        accumulate,
        lambda shape: row_margin(sampling, shape),
        slab_rows=slab_rows,
        **common,
    )
