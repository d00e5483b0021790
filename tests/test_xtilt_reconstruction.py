"""Reconstruction tilted about X as IMOD's tilt does with XTILTFILE and XAXISTILT: each view's
X-axis tilt is ``a = xtilt(view) - XAXISTILT`` (tilt.f90) and a point (x, y, z) of the volume
projects to ``(x cos t + y sin a sin t + z cos a sin t, y cos a - z sin a)``.

The sign is checked on IMOD's own BB set (its tilt.com levels the specimen with XAXISTILT 1.94
and an all-zero .xtilt), beads drawn through a known X-axis tilt land in place only with it, and a
record of ``align --flatten`` is reconstructed level, as tilt reconstructs it from the .tlt and
.xtilt written beside it."""

from pathlib import Path

import numpy as np
import pytest
from helpers import bead_views, run_cli, surface_slopes, volume_points

from lmalign_jax.core.local_apply import local_projection_matrices, patch_weights, uniform_patches
from lmalign_jax.simulation.phantom import locate_peaks
from lmalign_jax.workflow.alignment_inputs import Alignment, with_x_axis_tilt

BB = Path(__file__).resolve().parents[1] / "lmalign_jax" / "data" / "imod-bb"
N, NZ, SIGMA = 64, 24, 1.2
TILTS = np.linspace(-60.0, 60.0, 31)
BEADS = np.array([[-20.0, -18, 9], [18, -20, -10], [-16, 20, 8], [20, 16, -9], [0, 0, 10], [6, -8, -6]])


def test_imods_xaxistilt_levels_its_own_bb_markers():
    """BB's tilt.com: TILTFILE BBa.tlt, XTILTFILE BBa.xtilt (zeros), XAXISTILT 1.94. Its markers
    (BBafid.xyz, tiltalign's solution) rise by dz/dy = -0.039 (tiltalign: "X axis tilt needed"
    +2.2 deg); placed as the reconstruction places them they are level to within the 0.26 deg
    between 1.94 and that fit (slope below 0.006), and with the opposite sign twice as steep."""
    from lmalign_jax.io import read_tilts

    ids_xyz = np.loadtxt(BB / "BBafid.xyz", usecols=(1, 2, 3))
    xyz = ids_xyz - [256.0, 256.0, 0.0]  # fid.xyz: x, y from the 512 px image's corner
    top = xyz[:, 2] > 0
    tilts = read_tilts(BB / "BBa.tlt")
    before = surface_slopes(xyz, top)[1]
    assert before == pytest.approx(-0.0388, abs=5e-4)

    def placed(x_axis_tilt):
        unit = np.tile(np.eye(2), (tilts.size, 1, 1))
        alignment = Alignment(unit, np.zeros((tilts.size, 2)), tilts, "BBa", "BBa.xf", "BBa.tlt")
        with_x_axis_tilt(alignment, str(BB / "BBa.xtilt"), x_axis_tilt)
        return surface_slopes(volume_points(alignment, tilts, xyz), top)[1]

    level, wrong = placed(1.94), placed(-1.94)
    print(f"dz/dy {before:.4f} -> {level:.4f} (XAXISTILT 1.94), {wrong:.4f} (-1.94)")
    assert abs(level) < 0.006 and abs(wrong) > 0.065


def x_tilted_positions(x_tilts_deg, xyz):
    """Aligned positions (V, n, 2) of centred points through tilt's projection with X-axis tilts
    ``x_tilts_deg`` (V,), blended as the reconstruction blends its patches."""
    grid, mats, shifts = uniform_patches(*local_projection_matrices(None, TILTS, x_tilts_deg), (N, N))
    patches, weights = patch_weights(grid, xyz[:, :2] + N / 2)
    pos = np.einsum("pvij,nj->pvni", mats, xyz) + shifts[:, :, None]
    n = np.arange(len(xyz))
    return np.einsum("nk,knvi->vni", weights, pos[patches.T, :, n[None, :]])


