"""Back-projection through a local alignment: beads drawn where a known local file puts them
(tilt's own formulas) come out sharp and in place with the file, blurred and shifted without it."""

import numpy as np
import pytest
from helpers import bead_views, peak_values

from lmalign_jax.core.local_apply import local_sampling, project_through_local
from lmalign_jax.io.imod_local import LocalAlignment
from lmalign_jax.recon.local_backprojection import LocalSampling, backproject_local
from lmalign_jax.simulation.phantom import locate_peaks

N, NZ, SIGMA = 64, 16, 1.2
BEADS = np.array([[-16.0, -16, 3], [16, -16, -4], [-16, 16, 0], [16, 16, 5], [0, 0, -2], [8, -20, 4]])
TILTS = np.linspace(-60.0, 60.0, 31)


def known_local() -> LocalAlignment:
    """2 x 2 patches 32 px apart; each patch shifts its views by up to 3 px, growing with tilt,
    in a different direction per patch (a specimen that moves unevenly as it tilts)."""
    direction = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5], [0.5, -1.0]])
    shift = 3.0 * np.sin(np.radians(TILTS))[None, :, None] * direction[:, None, :]
    xf = np.concatenate([np.broadcast_to(np.eye(2), (4, TILTS.size, 2, 2)), shift[..., None]], -1)
    return LocalAlignment((2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, TILTS.size)), xf)


@pytest.fixture(scope="module")
def volumes():
    local = known_local()
    pos = project_through_local(local, BEADS, TILTS, (N, N))  # (V, beads, 2) centred
    c = np.arange(N) + 0.5 - N / 2
    dx = c[None, None, None, :] - pos[:, :, 0, None, None]
    dy = c[None, None, :, None] - pos[:, :, 1, None, None]
    stack = np.exp(-(dx**2 + dy**2) / (2 * SIGMA**2)).sum(axis=1)  # (V, N, N) aligned views
    return backproject_local(stack, TILTS, sampling(local), NZ), backproject_local(
        stack, TILTS, sampling(None), NZ
    )


def sampling(local):
    return LocalSampling(*local_sampling(local, TILTS, (N, N)))


def test_beads_are_in_place_and_sharper_with_the_local_file(volumes):
    with_local, without = volumes
    found_local, dist_local = locate_peaks(with_local, BEADS)
    found_global, dist_global = locate_peaks(without, BEADS)
    peak = peak_values
    print("distance local", dist_local.round(2), "global", dist_global.round(2))
    # Exact geometry: the only errors are sampling (bilinear) and the missing wedge.
    assert np.all(dist_local < 0.5)
    assert np.mean(dist_global) > 2 * np.mean(dist_local)
    # A shift of 3 sin(tilt) in x is a move in z (x cos t + z sin t): that bead stays sharp but
    # misplaced without the file, so sharpness is compared on average.
    assert np.mean(peak(with_local, found_local)) > 1.1 * np.mean(peak(without, found_global))
    assert np.all(peak(with_local, found_local) > 0.9 * peak(without, found_global))


def test_a_unit_local_file_is_the_global_back_projection(volumes):
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((TILTS.size, N, N)).astype(np.float32)
    unit = LocalAlignment(
        (2, 2),
        (16, 16),
        (32, 32),
        0.0,
        np.zeros((4, TILTS.size)),
        np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1)),
    )
    np.testing.assert_allclose(
        backproject_local(stack, TILTS, sampling(unit), NZ),
        backproject_local(stack, TILTS, sampling(None), NZ),
        atol=1e-4,
    )


