"""Views left out of the tomogram, as tilt's EXCLUDELIST: ``reconstruct --exclude LIST`` gives the
volume of the stack without those views, through the global, local and SIRT paths alike, and a
record's views that its alignment did not fit (transforms interpolated) are left out unless
``--keep-excluded``, as Etomo copies the alignment's ExcludeList into tilt.com."""

import warnings

import mrcfile
import numpy as np
import pytest
from helpers import bead_views, run_cli, write_with_nan_pixel

from lmalign_jax.io import write_tlt, write_xf
from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf

N, NZ, SIGMA = 64, 24, 1.2
TILTS = np.linspace(-60.0, 60.0, 31)
BEADS = np.array([[-20.0, -18, 9], [18, -20, -10], [-16, 20, 8], [20, 16, -9], [0, 0, 10]])
LEFT_OUT = [0, 1, 2, 17, 30]  # 1-based 1-3,18,31


def write_series(folder, name, views):
    """Beads seen at ``TILTS[views]`` with small per-view shifts undone by the .xf, and a 2 x 2
    local file of small rotations: ``folder/name.{mrc,xf,tlt}`` and ``namelocal.xf``."""
    t = np.radians(TILTS)[:, None]
    shift = np.column_stack([np.sin(np.arange(TILTS.size)), np.cos(np.arange(TILTS.size))])
    pos = np.stack(
        [
            BEADS[:, 0] * np.cos(t) + BEADS[:, 2] * np.sin(t),
            np.broadcast_to(BEADS[:, 1], (TILTS.size, len(BEADS))),
        ],
        -1,
    )
    with mrcfile.new(folder / f"{name}.mrc") as m:
        m.set_data(bead_views(pos[views] - shift[views, None], N, SIGMA))
    write_xf(folder / f"{name}.xf", np.tile(np.eye(2), (len(views), 1, 1)), shift[views])
    write_tlt(folder / f"{name}.tlt", TILTS[views])
    rng = np.random.default_rng(0)
    angle = np.radians(rng.normal(0, 0.3, (4, TILTS.size)))
    transforms = np.zeros((4, TILTS.size, 2, 3))
    transforms[..., 0, 0] = transforms[..., 1, 1] = np.cos(angle)
    transforms[..., 0, 1], transforms[..., 1, 0] = -np.sin(angle), np.sin(angle)
    transforms[..., 2] = rng.normal(0, 0.3, (4, TILTS.size, 2))
    local = LocalAlignment(
        (2, 2), (16.0, 16.0), (32.0, 32.0), 0.0, np.zeros((4, len(views))), transforms[:, views]
    )
    write_local_xf(folder / f"{name}local.xf", local)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exclude")
    write_series(folder, "all", np.arange(TILTS.size))
    write_series(folder, "kept", np.setdiff1d(np.arange(TILTS.size), LEFT_OUT))
    return folder


@pytest.mark.parametrize("extra", [[], ["--local"], ["--sirt", 3], ["--local", "--sirt", 3]], ids=str)
def test_excluded_views_give_the_volume_without_them(series, extra):
    """--exclude 1-3,18,31 on the whole stack: the volume of the stack written without those
    views (and their .xf, .tlt and local-file lines), to float32 rounding; the note names them."""

    def run(name, *more):
        args = ["reconstruct", series / f"{name}.mrc", "--xf", series / f"{name}.xf"]
        args += ["--tlt", series / f"{name}.tlt", "--thickness", NZ, *more]
        if "--local" in extra:
            args += ["--local", series / f"{name}local.xf", *(e for e in extra if e != "--local")]
        else:
            args += list(extra)
        out = series / f"{name}-{len(extra)}-{'-'.join(map(str, extra))}.rec"
        rc, stdout, err = run_cli([*args, "--out", out])
        assert rc == 0, err
        with mrcfile.open(out) as m:
            return np.array(m.data), stdout + err

    left_out, said = run("all", "--exclude", "1-3,18,31")
    kept, _ = run("kept")
    assert (
        "leaving out views 1-3, 18, 31 (--exclude 1-3, 18, 31)" in said and "reconstructing 26 views" in said
    )
    scale = np.abs(kept).max()
    np.testing.assert_allclose(left_out, kept, rtol=0, atol=1e-5 * scale)