@pytest.fixture(scope="module")
def tilted_beads(tmp_path_factory):
    """Beads drawn through X-axis tilts of 6-8 deg (an .xtilt of -1..1 deg minus XAXISTILT -7),
    with a unit .xf and the .tlt: the folder, and the .xtilt values."""
    import mrcfile

    from lmalign_jax.export.imod import write_xtilt
    from lmalign_jax.io import write_tlt, write_xf

    folder = tmp_path_factory.mktemp("xtilt")
    xtilt = np.linspace(-1.0, 1.0, TILTS.size)
    with mrcfile.new(folder / "s.mrc") as m:
        m.set_data(bead_views(x_tilted_positions(xtilt + 7.0, BEADS), N, SIGMA))
    write_xf(folder / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)))
    write_tlt(folder / "s.tlt", TILTS)
    write_xtilt(folder / "s.xtilt", xtilt)
    return folder, xtilt


def test_beads_drawn_through_an_x_axis_tilt_land_in_place_only_with_it(tilted_beads):
    """``reconstruct --xtilt --x-axis-tilt`` (FBP, and SIRT): every bead within 0.5 voxel (the
    noise-free sampling error); without the X-axis tilt they are off by its z sin a (1 px and
    more at z = 10), and the command says what it applied."""
    import mrcfile

    folder, _ = tilted_beads
    base = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--tlt", folder / "s.tlt"]
    base += ["--thickness", NZ]
    tilt = ["--xtilt", folder / "s.xtilt", "--x-axis-tilt", -7]
    found = {}
    for name, extra in (("fbp", tilt), ("sirt", [*tilt, "--sirt", 5]), ("plain", [])):
        rc, out, err = run_cli([*base, *extra, "--out", folder / f"{name}.mrc"])
        assert rc == 0, err
        if extra:
            assert "X-axis tilt 6.00 to 8.00 deg from " in out + err and "XAXISTILT -7" in out + err
        with mrcfile.open(folder / f"{name}.mrc") as m:
            found[name] = locate_peaks(np.array(m.data), BEADS)[1]
    print({k: v.round(2) for k, v in found.items()})
    assert np.all(found["fbp"] < 0.5) and np.all(found["sirt"] < 0.5)
    assert np.mean(found["plain"]) > 2 * np.mean(found["fbp"]) and np.max(found["plain"]) > 1.0


def test_a_memory_too_small_for_the_tilted_read_is_said(tilted_beads):
    """One X-axis tilt is read as the untilted volume read tilted, unless --memory makes its slabs
    so thin that sheets cost less: then the command says so (audit: the two tomograms differ by 2%
    of a bead's peak, and nothing said why)."""
    folder, _ = tilted_beads
    (folder / "one.xtilt").write_text("".join(" 7.0\n" for _ in TILTS))
    base = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--tlt", folder / "s.tlt"]
    base += ["--thickness", NZ, "--xtilt", folder / "one.xtilt"]
    said = "the X-axis tilt is read through sheets, not as the untilted volume read tilted"
    rc, _, err = run_cli([*base, "--out", folder / "roomy.mrc"])
    assert rc == 0 and said not in err, err
    rc, _, err = run_cli([*base, "--memory", 0.00002, "--out", folder / "tight.mrc"])
    assert rc == 0 and said in err and "--memory 20.00 kB" in err, err


