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
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from .fbp import default_memory_bytes, plan_slabs, slice_count
from .local_backprojection import stream_backprojection

__all__ = ["x_tilt_row_margin", "lab_extent", "lab_bytes", "reads_tilted_cheaply", "reconstruct_x_tilted"]


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
