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


def rough_local(seed: int, rough: bool = True) -> LocalAlignment:
    """3 x 3 patches 32 px apart; per patch and view a rotation of up to 0.3 deg, a scale of
    +-0.3%, shifts of up to 1 px and tilt deltas of up to 0.3 deg (``rough``), or the same
    transform for every patch (a rigid correction: no drift)."""
    rng = np.random.default_rng(seed)
    p, v = 9, TILTS.size
    shape = (p, v) if rough else (1, v)
    ang = np.radians(rng.uniform(-0.3, 0.3, shape))
    s = 1 + rng.uniform(-0.003, 0.003, shape)
    a = s[..., None, None] * np.stack(
        [np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2
    )
    xf = np.concatenate([a, rng.uniform(-1, 1, (*shape, 2, 1))], -1)
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


def rigid_local(seed: int, rotate: bool) -> LocalAlignment:
    """One transform per view for every patch (a rigid correction): shifts of up to 1 px, scales
    of +-0.3%, tilt deltas of up to 0.3 deg, and with ``rotate`` rotations of up to 0.3 deg."""
    rng = np.random.default_rng(seed)
    v = TILTS.size
    ang = np.radians(rng.uniform(-0.3, 0.3, v)) * rotate
    s = 1 + rng.uniform(-0.003, 0.003, v)
    a = s[:, None, None] * np.stack(
        [np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2
    )
    xf = np.concatenate([a, rng.uniform(-1, 1, (v, 2, 1))], -1)
    dt = rng.uniform(-0.3, 0.3, v)
    return LocalAlignment((3, 3), (16, 16), (32, 32), 0.0, np.tile(dt, (9, 1)), np.tile(xf, (9, 1, 1, 1)))


def test_a_rigid_field_needs_one_sheet_per_block_and_reads_the_band_once():
    """When all patches agree nothing drifts: one sheet per 32 slices. Without an in-plane
    rotation a sheet's rows are its view's band rows at the voxels' own v, so white noise reads
    as the exact reads read it, one bilinear interpolation, to float32 rounding (a sheet indexed
    by voxel columns would interpolate a second time); with one, on a band that is linear in
    (column, row) per view (so that no interpolation changes a value), the same volume."""
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
        if rotate:
            cols, rows = np.meshgrid(np.arange(N), np.arange(n_band))
            a, b = rng.uniform(-1, 1, (2, TILTS.size, 1, 1))
            band = jnp.asarray(a * cols + b * rows, jnp.float32)
        else:
            band = jnp.asarray(rng.standard_normal((TILTS.size, n_band, N)), jnp.float32)
        exact, got = read_volumes(band, band0, params, grid, exact_args, plan, slice(None))
        np.testing.assert_allclose(got[inside], exact[inside], rtol=0, atol=1e-3 * np.abs(exact).max())


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


@pytest.mark.parametrize("n, nz, views, top", [(1, 4, 5, 60.0), (8, 3, 7, 60.0), (32, 8, 9, 90.0)])
def test_any_volume_reconstructs_through_sheets_or_falls_back_to_exact_reads(n, nz, views, top):
    """A 1-column volume, a thin one, and views out to 90 degrees (columns no longer project in
    order: every voxel reads its own position) give finite volumes equal, to the tolerance's
    effect, to the exact reads; at 90 degrees exactly equal."""
    from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local

    rng = np.random.default_rng(n)
    tilts = np.linspace(-top, top, views)
    spacing = max(n // 2, 1)
    xf = np.concatenate(
        [np.broadcast_to(np.eye(2), (4, views, 2, 2)), rng.uniform(-1, 1, (4, views, 2, 1))], -1
    )
    local = LocalAlignment(
        (2, 2), (spacing // 2, spacing // 2), (spacing, spacing), 0.0, rng.uniform(-0.3, 0.3, (4, views)), xf
    )
    grid = sheets.PatchGrid((2, 2), local.start, local.spacing, 1, (n, n))
    samp = LocalSampling(*local_sampling(local, tilts, (n, n)), grid=grid)
    stack = rng.standard_normal((views, n, n)).astype(np.float32)
    eye, zero = np.tile(np.eye(2), (views, 1, 1)), np.zeros((views, 2))
    got = reconstruct_local(stack, eye, zero, tilts, samp, nz)
    exact = reconstruct_local(stack, eye, zero, tilts, samp, nz, tolerance_px=0)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, exact, rtol=0, atol=(0 if top == 90 else 1e-3) * exact.std())