def test_a_unit_local_file_with_an_x_axis_tilt_is_the_x_tilted_volume(tilted_beads):
    """A local file that holds the global alignment, with the X-axis tilt: the volume without
    the local file (tilt adds the patches' deltas to the view's X-axis tilt)."""
    import mrcfile

    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf

    folder, _ = tilted_beads
    unit = LocalAlignment(
        (2, 2),
        (16.0, 16.0),
        (32.0, 32.0),
        0.0,
        np.zeros((4, TILTS.size)),
        np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1)),
    )
    write_local_xf(folder / "unitlocal.xf", unit)
    base = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--tlt", folder / "s.tlt"]
    base += ["--thickness", NZ, "--xtilt", folder / "s.xtilt", "--x-axis-tilt", -7]
    rc, _, err = run_cli([*base, "--local", folder / "unitlocal.xf", "--out", folder / "l.mrc"])
    assert rc == 0, err
    rc, _, err = run_cli([*base, "--out", folder / "g.mrc"])
    assert rc == 0, err
    with mrcfile.open(folder / "l.mrc") as a, mrcfile.open(folder / "g.mrc") as b:
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize(
    "given, message",
    [
        (["--xtilt", "short.xtilt"], "short.xtilt: has 30 X-axis tilt angles but"),
        (["--xtilt", "steep.xtilt"], "steep.xtilt:4: X-axis tilt 91 is outside -90..90 degrees"),
        (
            ["--xtilt", "s.xtilt", "--x-axis-tilt", 89.5],
            "view 1's X-axis tilt is -1 - XAXISTILT 89.5 = -90.5 degrees",
        ),
        (["--x-axis-tilt", 90], "--x-axis-tilt must be degrees within -90..90, got 90"),
        (["--x-axis-tilt", "nan"], "--x-axis-tilt must be degrees within -90..90, got nan"),
    ],
)
def test_bad_x_axis_tilts_are_refused_in_one_line(tilted_beads, given, message):
    """A .xtilt of another length or with an angle past 90 deg, or an XAXISTILT that takes a view
    there: refused in one line naming the file and line, nothing written."""
    from lmalign_jax.export.imod import write_xtilt

    folder, xtilt = tilted_beads
    write_xtilt(folder / "short.xtilt", xtilt[:-1])
    steep = xtilt.copy()
    steep[3] = 91.0
    write_xtilt(folder / "steep.xtilt", steep)
    given = [folder / g if str(g).endswith(".xtilt") else g for g in given]
    base = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--tlt", folder / "s.tlt"]
    rc, _, err = run_cli([*base, "--thickness", NZ, *given, "--out", folder / "bad.mrc"])
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (folder / "bad.mrc").exists()


def test_xtilt_goes_with_the_imod_files(tilted_beads):
    folder, _ = tilted_beads
    (folder / "a.json").write_text("{}")
    base = ["reconstruct", folder / "s.mrc", "--alignment", folder / "a.json", "--thickness", NZ]
    rc, _, err = run_cli([*base, "--xtilt", folder / "s.xtilt", "--out", folder / "bad.mrc"])
    assert rc == 2 and "--xtilt goes with --xf/--tlt" in err and err.count("\n") == 1, err


def test_a_warp_models_sampling_tilts_each_voxel_about_x_first(tilted_beads):
    """A warp model's alignment (here a zero warp, unit .xf) with the X-axis tilts: the beads land
    within 0.5 voxel, as through the one-patch path; without them, off as before."""
    import mrcfile

    from lmalign_jax.recon.warp_backprojection import WarpSampling
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    folder, _ = tilted_beads
    found = {}
    for name, x_axis_tilt in (("tilted", -7.0), ("plain", None)):
        unit = np.tile(np.eye(2), (TILTS.size, 1, 1))
        alignment = Alignment(unit, np.zeros((TILTS.size, 2)), TILTS, "w.json", "w.json", "w.json", (N, N))
        alignment.warp = WarpSampling(unit, np.zeros((TILTS.size, 2)), TILTS, np.zeros((TILTS.size, 6)))
        if x_axis_tilt is not None:
            with_x_axis_tilt(alignment, str(folder / "s.xtilt"), x_axis_tilt)
        out = folder / f"warp-{name}.mrc"
        reconstruct_to_file(str(folder / "s.mrc"), alignment, str(out), thickness=NZ, note=lambda _: None)
        with mrcfile.open(out) as m:
            found[name] = locate_peaks(np.array(m.data), BEADS)[1]
    print({k: v.round(2) for k, v in found.items()})
    assert np.all(found["tilted"] < 0.5) and np.max(found["plain"]) > 1.0