def test_reconstruct_local_from_a_raw_stack_and_the_command_line(volumes, tmp_path):
    """The raw-stack path (global .xf resampling, then the local file) through ``lmalign
    reconstruct --local``: with a unit .xf the aligned stack is the raw one, so with
    ``--local-tolerance 0`` the tomogram is the back-projection above of the views less their
    means; by default (reads through
    sheets, within 0.05 px) the beads peak where they do there within what 0.05 px allows; a
    local file made for another number of views is refused."""
    import contextlib
    import io as _io

    import mrcfile

    from lmalign_jax import cli
    from lmalign_jax.io.imod import write_xf
    from lmalign_jax.io.imod_local import write_local_xf
    from lmalign_jax.io.tilts import write_tlt

    local = known_local()
    pos = project_through_local(local, BEADS, TILTS, (N, N))
    stack = bead_views(pos, N, SIGMA)
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(stack)
        m.voxel_size = 2.0
    write_xf(tmp_path / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)))
    write_tlt(tmp_path / "s.tlt", TILTS)
    write_local_xf(tmp_path / "slocal.xf", local)
    args = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--tlt", tmp_path / "s.tlt"]
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for tol, name in ((0, "exact.mrc"), (0.05, "sheets.mrc")):
            rc = cli.main(
                [
                    str(a)
                    for a in [*args, "--thickness", NZ, "--local", tmp_path / "slocal.xf", "-q"]
                    + ["--local-tolerance", tol, "--out", tmp_path / name]
                ]
            )
            assert rc == 0, err.getvalue()
    # the raw path subtracts each view's mean (the outside of a resampled view reads as it)
    reference = backproject_local(stack - stack.mean(axis=(1, 2), keepdims=True), TILTS, sampling(local), NZ)
    with mrcfile.open(tmp_path / "exact.mrc") as m:
        np.testing.assert_allclose(m.data, reference, atol=1e-4 * np.abs(reference).max())
    # the same file made for a stack of 1 A pixels (twice the coordinates): IMOD's tilt scales its
    # grid and shifts by header pixel / stack pixel (1 / 2), and so does reconstruct (it used them
    # unscaled), with a note
    made_for_1a = LocalAlignment(
        (2, 2), (32, 32), (64, 64), 1.0, local.delta_tilt_deg, local.transforms * [1.0, 1.0, 2.0]
    )
    write_local_xf(tmp_path / "local1a.xf", made_for_1a)
    err = _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(
            [
                str(a)
                for a in [*args, "--thickness", NZ, "--local", tmp_path / "local1a.xf", "-q"]
                + ["--local-tolerance", 0, "--out", tmp_path / "scaled.mrc"]
            ]
        )
    assert rc == 0 and "grid and shifts are scaled by 0.5, as IMOD's tilt" in err.getvalue(), err.getvalue()
    with mrcfile.open(tmp_path / "scaled.mrc") as m, mrcfile.open(tmp_path / "exact.mrc") as e:
        np.testing.assert_allclose(m.data, e.data, atol=2e-3 * np.abs(e.data).max())
    with mrcfile.open(tmp_path / "sheets.mrc") as m:
        sheets = np.array(m.data)
    # a read off by at most 0.05 px moves a peak by at most that in x and y, and in z by at most
    # the least-squares depth of such offsets, 0.05 sum|sin| / sum sin^2
    s = np.sin(np.radians(TILTS))
    bound = 0.05 * np.array([1.0, 1.0, np.abs(s).sum() / (s**2).sum()])
    shift = np.abs(locate_peaks(sheets, BEADS)[0] - locate_peaks(reference, BEADS)[0])
    assert np.all(shift <= bound), (shift.max(axis=0), bound)
    bad = LocalAlignment(
        (2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, 5)), np.tile(np.eye(2, 3), (4, 5, 1, 1))
    )
    write_local_xf(tmp_path / "bad.xf", bad)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(
            [
                str(a)
                for a in [
                    *args,
                    "--thickness",
                    NZ,
                    "--local",
                    tmp_path / "bad.xf",
                    "--out",
                    tmp_path / "b.mrc",
                ]
            ]
        )
    assert (
        rc == 2
        and "grid does not match the alignment" in err.getvalue()
        and not (tmp_path / "b.mrc").exists()
    )


@pytest.mark.parametrize("binning, extra", [(1, 0), (2, 0), (2, 1)])
def test_the_streamed_local_volume_equals_the_in_memory_one(binning, extra):
    """Several passes over the rows (each resampling its band plus the local margin) and small
    slabs give the volume of the whole-stack path, to float32 rounding; rotated, scaled and
    shifted .xf so that the bands are not the raw rows; a side that is not a multiple of the
    binning (``extra``: both paths take the raw view's centre)."""
    from lmalign_jax.recon.local_backprojection import reconstruct_local, reconstruct_local_in_memory

    rng = np.random.default_rng(3)
    n = N * binning + extra
    stack = rng.standard_normal((TILTS.size, n, n)).astype(np.float32)
    ang = np.radians(rng.uniform(-3, 3, TILTS.size))
    a = 1.01 * np.stack([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]).transpose(2, 0, 1)
    d = rng.uniform(-4, 4, (TILTS.size, 2)) * binning
    local = known_local()
    local = LocalAlignment(
        local.n_patches,
        tuple(binning * s for s in local.start),
        tuple(binning * s for s in local.spacing),
        0.0,
        local.delta_tilt_deg + rng.uniform(-0.5, 0.5, local.delta_tilt_deg.shape),
        local.transforms * np.array([1.0, 1.0, binning]),
    )
    samp = LocalSampling(*local_sampling(local, TILTS, (N, N), binning))
    ref = reconstruct_local_in_memory(stack, a, d, TILTS, samp, NZ * binning, binning=binning)
    scale = np.abs(ref).max()
    for memory, rows in ((None, None), (200_000, 8), (50_000, 4)):
        got = reconstruct_local(
            stack, a, d, TILTS, samp, NZ * binning, binning=binning, memory_bytes=memory, slab_rows=rows
        )
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * scale)


