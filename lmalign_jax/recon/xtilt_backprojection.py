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
``NZ |sin a|`` rows and thicker by ``rows |sin a|`` slices, where reads through sheets
(``recon.sheets``) must follow the row that moves with depth in every view (3.2x the global time
on BB's 1.94 degrees). The one interpolation more than the global path's is along the volume's
(row, depth), as tilt's compose adds it.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _kernels
from .fbp import default_memory_bytes
from .local_backprojection import stream_backprojection

__all__ = ["x_tilt_row_margin", "reconstruct_x_tilted"]


def x_tilt_row_margin(x_tilt_deg: float, shape: tuple[int, int, int]) -> int:
    """Rows by which a point of a ``shape`` (NZ, NY, NX) binned volume reads L away from its own
    row: ``|z sin a| + |y| (1 - cos a)`` at most, plus 2 for the interpolation."""
    nz, ny, _ = shape
    a = math.radians(float(x_tilt_deg))
    return int(math.ceil(nz / 2 * abs(math.sin(a)) + ny / 2 * (1 - math.cos(a)))) + 2


@partial(jax.jit, static_argnames=("margin", "nz_lab", "z_chunk"))
def _x_tilted_slab(band, band0, y, z, cos_t, sin_t, cos_a, sin_a, *, margin, nz_lab, z_chunk):
    """(NZ, rows, NX) of the tilted volume at centred rows ``y`` (rows,) and depths ``z`` (NZ,):
    L back-projected from ``band`` (V, NX + 2, B + 2; band row = centred y - ``band0``) on the
    slab's rows +- ``margin`` and ``nz_lab`` depths about the slab's centre, read at each point's
    (y cos a - z sin a, y sin a + z cos a)."""
    n_views, nx = band.shape[0], band.shape[1] - 2
    rows = y.shape[0]
    rows_lab = rows + 2 * margin
    dt = band.dtype
    start = jnp.round(y[0] - band0).astype(jnp.int32) - margin  # the band row of L's row 0
    origin = (jnp.int32(0), jnp.int32(1), (1 + start).astype(jnp.int32))  # one index type, with x64 too
    q = jax.lax.dynamic_slice(band, origin, (n_views, nx, rows_lab))
    y_first = band0 + start.astype(dt)  # centred y of L's row 0
    # L's slices on the output's lattice whatever the slab (a whole-slice offset, nz_lab of nz's
    # parity): the same L values, so the volume does not depend on the slab plan (memory)
    z_centre = jnp.round(0.5 * (y[0] + y[-1]) * sin_a)
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


def reconstruct_x_tilted(
    stack,
    xf_A,
    xf_shift,
    tilts_deg,
    x_tilt_deg: float,
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
    """A tomogram from the RAW stack and its ``.xf``/tilts, the specimen tilted about X by
    ``x_tilt_deg`` in every view (tilt's XTILTFILE value minus XAXISTILT; module docstring);
    arguments and streaming as :func:`lmalign_jax.recon.local_backprojection.reconstruct_local`.
    L's slab (about 1.1-1.3 output slabs) is counted in the memory budget."""
    if not abs(float(x_tilt_deg)) < 90.0:
        raise ValueError(f"the X-axis tilt must be within -90..90 degrees, got {x_tilt_deg!r}")
    a = math.radians(float(x_tilt_deg))
    t = np.radians(np.asarray(tilts_deg, np.float64))
    trig = [jnp.asarray(v, dtype) for v in (np.cos(t), np.sin(t))]
    cos_a, sin_a = jnp.asarray(math.cos(a), dtype), jnp.asarray(math.sin(a), dtype)
    budget = default_memory_bytes() if memory_bytes is None else int(memory_bytes)
    n_views = len(t)
    plan = {}

    def margin_of(shape):
        plan["shape"] = shape
        return x_tilt_row_margin(x_tilt_deg, shape)

    def accumulate(device_band, band0, take, x, z, z_chunk):
        nz, ny_b, nx_b = plan["shape"]
        margin = x_tilt_row_margin(x_tilt_deg, plan["shape"])
        rows_lab = len(take) + 2 * margin
        nz_lab = nz + int(math.ceil(rows_lab * abs(math.sin(a)))) + 4
        nz_lab += (nz_lab - nz) % 2
        lab_chunk = _kernels.choose_z_chunk(nz_lab, nx_b, rows_lab, n_views=n_views)
        y = jnp.asarray(np.asarray(take) + 0.5 - ny_b / 2, dtype)
        return _x_tilted_slab(
            device_band, band0, y, z, *trig, cos_a, sin_a, margin=margin, nz_lab=nz_lab, z_chunk=lab_chunk
        )

    return stream_backprojection(
        stack,
        xf_A,
        xf_shift,
        tilts_deg,
        thickness,
        accumulate,
        margin_of,
        binning=binning,
        filter=filter,
        radial=radial,
        sirtlike=sirtlike,
        out=out,
        memory_bytes=budget * 2 // 3,
        slab_rows=slab_rows,
        progress=progress,
        dtype=dtype,
    )