def test_one_x_tilt_for_every_view_is_the_untilted_back_projection_read_tilted(tmp_path):
    """One X-axis tilt in every view (XAXISTILT alone), FBP: ``recon.xtilt_backprojection``. At
    0 deg it is the global reconstruction exactly; its volume does not depend on the slab plan
    (memory); beads drawn at 7 deg land within 0.5 voxel through the command line; against every
    voxel read at its own position, the bead peaks keep at least what one more bilinear
    interpolation leaves of a sigma 1.2 px Gaussian's peak on average (0.895), by median."""
    import mrcfile
    from helpers import peak_values

    from lmalign_jax.core.local_apply import column_sampling
    from lmalign_jax.io import write_tlt, write_xf
    from lmalign_jax.recon import reconstruct
    from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local
    from lmalign_jax.recon.sheets import PatchGrid
    from lmalign_jax.recon.xtilt_backprojection import reconstruct_x_tilted

    x_tilts = np.full(TILTS.size, 7.0)
    stack = bead_views(x_tilted_positions(x_tilts, BEADS), N, SIGMA)
    unit, zero = np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2))
    np.testing.assert_array_equal(
        reconstruct_x_tilted(stack, unit, zero, TILTS, 0.0, NZ), reconstruct(stack, unit, zero, TILTS, NZ)
    )
    fast = reconstruct_x_tilted(stack, unit, zero, TILTS, 7.0, NZ)
    streamed = reconstruct_x_tilted(stack, unit, zero, TILTS, 7.0, NZ, memory_bytes=100_000)
    np.testing.assert_allclose(streamed, fast, rtol=0, atol=1e-5 * np.abs(fast).max())
    grid, mats, shifts = uniform_patches(*local_projection_matrices(None, TILTS, x_tilts), (N, N))
    sampling = LocalSampling(
        *column_sampling(grid, mats, shifts, (N, N)),
        grid=PatchGrid(grid.n_patches, grid.start, grid.spacing, 1, (N, N)),
    )
    exact = reconstruct_local(stack, unit, zero, TILTS, sampling, NZ, tolerance_px=0)
    ratio = np.median(peak_values(fast, BEADS) / peak_values(exact, BEADS))
    print(f"peaks {ratio:.3f} of the exact reads'")
    assert ratio > 0.895
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(stack)
    write_xf(tmp_path / "s.xf", unit, zero)
    write_tlt(tmp_path / "s.tlt", TILTS)
    args = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--tlt", tmp_path / "s.tlt"]
    for extra in ([], ["--bin", 2], ["--layout", "imod-tilt"]):
        rc, out, err = run_cli(
            [*args, "--thickness", NZ, "--x-axis-tilt", -7, *extra, "--out", tmp_path / "r.mrc"]
        )
        assert rc == 0 and "X-axis tilt 7.00 deg from XAXISTILT -7" in out + err, err
        with mrcfile.open(tmp_path / "r.mrc") as m:
            data = np.array(m.data)
        if not extra:
            assert np.all(locate_peaks(data, BEADS)[1] < 0.5)
            np.testing.assert_allclose(data, fast, rtol=0, atol=1e-5 * np.abs(fast).max())
        elif extra[0] == "--bin":
            binned = reconstruct_x_tilted(stack, unit, zero, TILTS, 7.0, NZ, binning=2)
            np.testing.assert_allclose(data, binned, rtol=0, atol=1e-5 * np.abs(binned).max())
        else:  # tilt's layout: X, depth as rows (against our z), Y as sections
            np.testing.assert_allclose(
                np.transpose(data, (1, 0, 2))[::-1], fast, rtol=0, atol=1e-5 * np.abs(fast).max()
            )


