"""Predicted misregistration: against a dense covariance, finite differences, Monte Carlo re-solves,
and through the record and ``lmalign uncertainty``."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_cli as run

from lmalign_jax import Observations, Uncertainty, align_batch, get_model, misregistration, simulate
from lmalign_jax.analysis import alignment_covariance, misregistration_map
from lmalign_jax.core.frame import project_all, reporting_frame, to_reporting_frame
from lmalign_jax.core.problem import final_problem
from lmalign_jax.core.result import result_from_solution
from lmalign_jax.core.settings import AlignmentSettings
from lmalign_jax.io import InputError
from lmalign_jax.io.points import read_points
from lmalign_jax.report import (
    build_record,
    expand_to_file_views,
    format_summary,
    record_to_json,
    render_figure,
)
from lmalign_jax.report.record import read_covariance
from lmalign_jax.report.record_build import describe_degeneracy
from lmalign_jax.solve import effective_a, pair_residuals
from lmalign_jax.solve._dense import _flatten, _unflatten

NOISE = 0.5
POINTS = np.array([[0.0, 0.0, 0.0], [600.0, -450.0, 0.0], [-300.0, 200.0, 180.0], [100.0, 700.0, -250.0]])


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")


REPLICAS = 451
#: Scales grouped in threes: global slots in the solve whose views are eliminated.
SMALL_MODES = {"scale": "group:3"}


@pytest.fixture(scope="module")
def replicas():
    """A 9-view, 6-marker series (views eliminated in the Schur complement, scales in three
    groups: global slots) re-solved with
    ``REPLICAS`` fresh noise draws in one batch, and the covariance of the first solution."""
    truth = simulate(n_views=9, n_markers=6, seed=11, noise_px=0.0, thickness_px=250, scale_jitter=0.0)
    obs = truth.observations
    rng = np.random.default_rng(7)
    noisy = [
        Observations(
            obs.xy + NOISE * rng.standard_normal(obs.xy.shape), obs.mask, obs.tilts_deg, obs.image_size
        )
        for _ in range(REPLICAS)
    ]
    results = align_batch(noisy, rotation_deg=float(np.mean(truth.true_rotation_deg)), modes=SMALL_MODES)
    assert all(r.converged for r in results)
    return truth, results, alignment_covariance(results[0])


@pytest.fixture(scope="module")
def small(replicas):
    truth, results, cov = replicas
    return truth, results[0], cov


def result_at_truth(series, model="jou", modes=None):
    """An AlignmentResult at the series' true parameters moved into the reporting frame (no
    solve: the covariance formulas hold at any point, and the references use the same one)."""
    model = get_model(model)
    obs = series.observations
    settings = AlignmentSettings(modes=dict(modes or {}))
    nominal = np.radians(obs.tilts_deg)
    views, markers = to_reporting_frame(
        model, series.views, series.markers, nominal, settings.frame_rule(model)
    )
    return result_from_solution(
        model,
        obs,
        views,
        markers,
        project_all(model, views, markers),
        stages=(),
        status="converged",
        n_free=0,
        rotation_estimated_deg=None,
        settings=settings,
    )


def dense_reported_covariance(result):
    """sigma^2 J_frame H^{-1} J_frame^T per view, with H from a dense autodiff Jacobian and J_frame
    the Jacobian of ``reporting_frame`` itself: (n_views, k, k)."""
    model, obs = result.model, result.observations
    problem = final_problem(result)
    x, st = problem.x0, problem.structure
    free = jnp.concatenate([st.free_a.reshape(-1), st.free_b.reshape(-1), st.free_g]).astype(float)

    def residuals(flat):
        return pair_residuals(problem.fn, _unflatten(flat, x), st).reshape(-1)

    def reported(flat):
        v = _unflatten(flat, x)
        views = effective_a(v.a, v.g, st.tie_a) * jnp.asarray(problem.unit)
        nominal = jnp.radians(jnp.asarray(obs.tilts_deg))
        return reporting_frame(model, views, v.b, nominal, result.settings.frame_rule(model))[0]

    @jax.jit
    def propagate(flat):
        jac = jax.jacfwd(residuals)(flat) * free
        inverse = jnp.linalg.inv(jac.T @ jac + jnp.diag(1 - free)) * free[:, None] * free[None, :]
        frame = jax.jacfwd(reported)(flat)  # (n_views, k, P)
        return jnp.einsum("vkp,pq,vlq->vkl", frame, inverse, frame), jnp.sum(residuals(flat) ** 2)

    covariance, rss = propagate(_flatten(x))
    sigma2 = float(rss) / (2 * obs.n_observed - problem.n_free)
    return problem.eliminate, sigma2 * np.asarray(covariance)


def test_covariance_equals_dense_reference(small):
    _, result, cov = small
    eliminate, dense = dense_reported_covariance(result)
    assert eliminate == "a" and final_problem(result).x0.g.shape == (3,)
    scale = np.sqrt(np.einsum("vkk->vk", dense))
    np.testing.assert_allclose(cov.view_covariance, dense, atol=1e-9 * scale.max() ** 2 + 1e-14)
    # the reported frame moves the shifts by the mean-z uncertainty: they are not the plain gauge SEs
    assert (np.diagonal(cov.view_covariance, axis1=1, axis2=2) >= 0).all()


IMOD_MODES = {"skew": "fixed", "rotation": "shared"}


def imod_series(thickness):
    """5 views, 16 markers (markers eliminated in the Schur complement) under the imod model
    with per-view x-stretch."""
    return simulate(
        n_views=5,
        n_markers=16,
        seed=4,
        noise_px=0.3,
        thickness_px=thickness,
        model="imod",
        extra={"xstretch": (0.0, 0.01)},
    )


@pytest.fixture(scope="module")
def imod_thick():
    return result_at_truth(imod_series(300.0), "imod", IMOD_MODES)


def test_covariance_with_shared_rotation_and_markers_eliminated(imod_thick):
    eliminate, dense = dense_reported_covariance(imod_thick)
    assert eliminate == "b"
    cov = alignment_covariance(imod_thick)
    np.testing.assert_allclose(cov.view_covariance, dense, atol=1e-9 * np.abs(dense).max())
    rotation = get_model("imod").index("rotation")
    assert (
        np.ptp(cov.view_covariance[:, rotation, rotation])
        < 1e-12 * cov.view_covariance[0, rotation, rotation]
    )
    assert cov.degeneracies == ()  # a thick specimen: x-stretch and tilt are told apart


def test_misregistration_equals_finite_difference_propagation(small):
    """m(X)^2 = mean over views of trace(G C G^T), G by central differences of the projection."""
    _, result, cov = small
    model = result.model
    h = 1e-6
    n, k = result.views.shape
    grads = np.empty((n, len(POINTS), 2, k))
    for p in range(k):
        step = np.zeros(k)
        step[p] = h
        plus = project_all(model, result.views + step, POINTS)
        minus = project_all(model, result.views - step, POINTS)
        grads[..., p] = (plus - minus) / (2 * h)
    expected = np.sqrt(np.einsum("vpik,vkl,vpil->pv", grads, cov.view_covariance, grads).mean(axis=1))
    got = misregistration(result, POINTS)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(misregistration(cov, POINTS), got, rtol=1e-12)
    assert misregistration(cov, np.zeros((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        misregistration(cov, np.zeros((4, 2)))


def test_map_matches_points(small):
    series, result, cov = small
    grid = misregistration_map(cov, series.observations.image_size, result.markers, n_xy=5, n_z=7)
    x, y, z = (np.array(grid[key]) for key in ("x_px", "y_px", "z_px"))
    assert x[0] == -x[-1] == -series.observations.image_size[0] / 2
    gx, gy = np.meshgrid(x, y)
    plane = misregistration(cov, np.column_stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)]))
    np.testing.assert_allclose(np.array(grid["xy_map_px"]).ravel(), plane, rtol=1e-12)
    line = misregistration(cov, np.column_stack([np.zeros_like(z), np.zeros_like(z), z]))
    np.testing.assert_allclose(grid["z_profile_px"], line, rtol=1e-12)
    assert plane.max() > line.min()  # farther from the markers, larger


def test_monte_carlo_spread_of_projections_matches_prediction(replicas):
    """Re-solve with fresh noise R times; the spread of each point's projections matches the
    prediction. The estimate of a standard deviation from R samples has relative standard error
    1/sqrt(2 (R - 1)) (fewer for our RMS over views and two coordinates, which average several);
    R = 451 makes 3 of those 10 %."""
    _, results, cov = replicas
    tolerance = 3 / np.sqrt(2 * (REPLICAS - 1))
    assert tolerance <= 0.1
    predicted = misregistration(cov, POINTS) * NOISE / cov.sigma_px  # the true noise, not its estimate
    projected = np.stack([project_all(r.model, r.views, POINTS) for r in results])  # (R, views, points, 2)
    spread = np.sqrt(projected.var(axis=0, ddof=1).sum(axis=-1).mean(axis=0))
    np.testing.assert_allclose(spread / predicted, 1.0, atol=tolerance)
    assert cov.degeneracies == ()  # a well-posed series: nothing flagged


def test_degenerate_directions_are_named():
    """A flat specimen under the imod model: a view's x-stretch and its tilt both only shrink
    the x of flat markers, so the data cannot tell them apart (a thick one can: above)."""
    flat = alignment_covariance(result_at_truth(imod_series(6.0), "imod", IMOD_MODES))
    assert flat.degeneracies
    for d in flat.degeneracies:
        assert {m.parameter for m in d.members if m.kind == "view"} == {"tilt", "xstretch"}
        assert d.information < 0.01
    words = describe_degeneracy(flat.degeneracies[0], np.arange(1, 6))
    assert "tilt of view" in words and "x-stretch of view" in words and "nearly interchangeable" in words


@pytest.fixture(scope="module")
def aligned(small, tmp_path_factory):
    """The record (``synthetic.json``) and figure of the first replica, written as ``lmalign align``
    does, its 9 views being views 1-5 and 7-10 of a 10-view file (view 6 excluded)."""
    truth, result, cov = small
    n = result.views.shape[0]
    view_index = np.r_[0:5, 6:10]
    nominal = np.insert(result.observations.tilts_deg, 5, 0.5 * sum(result.observations.tilts_deg[4:6]))
    fv = expand_to_file_views(result, view_index, nominal)
    errors = Uncertainty(
        "jou",
        np.zeros((n, 5)),
        np.zeros((6, 3)),
        cov.sigma_px,
        np.zeros(result.observations.mask.shape + (2,)),
        np.zeros((n, 6)),
        covariance=cov,
    )
    record = build_record(result, fv, marker_ids=np.arange(6), inputs={}, options={}, errors=errors)
    folder = tmp_path_factory.mktemp("misregistration")
    (folder / "synthetic.json").write_text(record_to_json(record))
    (folder / "synthetic.png").write_bytes(render_figure(result, fv, record, errors=errors))
    assert "Predicted misregistration (1 sd" in format_summary(record)
    return folder


def test_record_holds_covariance_in_file_views(aligned, small):
    _, result, cov = small
    record = json.loads((aligned / "synthetic.json").read_text())
    assert "parameter_covariance" not in record["views"][5] and record["views"][5]["excluded"]
    stored = np.array([v["parameter_covariance"] for v in record["views"] if not v["excluded"]])
    degrees = np.array([1.0, np.degrees(1.0), np.degrees(1.0), 1.0, 1.0])  # scale, rotation, tilt, dx, dy
    np.testing.assert_allclose(stored, cov.view_covariance * np.outer(degrees, degrees), rtol=1e-12)
    back = read_covariance(str(aligned / "synthetic.json"))
    np.testing.assert_allclose(back.view_covariance, cov.view_covariance, rtol=1e-12)
    np.testing.assert_allclose(back.views, result.views, rtol=1e-12, atol=1e-12)
    assert record["misregistration"]["near_degenerate"] == []


def test_record_map_round_trips_through_the_cli(aligned, tmp_path):
    record = json.loads((aligned / "synthetic.json").read_text())
    section = record["misregistration"]
    x, y = np.array(section["map"]["x_px"]), np.array(section["map"]["y_px"])
    gx, gy = np.meshgrid(x, y)
    points = np.column_stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)])
    csv = tmp_path / "grid.csv"
    csv.write_text("x,y,z\n" + "".join(f"{a:.6f},{b:.6f},{c:.6f}\n" for a, b, c in points))
    rc, out, err = run(
        ["uncertainty", aligned / "synthetic.json", "--points", csv, "--out", tmp_path / "out.csv"]
    )
    assert rc == 0, err
    table = np.loadtxt(tmp_path / "out.csv", delimiter=",", comments="#", skiprows=3)
    np.testing.assert_allclose(table[:, 1:4], points, atol=1e-3)
    np.testing.assert_allclose(table[:, 4], np.ravel(section["map"]["xy_map_px"]), rtol=1e-4)
    assert section["at_centre_px"] == pytest.approx(table[gx.size // 2, 4], rel=1e-4)
    assert f"{gx.size} points" in out
    png = (aligned / "synthetic.png").read_bytes()
    assert int.from_bytes(png[20:24], "big") == 1425  # three rows of panels (two are 950 px tall)


def test_star_coordinates_match_csv(aligned, tmp_path):
    covariance = read_covariance(str(aligned / "synthetic.json"))
    expected = misregistration(covariance, POINTS)
    angst = 2.5
    optics = "data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnTomoTiltSeriesPixelSize #2\n1 2.5\n\n"
    rows = "".join(f"TS_01 {x * angst} {y * angst} {z * angst} 1\n" for x, y, z in POINTS)
    rows += "TS_02 0 0 0 1\n"
    header = "data_particles\n\nloop_\n_rlnTomoName #1\n_rlnCenteredCoordinateXAngst #2\n"
    header += "_rlnCenteredCoordinateYAngst #3\n_rlnCenteredCoordinateZAngst #4\n_rlnOpticsGroup #5\n"
    star = tmp_path / "relion5.star"
    star.write_text(optics + header + rows)
    np.testing.assert_allclose(read_points(star, tomo_name="TS_01"), POINTS, atol=1e-9)
    rc, out, err = run(["uncertainty", aligned / "synthetic.json", "--points", star, "--tomo", "TS_01"])
    assert rc == 0, err
    assert f"max {expected.max():.3f} px" in out
    size = (2048.0, 2048.0, 600.0)
    corner = tmp_path / "relion4.star"
    corner.write_text(
        "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
        + "".join(f"{x + size[0] / 2} {y + size[1] / 2} {z + size[2] / 2}\n" for x, y, z in POINTS)
    )
    np.testing.assert_allclose(read_points(corner, tomogram_size=size), POINTS, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "text", "extra", "message"),
    [
        ("bad.csv", "x,y,z\n1,2,3\n4,oops,6\n", [], r"bad\.csv:3: not a number"),
        ("short.csv", "1,2,3\n4,5\n", [], r"short\.csv:2: expected 3 numbers"),
        ("empty.csv", "# nothing\n", [], r"empty\.csv: no points"),
        ("cols.star", "data_particles\n\nloop_\n_rlnAngleRot #1\n10\n", [], "no particle coordinates"),
        (
            "nan.star",
            "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
            "1 2 3\n4 x 6\n",
            ["--tomogram-size", 100, 100, 50],
            r"nan\.star:8: rlnCoordinateY of particle 2",
        ),
        (
            "realnan.star",
            "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
            "1 2 3\n4 nan 6\n",
            ["--tomogram-size", 100, 100, 50],
            r"realnan\.star:8: rlnCoordinateY of particle 2 is not a finite number: nan$",
        ),
        (
            "corner.star",
            "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n1 2 3\n",
            [],
            "give the tomogram size",
        ),
        (
            "two.star",
            "data_particles\n\nloop_\n_rlnTomoName #1\n_rlnCenteredCoordinateXAngst #2\n"
            "_rlnCenteredCoordinateYAngst #3\n_rlnCenteredCoordinateZAngst #4\na 0 0 0\nb 0 0 0\n",
            ["--pixel-size", 1],
            "particles of 2 tomograms",
        ),
        (
            "nopix.star",
            "data_particles\n\nloop_\n_rlnCenteredCoordinateXAngst #1\n"
            "_rlnCenteredCoordinateYAngst #2\n_rlnCenteredCoordinateZAngst #3\n0 0 0\n",
            [],
            "give the pixel size",
        ),
    ],
)
def test_bad_point_files_exit_2_naming_file_and_line(aligned, tmp_path, name, text, extra, message):
    path = tmp_path / name
    path.write_text(text)
    rc, out, err = run(["uncertainty", aligned / "synthetic.json", "--points", path, *extra])
    assert rc == 2 and out == ""
    assert err.startswith("lmalign: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_records_without_covariance_are_refused(aligned, tmp_path):
    points = tmp_path / "p.csv"
    points.write_text("0,0,0\n")
    record = json.loads((aligned / "synthetic.json").read_text())
    for view in record["views"]:
        view.pop("parameter_covariance", None)
    stripped = tmp_path / "old.json"
    stripped.write_text(json.dumps(record))
    rc, _, err = run(["uncertainty", stripped, "--points", points])
    assert rc == 2 and "has no parameter covariance" in err and "old.json" in err
    (tmp_path / "junk.json").write_text("{not json")
    rc, _, err = run(["uncertainty", tmp_path / "junk.json", "--points", points])
    assert rc == 2 and "junk.json:1: not valid JSON" in err
    with pytest.raises(InputError, match="pixel_size only applies to a RELION"):
        read_points(points, pixel_size=1.0)
    with pytest.raises(InputError, match="pixel_size, tomo_name only apply to a RELION"):
        read_points(points, pixel_size=1.0, tomo_name="TS_01")


def test_out_is_checked_before_any_work_and_never_overwrites_an_input(aligned, tmp_path):
    points = tmp_path / "p.csv"
    points.write_text("0,0,0\n")
    record = tmp_path / "rec.json"
    record.write_bytes((aligned / "synthetic.json").read_bytes())
    for out, message in (
        (record, "would overwrite the input"),
        (points, "would overwrite the input"),
        (tmp_path / "missing" / "m.csv", "does not exist"),
        (tmp_path, "is a folder"),
    ):
        rc, text, err = run(["uncertainty", record, "--points", points, "--out", out])
        assert rc == 2 and text == "", (out, err)
        assert message in err and str(out) in err and ".tmp" not in err, err
    assert record.read_bytes() == (aligned / "synthetic.json").read_bytes()
    assert points.read_text() == "0,0,0\n"


def test_a_point_far_outside_the_tomogram_is_refused(aligned, tmp_path):
    points = tmp_path / "far.csv"
    points.write_text("0,0,0\n0,0,1e308\n")
    rc, out, err = run(["uncertainty", aligned / "synthetic.json", "--points", points])
    assert rc == 2 and out == "", err  # this record has no image size: the value is not finite
    assert "far.csv: point 2: its misregistration is not finite" in err
    record = json.loads((aligned / "synthetic.json").read_text())
    record["inputs"] = {"image_size": [512, 512]}
    sized = tmp_path / "sized.json"
    sized.write_text(json.dumps(record))
    rc, out, err = run(["uncertainty", sized, "--points", points])
    assert rc == 2 and out == "", err
    assert "far.csv: point 2 at (0, 0, 1e+308) px is more than 10 image sizes (5120 px)" in err
    points.write_text("0,0,0\n0,0,3000\n")  # outside the image, within reach: evaluated
    rc, out, err = run(["uncertainty", sized, "--points", points])
    assert rc == 0 and "inf" not in out, err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("negative", r"bad\.json: view 3: parameter_covariance is not a covariance \(a negative variance"),
        ("asymmetric", r"bad\.json: view 3: parameter_covariance is not a covariance"),
        ("unconverged", r"bad\.json: this alignment did not converge \(summary\.converged is false\); there"),
    ],
)
def test_a_record_that_gives_no_valid_misregistration_is_refused(aligned, tmp_path, edit, message):
    """A covariance with a negative variance or not symmetric (it gave 0.000 px), or an alignment
    that did not converge: exit 2 naming the record (and the view), no numbers."""
    points = tmp_path / "p.csv"
    points.write_text("0,0,0\n100,50,20\n")
    record = json.loads((aligned / "synthetic.json").read_text())
    cov = record["views"][2]["parameter_covariance"]
    if edit == "negative":
        cov[0][0] = -1e6
    elif edit == "asymmetric":
        cov[0][3] = cov[3][0] + 1.0
    else:
        record["summary"]["converged"] = False
    (tmp_path / "bad.json").write_text(json.dumps(record))
    rc, out, err = run(["uncertainty", tmp_path / "bad.json", "--points", points])
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_relion_options_with_a_csv_name_the_option(aligned, tmp_path):
    points = tmp_path / "p.csv"
    points.write_text("0,0,0\n")
    rc, out, err = run(["uncertainty", aligned / "synthetic.json", "--points", points, "--tomo", "XX"])
    assert rc == 2 and out == ""
    assert f"--tomo only applies to a RELION .star file of points; {points} is read as a CSV" in err, err
    assert "tomo_name" not in err
