"""Sheet reads (recon.sheets) against every voxel sampling its own position (the exact local
kernel): on fields that make interpolation exact (the band holds its own column or row index),
the difference of the two volumes is the position error itself, which must stay within the
first-order bound the plan was made for."""

import jax.numpy as jnp
import numpy as np
import pytest

from lmalign_jax.core.local_apply import local_sampling
from lmalign_jax.io.imod_local import LocalAlignment
from lmalign_jax.recon import _kernels, sheets
from lmalign_jax.recon.local_backprojection import _accumulate_band, row_margin

N, NZ, ROWS = 96, 32, 16
TILTS = np.linspace(-60.0, 60.0, 31)


def rough_local(seed: int, rough: bool = True, degrees: float = 0.3, shift: float = 1.0) -> LocalAlignment:
    """3 x 3 patches 32 px apart; per patch and view a rotation of up to ``degrees``, a scale of
    +-0.3%, shifts of up to ``shift`` px and tilt deltas of up to 0.3 deg (``rough``), or the same
    transform for every patch (a rigid correction: no drift)."""
    rng = np.random.default_rng(seed)
    p, v = 9, TILTS.size
    shape = (p, v) if rough else (1, v)
    ang = np.radians(rng.uniform(-degrees, degrees, shape))
    s = 1 + rng.uniform(-0.003, 0.003, shape)
    a = s[..., None, None] * np.stack(
        [np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2
    )
    xf = np.concatenate([a, rng.uniform(-shift, shift, (*shape, 2, 1))], -1)
    dt = rng.uniform(-0.3, 0.3, shape)
    if not rough:
        xf, dt = np.broadcast_to(xf, (p, v, 2, 3)), np.broadcast_to(dt, (p, v))
    return LocalAlignment((3, 3), (16, 16), (32, 32), 0.0, np.array(dt), np.array(xf))


def setup(local, rows0):
    """The slab of rows ``rows0 .. rows0 + ROWS`` of an N x N x NZ volume: exact kernel
    arguments, sheet model and plan inputs."""
    mats, shifts, patches, weights = local_sampling(local, TILTS, (N, N))
    margin = row_margin(type("S", (), {"mats": mats, "shifts": shifts})(), (NZ, N, N))
    take = np.arange(rows0, rows0 + ROWS)
    band0 = rows0 - margin - N / 2 + 0.5
    params = np.concatenate([mats[..., 0], mats[..., 1], mats[..., 2], shifts], -1).reshape(3, 3, -1, 8)
    grid = sheets.PatchGrid(local.n_patches, local.start, local.spacing, 1, (N, N))
    x = jnp.asarray(np.arange(N) + 0.5 - N / 2, jnp.float32)
    y = jnp.asarray(take + 0.5 - N / 2, jnp.float32)
    z = jnp.asarray(np.arange(NZ) + 0.5 - NZ / 2, jnp.float32)
    exact_args = (mats, shifts, patches[take], weights[take], x, y, z)
    return ROWS + 2 * margin, band0, jnp.asarray(params, jnp.float32), grid, exact_args


def read_volumes(band, band0, params, grid, exact_args, plan, views):
    mats, shifts, patches, weights, x, y, z = exact_args
    prepare, position = sheets.local_position(grid)
    band = _kernels.column_band(band)
    exact = _accumulate_band(
        band,
        jnp.float32(band0),
        jnp.asarray(mats[:, views], jnp.float32),
        jnp.asarray(shifts[:, views], jnp.float32),
        jnp.asarray(patches, jnp.int32),
        jnp.asarray(weights, jnp.float32),
        x,
        y,
        z,
        z_chunk=8,
    )
    got = sheets.accumulate_sheets(
        band,
        jnp.float32(band0),
        params[:, :, views],
        y,
        x,
        z,
        prepare=prepare,
        position=position,
        plan=plan,
        z_chunk=min(8, plan.block),
        margin=sheets.sheet_margin(plan, TILTS[views]),
    )
    return np.asarray(exact), np.asarray(got)


@pytest.mark.parametrize("rows0", [0, 40])
def test_each_read_is_within_the_planned_bound_of_its_own_position(rows0):
    """Per view, with the band equal to its column (then row) index, |sheet - exact| is the u
    (v) error of every voxel's read; their norm stays within the view's first-order bound,
    with 25% for the second-order terms and 1e-3 px of float32 rounding, and the bound within
    the tolerance. Views whose reads cross the volume's or band's edge are masked out."""
    local = rough_local(0)
    n_band, band0, params, grid, exact_args = setup(local, rows0)
    prepare, position = sheets.local_position(grid)
    drift = sheets.drift_rates(params, prepare, position, (NZ, N, N), TILTS.size, ROWS)
    rates, slope = drift.rates, drift.slope
    plan = sheets.plan_sheets(rates, 0.1, max_block=16, offset=drift.offset)
    assert slope > 0.4 and plan.bound_px <= 0.1 and max(plan.spacing) == 16 and min(plan.spacing) < 16
    cols, rows = np.meshgrid(np.arange(N, dtype=np.float32), np.arange(n_band, dtype=np.float32))
    # the planned sheets, and for a steep view 16 slices a sheet (reads travel up to 13 columns,
    # across patch centres)
    for v, spacing in [(v, plan.spacing[v]) for v in (0, 4, 12, 20, 30)] + [(0, 16), (4, 1)]:
        sub = sheets.SheetPlan((spacing,), spacing, 0.0)
        inside = None
        errors = []
        for field in (np.ones_like(cols), cols, rows):
            exact, got = read_volumes(jnp.asarray(field[None]), band0, params, grid, exact_args, sub, [v])
            if inside is None:  # reads at least one sample inside the band and image everywhere
                inside = (exact > 1 - 1e-5) & (got > 1 - 1e-5)
                continue
            errors.append(np.abs(got - exact)[inside])
        assert inside.mean() > 0.5
        err = np.hypot(*errors).max()
        bound = (spacing - 1) / 2 * rates[v] + drift.offset[v]
        assert err <= 1.25 * bound + 1e-3, (v, err, bound)


@pytest.mark.parametrize("rows0", [0, 32])
def test_a_sheet_per_slice_reads_within_the_offset_on_a_rotated_field(rows0):
    """The errors that hold at every depth, alone (one sheet per slice): on patches rotated by up
    to 1 degree and shifted by up to 2 px against each other (rows that move apart across x,
    kinks at every patch centre), every read lies within the view's ``offset`` (plus 1e-3 px of
    float32 rounding), and the offset is not loose by more than 3x on the worst view."""
    local = rough_local(5, degrees=1.0, shift=2.0)
    n_band, band0, params, grid, exact_args = setup(local, rows0)
    prepare, position = sheets.local_position(grid)
    drift = sheets.drift_rates(params, prepare, position, (NZ, N, N), TILTS.size, ROWS)
    cols, rows = np.meshgrid(np.arange(N, dtype=np.float32), np.arange(n_band, dtype=np.float32))
    one = sheets.SheetPlan((1,), 1, 0.0)
    ratios = []
    for v in (0, 3, 8, 15, 22, 27, 30):
        inside, errors = None, []
        for field in (np.ones_like(cols), cols, rows):
            exact, got = read_volumes(jnp.asarray(field[None]), band0, params, grid, exact_args, one, [v])
            if inside is None:
                inside = (exact > 1 - 1e-5) & (got > 1 - 1e-5)
                continue
            errors.append(np.abs(got - exact)[inside])
        err = np.hypot(*errors).max()
        assert err <= drift.offset[v] + 1e-3, (v, err, drift.offset[v])
        ratios.append(err / drift.offset[v])
    assert max(ratios) > 1 / 3, ratios


def rigid_local(seed: int, rotate: bool) -> LocalAlignment:
    """One transform per view for every patch (a rigid correction): shifts of up to 1 px, scales
    of +-0.3%, tilt deltas of up to 0.3 deg, and with ``rotate`` rotations of up to 1 deg."""
    rng = np.random.default_rng(seed)
    v = TILTS.size
    ang = np.radians(rng.uniform(-1.0, 1.0, v)) * rotate
    s = 1 + rng.uniform(-0.003, 0.003, v)
    a = s[:, None, None] * np.stack(
        [np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2
    )
    xf = np.concatenate([a, rng.uniform(-1, 1, (v, 2, 1))], -1)
    dt = rng.uniform(-0.3, 0.3, v)
    return LocalAlignment((3, 3), (16, 16), (32, 32), 0.0, np.tile(dt, (9, 1)), np.tile(xf, (9, 1, 1, 1)))


def test_a_rigid_field_needs_one_sheet_per_block_and_reads_the_band_once():
    """When all patches agree nothing drifts and no row moves apart: one sheet per 32 slices.
    Without an in-plane rotation a sheet's rows are its view's band rows at the voxels' own v, so
    white noise reads as the exact reads read it, one bilinear interpolation, to float32 rounding
    (a sheet indexed by voxel columns would interpolate a second time); with one, every read is
    at the voxel's own position to 2e-3 px (the band equal to its column, then row, index)."""
    rng = np.random.default_rng(1)
    for rotate in (False, True):
        local = rigid_local(3, rotate)
        n_band, band0, params, grid, exact_args = setup(local, 24)
        prepare, position = sheets.local_position(grid)
        drift = sheets.drift_rates(params, prepare, position, (NZ, N, N), TILTS.size, ROWS)
        plan = sheets.plan_sheets(drift.rates, 0.05, max_block=32, offset=drift.offset)
        assert drift.rates.max() < 1e-3 and drift.offset.max() < 1e-3 and set(plan.spacing) == {32}
        ones = jnp.ones((TILTS.size, n_band, N), jnp.float32)
        inside = (
            np.minimum(*read_volumes(ones, band0, params, grid, exact_args, plan, slice(None)))
            > TILTS.size - 1e-3
        )
        assert inside.mean() > 0.5
        if not rotate:
            band = jnp.asarray(rng.standard_normal((TILTS.size, n_band, N)), jnp.float32)
            exact, got = read_volumes(band, band0, params, grid, exact_args, plan, slice(None))
            np.testing.assert_allclose(got[inside], exact[inside], rtol=0, atol=1e-3 * np.abs(exact).max())
            continue
        cols, rows = np.meshgrid(np.arange(N, dtype=np.float32), np.arange(n_band, dtype=np.float32))
        single = sheets.SheetPlan((32,), 32, 0.0)
        for v in (0, 8, 15, 22, 30):
            errors = []
            for field in (cols, rows):
                exact, got = read_volumes(
                    jnp.asarray(field[None]), band0, params, grid, exact_args, single, [v]
                )
                errors.append(np.abs(got - exact))
            one = np.minimum(*read_volumes(ones[:1], band0, params, grid, exact_args, single, [v])) > 1 - 1e-5
            assert np.hypot(*errors)[one].max() <= 2e-3, v


def test_plan_sheets_takes_the_fewest_sheets_within_the_tolerance():
    plan = sheets.plan_sheets(np.array([0.0, 0.01, 0.1, 1.0, 0.0072]), 0.05, max_block=32)
    # (L - 1) / 2 * rate <= 0.05: L <= 32 (capped), 11, 2, 1.1 -> 1, 14.9; runs of a block of 32:
    # 1 x 32; 3 sheets (11, 11, 10); 16 x 2; 32 x 1; ceil(32 / 14) = 3 sheets of at most 11
    assert plan.spacing == (32, 11, 2, 1, 11) and plan.block == 32
    assert plan.bound_px == pytest.approx(max(5 * 0.01, 0.5 * 0.1, 5 * 0.0072))
    views, centres, slot = sheets._layout(plan)
    assert len(views) == 1 + 3 + 16 + 32 + 3 and slot.shape == (5, 32)
    assert centres[0] == 15.5 and np.all(slot[3] == np.arange(20, 52))
    # every run no longer than the spacing, read at its middle
    for v, n in enumerate(plan.spacing):
        runs = np.bincount(slot[v] - slot[v].min())
        assert runs.max() <= n and runs.max() - runs.min() <= 1
        for k in range(slot.shape[1]):
            assert abs(k - centres[slot[v, k]]) <= (n - 1) / 2
    # a block no longer than the longest run needs
    assert sheets.plan_sheets(np.array([0.05, 0.1]), 0.05).block == 4  # runs of 3 and 2
    _ = _kernels  # the kernels module is what the sheets read like


@pytest.mark.parametrize(
    "n, nz, views, top, through_sheets",
    [(1, 4, 5, 60.0, True), (8, 3, 7, 60.0, True), (32, 8, 9, 60.0, True), (32, 8, 9, 90.0, False)],
)
def test_any_volume_reconstructs_through_sheets_or_falls_back_to_exact_reads(
    n, nz, views, top, through_sheets, monkeypatch
):
    """A 1-column volume, a thin one (a block longer than the volume), and views out to 60 and
    90 degrees (at 90 the columns no longer project in order:
    exact reads) give finite volumes equal, to the tolerance's effect, to the exact reads; equal
    where they are the exact reads. Patches 0.1 px apart at most, so that sheets meet 0.1 px."""
    from lmalign_jax.recon import local_backprojection
    from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local

    calls = []
    real = local_backprojection.accumulate_sheets
    monkeypatch.setattr(
        local_backprojection, "accumulate_sheets", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    rng = np.random.default_rng(n)
    tilts = np.linspace(-top, top, views)
    spacing = max(n // 2, 1)
    xf = np.concatenate(
        [np.broadcast_to(np.eye(2), (4, views, 2, 2)), rng.uniform(-0.05, 0.05, (4, views, 2, 1))], -1
    )
    local = LocalAlignment(
        (2, 2),
        (spacing // 2, spacing // 2),
        (spacing, spacing),
        0.0,
        rng.uniform(-0.02, 0.02, (4, views)),
        xf,
    )
    grid = sheets.PatchGrid((2, 2), local.start, local.spacing, 1, (n, n))
    samp = LocalSampling(*local_sampling(local, tilts, (n, n)), grid=grid)
    # smooth views (waves of 8 px and more): reads 0.1 px off change a voxel by a few percent
    yy, xx = np.mgrid[0:n, 0:n]
    phase = rng.uniform(0, 2 * np.pi, (views, 4))
    stack = sum(
        np.sin(2 * np.pi * (xx * fx + yy * fy)[None] + phase[:, k, None, None])
        for k, (fx, fy) in enumerate([(1 / 8, 0), (0, 1 / 9), (1 / 11, 1 / 13), (1 / 16, -1 / 10)])
    )
    stack = stack.astype(np.float32)
    eye, zero = np.tile(np.eye(2), (views, 1, 1)), np.zeros((views, 2))
    got = reconstruct_local(stack, eye, zero, tilts, samp, nz)
    assert bool(calls) == through_sheets
    exact = reconstruct_local(stack, eye, zero, tilts, samp, nz, tolerance_px=0)
    assert np.isfinite(got).all()
    if through_sheets:  # a 0.1 px read of a wave of 8 px moves it by up to 2 pi 0.1 / 8 = 8% of its size
        assert np.sqrt(np.mean((got - exact) ** 2)) <= 0.08 * exact.std()
    else:
        np.testing.assert_array_equal(got, exact)


def test_plan_sheets_budgets_the_offset():
    """The offset comes off the tolerance before the drift gets any: a view with room left gets
    the longest run within it, a view whose offset alone fills the tolerance a sheet per slice
    and a bound above the tolerance (the reader then reads every voxel exactly)."""
    plan = sheets.plan_sheets(
        np.array([0.01, 0.01, 0.0]), 0.05, max_block=32, offset=np.array([0.0, 0.03, 0.06])
    )
    # (L - 1) / 2 * 0.01 <= 0.05 - offset: L <= 11 and 5, the third has no room; a block of 16
    # (the longest run, 11, rounded up) split into 2 runs of 8 and 4 of 4
    assert plan.spacing == (8, 4, 1) and plan.block == 16
    assert plan.bound_px == pytest.approx(0.06)  # the third view's offset: above the tolerance
    assert len(sheets._layout(plan)[0]) == 2 + 4 + 16