def _rough_local(n_views, seed=0):
    """A 2 x 2 patch local file over the N px image with small random corrections (tilt and
    X-axis tilt deltas, rotations, stretches and shifts) that move a column's x along y about as
    IMOD's BBa local file does (0.0014 and 0.0017 px per row by median, its rotations and its
    shifts' change between patches)."""
    from lmalign_jax.io.imod_local import LocalAlignment

    rng = np.random.default_rng(seed)
    angle = np.radians(rng.normal(0, 0.08, (4, n_views)))
    scale = 1 + rng.normal(0, 0.001, (4, n_views))
    rot = np.stack(
        [np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2
    )
    transforms = np.concatenate([rot * scale[..., None, None], rng.normal(0, 0.05, (4, n_views, 2, 1))], -1)
    return LocalAlignment(
        (2, 2),
        (16.0, 16.0),
        (32.0, 32.0),
        0.0,
        rng.normal(0, 0.2, (4, n_views)),
        transforms,
        delta_xtilt_deg=rng.normal(0, 0.2, (4, n_views)),
    )


def test_a_local_file_with_one_x_axis_tilt_reads_its_sheets_in_the_sheared_frame(tmp_path):
    """A local file with one X-axis tilt for every view (7 deg): FBP through sheets reads in the
    frame sheared by it (``reconstruct_local_x_tilted``), where a row's reads keep their detector
    columns. Against every voxel read at its own position (``--local-tolerance 0``, tilt's own
    reads), its bead peaks keep 0.944-0.971 by median over 8 such fields and bead sets (a linear
    interpolation in depth), where the sheets of the unsheared frame keep 0.901-0.923 (a second
    interpolation across columns; 0.028-0.070 less on the same set): above 0.935 here, and above
    the unsheared sheets' by 0.02, and with 8-row slabs too. The beads land in place, and the
    command takes this path for ``--local`` with ``--x-axis-tilt``."""
    import mrcfile
    from helpers import peak_values

    from lmalign_jax.core.local_apply import local_sampling, project_through_local
    from lmalign_jax.io import write_tlt, write_xf
    from lmalign_jax.io.imod_local import read_local_xf, write_local_xf
    from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local
    from lmalign_jax.recon.sheets import PatchGrid
    from lmalign_jax.recon.xtilt_backprojection import reconstruct_local_x_tilted

    local, x_tilts = _rough_local(TILTS.size), np.full(TILTS.size, 7.0)
    rng = np.random.default_rng(1)
    beads = np.column_stack([rng.uniform(-24, 24, (16, 2)), rng.uniform(-8, 8, 16)])
    stack = bead_views(project_through_local(local, beads, TILTS, (N, N), xtilts_deg=x_tilts), N, SIGMA)
    unit, zero = np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2))
    grid = PatchGrid(local.n_patches, local.start, local.spacing, 1, (N, N))
    sampling = LocalSampling(*local_sampling(local, TILTS, (N, N), xtilts_deg=x_tilts), grid=grid)
    exact = reconstruct_local(stack, unit, zero, TILTS, sampling, NZ, tolerance_px=0)
    sheets = reconstruct_local(stack, unit, zero, TILTS, sampling, NZ)
    sheared = reconstruct_local_x_tilted(stack, unit, zero, TILTS, sampling, 7.0, NZ)
    peak = peak_values(exact, beads)
    ratio, before = (float(np.median(peak_values(v, beads) / peak)) for v in (sheared, sheets))
    print(f"peaks {ratio:.3f} of the exact reads' (unsheared sheets {before:.3f})")
    assert ratio > 0.935 and ratio > before + 0.02
    assert np.all(locate_peaks(sheared, beads)[1] < 0.5)
    rows8 = reconstruct_local_x_tilted(stack, unit, zero, TILTS, sampling, 7.0, NZ, slab_rows=8)
    assert np.median(peak_values(rows8, beads) / peak) > 0.935
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(stack)
    write_xf(tmp_path / "s.xf", unit, zero)
    write_tlt(tmp_path / "s.tlt", TILTS)
    write_local_xf(tmp_path / "l.xf", local)
    args = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--tlt", tmp_path / "s.tlt"]
    args += [
        "--local",
        tmp_path / "l.xf",
        "--thickness",
        NZ,
        "--x-axis-tilt",
        -7,
        "--out",
        tmp_path / "r.mrc",
    ]
    rc, out, err = run_cli(args)
    assert rc == 0 and "X-axis tilt 7.00 deg from XAXISTILT -7" in out + err, err
    assert "read through sheets" not in out + err
    written = read_local_xf(tmp_path / "l.xf", TILTS.size)  # the file's rounding
    sampling = LocalSampling(*local_sampling(written, TILTS, (N, N), xtilts_deg=x_tilts), grid=grid)
    expected = reconstruct_local_x_tilted(stack, unit, zero, TILTS, sampling, 7.0, NZ)
    with mrcfile.open(tmp_path / "r.mrc") as m:
        np.testing.assert_allclose(np.array(m.data), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_sheared_slab_stays_within_about_twice_the_slabs_depth_whoever_chose_its_rows(monkeypatch):
    """The sheared frame's slab reaches ``(rows - 1) tan a`` slices beyond the volume's: its rows
    are halved until that is at most the volume's depth, for a caller's slab rows as for the
    plan's (64 rows at 30 deg on 24 slices were left as given: 37 extra slices)."""
    from lmalign_jax.core.local_apply import local_sampling
    from lmalign_jax.recon import xtilt_backprojection
    from lmalign_jax.recon.local_backprojection import LocalSampling
    from lmalign_jax.recon.sheets import PatchGrid

    local, x_tilts = _rough_local(TILTS.size), np.full(TILTS.size, 30.0)
    grid = PatchGrid(local.n_patches, local.start, local.spacing, 1, (N, N))
    sampling = LocalSampling(*local_sampling(local, TILTS, (N, N), xtilts_deg=x_tilts), grid=grid)
    streamed, stream = [], xtilt_backprojection.stream_backprojection
    monkeypatch.setattr(
        xtilt_backprojection,
        "stream_backprojection",
        lambda *a, **k: streamed.append(k["slab_rows"]) or stream(*a, **k),
    )
    stack = np.zeros((TILTS.size, N, N), np.float32)
    unit, zero = np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2))
    xtilt_backprojection.reconstruct_local_x_tilted(
        stack, unit, zero, TILTS, sampling, 30.0, NZ, slab_rows=64
    )
    assert streamed and (streamed[0] - 1) * np.tan(np.radians(30.0)) <= NZ and streamed[0] >= 8