def test_local_reconstruct_streams_in_any_layout_and_memory(tmp_path):
    """reconstruct --local with --layout imod-tilt and a --memory of several passes: tilt's
    layout holds the default volume (y as sections, depth reversed as rows)."""
    import mrcfile
    from helpers import run_cli

    from lmalign_jax.io.imod import write_xf
    from lmalign_jax.io.imod_local import write_local_xf
    from lmalign_jax.io.tilts import write_tlt

    rng = np.random.default_rng(5)
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(rng.standard_normal((TILTS.size, N, N)).astype(np.float32))
    write_xf(tmp_path / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), rng.uniform(-2, 2, (TILTS.size, 2)))
    write_tlt(tmp_path / "s.tlt", TILTS)
    write_local_xf(tmp_path / "slocal.xf", known_local())
    base = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--tlt", tmp_path / "s.tlt"]
    # every voxel at its own position: sheet reads depend (within their tolerance) on the slab height
    base += ["--thickness", NZ, "--local", tmp_path / "slocal.xf", "-q"]
    exact = ["--local-tolerance", 0]
    rc, _, err = run_cli([*base, *exact, "--out", tmp_path / "zyx.mrc"])
    assert rc == 0, err
    rc, out, err = run_cli(
        [*base, *exact, "--out", tmp_path / "tilt.mrc", "--layout", "imod-tilt", "--memory", 0.0002]
    )
    assert rc == 0, err
    assert "64 x 16 x 64 voxels (X x Z rows x Y sections, tilt's layout" in out
    with mrcfile.open(tmp_path / "zyx.mrc") as a, mrcfile.open(tmp_path / "tilt.mrc") as b:
        zyx, tilt = np.array(a.data), np.array(b.data)
    np.testing.assert_allclose(tilt, zyx[::-1].transpose(1, 0, 2), rtol=0, atol=2e-5 * np.abs(zyx).max())
    # SIRT through the local file holds the aligned views whole: refused below what that needs.
    rc, _, err = run_cli([*base, "--out", tmp_path / "x.mrc", "--sirt", 2, "--memory", 0.0001])
    assert rc == 2 and "--local with --sirt holds the aligned views whole" in err
    assert not (tmp_path / "x.mrc").exists()
    rc, out, err = run_cli([*base, "--out", tmp_path / "x.mrc", "--sirt", 2])
    assert rc == 0 and "SIRT 2 iterations" in out, err
    # SIRT reads every voxel at its own position: a tolerance given with it was ignored (audit)
    rc, _, err = run_cli([*base, *exact, "--out", tmp_path / "y.mrc", "--sirt", 2])
    assert rc == 2 and "--local-tolerance is for FBP's reads through sheets" in err
    assert not list(tmp_path.glob(".lmalign-sirt-*"))  # its scratch files are gone


