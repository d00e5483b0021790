"""Back-projection where every voxel samples its own position, at close to the cost of the global
kernel: per-view *sheets*.

The global kernel (:func:`lmalign_jax.recon._kernels.backproject`) is fast because a single-axis
projection sends every row of a voxel column (z, x) to one detector sample: one index and weight
per (view, z, x), read for all rows of a slab as one contiguous vector. Through a local alignment
or a warp, voxel (x, y, z) samples the aligned view at its own ``p(x, y, z) = (p_u, p_v)``, so the
exact kernel (``local_backprojection._accumulate_band``) computes and gathers four samples per
voxel and view (10-20x the global kernel on CPU).

A sheet restores the shared index. For view ``v`` and a run of slices around depth ``z_s`` it is
indexed like the band, by detector column ``k``: for every row ``y`` of the slab it holds the band
at the position, at ``z_s``, of the voxel column ``x_k`` whose position on the slab's centre row
``y_c`` has ``p_u(x_k, y_c, z_s) = k``:

    J(k, y) = band(p(x_k, y, z_s))        (one bilinear sample, as the exact kernel's)

Voxel (x, y, z) of the run then reads ``J`` at its own centre-row ``u = p_u(x, y_c, z)``, by linear
interpolation between neighbouring detector columns: the global kernel's read, one index per
(view, z, x) for all rows. Where the local alignment leaves a view as the global one, its sheets
are its band itself (every ``p_u(x_k, y, z_s)`` is the integer ``k``, every ``p_v`` the row's own),
so the band is interpolated once, as by the global kernel; a local correction adds only the
fraction of a column by which its rotation moves a row's u from the centre row's (the earlier
sheets, indexed by voxel column, interpolated every read a second time: bead peaks 3-9% lower,
benchmarks/README.md). The read lands between ``x_k`` and ``x_(k+1)``, whose centre-row u bracket
the voxel's: at the voxel's own position where ``z = z_s``, and ``dz`` slices away, at row ``y``,
off by

    dz * r,   r = (ratio dp_u/dx - dp_u/dz, ratio dp_v/dx - dp_v/dz),   ratio = dp_u/dz / dp_u/dx
                                                                          (at y_c)

to first order: zero for any single affine projection (a rigid view, one patch, every row); for a
blend of patches ``tan(tilt)`` times how fast the patches' predictions part across x, plus how
much ``ratio`` changes between ``y_c`` and ``y``. Two errors hold at every depth (``offset``):
row ``y`` of a sheet column takes the position of the whole voxel column nearest ``x_k`` moved by
what moves its centre row onto ``(k, p_v(x_k, y_c, z_s))`` (off by half a column times the change
of ``dp/dx`` between ``y_c`` and ``y``), and a read interpolates linearly between two sheet columns
``1 / (dp_u/dx)`` voxel columns apart, across any kinks of the positions between them (patch
centres: a quarter of that span times the kinks). Together at most 0.007 px with IMOD's BBa local
file, 0.010 px with midzone2a's, 0.002 px on a shape model's field, 64-row slabs.
:func:`drift_rates` takes, per view over the volume, the largest ``|r|`` and that offset (finite
differences to the neighbouring columns and the next slice, every column, five rows of every
slab, the top and bottom slices), and :func:`plan_sheets` gives each view the fewest sheets per
block of slices such that each run of ``L`` slices reading one sheet (at the run's middle) keeps
``(L - 1) / 2 * |r| + offset`` within the tolerance (``DEFAULT_TOLERANCE_PX``, 0.1 px): views near
0 degrees and smooth fields get few sheets, steep views of rough fields more (a sheet per slice
where the offset alone passes the tolerance: then the reconstruction reads every voxel at its own
position instead).
``tests/test_sheets.py`` checks every read against the exact one within that bound. Cost per
slab: about ``sum_v NZ / L_v`` sheets of ``NX x rows`` bilinear samples, plus the global kernel's
reads. The reads depend on the slab height (through ``y_c``), within the tolerance.

The position model is two functions (static arguments of the jitted kernel):
``prepare(params, y) -> rows`` evaluates what depends only on the rows ``y`` (R,), once per slab,
and ``position(rows, v, x) -> (4, N, R)`` returns, for view ``v`` and columns ``x`` (N,), the
centred aligned position ``(u, v)`` at z = 0 and its change per unit z (the position is affine
in z).
:func:`local_position` provides them for an IMOD local alignment (tilt's patch weights).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..patch_weights import axis_weights
from . import _kernels

__all__ = [
    "SheetPlan",
    "DriftRates",
    "plan_sheets",
    "sheets_per_block",
    "drift_rates",
    "accumulate_sheets",
    "sheet_margin",
    "PatchGrid",
    "local_position",
    "DEFAULT_TOLERANCE_PX",
]

#: Largest position error of a sheet read (aligned pixels) unless the caller says otherwise.
#: A read within delta px of its own position scales a view's contribution at spatial frequency
#: f by at least cos(2 pi f delta): at 0.1 px, 0.95 at Nyquist even if every view erred the same
#: way, where the linear interpolation every back-projection makes already scales it by
#: sinc^2(1/2) = 0.41. Beads through IMOD's BBa local file land and peak as at 0.05 px (to 0.2%,
#: benchmarks/README.md); a local alignment's own position errors are larger (patches of 8-15
#: markers at 0.3-0.6 px residual). 0.05 px until 2026-12-04: 10-15% slower.
DEFAULT_TOLERANCE_PX = 0.1

#: Views summed per loop step (as ``_kernels.backproject``).
_VIEW_GROUP = 4


class SheetPlan(NamedTuple):
    """The sheets of a block of ``block`` slices (a power of two) built together: view ``v`` has
    ``sheets_per_block(block, spacing[v])`` sheets per block, each read by at most ``spacing[v]``
    consecutive slices (the block split into runs whose lengths differ by at most one);
    ``bound_px`` the first-order position error the plan allows."""

    spacing: tuple[int, ...]
    block: int
    bound_px: float


class DriftRates(NamedTuple):
    """What a volume's position model asks of its sheets (:func:`drift_rates`): per view (V,) the
    largest first-order drift of a read (px per slice from its sheet's depth) and the largest
    error of a sheet's rows (px, at every depth); the smallest centre-row du/dx (px per column)."""

    rates: np.ndarray
    offset: np.ndarray
    slope: float


def sheets_per_block(block: int, spacing: int) -> int:
    """Sheets of a view whose sheets are read by at most ``spacing`` slices each."""
    return -(-block // spacing)


def plan_sheets(
    rates: np.ndarray, tolerance: float = DEFAULT_TOLERANCE_PX, max_block: int = 32, offset=None
) -> SheetPlan:
    """Sheets for views whose reads drift by ``rates`` (V,) px per slice away from a sheet's
    depth, on top of ``offset`` (V,) px at every depth (default 0): per view the fewest sheets
    per block whose runs of slices all satisfy ``(run - 1) / 2 * rate + offset <= tolerance``
    (a sheet per slice where even that cannot, ``bound_px`` then above the tolerance); the block
    the smallest power of two, at most ``max_block`` (a power of two), that holds the longest run
    any view may have."""
    rates = np.abs(np.asarray(rates, np.float64))
    offset = np.zeros_like(rates) if offset is None else np.asarray(offset, np.float64)
    longest = []
    for r, o in zip(rates, offset, strict=True):
        room = tolerance - o
        if room <= 0:
            n = 1
        else:
            n = max_block if r == 0 else int(min(max_block, np.floor(2 * room / r + 1)))
            while n > 1 and (n - 1) / 2 * r > room:  # rounding of the floor
                n -= 1
        longest.append(max(n, 1))
    block = 1 << (max(longest, default=1) - 1).bit_length()
    # the longest run of the fewest sheets that fit (it may be shorter than allowed)
    spacing = [-(-block // sheets_per_block(block, n)) for n in longest]
    bound = max(((n - 1) / 2 * r + o for n, r, o in zip(spacing, rates, offset, strict=True)), default=0.0)
    return SheetPlan(tuple(spacing), int(block), float(bound))


def _layout(plan: SheetPlan):
    """Sheets of one block: view of each sheet (S,), its centre in slices from the block's first
    slice (S,), and the sheet each (view, slice of the block) reads (V, block); sheet S is an
    extra all-zero sheet for the views that pad the last group."""
    views, centres = [], []
    slot = np.zeros((len(plan.spacing), plan.block), np.int32)
    for v, n in enumerate(plan.spacing):
        count = sheets_per_block(plan.block, n)
        ends = [(j * plan.block) // count for j in range(count + 1)]  # runs differing by <= 1
        for first, last in zip(ends[:-1], ends[1:], strict=True):
            slot[v, first:last] = len(views)
            views.append(v)
            centres.append((first + last - 1) / 2)
    return np.array(views, np.int32), np.array(centres, np.float64), slot


@partial(jax.jit, static_argnames=("prepare", "position", "n_views"))
def _slab_rates(params, y, y_centre, x, z, *, prepare, position, n_views):
    """Per view, for rows ``y`` of a slab read through its centre row ``y_centre`` (1,), at
    columns ``x`` (finite differences to ``x - 1``, ``x + 1`` and ``z + 1``, each side with the
    read slope of that side) and slices ``z``: the largest first-order drift (px per slice), the
    largest offset of a sheet row (half a column's change of the position between a row and the
    centre row) and the smallest du/dx at the centre row."""
    rows, centre = prepare(params, y), prepare(params, y_centre)
    xs = jnp.concatenate([x[:1] - 1.0, x, x[-1:] + 1.0])  # a column beyond each end
    zz = z[:, None, None]

    def one(v):
        def derivs(r):  # per column: slopes from the column before and to the column after, d/dz
            p = position(r, v, xs)[:, None]  # (4, 1, NX + 2, R)
            u0, v0 = p[0] + zz * p[2], p[1] + zz * p[3]  # (nz, NX + 2, R)
            du, dv = jnp.diff(u0, axis=1), jnp.diff(v0, axis=1)
            dz = p[2, :, 1:-1], p[3, :, 1:-1]
            return (du[:, :-1], dv[:, :-1]), (du[:, 1:], dv[:, 1:]), dz

        back, fwd, (duz, dvz) = derivs(rows)
        cback, cfwd, (cuz, _) = derivs(centre)
        worst = 0.0
        for (dux, dvx), cux in ((fwd, cfwd[0]), (back, cback[0])):  # the side the read moves to
            ratio = cuz / jnp.where(cux > 0, cux, 1.0)  # the kernel's read slope (centre row)
            worst = jnp.maximum(worst, jnp.max(jnp.hypot(ratio * dux - duz, ratio * dvx - dvz)))
        # a row of a sheet column takes its nearest whole column's change from the centre row
        # (half a column of its change across x), and a read interpolates linearly between two
        # sheet columns w = 1 / (du/dx) voxel columns apart, which may bracket kinks of the
        # positions (patch centres): a chord's error, at most w / 4 times the kinks it spans
        # (summed over every run of ceil(w) + 1 columns)
        rows_apart = jnp.max(jnp.hypot(fwd[0] - cfwd[0], fwd[1] - cfwd[1]))
        slope = jnp.minimum(jnp.min(cfwd[0]), jnp.min(cback[0]))
        width = 1 / jnp.maximum(slope, 1e-3)  # columns in order or not (that the reader checks)
        kinks = jnp.cumsum(jnp.hypot(fwd[0] - back[0], fwd[1] - back[1]), axis=1)  # (nz, NX, R)
        kinks = jnp.concatenate([jnp.zeros_like(kinks[:, :1]), kinks], axis=1)
        n = kinks.shape[1]
        span = jnp.minimum(jnp.ceil(width).astype(jnp.int32) + 1, n - 1)
        start = jnp.arange(n)
        spanned = jnp.max(kinks[:, jnp.minimum(start + span, n - 1)] - kinks[:, start])
        offset = 0.5 * rows_apart + 0.25 * spanned * width
        return worst, offset, slope

    return lax.map(one, jnp.arange(n_views), batch_size=min(n_views, 16))  # vmapped 16 views at a time


def drift_rates(
    params, prepare, position, shape, n_views: int, slab_rows: int, dtype=jnp.float32
) -> DriftRates:
    """The largest first-order drift of a sheet read and offset of a sheet row per view, and the
    smallest du/dx, over a ``shape`` (NZ, NY, NX) volume back-projected in slabs of
    ``slab_rows`` rows (each read through its centre row, as :func:`accumulate_sheets`): every
    slab at its first, quarter, centre and last rows, every column, the top and bottom slices
    (the drift is linear in the row offset between patch centres and nearly linear in z)."""
    nz, ny, nx = shape
    xs = np.arange(nx) + 0.5 - nx / 2
    zs = np.unique(np.array([0.5 - nz / 2, max(nz / 2 - 1.5, 0.5 - nz / 2)]))
    rates, offset, slope = np.zeros(n_views), np.zeros(n_views), np.inf
    for j0 in range(0, ny, slab_rows):
        take = np.minimum(np.arange(j0, j0 + slab_rows), ny - 1)
        picks = np.unique(take[[0, slab_rows // 4, slab_rows // 2, (3 * slab_rows) // 4, slab_rows - 1]])
        r, o, s = _slab_rates(
            params,
            jnp.asarray(picks + 0.5 - ny / 2, dtype),
            jnp.asarray(take[slab_rows // 2 : slab_rows // 2 + 1] + 0.5 - ny / 2, dtype),
            jnp.asarray(xs, dtype),
            jnp.asarray(zs, dtype),
            prepare=prepare,
            position=position,
            n_views=n_views,
        )
        rates = np.maximum(rates, np.asarray(r, np.float64))
        offset = np.maximum(offset, np.asarray(o, np.float64))
        slope = min(slope, float(np.min(s)))
    return DriftRates(rates, offset, slope)


def sheet_margin(plan: SheetPlan, tilts_deg, slack: float = 1.1) -> int:
    """Voxel columns beyond the volume on each side whose positions a sheet may need: a voxel
    ``dz`` slices from its sheet's depth reads the detector columns of the voxel columns
    ``dz tan(tilt)`` away, and the neighbouring detector column lies ``1 / cos(tilt)`` further
    (each times ``slack`` for the local tilt and scale), plus 1 for the interpolation."""
    t = np.radians(np.asarray(tilts_deg, np.float64))
    reach = [
        (n - 1) / 2 * abs(np.tan(ti)) + 1 / max(abs(np.cos(ti)), 0.05)
        for n, ti in zip(plan.spacing, t, strict=True)
    ]
    return int(np.ceil(slack * max(reach, default=0.0))) + 1


@partial(jax.jit, static_argnames=("prepare", "position", "plan", "z_chunk", "margin", "reach"))
def accumulate_sheets(band, band0, params, y, x, z, *, prepare, position, plan, z_chunk, margin, reach=None):
    """Sum over views of each voxel's value, read through sheets (module docstring).

    band (V, NX + 2, B + 2): filtered aligned rows of every view in ``_kernels.column_band``'s
    layout, band row = centred v - ``band0``;
    y (rows,), x (NX,), z (NZ,) centred voxel coordinates of the slab (unit steps); ``position``
    affine in z. ``plan.block`` must be a multiple of ``z_chunk``; ``margin`` (static,
    :func:`sheet_margin`) voxel columns each side whose positions the sheets may use; ``reach``
    (static, optional): rows beyond the slab's first and last that any read can reach, so that
    only those band rows are prepared (the band of a pass may hold many slabs). Returns
    (NZ, rows, NX).

    All sheets of a block of slices are built in one vectorised expression (detector columns,
    then rows innermost: the layout the reads want, which is the band's own), which XLA on CPU
    runs about twice as fast as a loop that stacks them.
    """
    rows, nz = y.shape[0], z.shape[0]
    if reach is not None and rows + 2 * reach + 2 < band.shape[2]:
        # padded rows start .. start + height: band rows start - 1 .. (their first and last are
        # read as the zero padding, and no read reaches them)
        height = rows + 2 * reach + 2
        start = jnp.clip(jnp.floor(y[0] - band0).astype(jnp.int32) - reach, 0, band.shape[2] - height)
        band = lax.dynamic_slice_in_dim(band, start, height, axis=2)
        band0 = band0 + start.astype(band0.dtype)
    n_views, nx, n_band = band.shape[0], band.shape[1] - 2, band.shape[2] - 2
    dt = band.dtype
    n_table = nx + 2 * margin + 2  # the volume's columns, the margins and one more each end
    flat = band.reshape(-1)
    view_size, col_step = (nx + 2) * (n_band + 2), n_band + 2
    slab = prepare(params, y)

    # the position table (V, 4, n_table, rows): u, v at z = 0 and their slopes in z, in band
    # indices, at whole voxel columns
    xe = x[0] + jnp.arange(-margin - 1, nx + margin + 1, dtype=dt)
    to_band = jnp.stack([jnp.asarray(nx / 2 - 0.5, dt), -band0, jnp.zeros((), dt), jnp.zeros((), dt)])
    table = jax.vmap(lambda v: position(slab, v, xe) + to_band[:, None, None])(jnp.arange(n_views))
    table_rows = table.reshape(-1, rows)  # (V * 4 * n_table, rows)
    centre_row = rows // 2
    group = min(_VIEW_GROUP, n_views)
    n_groups = -(-n_views // group)
    n_vp = n_groups * group
    middle = slice(margin + 1, margin + 1 + nx)  # the volume's columns
    centre_u = jnp.pad(table[:, 0, middle, centre_row], ((0, n_vp - n_views), (0, 0)))  # (V', NX)
    centre_slope = jnp.pad(table[:, 2, middle, centre_row], ((0, n_vp - n_views), (0, 0)))
    sheet_view, sheet_centre, slot = _layout(plan)
    n_sheets, block = len(sheet_view), plan.block
    # padding views read an extra all-zero sheet (index n_sheets)
    slot = np.concatenate([slot, np.full((n_vp - n_views, block), n_sheets, np.int32)])
    slot = jnp.asarray(slot)
    views = jnp.asarray(np.concatenate([sheet_view, [0]]).astype(np.int32))
    centres = jnp.asarray(np.concatenate([sheet_centre, [0.0]]), dt)
    keep = np.ones((n_sheets + 1, nx + 2, 1), bool)  # not the padding columns, nor the zero sheet
    keep[:, [0, -1]] = False
    keep[-1] = False
    keep = jnp.asarray(keep)
    detector = jnp.arange(-1, nx + 1, dtype=dt)  # the sheet's columns: the band's, padded

    def build(z_first):
        """Sheets (S + 1, NX + 2, rows), zero padded (the end columns and the last sheet), for the
        block starting at slice ``z_first``."""
        zs = (z_first + centres)[:, None]  # (S + 1, 1)
        level = table[views, 0, :, centre_row] + zs * table[views, 2, :, centre_row]  # (S + 1, n_table)
        level_v = table[views, 1, :, centre_row] + zs * table[views, 3, :, centre_row]
        # per detector column the table column at or below it (levels increase along the table:
        # a histogram of the first detector column above each table column, summed up)
        first = jnp.clip(jnp.ceil(level).astype(jnp.int32) + 1, 0, nx + 2)  # index of k >= level
        counts = jnp.zeros(((n_sheets + 1) * (nx + 3),), jnp.int32)
        counts = counts.at[(jnp.arange(n_sheets + 1)[:, None] * (nx + 3) + first).reshape(-1)].add(1)
        j = jnp.cumsum(counts.reshape(n_sheets + 1, nx + 3), axis=1)[:, : nx + 2] - 1
        # the voxel column x_k (fractional) of each detector column: the centre-row u is linear
        # between table columns to within its curvature (1e-4 px at patch spacings of 30 px);
        # columns beyond the table, which no read reaches, extrapolate its ends
        j = jnp.clip(j, 0, n_table - 2)
        lo = jnp.take_along_axis(level, j, 1)
        step = jnp.take_along_axis(level, j + 1, 1) - lo
        # levels that do not rise belong to no read: kept finite, not used
        frac = (detector - lo) / jnp.where(step > 0, step, 1.0)
        lo_v = jnp.take_along_axis(level_v, j, 1)
        centre_v = lo_v + frac * (jnp.take_along_axis(level_v, j + 1, 1) - lo_v)
        # every row: the nearest table column's position moved by what moves its centre row to
        # (k, centre_v); whole rows gathered (a third faster than single values here)
        near = jnp.clip(j + jnp.round(frac).astype(jnp.int32), 0, n_table - 1)
        shift_u = detector - jnp.take_along_axis(level, near, 1)
        shift_v = centre_v - jnp.take_along_axis(level_v, near, 1)
        at = views[:, None] * 4 * n_table + near  # the u row of (view, column); v, du/dz, dv/dz follow
        zz = zs[..., None]
        col = table_rows[at] + zz * table_rows[at + 2 * n_table] + shift_u[..., None]
        row = table_rows[at + n_table] + zz * table_rows[at + 3 * n_table] + shift_v[..., None]
        ix, fx = _kernels._linear_index(col, nx)
        iy, fy = _kernels._linear_index(row, n_band)
        k = views[:, None, None] * view_size + ix * col_step + iy
        p00, p10, p01, p11 = flat[k], flat[k + 1], flat[k + col_step], flat[k + col_step + 1]
        top = p00 + fx * (p01 - p00)
        return jnp.where(keep, top + fy * (p10 + fx * (p11 - p10) - top), 0.0)

    def one_block(b):
        z_first = z[0] + (b * block).astype(dt)
        sheets = build(z_first).reshape(-1, rows)

        def chunk(c):
            k0 = c * z_chunk
            zz = z_first + (k0 + jnp.arange(z_chunk)).astype(dt)
            s = lax.dynamic_slice_in_dim(slot, k0, z_chunk, axis=1)  # (V', zc)
            # the voxel's own centre-row u, read as the global kernel reads its detector
            u = centre_u[:, None, :] + zz[None, :, None] * centre_slope[:, None, :]
            idx, frac = _kernels._linear_index(u, nx)
            idx = idx + s[..., None] * (nx + 2)
            idx, frac = lax.optimization_barrier((idx, frac))
            idx = idx.reshape(n_groups, group, z_chunk, nx)
            frac = frac.reshape(n_groups, group, z_chunk, nx)

            return _kernels.sum_grouped_reads(lambda g, j: sheets, idx, frac, rows)

        return lax.map(chunk, jnp.arange(block // z_chunk)).reshape(block, rows, nx)

    n_blocks = -(-nz // block)
    out = lax.map(one_block, jnp.arange(n_blocks))
    return out.reshape(n_blocks * block, rows, nx)[:nz]


class PatchGrid(NamedTuple):
    """tilt's patch grid for a binned voxel grid: patches (nX, nY), first centre and spacing in
    unbinned pixels (image corner origin), the binning and the binned grid (NY, NX)."""

    n: tuple[int, int]
    start: tuple[float, float]
    spacing: tuple[float, float]
    binning: int
    grid: tuple[int, int]


@lru_cache(maxsize=32)
def local_position(grid: PatchGrid):
    """``(prepare, position)`` of an IMOD local alignment: ``params`` (nY, nX, V, 8) per patch and
    view ``[M[:, 0], M[:, 1], M[:, 2], D]`` (u then v components, binned pixels) of
    ``core.local_apply.local_projection_matrices``; positions blended with tilt's weights. The
    same functions for the same grid (they are static arguments of the jitted kernels: new ones
    would compile them again)."""
    (npx, npy), (sx, sy), (dx, dy), b, (ny, nx) = grid

    def prepare(params, y):  # -> (V, nX, 6, R): Mx, Mz and M_y y + D, blended over y
        cy, fy = axis_weights((y + ny / 2) * b, sy, dy, npy, xp=jnp)
        p = params[cy] * (1 - fy)[:, None, None, None] + params[cy + 1] * fy[:, None, None, None]
        const = p[..., 2:4] * y[:, None, None, None] + p[..., 6:8]
        rows = jnp.concatenate([p[..., 0:2], p[..., 4:6], const], -1)  # (R, nX, V, 6)
        return jnp.transpose(rows, (2, 1, 3, 0))

    def position(rows, v, x):  # -> (4, N, R): u, v at z = 0, du/dz, dv/dz
        cx, fx = axis_weights((x + nx / 2) * b, sx, dx, npx, xp=jnp)
        r, fx = rows[v], fx[:, None, None]
        q = r[cx] * (1 - fx) + r[cx + 1] * fx  # (N, 6, R), rows contiguous
        x = x[:, None]
        return jnp.stack([q[:, 0] * x + q[:, 4], q[:, 1] * x + q[:, 5], q[:, 2], q[:, 3]])

    return prepare, position