def test_the_tilted_reads_fit_the_memory_and_give_way_to_sheets_where_they_cost_more():
    """Each slab's L is counted in --memory (slab and L within half the budget, as the plan keeps
    slabs, down to its 8-row floor), and reads through sheets are taken where L would be over 8
    voxels per output voxel (a 60 deg tilt in 5 MB: 19 s against 8 s through sheets, measured)."""
    from lmalign_jax.recon.xtilt_backprojection import _slab_rows, lab_bytes, lab_extent, reads_tilted_cheaply

    shape = (128, 256, 256)
    for angle in (2.0, 30.0, 60.0):
        for budget in (5e7, 2e8):
            rows = _slab_rows(angle, 61, shape, int(budget))
            assert rows == 8 or 16 * rows * 128 * 256 + lab_bytes(angle, rows, 128, 256) <= budget / 2
    rows_lab, nz_lab = lab_extent(1.94, 64, 128)
    assert rows_lab * nz_lab < 1.25 * 64 * 128  # BB's levelling: L about one slab (1.21)
    assert reads_tilted_cheaply(60.0, 61, shape, None) and reads_tilted_cheaply(2.0, 61, shape, 5e6)
    assert not reads_tilted_cheaply(60.0, 61, shape, 5e6)


def test_x_axis_tilts_read_through_sheets_say_so_and_read_exactly_at_tolerance_0(tilted_beads):
    """X-axis tilts that differ by view go through sheets, whose rows' reads move across detector
    columns with the height (a second interpolation): the command says so, and --local-tolerance
    0 (taken here, without --local) reads every voxel at its own position, as sharp as the
    single-angle path. The sheets' bead peaks stay above 0.895 of the exact reads' (one more
    bilinear interpolation of a sigma 1.2 px peak, on average) and below them."""
    import mrcfile
    from helpers import peak_values

    folder, _ = tilted_beads
    base = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--tlt", folder / "s.tlt"]
    base += ["--thickness", NZ, "--xtilt", folder / "s.xtilt", "--x-axis-tilt", -7]
    peaks = {}
    for name, extra in (("sheets", []), ("exact", ["--local-tolerance", 0])):
        rc, out, err = run_cli([*base, *extra, "--out", folder / f"tol-{name}.mrc"])
        assert rc == 0, err
        said = "X-axis tilts that differ by view are read through sheets" in out + err
        assert said == (name == "sheets"), out + err
        with mrcfile.open(folder / f"tol-{name}.mrc") as m:
            peaks[name] = peak_values(np.array(m.data), BEADS)
    ratio = float(np.median(peaks["sheets"] / peaks["exact"]))
    print(f"sheets' peaks {ratio:.3f} of the exact reads'")
    assert 0.895 < ratio < 1.0