def test_align_a_stack_with_local_and_reconstruct_uses_the_local_file(tmp_path):
    """``lmalign align STACK --local --reconstruct NZ`` reconstructs through the local file it
    just wrote: the same tomogram as ``lmalign reconstruct STACK --alignment REC.json --local``
    afterwards (and not the global one's, unless the local file changes nothing)."""
    import mrcfile
    from helpers import run_cli

    rc, _, err = run_cli(["simulate", "--out-dir", tmp_path, "--prefix", "s", "--stack", "--seed", 3])
    assert rc == 0, err
    stack, tilts = tmp_path / "s.mrc", tmp_path / "s.rawtlt"
    out = tmp_path / "out"
    rc, text, err = run_cli(
        ["align", stack, "--tilts", tilts, "--out-dir", out, "--local", "--local-keep-all"]
        + ["--patch-size", 160, 160, "--min-fids", "4,0", "--reconstruct", 16, "--no-figure"]
    )
    assert rc == 0, err
    assert "reconstructing through the local alignment" in err + text
    for extra, name in ((["--local"], "again.mrc"), ([], "global.mrc")):
        rc, _, err = run_cli(
            [
                "reconstruct",
                stack,
                "--alignment",
                out / "s.json",
                "--thickness",
                16,
                "--out",
                tmp_path / name,
                "-q",
            ]
            + extra
        )
        assert rc == 0, err
    with mrcfile.open(out / "s.rec.mrc") as a, mrcfile.open(tmp_path / "again.mrc") as b:
        np.testing.assert_array_equal(a.data, b.data)
    # a local file of unit patches reconstructs as the global alignment to 3e-5 of the volume's
    # sd (test_sheets); this one's patches (fitted to noise on rigid data) move it by more
    with mrcfile.open(out / "s.rec.mrc") as a, mrcfile.open(tmp_path / "global.mrc") as g:
        assert np.abs(a.data - g.data).max() > 1e-2 * g.data.std()


@pytest.mark.parametrize(
    "entry, message",
    [(0.0, "is singular"), (1e300, "has a shift or matrix entry beyond 1e+30")],
)
def test_a_local_transform_that_is_not_an_alignment_is_refused(tmp_path, entry, message):
    """A patch transform that flattens its view (or overflows float32) is named, patch and view,
    before anything is written, as a global one is; not reconstructed through."""
    import contextlib
    import io as _io

    import mrcfile

    from lmalign_jax import cli
    from lmalign_jax.io.imod import write_xf
    from lmalign_jax.io.imod_local import write_local_xf
    from lmalign_jax.io.tilts import write_tlt

    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(np.random.default_rng(0).random((TILTS.size, N, N), dtype=np.float32))
        m.voxel_size = 2.0
    write_xf(tmp_path / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)))
    write_tlt(tmp_path / "s.tlt", TILTS)
    local = known_local()
    xf = np.array(local.transforms)
    if entry == 0.0:
        xf[3, 7, :, :2] = 0.0
    else:
        xf[3, 7, 0, 2] = entry
    bad = LocalAlignment((2, 2), (16, 16), (32, 32), 0.0, local.delta_tilt_deg, xf)
    write_local_xf(tmp_path / "l.xf", bad)
    args = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--tlt", tmp_path / "s.tlt"]
    args += ["--thickness", NZ, "--local", tmp_path / "l.xf", "--out", tmp_path / "t.mrc"]
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    assert rc == 2, err.getvalue()
    where = "transform of view 8 in patch 3 (x 1, y 1)"  # 1-based, as the .tlt lines
    assert err.getvalue() == f"lmalign: error: {tmp_path / 'l.xf'}: {where} {message}\n"
    assert not (tmp_path / "t.mrc").exists()


@pytest.mark.parametrize("tolerance", [0.0, 0.1])
def test_a_unit_local_file_reconstructs_a_raw_stack_as_the_global_alignment(tolerance):
    """Every patch at the global alignment (rotated, shifted views; their means far from zero,
    which both paths subtract so that the outside of a resampled view reads as its mean): the
    same tomogram as ``recon.reconstruct``, to float32 rounding, whether every voxel samples its
    own position or reads through sheets (which are then the bands themselves, read as the
    global kernel reads them)."""
    from lmalign_jax.recon import reconstruct
    from lmalign_jax.recon.local_backprojection import reconstruct_local
    from lmalign_jax.recon.sheets import PatchGrid

    rng = np.random.default_rng(4)
    views = 21
    tilts = np.linspace(-60, 60, views)
    ang = np.radians(rng.uniform(-10, 10, views))
    a = np.stack([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]).transpose(2, 0, 1)
    d = rng.uniform(-3, 3, (views, 2))
    unit = LocalAlignment(
        (2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, views)), np.tile(np.eye(2, 3), (4, views, 1, 1))
    )
    grid = PatchGrid((2, 2), unit.start, unit.spacing, 1, (N, N))
    samp = LocalSampling(*local_sampling(unit, tilts, (N, N)), grid=grid)
    stack = (100 + rng.standard_normal((views, N, N))).astype(np.float32)
    got = reconstruct_local(stack, a, d, tilts, samp, 24, tolerance_px=tolerance)
    want = reconstruct(stack, a, d, tilts, 24)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * want.std())