def test_a_records_unfitted_views_are_left_out_unless_kept(series):
    """An alignment whose record left views unfitted (``excluded_views``): those views are not
    back-projected by default (the volume of the stack without them), and are with
    ``exclude_views=[]`` (what --keep-excluded passes)."""
    from lmalign_jax.io import read_xf
    from lmalign_jax.workflow.alignment_inputs import Alignment
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    a, d = read_xf(series / "all.xf")
    notes, volumes = [], {}
    for name, given in (("default", None), ("kept", [])):
        alignment = Alignment(a, d, TILTS, "r.json", "r.json", "r.json", (N, N))
        alignment.excluded_views = np.array(LEFT_OUT)
        out = series / f"record-{name}.rec"
        reconstruct_to_file(
            str(series / "all.mrc"), alignment, str(out), thickness=NZ, note=notes.append, exclude_views=given
        )
        with mrcfile.open(out) as m:
            volumes[name] = np.array(m.data)
    rc, _, err = run_cli(
        ["reconstruct", series / "kept.mrc", "--xf", series / "kept.xf", "--tlt", series / "kept.tlt"]
        + ["--thickness", NZ, "--out", series / "expected.rec"]
    )
    assert rc == 0, err
    with mrcfile.open(series / "expected.rec") as m:
        expected = np.array(m.data)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(volumes["default"], expected, rtol=0, atol=1e-5 * scale)
    assert np.abs(volumes["kept"] - expected).max() > 0.01 * scale
    assert "leaving out views 1-3, 18, 31 (excluded from the alignment r.json)" in notes[0]
    assert not any("leaving out" in n for n in notes[2:])


def test_a_records_excluded_views_are_read_back(tmp_path):
    """``align --exclude 3`` writes a record whose view 3 (0-based 2) the reconstruction leaves out."""
    from helpers import align_observations

    from lmalign_jax import simulate
    from lmalign_jax.workflow.alignment_inputs import read_alignment_json

    series = simulate(n_views=21, n_markers=12, seed=1)
    record = align_observations(series.observations, tmp_path, "--exclude", "3")
    np.testing.assert_array_equal(read_alignment_json(str(record)).excluded_views, [2])


@pytest.mark.parametrize(
    "given, message",
    [
        (["--exclude", "0"], "--exclude: view 0 is outside 1..31"),
        (["--exclude", "32"], "--exclude: view 32 is outside 1..31"),
        (
            ["--exclude", "1-30"],
            "leaving out 30 of the 31 views (--exclude 1-30) keeps one view",
        ),
        (["--exclude", "x"], "--exclude: 'x' is not a view number or range"),
        (["--keep-excluded"], "--keep-excluded goes with --alignment"),
    ],
)
def test_bad_exclusions_are_refused_in_one_line(series, given, message):
    args = ["reconstruct", series / "all.mrc", "--xf", series / "all.xf", "--tlt", series / "all.tlt"]
    rc, _, err = run_cli([*args, "--thickness", NZ, *given, "--out", series / "bad.rec"])
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (series / "bad.rec").exists()


def test_a_non_finite_view_is_named_in_the_stack_and_ignored_when_left_out(series, tmp_path):
    """A NaN in view 5: with other views left out the error still names view 5 of the stack (it
    named its place among the kept views); left out itself, it is never read."""
    write_with_nan_pixel(series / "all.mrc", tmp_path / "nan.mrc", 4)
    args = ["reconstruct", tmp_path / "nan.mrc", "--xf", series / "all.xf", "--tlt", series / "all.tlt"]
    args += ["--thickness", NZ]
    rc, _, err = run_cli([*args, "--exclude", "1", "--out", tmp_path / "bad.rec"])
    assert rc == 2 and "stack view 5 (section 4 counting from 0) contains non-finite values" in err, err
    assert not (tmp_path / "bad.rec").exists()
    rc, _, err = run_cli([*args, "--exclude", "5", "--out", tmp_path / "ok.rec"])
    assert rc == 0, err


def test_align_reconstructs_a_stack_whose_only_bad_view_is_excluded(tmp_path):
    """``align MARKERS --stack S --exclude 5 --reconstruct``: a NaN in view 5 is no reason to
    refuse the stack (the tomogram leaves the view out, and says so)."""
    rc, _, err = run_cli(["simulate", "--stack", "--out-dir", tmp_path / "sim", "--prefix", "s", "--seed", 1])
    assert rc == 0, err
    with warnings.catch_warnings(), mrcfile.open(tmp_path / "sim" / "s.mrc", mode="r+") as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's "contains NaN values"
        m.data[4, 20, 20] = np.nan
    sim = tmp_path / "sim"
    args = ["align", sim / "s.csv", "--tilts", sim / "s.rawtlt", "--stack", sim / "s.mrc", "--exclude", 5]
    rc, out, err = run_cli([*args, "--no-figure", "--reconstruct", 24, "--out-dir", tmp_path / "a"])
    assert rc == 0, err
    assert "leaving out view 5 (excluded from the alignment" in out + err
    assert (tmp_path / "a" / "s.rec.mrc").exists()
