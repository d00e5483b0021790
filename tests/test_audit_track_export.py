"""Bad and extreme input to track, align STACK, export and uncertainty: one clear line, exit
status 2, nothing written (never an internal error or a silently wrong answer)."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest
from helpers import run_cli


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A small simulated stack (11 views of 128 x 128 px, 6 beads), its tilts and an alignment
    record of its markers."""
    d = tmp_path_factory.mktemp("sim")
    args = ["simulate", "--stack", "--out-dir", str(d), "--image-size", "128", "128"]
    assert run_cli([*args, "--views", "11", "--markers", "6"])[0] == 0
    align = ["align", str(d / "synthetic.csv"), "--tilts", str(d / "synthetic.rawtlt")]
    assert run_cli([*align, "--stack", str(d / "synthetic.mrc"), "--out-dir", str(d / "al")])[0] == 0
    return d


def _write_stack(path, data):
    with warnings.catch_warnings(), mrcfile.new(str(path), overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's "contains NaN values"
        m.set_data(np.ascontiguousarray(data, dtype=np.float32))
        m.voxel_size = 10.0
    return str(path)


def _stack(sim):
    with mrcfile.open(str(sim / "synthetic.mrc"), permissive=True) as m:
        return np.array(m.data, dtype=np.float32)


@pytest.mark.parametrize("command", ["track", "align"])
def test_a_stack_of_one_pixel_rows_is_refused_not_an_internal_error(sim, tmp_path, command):
    stack = _write_stack(tmp_path / "line.mrc", _stack(sim)[:, :1, :])
    out = tmp_path / "out"
    code, _, err = run_cli([command, stack, "--tilts", str(sim / "synthetic.rawtlt"), "--out-dir", str(out)])
    assert code == 2, err
    assert err.strip().endswith(
        "line.mrc: images of 128 x 1 px are smaller than the bead search window (20 px)"
    ), err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_pixels_in_a_view_other_than_the_seed_are_refused(sim, tmp_path, bad):
    data = _stack(sim)
    data[3, 10:20, 10:20] = bad  # view 4 (1-based); the seed is view 6 (0 deg)
    stack = _write_stack(tmp_path / "nan.mrc", data)
    out = tmp_path / "out"
    code, _, err = run_cli(["track", stack, "--tilts", str(sim / "synthetic.rawtlt"), "--out-dir", str(out)])
    assert code == 2, err
    assert err.strip().endswith("nan.mrc: view 4 holds NaN or infinite values"), err
    assert not out.exists() or not any(out.iterdir())


def test_integer_and_half_float_stacks_are_tracked(sim, tmp_path):
    data = _stack(sim)
    data = (data - data.min()) / (data.max() - data.min()) * 30000.0
    for dtype in (np.int16, np.uint16, np.float16):
        path = tmp_path / f"{np.dtype(dtype).name}.mrc"
        with mrcfile.new(str(path), overwrite=True) as m:
            m.set_data(data.astype(dtype))
        out = tmp_path / np.dtype(dtype).name
        code, _, err = run_cli(
            ["track", str(path), "--tilts", str(sim / "synthetic.rawtlt"), "--out-dir", str(out)]
        )
        assert code == 0, err
        assert (out / f"{np.dtype(dtype).name}.fid").is_file()


@pytest.mark.parametrize("pixel", ["1e308", "1e5"])
def test_export_refuses_an_absurd_pixel_size_and_writes_nothing(sim, tmp_path, pixel):
    out = tmp_path / "ex"
    record = str(sim / "al" / "synthetic.json")
    code, _, err = run_cli(["export", record, "--to", "all", "--pixel-size", pixel, "--out-dir", str(out)])
    assert code == 2, err
    assert f"lmalign: error: pixel size {float(pixel):g} A is over 10000 A (1 um)" in err
    assert not out.exists() or not any(out.iterdir())


STAR = """data_particles

loop_
_rlnTomoName
_rlnCenteredCoordinateXAngst
_rlnCenteredCoordinateYAngst
_rlnCenteredCoordinateZAngst
TS_01 500 300 100
"""


@pytest.mark.parametrize(
    "option, message",
    [
        (
            ["--pixel-size", "inf"],
            "--pixel-size must be a tilt series' pixel size, 0.01 to 10000 A (as export takes), got inf",
        ),
        (
            ["--pixel-size", "nan"],
            "--pixel-size must be a tilt series' pixel size, 0.01 to 10000 A (as export takes), got nan",
        ),
        # as export's bound (audit: export refused 1e-300, uncertainty took it)
        (
            ["--pixel-size", "1e-300"],
            "--pixel-size must be a tilt series' pixel size, 0.01 to 10000 A (as export takes), got 1e-300",
        ),
        (
            ["--tomogram-size", "inf", "128", "40"],
            "--tomogram-size must be three positive finite numbers, got inf 128 40",
        ),
    ],
)
def test_uncertainty_refuses_infinite_sizes(sim, tmp_path, option, message):
    points = tmp_path / "p.star"
    points.write_text(STAR)
    out = tmp_path / "m.csv"
    record = str(sim / "al" / "synthetic.json")
    code, _, err = run_cli(["uncertainty", record, "--points", str(points), *option, "--out", str(out)])
    assert code == 2, err
    assert err.strip() == f"lmalign: error: {message}", err
    assert not out.exists()


def test_uncertainty_of_star_points_in_angstrom(sim, tmp_path):
    points = tmp_path / "p.star"
    points.write_text(STAR)
    record = str(sim / "al" / "synthetic.json")
    code, out, err = run_cli(["uncertainty", record, "--points", str(points), "--pixel-size", "10"])
    assert code == 0, err
    assert "at (     50.0,      30.0,     10.0) px" in out


def test_find_beads_refuses_a_bad_out_before_the_search(sim, tmp_path):
    stack = str(sim / "synthetic.mrc")
    code, out, err = run_cli(["find-beads", stack, "--view", "5", "--out", str(tmp_path / "beads.txt")])
    assert code == 2, err
    assert out == ""  # nothing searched, nothing printed
    assert err.strip().endswith("beads.txt: name a .csv file (the overlay goes beside it as .png)")
    assert not any(tmp_path.iterdir())
