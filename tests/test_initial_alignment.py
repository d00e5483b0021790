"""``lmalign align --initial``: a start from an AreTomo .aln (or IMOD .xf) fixes the axis hand.

The series' true tilt axis is at +95 degrees. The built-in estimate folds it into (-90, 90] and
the solve then lands on the equivalent mirrored solution near -85 degrees (same residuals);
started from an .aln of the truth, it must stay on the truth's hand.
"""

import json
import re

import numpy as np
import pytest
from helpers import run_cli

from lmalign_jax import get_model, simulate
from lmalign_jax.analysis.uncertainty import uncertainty
from lmalign_jax.core.align import align as align_observations
from lmalign_jax.core.start import initial_alignment
from lmalign_jax.export import ViewGeometry, decompose_xf, write_aln, xf_from_rotation_shift
from lmalign_jax.io import read_xf, write_xf

IMAGE = 2048
DARK_VIEW = 3  # written as an AreTomo DarkFrame: starts from the nominal start


def run(args):
    """cli.main in-process without the persistent compilation cache: (exit status, stdout, stderr)."""
    return run_cli(args, no_cache=True)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """25 views x 15 markers, axis +95 deg, shifts of sd 100 px; its .csv, .tlt and truth .aln/.xf."""
    d = tmp_path_factory.mktemp("initial")
    sim = simulate(
        n_views=25, n_markers=15, image_size=(IMAGE, IMAGE), rotation_deg=95.0, shift_px=100.0, seed=1
    )
    obs = sim.observations
    with open(d / "s.csv", "w") as f:
        f.write("marker,view,x,y\n")
        for v, m in zip(*np.nonzero(obs.mask), strict=True):
            f.write(f"{m},{v},{obs.xy[v, m, 0]:.4f},{obs.xy[v, m, 1]:.4f}\n")
    np.savetxt(d / "s.tlt", obs.tilts_deg, fmt="%.2f")
    views = sim.views  # jou: scale, rotation, tilt, dx, dy
    xf = xf_from_rotation_shift(np.degrees(views[:, 1]), views[:, 3:5])
    write_aln(d / "truth.aln", ViewGeometry(xf, sim.true_tilts_deg, None, (IMAGE, IMAGE)), [DARK_VIEW])
    write_xf(d / "truth.xf", xf[:, :, :2], xf[:, :, 2])
    return d, sim


def align(d, initial, out_dir, *options):
    return run(
        ["align", d / "s.csv", "--tilts", d / "s.tlt", "--image-size", IMAGE, IMAGE]
        + ["--out-dir", out_dir, "--no-figure", "--quiet", *options]
        + (["--initial", initial] if initial else [])
    )


def solved_rotation(out_dir) -> np.ndarray:
    """Per-view tilt-axis angle (n_views,), degrees, of the .xf a finished align wrote."""
    a, d = read_xf(out_dir / "s.xf")
    return decompose_xf(np.concatenate([a, d[:, :, None]], axis=2))[0]


@pytest.fixture(scope="module")
def from_aln(series, tmp_path_factory):
    """The align started from the truth's .aln: (per-view rotation, median rotation SE), degrees.

    The SE is that of the same solve in-process (``align --no-errors`` saves its compile time;
    the standard errors without covariance are what ``align`` prints)."""
    d, sim = series
    out_dir = tmp_path_factory.mktemp("from_aln")
    rc, _, err = align(d, d / "truth.aln", out_dir, "--no-errors")
    assert rc == 0, err
    views = sim.views
    start = initial_alignment(
        get_model("jou"), sim.observations, np.degrees(views[:, 1]), sim.true_tilts_deg, views[:, 3:5]
    )
    with_start = align_observations(sim.observations, start=start)
    se = float(np.median(uncertainty(with_start).parameter_se("rotation")))
    return solved_rotation(out_dir), se