def test_x_axis_tilts_within_the_tolerance_of_each_other_are_read_as_one(tmp_path):
    """An .xtilt that varies by hundredths of a degree (tiltalign's rounding) moves no voxel by
    more than (|y| + |z|) |da| <= (N + NZ) / 2 * 0.01 deg = 0.0077 px from its mid-range angle:
    within the default tolerance it is read at that one angle (the tilted read of one X-axis
    tilt: the same volume as the constant .xtilt's), and the command says so; with
    --local-tolerance 0 every view keeps its own angle (exact reads, no sheets). The bound holds
    for the volume's corners projected at each view's own angle and at the one."""
    import mrcfile

    from lmalign_jax.core.local_apply import local_projection_matrices
    from lmalign_jax.export.imod import write_xtilt
    from lmalign_jax.io import write_tlt, write_xf
    from lmalign_jax.recon.xtilt_backprojection import common_x_tilt

    xtilt = 1.0 + 0.01 * np.round(np.sin(np.arange(TILTS.size)))  # 0.99, 1.00, 1.01: the file's digits
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(bead_views(x_tilted_positions(xtilt + 7.0, BEADS), N, SIGMA))
    write_xf(tmp_path / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)))
    write_tlt(tmp_path / "s.tlt", TILTS)
    write_xtilt(tmp_path / "s.xtilt", xtilt)
    mid = (xtilt.max() + xtilt.min()) / 2
    write_xtilt(tmp_path / "one.xtilt", np.full(TILTS.size, mid))
    base = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--tlt", tmp_path / "s.tlt"]
    base += ["--thickness", NZ, "--x-axis-tilt", -7]
    volumes = {}
    for name, extra in (
        ("varying", ["--xtilt", tmp_path / "s.xtilt"]),
        ("one", ["--xtilt", tmp_path / "one.xtilt"]),
        ("exact", ["--xtilt", tmp_path / "s.xtilt", "--local-tolerance", 0]),
    ):
        rc, out, err = run_cli([*base, *extra, "--out", tmp_path / f"{name}.mrc"])
        assert rc == 0, err
        assert ("are read as one" in out + err) == (name == "varying"), out + err
        assert "differ by view are read through sheets" not in out + err
        with mrcfile.open(tmp_path / f"{name}.mrc") as m:
            volumes[name] = np.array(m.data)
    np.testing.assert_allclose(
        volumes["varying"], volumes["one"], rtol=0, atol=1e-6 * np.abs(volumes["one"]).max()
    )
    angle, bound = common_x_tilt(xtilt + 7.0, (NZ, N, N), 0.1)
    own = local_projection_matrices(None, TILTS, xtilts_deg=xtilt + 7.0)[0][0]  # (V, 2, 3)
    one = local_projection_matrices(None, TILTS, xtilts_deg=np.full(TILTS.size, angle))[0][0]
    corners = np.array(
        [[x, y, z] for x in (-N / 2, N / 2) for y in (-N / 2, N / 2) for z in (-NZ / 2, NZ / 2)]
    )
    moved = np.abs(np.einsum("vij,cj->vci", own - one, corners)).max()
    print(f"read at {angle:.3f} deg: voxels moved {moved:.4f} px at most, bound {bound:.4f}")
    assert abs(angle - (7.0 + mid)) < 1e-9 and 0.3 * bound < moved <= bound < 0.01


def test_a_tolerance_the_reconstruction_does_not_use_is_named(tilted_beads):
    """One X-axis tilt for every view is read tilted, not through sheets: a --local-tolerance
    given with it is said to be unused (and the volume is the one without it)."""
    folder, _ = tilted_beads
    base = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--tlt", folder / "s.tlt"]
    rc, out, err = run_cli(
        [*base, "--thickness", NZ, "--x-axis-tilt", -7, "--local-tolerance", 0.05, "--out", folder / "u.mrc"]
    )
    assert rc == 0 and "--local-tolerance 0.05 is not used: this reconstruction reads no sheets" in out + err


def test_a_tilt_file_short_of_the_stack_is_named_before_the_xtilt(tilted_beads):
    """A .tlt with a line fewer than the stack's views and a right .xtilt: the .tlt is named (the
    .xtilt is matched to it only after)."""
    from lmalign_jax.io import write_tlt

    folder, _ = tilted_beads
    write_tlt(folder / "short.tlt", TILTS[:-1])
    args = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--tlt", folder / "short.tlt"]
    rc, _, err = run_cli([*args, "--thickness", NZ, "--xtilt", folder / "s.xtilt", "--out", folder / "b.mrc"])
    assert rc == 2 and err.count("\n") == 1, err
    assert f"short.tlt: has 30 tilt angles but the stack {folder / 's.mrc'} has 31 sections" in err
    assert not (folder / "b.mrc").exists()
