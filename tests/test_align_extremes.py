"""Settings and inputs at the extremes that align accepted and solved into answers that mean
nothing (audit): each is now refused with exit 2 before anything is solved or written, in one
line naming the option (or file) and the problem.

- ``--min-fids`` more than the series' markers can give (every patch kept the global solution,
  after minutes of growing boxes on a large field);
- a patch grid too large blamed ``--patch-size`` whatever set it (``--patch-overlap``, the
  default, an --imod-com line);
- a 2-view series was said to have too few markers;
- every point outside the image was only a warning;
- ``--model warp``/``shape`` with 3 views or 4-5 markers gave deformation coefficients of
  thousands of px.
"""

import re

import numpy as np
import pytest
from helpers import run_cli

from lmalign_jax.core.local_options import LocalOptions
from lmalign_jax.workflow.fitting import (
    DEFORMATION_MIN_MARKERS,
    DEFORMATION_MIN_VIEWS,
    check_deformation_determined,
)
from lmalign_jax.workflow.local import check_min_fids
from lmalign_jax.workflow.settings import AlignSettings
from lmalign_jax.workflow.status import UsageError


def run(args):
    return run_cli(args, no_cache=True)


def simulated(folder, prefix, *extra):
    rc, _, err = run(
        ["simulate", "--out-dir", folder, "--prefix", prefix, "--missing", 0, "--seed", 3, *extra]
    )
    assert rc == 0, err
    return folder / f"{prefix}.csv", folder / f"{prefix}.rawtlt"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A small series: 21 views x 20 markers of a 2048 x 2048 image, no point missing."""
    return simulated(tmp_path_factory.mktemp("series"), "s", "--views", 21, "--markers", 20)


def refused(args, out, message):
    """``lmalign align *args --out-dir out``: exit 2 with the one line ``lmalign: error: `` +
    ``message`` (a regular expression, matched from its start), nothing on stdout, no solve
    begun and nothing written; returns the message."""
    rc, stdout, err = run(["align", *args, "--out-dir", out, "--no-figure"])
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and re.match("lmalign: error: " + message, err), err
    assert "aligning" not in err and stdout == ""
    assert not out.exists()
    return err


# -- A. --min-fids no patch can hold ------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--min-fids", "21,0"],
            r"--min-fids 21,0: a patch must hold at least 21 markers, but the series has only 20 markers "
            r"to fit, so no patch can .*; give a total of at most 20\n",
        ),
        (
            ["--min-fids", "8,11"],
            r"--min-fids 8,11: 11 markers on each of the two surfaces need at least 2 x 11 = 22 markers, "
            r"but the series has only 20 markers to fit, .*give at most 10 per surface, 0 for no "
            r"per-surface minimum, or analyse one surface \(--surfaces 1\)\n",
        ),
    ],
)
def test_a_min_fids_no_patch_can_hold_is_refused_before_the_solve(series, tmp_path, extra, message):
    csv, tlt = series
    refused([csv, "--tilts", tlt, "--image-size", 2048, 2048, "--local", *extra], tmp_path / "o", message)


def test_the_default_min_fids_and_the_com_line_are_named(tmp_path):
    csv, tlt = simulated(tmp_path, "few", "--views", 11, "--markers", 6)
    args = [csv, "--tilts", tlt, "--image-size", 2048, 2048]
    refused(
        [*args, "--local"],
        tmp_path / "o",
        r"--local \(the default --min-fids 8,3\): a patch must hold at least 8 markers, but the series "
        r"has only 6",
    )
    com = tmp_path / "align.com"
    com.write_text(
        "$tiltalign -StandardInput\nLocalAlignments 1\nLocalRotOption 1\nMinFidsTotalAndEachSurface 4,4\n"
    )
    refused(
        [*args, "--imod-com", com],
        tmp_path / "o",
        re.escape(f"{com}:4: MinFidsTotalAndEachSurface 4,4: 4 markers on each of the two surfaces need ")
        + r"at least 2 x 4 = 8 markers, but the series has only 6",
    )


def test_only_a_minimum_no_patch_can_reach_is_refused():
    """A box grows until it holds the total or spans twice the image, so a total of every marker
    can be reached; the smaller side of the markers' plane holds at most half of them, so a
    per-surface minimum of half can be; one surface analysed drops that minimum (align)."""
    check_min_fids(LocalOptions(min_fids=(20, 10)), 20)
    check_min_fids(LocalOptions(min_fids=(21, 10)), 21)
    with pytest.raises(UsageError, match=r"^--min-fids: a patch must hold at least 21 markers"):
        check_min_fids(LocalOptions(min_fids=(21, 0)), 20)
    with pytest.raises(UsageError, match=r"^X: 11 markers on each of the two surfaces need at least 2 x 11"):
        check_min_fids(LocalOptions(min_fids=(8, 11)), 21, "X")


# -- B. the patch grid names what set it --------------------------------------------------------


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--patch-overlap", 0.99], "--patch-overlap"),
        (["--patch-size", 300, 300, "--patch-overlap", 0.99], "--patch-size and --patch-overlap"),
        (["--patch-size", 20, 20], "--patch-size"),
    ],
)
def test_a_patch_grid_too_large_names_the_options_given(series, tmp_path, extra, named):
    csv, tlt = series
    args = [csv, "--tilts", tlt, "--image-size", 2048, 2048, "--local", *extra]
    refused(
        args,
        tmp_path / "o",
        re.escape(named) + r": a patch size of \d+ x \d+ px with overlap .* more than 2500",
    )


def test_a_patch_grid_too_large_names_the_default_or_the_com_line(series, tmp_path):
    csv, tlt = series
    # a field 40 times as large: the default 700 px patches make more than 2500 of them
    rows = [line.split(",") for line in csv.read_text().splitlines()]
    big = tmp_path / "big.csv"
    big.write_text(
        "\n".join(
            [",".join(rows[0])]
            + [f"{m},{v},{40 * float(x):.3f},{40 * float(y):.3f}" for m, v, x, y in rows[1:]]
        )
        + "\n"
    )
    refused(
        [big, "--tilts", tlt, "--image-size", 81920, 81920, "--local"],
        tmp_path / "o",
        r"--local \(the default --patch-size and --patch-overlap\): a patch size of 700 x 700 px with "
        r"overlap 0.5, 0.5 makes a grid of at least",
    )
    com = tmp_path / "align.com"
    com.write_text(
        "$tiltalign -StandardInput\nLocalAlignments 1\nLocalRotOption 1\nMinSizeOrOverlapXandY 0.99,0.99\n"
    )
    refused(
        [csv, "--tilts", tlt, "--image-size", 2048, 2048, "--imod-com", com],
        tmp_path / "o",
        re.escape(
            f"{com}:4: MinSizeOrOverlapXandY 0.99,0.99: a patch size of 700 x 700 px with overlap 0.99"
        ),
    )
    # both from the file: both lines (the patch size's line alone was named, the overlap to blame)
    com.write_text(
        "$tiltalign -StandardInput\nLocalAlignments 1\nLocalRotOption 1\nTargetPatchSizeXandY 700,700\n"
        "MinSizeOrOverlapXandY 0.99,0.99\n"
    )
    refused(
        [csv, "--tilts", tlt, "--image-size", 2048, 2048, "--imod-com", com],
        tmp_path / "o",
        re.escape(
            f"{com}:4: TargetPatchSizeXandY 700,700 and {com}:5: MinSizeOrOverlapXandY 0.99,0.99: a patch "
            "size of 700 x 700 px with overlap 0.99"
        ),
    )
    # the file's size with the command line's overlap: the line and the option
    refused(
        [csv, "--tilts", tlt, "--image-size", 2048, 2048, "--imod-com", com, "--patch-overlap", 0.99],
        tmp_path / "o",
        re.escape(f"{com}:4: TargetPatchSizeXandY 700,700 and --patch-overlap: a patch size of 700 x 700 px"),
    )


# -- C. too few views are said to be the views' problem ----------------------------------------


def test_too_few_views_says_the_views_are_short(series, tmp_path):
    csv, tlt = series
    two = tmp_path / "two.csv"
    rows = csv.read_text().splitlines()
    kept = [r.split(",") for r in rows[1:] if r.split(",")[1] in ("9", "10")]  # views 10 and 11, as 1 and 2
    two.write_text("\n".join([rows[0]] + [f"{m},{int(v) - 9},{x},{y}" for m, v, x, y in kept]) + "\n")
    two_tilts = tmp_path / "two.rawtlt"
    two_tilts.write_text("\n".join(tlt.read_text().splitlines()[9:11]) + "\n")
    size = ["--image-size", 2048, 2048]
    err = refused(
        [two, "--tilts", two_tilts, *size],
        tmp_path / "o",
        re.escape(f"{two}: the series has only 2 view(s); an alignment needs at least 3 views\n"),
    )
    assert "marker" not in err
    refused(
        [csv, "--tilts", tlt, *size, "--exclude", "1-19"],
        tmp_path / "o",
        re.escape(f"{csv}: only 2 of the 21 views can be fitted (19 excluded); an alignment needs at least ")
        + r"3 views\n",
    )


# -- D. most points outside the image -----------------------------------------------------------


def test_most_points_outside_the_image_are_refused_naming_the_size_given(series, tmp_path):
    csv, tlt = series
    refused(
        [csv, "--tilts", tlt, "--image-size", 512, 512],
        tmp_path / "o",
        r"--image-size 512 512: \d+ of 420 points lie outside the 512 x 512 image it gives \(the points span "
        r"x .*\): the image size is not the one the markers were measured in; give that size with "
        r"--image-size NX NY \(or the raw stack with --stack\)\n",
    )


def test_most_points_outside_a_stack_headers_size_name_the_stack(tmp_path):
    csv, tlt = simulated(tmp_path, "st", "--stack", "--views", 5, "--markers", 6, "--image-size", 64, 64)
    rows = [line.split(",") for line in csv.read_text().splitlines()]
    big = tmp_path / "big.csv"  # the points of a 4 times larger image, with the 64 x 64 stack
    big.write_text(
        "\n".join(
            [",".join(rows[0])]
            + [f"{m},{v},{4 * float(x):.3f},{4 * float(y):.3f}" for m, v, x, y in rows[1:]]
        )
        + "\n"
    )
    stack = tmp_path / "st.mrc"
    refused(
        [big, "--tilts", tlt, "--stack", stack],
        tmp_path / "o",
        re.escape(f"{stack} header: ") + r"\d+ of 30 points lie outside the 64 x 64 image it gives",
    )


# -- E. a deformation model the data cannot determine -------------------------------------------


@pytest.mark.parametrize("model", ["warp", "shape"])
def test_a_deformation_model_with_too_few_views_or_markers_is_refused(tmp_path, model):
    csv, tlt = simulated(tmp_path, "v3", "--views", 3, "--markers", 12, "--tilt-range", -30, 30)
    size = ["--image-size", 2048, 2048]
    refused(
        [csv, "--tilts", tlt, *size, "--model", model],
        tmp_path / "o",
        rf"--model {model}: needs at least 4 fitted views, this series has 3: .* use a rigid model",
    )
    csv, tlt = simulated(tmp_path, "m5", "--views", 11, "--markers", 5)
    refused(
        [csv, "--tilts", tlt, *size, "--model", model],
        tmp_path / "o",
        rf"--model {model}: needs at least 6 markers \(seen in 2 or more fitted views\), this series has 5: "
        r".* use a rigid model",
    )


def _observations(n_views, n_markers):
    from lmalign_jax import Observations

    xy = np.random.default_rng(0).uniform(100, 900, (n_views, n_markers, 2))
    return Observations(xy, np.ones((n_views, n_markers), bool), np.linspace(-40, 40, n_views), (1000, 1000))


def test_the_deformation_rule_leaves_rigid_models_and_fixed_deformations_alone():
    few_views = _observations(DEFORMATION_MIN_VIEWS - 1, 12)
    few_markers = _observations(11, DEFORMATION_MIN_MARKERS - 1)
    for obs in (few_views, few_markers):
        for model in ("jou", "imod", "luther"):
            check_deformation_determined(obs, AlignSettings(model=model))
        fixed = {name: "fixed" for name in ("shrink", "dome_xx", "dome_xy", "dome_yy")}
        check_deformation_determined(obs, AlignSettings(model="shape", modes=fixed))
        with pytest.raises(UsageError, match="^--model warp: needs at least"):
            check_deformation_determined(obs, AlignSettings(model="warp"))
    check_deformation_determined(
        _observations(DEFORMATION_MIN_VIEWS, DEFORMATION_MIN_MARKERS), AlignSettings(model="warp")
    )


def _grown_box(xy, side, centre, min_size, min_fids, image_size):
    """tiltalign's rule as a loop: the box grown 40 px at a time (the step-by-step way
    ``select_patch_markers`` took, minutes per grid on a large field)."""
    nxp, nyp = min_size[0] - 40, min_size[1] - 40
    while True:
        nxp, nyp = nxp + 40, nyp + 40
        x0, y0 = centre[0] - nxp // 2, centre[1] - nyp // 2
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x0 + nxp) & (xy[:, 1] >= y0) & (xy[:, 1] <= y0 + nyp)
        idx = np.flatnonzero(inside)
        each = min(np.sum(side[idx] == 0), np.sum(side[idx] == 1))
        if idx.size >= min_fids[0] and each >= min_fids[1]:
            return idx, (nxp, nyp), True
        if nxp >= 2 * image_size[0] and nyp >= 2 * image_size[1]:
            return idx, (nxp, nyp), False


def test_a_patch_box_is_found_at_once_as_growing_it_would():
    """The box's step is worked out from the step at which each marker enters it: the same
    markers, size and verdict as growing it, markers on its edges and past the image included."""
    from lmalign_jax.core.local_grid import select_patch_markers

    rng = np.random.default_rng(0)
    for _ in range(1500):
        m = int(rng.integers(0, 30))
        size = (float(rng.integers(50, 2000)), float(rng.integers(50, 2000)))
        xy = rng.uniform(-0.2, 1.2, (m, 2)) * size
        if rng.random() < 0.5:  # on the 20 px steps of the box's edges, and a hair either side
            xy = np.round(xy / 20) * 20 + rng.choice([0.0, 0.5, 1e-9, -1e-9], size=xy.shape)
        side = rng.integers(0, 2, m)
        centre = (int(rng.integers(-100, int(size[0]) + 100)), int(rng.integers(-100, int(size[1]) + 100)))
        args = (xy, side, centre, (int(rng.integers(1, 600)), int(rng.integers(1, 600))))
        fids = (int(rng.integers(1, 35)), int(rng.integers(0, 15)))
        (want_idx, want_box, want_ok), (idx, box, ok) = (
            _grown_box(*args, fids, size),
            select_patch_markers(*args, fids, size),
        )
        assert np.array_equal(idx, want_idx) and box == want_box and ok == want_ok
