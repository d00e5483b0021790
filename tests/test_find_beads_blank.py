"""`lmalign find-beads` on blank views (one value in every pixel: dark, missing frames).

An all-zero view crashed the bead search when --bead-diameter was given (a division by zero,
exit 3). A blank view has no beads: asked for by --view it is named (exit 2, one line, nothing
written); chosen as the view nearest 0 deg it is passed over for the nearest view that is not.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from helpers import run_cli

SIZE = 128
SIGMA = 1.5  # Gaussian beads: diameter SIGMA / 0.301 ~ 5 px
TILTS = (-6.0, -3.0, 0.0, 3.0, 6.0)
BEADS = [(30.5, 30.5), (90.5, 35.5), (40.5, 95.5), (95.5, 90.5), (64.5, 64.5), (20.5, 70.5)]


def run(args):
    return run_cli(args, no_cache=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("blank")
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    beads = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * SIGMA**2)) for x, y in BEADS)
    stack = (10.0 + 4.0 * beads + 0.2 * rng.standard_normal((len(TILTS), SIZE, SIZE))).astype(np.float32)
    stack[2] = 0.0  # the view at 0 deg is dark
    with mrcfile.new(d / "dark.mrc") as mrc:
        mrc.set_data(stack)
    with mrcfile.new(d / "zeros.mrc") as mrc:
        mrc.set_data(np.zeros_like(stack))
    (d / "ts.rawtlt").write_text("".join(f"{t}\n" for t in TILTS))
    return d


@pytest.mark.parametrize(
    ("stack", "args", "message"),
    [
        (
            "dark.mrc",
            ["--view", 2, "--bead-diameter", 3],
            "dark.mrc: view 2 is blank (every pixel 0): there are no",
        ),
        ("dark.mrc", ["--view", 2], "dark.mrc: view 2 is blank (every pixel 0)"),
        ("zeros.mrc", ["--view", 0, "--bead-diameter", 3], "zeros.mrc: view 0 is blank (every pixel 0)"),
        ("zeros.mrc", ["--bead-diameter", 5], "zeros.mrc: view 2 is blank (every pixel 0), as is every view"),
    ],
)
def test_a_blank_view_is_named_not_a_crash(files, tmp_path, stack, args, message):
    out = tmp_path / "out" / "beads.csv"
    rc, stdout, err = run(["find-beads", files / stack, "--tilts", files / "ts.rawtlt", *args, "--out", out])
    assert rc == 2, (rc, err)
    assert err.startswith("lmalign: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert stdout == "" and not (tmp_path / "out").exists()


def test_the_view_nearest_0_deg_passes_over_a_blank_one(files, tmp_path):
    out = tmp_path / "beads.csv"
    rc, stdout, err = run(
        ["find-beads", files / "dark.mrc", "--tilts", files / "ts.rawtlt", "--bead-diameter", 5, "--out", out]
    )
    assert rc == 0, err
    assert "View 1 (nearest 0 deg by ts.rawtlt that is not blank (view 2 is): -3.00 deg)" in stdout
    found = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)[:, :2]
    dist = np.linalg.norm(found[:, None] - np.array(BEADS)[None], axis=2)
    assert found.shape[0] == len(BEADS) and np.all(dist.min(axis=0) < 0.5), found


def test_no_beads_found_advises_on_the_diameter_only_where_it_was_estimated(tmp_path):
    """A view of noise with --bead-diameter given was answered "give --bead-diameter PX" (audit),
    by find-beads and by track."""
    noise = np.random.default_rng(3).standard_normal((len(TILTS), SIZE, SIZE)).astype(np.float32)
    with mrcfile.new(tmp_path / "noise.mrc") as mrc:
        mrc.set_data(noise)
    (tmp_path / "ts.rawtlt").write_text("".join(f"{t}\n" for t in TILTS))
    inputs = [tmp_path / "noise.mrc", "--tilts", tmp_path / "ts.rawtlt", "--bead-diameter", 8]
    rc, _, err = run(["find-beads", *inputs, "--out", tmp_path / "f" / "b.csv"])
    assert rc == 2 and "no bead-like features found with a bead diameter of 8.00 px (given)" in err, err
    assert err.endswith("; check the view and the bead diameter\n"), err
    rc, _, err = run(["track", *inputs, "--out-dir", tmp_path / "t"])
    assert rc == 2 and "--bead-diameter PX" not in err and "check the stack and --bead-diameter" in err, err
    assert not (tmp_path / "f").exists() and not (tmp_path / "t").exists()
