"""`lmalign simulate --stack --realistic` and `lmalign find-beads`: outputs judged against the simulated
truth, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import math
import shutil

import mrcfile
import numpy as np
import pytest
from test_cli import _no_persistent_cache, run  # noqa: F401 (an autouse fixture)

from lmalign_jax.io.mrc import read_header_tilts, set_header_tilts
from lmalign_jax.workflow.series import check_rotation

VIEWS = 5
SIZE = 384
MARKERS = 30


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    d = tmp_path_factory.mktemp("realistic")
    mp = pytest.MonkeyPatch()
    mp.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")
    try:
        args = ["simulate", "--out-dir", d, "--prefix", "r", "--stack", "--realistic", "--views", VIEWS]
        args += ["--image-size", SIZE, SIZE, "--markers", MARKERS, "--thickness", 60, "--dose", 200]
        rc, out, err = run(args + ["--noise", 0, "--seed", 4])
        assert rc == 0, err
    finally:
        mp.undo()
    rows = np.loadtxt(d / "r_truth_beads.csv", delimiter=",", skiprows=1)
    return d, rows


def read_beads(path):
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return data[:, :2], data[:, 2]


def test_simulate_realistic_writes_the_stack_and_its_truth(realistic):
    d, rows = realistic
    assert {p.name for p in d.iterdir()} == {
        "r.csv",
        "r.rawtlt",
        "r_truth.json",
        "r.mrc",
        "r_truth.xf",
        "r_truth.tlt",
        "r_truth_beads.csv",
    }
    with mrcfile.open(d / "r.mrc") as mrc:
        assert mrc.data.shape == (VIEWS, SIZE, SIZE)
        assert np.all(mrc.data == np.round(mrc.data))  # electron counts
        # cryo bright field: the slab transmits exp(-0.3 / cos) of 200 e/px, less at high tilt
        means = mrc.data.mean(axis=(1, 2))
        assert (
            100 < means[VIEWS // 2] < 200 and means[0] < means[VIEWS // 2] and means[-1] < means[VIEWS // 2]
        )
    assert rows.shape == (VIEWS * MARKERS, 7)
    # the marker CSV (noise 0) holds exactly the visible beads (of those seen in 2 views or more:
    # a marker needs two), at their true positions
    markers = np.loadtxt(d / "r.csv", delimiter=",", skiprows=1, ndmin=2)
    seen = np.bincount(rows[rows[:, 4] == 1, 0].astype(int), minlength=MARKERS + 1)
    visible = rows[(rows[:, 4] == 1) & (seen[rows[:, 0].astype(int)] >= 2)]
    assert markers.shape[0] == visible.shape[0]
    key = {(int(m), int(v)): (x, y) for m, v, x, y in markers[:, :4]}
    for m, v, x, y in visible[:, :4]:
        assert np.allclose(key[int(m), int(v)], (x, y), atol=1e-3)


def test_find_beads_on_the_zero_degree_view(realistic, tmp_path):
    d, rows = realistic
    out = tmp_path / "beads.csv"
    rc, stdout, err = run(
        ["find-beads", d / "r.mrc", "--tilts", d / "r.rawtlt", "--bead-diameter", 8, "--out", out]
    )
    assert rc == 0, err
    assert "View 2 (nearest 0 deg" in stdout and "Bead diameter 8.00 px (given)" in stdout
    assert (tmp_path / "beads.png").stat().st_size > 10_000
    pos, scores = read_beads(out)
    truth = rows[rows[:, 1] == 2]
    clean = (truth[:, 4] == 1) & (truth[:, 5] > 12) & (truth[:, 6] == 0)
    dist = np.linalg.norm(pos[:, None] - truth[None, :, 2:4], axis=2)
    assert np.mean(dist.min(axis=0)[clean] < 2) >= 0.95  # the clean beads are found
    assert np.sum(dist.min(axis=1) >= 2) <= 0.02 * pos.shape[0] + 1e-9  # nothing else
    hit = clean & (dist.min(axis=0) < 2)
    err_px = pos[np.argmin(dist, axis=0)][hit] - truth[hit, 2:4]
    assert math.sqrt(float(np.mean(err_px**2))) < 0.3
    assert np.all(np.diff(scores) <= 0)


def test_tilt_angles_round_trip_through_the_extended_header(realistic, tmp_path):
    """simulate writes the nominal tilts as SerialEM does; find-beads then needs no --tilts."""
    d, _ = realistic
    np.testing.assert_allclose(read_header_tilts(d / "r.mrc"), np.loadtxt(d / "r.rawtlt"), atol=0.005)
    rc, stdout, err = run(["find-beads", d / "r.mrc", "--bead-diameter", 8, "--out", tmp_path / "h.csv"])
    assert rc == 0, err
    assert "View 2 (nearest 0 deg by the header's tilt angles: +0.00 deg)" in stdout
    for order in ("<", ">"):  # either byte order
        with mrcfile.new(tmp_path / "t.mrc", overwrite=True) as mrc:
            mrc.set_data(np.zeros((3, 4, 4), dtype=order + "f4"))
            set_header_tilts(mrc, [-61.23, 0.5, 40.0])
        np.testing.assert_allclose(read_header_tilts(tmp_path / "t.mrc"), [-61.23, 0.5, 40.0])


def test_find_beads_estimates_the_diameter_or_takes_it_in_nm(realistic, tmp_path):
    d, _ = realistic
    rc, stdout, err = run(["find-beads", d / "r.mrc", "--view", 1, "--out", tmp_path / "a.csv"])
    assert rc == 0, err
    assert "View 1 (as asked)" in stdout
    estimated = float(stdout.split("Bead diameter ")[1].split(" px")[0])
    assert "(estimated)" in stdout and abs(estimated / 8.0 - 1) < 0.15
    # the header says 10 A/px (simulate's default): 8 nm is 8 px
    rc, stdout, err = run(
        ["find-beads", d / "r.mrc", "--view", 1, "--bead-nm", 8, "--out", tmp_path / "b.csv"]
    )
    assert rc == 0, err
    assert "Bead diameter 8.00 px (from 8 nm at 10 A/px)" in stdout


def write_mrc(path, data, voxel_size=10.0):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data, dtype=np.float32))
        mrc.voxel_size = voxel_size
    return path


def bad_inputs(d, tmp):
    """(name, arguments, words the message must hold)."""
    text = tmp / "notes.mrc"
    text.write_text("not an image\n" * 100)
    corrupt = tmp / "corrupt.mrc"
    shutil.copy(d / "r.mrc", corrupt)
    with open(corrupt, "r+b") as f:
        f.write(np.array([-5, 384, 5], dtype=np.int32).tobytes())  # nx < 0
    # the stack's size: one compilation
    flat = write_mrc(tmp / "flat.mrc", 100 + np.random.default_rng(0).normal(0, 1, (SIZE, SIZE)))
    tiny = write_mrc(tmp / "tiny.mrc", np.ones((12, 12)))
    short_tilts = tmp / "short.rawtlt"
    short_tilts.write_text("-10\n0\n10\n")
    stack, tilts = d / "r.mrc", d / "r.rawtlt"
    with mrcfile.open(stack) as mrc:
        bare = write_mrc(tmp / "bare.mrc", mrc.data)  # no extended header: no tilt angles
    return [
        ("not MRC", [text, "--bead-diameter", 8], ["notes.mrc", "not a readable MRC"]),
        ("corrupt header", [corrupt, "--bead-diameter", 8], ["corrupt.mrc"]),
        ("diameter < 2 px", [stack, "--tilts", tilts, "--bead-diameter", 1.5], ["between 2 px", "1.5"]),
        (
            "diameter > a tenth",
            [stack, "--tilts", tilts, "--bead-diameter", 40],
            ["tenth of the image", "38.4"],
        ),
        ("no tilts", [bare, "--bead-diameter", 8], ["5 views", "no tilt angles", "--tilts", "--view"]),
        ("tilt count", [stack, "--tilts", short_tilts, "--bead-diameter", 8], ["3 tilt angles", "5 views"]),
        # the count is checked where --view picks the view too (audit: not read then)
        (
            "tilt count with --view",
            [stack, "--view", 2, "--tilts", short_tilts, "--bead-diameter", 8],
            ["3 tilt angles", "5 views"],
        ),
        ("view out of range", [stack, "--view", 5, "--bead-diameter", 8], ["--view 5", "0 to 4"]),
        (
            "no beads",
            [flat, "--bead-diameter", 8],
            ["view 0", "8.00 px (given)", "check the view and the bead diameter"],
        ),
        ("no beads, estimating", [flat], ["view 0", "--bead-diameter"]),
        ("smaller than the window", [tiny, "--bead-diameter", 2], ["12 x 12", "search window"]),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(realistic, tmp_path):
    d, _ = realistic
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, args, words in bad_inputs(d, inputs):
        out = tmp_path / "out" / "beads.csv"
        rc, stdout, err = run(["find-beads", *args, "--out", out])
        assert rc == 2, (name, err)
        assert err.startswith("lmalign: error: ") and err.count("\n") == 1, (name, err)
        for word in words:
            assert word in err, (name, word, err)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), name
    rc, _, err = run(
        ["find-beads", d / "r.mrc", "--view", 2, "--bead-diameter", 8, "--out", tmp_path / "b.txt"]
    )
    assert rc == 2 and ".csv" in err and not (tmp_path / "b.txt").exists()
    (tmp_path / "plain").write_text("")  # a file where --out needs a folder: named as --out, not --out-dir
    out = tmp_path / "plain" / "b.csv"
    rc, _, err = run(["find-beads", d / "r.mrc", "--view", 2, "--bead-diameter", 8, "--out", out])
    assert rc == 2 and f"--out {out}: {tmp_path / 'plain'} exists and is not a folder" in err, err
    assert "--out-dir" not in err


def test_a_rotation_or_seed_a_generator_cannot_take_is_refused_in_one_line(realistic, tmp_path):
    d, _ = realistic
    out = tmp_path / "out"
    for command in (["track", d / "r.mrc"], ["align", d / "r.mrc"]):
        for rotation in ("nan", "inf", "1e300", "-360.5"):
            rc, _, err = run([*command, "--tilts", d / "r.rawtlt", "--out-dir", out, "--rotation", rotation])
            got = f"{float(rotation):g}"
            assert (
                rc == 2 and f"--rotation must be a tilt-axis angle within -360..360 degrees, got {got}" in err
            )
    assert not out.exists()
    for command in ("compare", "simulate"):  # compare: every model failed in the table before
        args = [d / "r.csv", "--tilts", d / "r.rawtlt"] if command == "compare" else ["--out-dir", out]
        rc, _, err = run([command, *args, "--rotation", "1e300"])
        assert rc == 2 and "--rotation must be a tilt-axis angle within -360..360 degrees" in err, err
    assert not out.exists()
    assert check_rotation(-360.0) == -360.0 and check_rotation(359.9) == 359.9
    for command in ("demo", "simulate"):
        rc, _, err = run([command, "--out-dir", out, "--seed", "-1"])
        assert rc == 2 and "--seed: expected a non-negative integer, got '-1'" in err and not out.exists(), (
            err
        )


def test_realistic_options_need_realistic_and_a_stack(tmp_path):
    rc, _, err = run(["simulate", "--out-dir", tmp_path, "--stack", "--dose", 20])
    assert rc == 2 and "--dose: only with --realistic" in err
    rc, _, err = run(["simulate", "--out-dir", tmp_path, "--realistic"])
    assert rc == 2 and "--stack" in err
    rc, _, err = run(["simulate", "--out-dir", tmp_path, "--stack", "--realistic", "--bead-diameter", 1])
    assert rc == 2 and "--bead-diameter" in err
    # a view without a whole bead cannot make a marker file: said, not a traceback
    args = ["--image-size", 64, 48, "--markers", 4, "--bead-diameter", 4, "--views", 5]
    rc, _, err = run(["simulate", "--out-dir", tmp_path, "--stack", "--realistic", *args])
    assert rc == 2 and "shows no whole bead" in err and "--markers" in err
    assert not any(tmp_path.iterdir())


def test_track_refuses_a_tilt_file_with_every_view_at_one_tilt(realistic, tmp_path):
    """Tracking with every view at 0 degrees wrote its outputs with exit 0, each view 'lost' (audit);
    align refuses such a tilt file, so track now does too, before reading the stack."""
    d, _ = realistic
    tlt = tmp_path / "flat.rawtlt"
    tlt.write_text("    0.000\n" * VIEWS)
    rc, _, err = run(["track", d / "r.mrc", "--tilts", tlt, "--out-dir", tmp_path / "out"])
    assert rc == 2 and f"{tlt}: all {VIEWS} views are at tilt 0 degrees" in err, err
    assert "lost" not in err and not (tmp_path / "out").exists()