def test_initial_aln_keeps_the_truths_hand(series, from_aln):
    _, sim = series
    rotation, se = from_aln
    true = np.degrees(sim.views[:, 1])
    # each view's solved rotation within 5 of its standard errors (25 views: no false alarm)
    assert np.max(np.abs(rotation - true)) < 5 * se, (rotation - true, se)


def test_initial_xf_reaches_the_same_solution(series, from_aln, tmp_path):
    d, _ = series
    rc, _, err = align(d, d / "truth.xf", tmp_path, "--no-errors")
    assert rc == 0, err
    rotation, se = from_aln
    assert np.max(np.abs(solved_rotation(tmp_path) - rotation)) < 0.1 * se


def test_without_initial_the_estimate_takes_the_other_hand(series, from_aln, tmp_path):
    """What --initial fixes: the estimate alone converges to the mirrored solution, 180 deg away."""
    d, _ = series
    rc, _, err = align(d, None, tmp_path, "--no-errors")
    assert rc == 0, err
    rotation, se = from_aln
    assert np.max(np.abs(solved_rotation(tmp_path) - (rotation - 180.0))) < 0.1 * se


def _bad_aln(d, tmp_path, kind):
    text = (d / "truth.aln").read_text().splitlines()
    if kind == "views":
        text = [re.sub(r"RawSize = (\d+) (\d+) 25", r"RawSize = \1 \2 24", t) for t in text]
        text = [t for t in text if not t.startswith("# DarkFrame")]
        text = text[:-1]
    elif kind == "cut":  # the last two rows gone, no DarkFrame line for them
        text = text[:-2]
    else:
        tokens = text[-2].split()
        tokens[{"malformed": 3, "huge": 3, "gmag": 2}[kind]] = {
            "malformed": "1.2.3",
            "huge": "1e300",
            "gmag": "-1",
        }[kind]
        text[-2] = " ".join(tokens)
    path = tmp_path / f"{kind}.aln"
    path.write_text("\n".join(text) + "\n")
    return path


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("views", "RawSize has 24 sections; the series has 25 views"),
        ("malformed", "TX '1.2.3' is not a number"),
        # audit: a finite 1e300 overflowed to exit 3; a negative GMAG aligned (exit 0) with a
        # negative scale and a rotation 180 deg off in the record
        ("huge", "view 24: shift 1e+300, "),
        ("gmag", "GMAG -1 is not positive"),
        ("huge.xf", "line 1: shift "),
    ],
)
def test_bad_initial_alignment_is_refused_before_anything_is_written(series, tmp_path, kind, problem):
    d, _ = series
    if kind == "huge.xf":
        lines = (d / "truth.xf").read_text().splitlines()
        lines[0] = " ".join(lines[0].split()[:4] + ["1e300", "0"])
        path = tmp_path / "huge.xf"
        path.write_text("\n".join(lines) + "\n")
    else:
        path = _bad_aln(d, tmp_path, kind)
    out_dir = tmp_path / "out"
    rc, out, err = align(d, path, out_dir)
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("lmalign: error: ")]
    assert len(errors) == 1 and str(path) in errors[0] and problem in errors[0], err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_sections_without_a_row_are_warned_about_and_the_start_is_named(series, tmp_path):
    """An .aln whose last rows were cut (no DarkFrame line for them) started those views from the
    built-in start without a word; the summary said the start rotation was "estimated from the
    marker tracks" (audit)."""
    d, _ = series
    rc, out, err = align(d, _bad_aln(d, tmp_path, "cut"), tmp_path / "o", "--no-errors")
    assert rc == 0, err
    assert (
        "cut.aln: 2 of the RawSize 25 sections have neither a row nor a DarkFrame line (views 24, 25" in err
    )
    options = json.loads((tmp_path / "o" / "s.json").read_text())["options"]
    assert options["rotation_source"] == f"--initial {tmp_path / 'cut.aln'}"
    assert abs(options["rotation_deg"] - 95.0) < 1.0  # the truth's, as the .aln says
