"""A view needs as many points as its own free parameters: with fewer, the fit returns arbitrary
values along a direction its data do not constrain (a wrong rotation reported as converged). The
command line leaves such a view out, says so, and interpolates its transform, as for a view
without markers."""

import json

import numpy as np
import pytest
from helpers import run_cli

from lmalign_jax import get_model
from lmalign_jax.core.problem import points_needed
from lmalign_jax.io import read_xf


@pytest.mark.parametrize(
    "model, modes, needed",
    [
        ("jou", {}, 3),  # scale, rotation, tilt, dx, dy: 5 parameters, 3 points
        ("diez", {}, 2),  # declination shared: scale, rotation, tilt
        ("imod", {}, 4),  # jou's five plus stretch and skew
        ("warp", {}, 3),  # the warp terms are tied to the neighbouring views by its smoothness rows
        ("jou", {"rotation": "group:5"}, 2),
        ("jou", {"rotation": "shared", "tilt": "fixed"}, 2),
        ("jou", {"rotation": "group:1"}, 3),  # a group of one view is the view's own
    ],
)
def test_points_needed(model, modes, needed):
    assert points_needed(get_model(model), modes, 10).tolist() == [needed] * 10


def test_a_lone_view_in_its_group_needs_its_own_points():
    # groups of about 2 over 3 views: IMOD's sets are view 0 alone and views 1-2
    # (tests/test_grouping.py); view 0's rotation is its own
    assert points_needed(get_model("jou"), {"rotation": "group:2"}, 3).tolist() == [3, 2, 2]


def _rotation_deg(xf):
    return np.degrees(np.arctan2(xf[:, 1, 0], xf[:, 0, 0]))


def test_align_leaves_out_a_view_with_too_few_points(tmp_path):
    """The audit's case: view 1 of a 41-view series keeps one point. Fitted, it came out at -4.8
    degrees of rotation against -12.05 (about 120 px at 1000 px from the centre), "converged".
    Now it is excluded, named, and its interpolated transform is near the truth; a view with
    exactly the 3 points it needs is kept."""
    rc, _, err = run_cli(
        ["simulate", "--out-dir", tmp_path, "--seed", "2", "--views", "41", "--markers", "20"]
    )
    assert rc == 0, err
    rows = (tmp_path / "synthetic.csv").read_text().splitlines()
    header, points = rows[0], [r.split(",") for r in rows[1:]]
    marker_col, view_col = header.split(",").index("marker"), header.split(",").index("view")
    in_view = {v: sorted(int(p[marker_col]) for p in points if int(p[view_col]) == v) for v in (0, 5)}
    keep = {0: in_view[0][:1], 5: in_view[5][:3]}
    kept = [r for r in points if int(r[view_col]) not in keep or int(r[marker_col]) in keep[int(r[view_col])]]
    (tmp_path / "few.csv").write_text("\n".join([header, *(",".join(r) for r in kept)]) + "\n")
    args = ["align", tmp_path / "few.csv", "--tilts", tmp_path / "synthetic.rawtlt"]
    rc, _, err = run_cli(
        [*args, "--image-size", "2048", "2048", "--no-figure", "--out-dir", tmp_path / "out"]
    )
    assert rc == 0, err
    assert "view(s) 1 (1-based) have fewer than the 3 markers" in err and "left out of the fit" in err
    record = json.loads((tmp_path / "out" / "few.json").read_text())
    assert record["inputs"]["excluded_too_few_points"] == [1]
    assert record["inputs"]["excluded_views"] == [1]
    truth = json.loads((tmp_path / "synthetic_truth.json").read_text())["views"]
    truth = np.array([v["rotation"] for v in truth])
    got = -_rotation_deg(read_xf(tmp_path / "out" / "few.xf")[0])  # the .xf undoes the rotation
    assert abs(got[0] - truth[0]) < 0.5, (got[0], truth[0])
    assert np.max(np.abs(got - truth)) < 0.5


def _with_points_in_view(view, n_points, **kw):
    from lmalign_jax import Observations, simulate

    obs = simulate(n_views=21, n_markers=12, seed=4, **kw).observations
    mask = np.array(obs.mask)
    mask[view, np.flatnonzero(mask[view])[n_points:]] = False
    return Observations(obs.xy, mask, obs.tilts_deg, obs.image_size)


def test_library_align_refuses_a_view_with_too_few_points():
    """The library does not leave views out for the caller: it refuses, naming the view and what
    it needs, rather than return an arbitrary rotation as converged."""
    from lmalign_jax import align

    with pytest.raises(ValueError, match=r"view 7 has 2 observed point\(s\) but needs 3: model 'jou' fits 5"):
        align(_with_points_in_view(7, 2))
    # grouped rotations leave each view four of its own: 2 points suffice, 1 does not
    from lmalign_jax.core.problem import check_points_per_view

    jou = get_model("jou")
    modes = dict(zip(jou.parameters, jou.default_modes, strict=True)) | {"rotation": "group:3"}
    check_points_per_view(jou, modes, _with_points_in_view(7, 2))
    with pytest.raises(ValueError, match=r"view 7 has 1 observed point\(s\) but needs 2: model 'jou' fits 4"):
        check_points_per_view(jou, modes, _with_points_in_view(7, 1))


def test_align_batch_reports_the_short_view_per_series():
    """Each series' own error (the path of any per-series error: tests/test_batch.py checks that
    the other series are still aligned); none is solved, so nothing compiles."""
    from lmalign_jax import align_batch

    results = align_batch([_with_points_in_view(3, 1), _with_points_in_view(8, 2)], stages=("initial",))
    assert all(isinstance(r, ValueError) for r in results)
    assert "view 3 has 1 observed point(s) but needs 3" in str(results[0])
    assert "view 8 has 2 observed point(s) but needs 3" in str(results[1])


def test_the_points_a_view_needs_follow_the_views_the_fit_keeps(tmp_path):
    """Grouped modes divide the fit's views into tiltalign's sets, which leaving a view out
    changes: the points each view needs are worked out on the views that are fitted. (An audit's
    case, here with the imod model: 8 views, view 1 with 3 points, rotation by about 2 views;
    computed on all 8 file views view 1 shared its set and needed 3, but with view 8 excluded the
    fit's 7 views put it alone, needing 4, and align stopped with 'view 0 has 3 observed point(s)
    but needs 4'. Now it is left out and named.)"""
    from lmalign_jax import simulate

    s = simulate(n_views=8, n_markers=12, image_size=(1024, 1024), seed=5, noise_px=0.3)
    o = s.observations
    mask = o.mask.copy()
    mask[0, np.flatnonzero(mask[0])[3:]] = False
    rows = ["marker,view,x,y"] + [
        f"{m},{v},{o.xy[v, m, 0]:.3f},{o.xy[v, m, 1]:.3f}" for v in range(8) for m in range(12) if mask[v, m]
    ]
    (tmp_path / "few.csv").write_text("\n".join(rows) + "\n")
    np.savetxt(tmp_path / "few.tlt", o.tilts_deg, fmt="%.2f")
    base = ["align", tmp_path / "few.csv", "--tilts", tmp_path / "few.tlt", "--image-size", "1024", "1024"]
    base += ["--model", "imod", "--rotation-mode", "group:2", "--no-figure", "--no-errors"]
    for name, extra in (("all", []), ("excluded", ["--exclude", "8"])):
        rc, _, err = run_cli([*base, "--out-dir", tmp_path / name, *extra])
        assert rc == 0, err
        record = json.loads((tmp_path / name / "few.json").read_text())
        assert record["inputs"]["excluded_too_few_points"] == ([] if name == "all" else [1])
