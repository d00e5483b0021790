"""Deformation models (warp, shape): judged by the error of the predicted positions against the
simulator's noise-free ones, compared by BIC and leave-out residual, and the solver's
regularization hook checked against the dense oracle and finite differences.

Expected sizes. With Gaussian noise sigma per coordinate, a least-squares fit with p effective
parameters on N residual components predicts the noise-free positions with an RMS error of
about sigma sqrt(p / N): 0.5 sqrt(290 / 2460) = 0.17 px for jou on 41 views x 30 markers.
The deformation models' smoothness rows leave about 2 effective parameters per coefficient
(warp: ~302, shape: ~295), so their predicted error is ~1.02x the rigid one; on rigid data
the 10% bound of issue 15 is therefore a real margin, not a tuned one. On deformed data a
rigid fit carries the unmodelled deformation (several pixels) into its error.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmalign_jax import compare_models, get_model, simulate
from lmalign_jax.core.frame import project_all
from lmalign_jax.core.problem import build_problem
from lmalign_jax.solve import cost, damped_step, dense_step, linearize, pair_residuals

SERIES = dict(n_views=41, n_markers=30, seed=3)
FOLDS = 3  # leave-out folds: a third of the points held out each time
# One compilation each, shared by the tests on the small problem.
_linearize = jax.jit(linearize, static_argnums=0)
_cost = jax.jit(cost, static_argnums=0)


def prediction_error(result, series) -> float:
    """RMS (per coordinate) of predicted minus noise-free positions over the observed points."""
    obs = result.observations
    e = (obs.xy + result.residuals - series.clean_xy)[obs.mask]
    return float(np.sqrt(np.mean(e**2)))


@pytest.fixture(scope="module")
def rigid():
    series = simulate(**SERIES)
    return series, compare_models(series.observations, models=("jou", "warp", "shape"), folds=FOLDS)


@pytest.fixture(scope="module")
def warped():
    series = simulate(**SERIES, warp_px=12.0)
    return series, compare_models(series.observations, models=("jou", "warp"), folds=FOLDS)


@pytest.fixture(scope="module")
def domed():
    series = simulate(**SERIES, bend_px=40.0, shrink=0.1)
    return series, compare_models(series.observations, models=("jou", "shape"), folds=FOLDS)


def test_simulated_deformation_is_the_models_own(warped, domed):
    """The simulator's numpy deformation and the models' JAX ones agree exactly, so the
    recorded coefficients are the truth in model units; without deformation nothing changes."""
    for series, name in ((warped[0], "warp"), (domed[0], "shape")):
        views = np.column_stack([series.views, series.deformation[name]])
        predicted = project_all(get_model(name), views, series.markers) + series.observations.center
        np.testing.assert_allclose(predicted, series.clean_xy, atol=1e-9)
    plain = simulate(**SERIES)
    np.testing.assert_array_equal(plain.observations.xy, simulate(**SERIES, warp_px=0.0).observations.xy)
    np.testing.assert_array_equal(plain.markers, warped[0].markers)  # the same draws otherwise
    assert plain.deformation is None
    with pytest.raises(ValueError, match="needs model 'jou'"):
        simulate(n_views=5, n_markers=5, model="imod", warp_px=1.0)


def test_on_rigid_data_deformation_models_cost_at_most_ten_percent(rigid):
    series, table = rigid
    base = prediction_error(table.results["jou"], series)
    assert base < 0.5 * series.noise_px  # ~sigma sqrt(p/N) = 0.17 px
    for name in ("warp", "shape"):
        assert table.results[name].status == "converged"
        assert prediction_error(table.results[name], series) <= 1.10 * base
        # the smoothness rows leave few effective parameters beyond the rigid ones
        extra = table.row(name).effective_parameters - table.row("jou").n_free
        assert 0 < extra < 40, extra
    assert table.best_by_bic == "jou"
    verdicts = {v["model"]: v for v in table.deformation_verdicts()}
    assert set(verdicts) == {"warp", "shape"}
    assert not any(v["justified"] for v in verdicts.values())
    assert "warp over jou: not justified" in table.to_text()


def test_warp_model_recovers_a_warped_series(rigid, warped):
    series, table = warped
    floor = prediction_error(rigid[1].results["jou"], rigid[0])  # rigid model, rigid data
    assert prediction_error(table.results["warp"], series) <= 1.25 * floor
    assert prediction_error(table.results["jou"], series) >= 1.6 * floor
    (verdict,) = table.deformation_verdicts()
    assert verdict["justified_by_bic"] and verdict["justified_by_leave_out"]
    assert table.best_by_bic == table.best_by_leave_out == "warp"
    assert "warp over jou: justified" in table.to_text()


def test_shape_model_recovers_a_doming_thinning_specimen(rigid, domed):
    series, table = domed
    floor = prediction_error(rigid[1].results["jou"], rigid[0])
    assert prediction_error(table.results["shape"], series) <= 1.25 * floor
    assert prediction_error(table.results["jou"], series) >= 3.0 * floor
    (verdict,) = table.deformation_verdicts()
    assert verdict["justified"]
    assert table.to_dict()["deformation"][0]["model"] == "shape"


@pytest.fixture(scope="module")
def small_problem():
    """A small warp problem, off the optimum, with the rotation shared (a global slot)."""
    series = simulate(n_views=7, n_markers=6, seed=4, warp_px=5.0)
    m = get_model("warp")
    rng = np.random.default_rng(0)
    views = np.column_stack([series.views, series.deformation["warp"]])
    views[:, 5:] += rng.normal(0.0, 0.5, views[:, 5:].shape)
    views[:, m.index("dx")] += 2.0
    markers = series.markers + rng.normal(0.0, 2.0, series.markers.shape)
    free = np.ones((6, 3), bool)
    with jax.enable_x64(True):
        problem = build_problem(m, series.observations, views, markers, {"rotation": "shared"}, free)
    return problem


def test_regularization_hook_step_matches_dense_oracle(small_problem):
    """The Schur step with the smoothness rows equals the dense normal-equation step."""
    p = small_problem
    assert p.eliminate == "b"
    with jax.enable_x64(True):
        lin = _linearize(p.fn, p.x0, p.structure)
        schur = jax.jit(damped_step, static_argnums=2)
        dense = jax.jit(dense_step, static_argnums=0)
        for damping in (1e-3, 1e-1):  # Marquardt damping, its diagonal including the rows
            step, _ = schur(lin, damping, "b")
            oracle = dense(p.fn, p.x0, p.structure, damping)
            for got, want in zip(step, oracle, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
        with pytest.raises(ValueError, match="cannot be eliminated"):
            damped_step(lin, 0.0, "a")


def test_regularization_gradient_and_rows_match_finite_differences(small_problem):
    """The cost includes the rows; its autodiff gradient (as linearize reports it, the rows'
    Jacobian included, slots too) equals central differences of the cost."""
    p = small_problem
    s = p.structure
    with jax.enable_x64(True):
        lin = _linearize(p.fn, p.x0, s)
        rows = p.fn.regularization(p.x0.a, s.const)
        assert rows.shape == ((7 - 2) * 6,)
        np.testing.assert_allclose(lin.cost, _cost(p.fn, p.x0, s), rtol=1e-12)
        data_only = 0.5 * float(jnp.sum(jnp.square(pair_residuals(p.fn, p.x0, s))))
        np.testing.assert_allclose(float(lin.cost) - data_only, 0.5 * float(rows @ rows), rtol=1e-9)

        def cost_at(a, g):
            return float(_cost(p.fn, p.x0._replace(a=a, g=g), s))

        h = 1e-5
        free = np.argwhere(np.asarray(s.free_a))
        for view, col in free[np.random.default_rng(1).choice(len(free), 6, replace=False)]:
            e = jnp.zeros_like(p.x0.a).at[view, col].set(h)
            fd = (cost_at(p.x0.a + e, p.x0.g) - cost_at(p.x0.a - e, p.x0.g)) / (2 * h)
            np.testing.assert_allclose(lin.grad_a[view, col], fd, rtol=1e-5, atol=1e-6)
        e = jnp.zeros_like(p.x0.g).at[0].set(h)
        fd = (cost_at(p.x0.a, p.x0.g + e) - cost_at(p.x0.a, p.x0.g - e)) / (2 * h)
        np.testing.assert_allclose(lin.grad_g[0], fd, rtol=1e-5, atol=1e-6)


def test_a_deformation_models_noise_estimate_counts_its_effective_parameters():
    """Five markers, 41 views: the warp model has more free parameters (459) than coordinates
    (410), so align's noise estimate (RMS / sqrt(1 - n_free / 2N)) was 3.4e11 px, exit 0. Its
    smoothness rows leave about 225 effective parameters (the trace of the data's hat matrix:
    the leverages' sum), which the estimate now counts; it recovers the simulated noise within
    its scatter (relative sd 1 / sqrt(2 dof))."""
    from lmalign_jax import align, uncertainty
    from lmalign_jax.analysis.criteria import effective_parameter_count
    from lmalign_jax.workflow.fitting import fit_series
    from lmalign_jax.workflow.settings import AlignSettings

    series = simulate(n_markers=5, n_views=41, seed=2, noise_px=0.5)
    obs = series.observations
    bare = align(obs, model="warp")
    assert bare.n_free > 2 * obs.n_observed and np.isnan(bare.sigma_px)  # no n_free dof left
    errors = uncertainty(bare)
    effective = effective_parameter_count(bare)
    assert np.nansum(errors.leverage) == pytest.approx(effective, rel=1e-6)
    dof = 2 * obs.n_observed - effective
    assert dof > 100
    assert errors.sigma_px == pytest.approx(0.5, rel=4 / np.sqrt(2 * dof))
    fit = fit_series(obs, AlignSettings(model="warp"))
    assert fit.result.n_effective == pytest.approx(effective, rel=1e-6)
    assert fit.result.sigma_px == pytest.approx(errors.sigma_px, rel=1e-9)
    rigid = align(obs, model="jou")
    assert rigid.n_effective is None and rigid.n_parameters == rigid.n_free


def test_a_warp_whose_xf_alone_misaligns_is_warned_of(tmp_path):
    """Four views (three are refused: the per-view warp is then undetermined): the warp model's
    per-view deformation takes up much of the alignment, so its .xf (the rigid part, all IMOD's
    tilt reads) alone left the points far from the markers' projections with exit 0 and no word
    (audit, at three views: 34 px). align now says so when it exceeds 3 sigma."""
    from helpers import run_cli

    from lmalign_jax.io.tilts import write_tlt

    obs = simulate(n_views=4, n_markers=30, seed=3, tilt_range=(-30.0, 30.0)).observations
    views, markers = np.nonzero(obs.mask)
    lines = ["marker,view,x,y"] + [
        f"{m},{v},{float(obs.xy[v, m, 0])!r},{float(obs.xy[v, m, 1])!r}"
        for v, m in zip(views, markers, strict=True)
    ]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    write_tlt(tmp_path / "s.rawtlt", obs.tilts_deg)
    args = ["align", tmp_path / "s.csv", "--tilts", tmp_path / "s.rawtlt", "--image-size", 2048, 2048]
    args += ["--no-figure", "-q"]
    rc, _, err = run_cli([*args, "--model", "warp", "--out-dir", tmp_path / "w"])
    assert rc == 0 and "s.xf alone leaves the points" in err and "3 sigma" in err, err
    record = json.loads((tmp_path / "w" / "s.json").read_text())["summary"]
    assert max(record["aligned_check_rms_px"].values()) > 3 * record["sigma_px"]
    rc, _, err = run_cli([*args, "--out-dir", tmp_path / "j"])  # a rigid model: nothing to say
    assert rc == 0 and "alone leaves" not in err, err


def test_a_deformation_model_the_markers_cannot_determine_is_refused(tmp_path):
    """5 views x 4 markers with --model warp: 60 free parameters for 40 coordinates. align wrote
    every output with RMS 0.000 and 'noise estimate 0.000 px' and exit 0 (audit), then said the
    fit passes through every point; a quadratic warp passes through any 5 points, so it is now
    refused before the solve, naming the rule and writing nothing; jou on the same series aligns."""
    from helpers import run_cli

    rc, _, err = run_cli(["simulate", "--out-dir", tmp_path, "--views", 5, "--markers", 4, "--missing", 0])
    assert rc == 0, err
    series = [tmp_path / "synthetic.csv", "--tilts", tmp_path / "synthetic.rawtlt"]
    series += ["--image-size", 2048, 2048, "--no-figure"]
    rc, out, err = run_cli(["align", *series, "--model", "warp", "--out-dir", tmp_path / "warp"])
    assert rc == 2 and err.count("\n") == 1 and "--model warp" in err and "6 markers" in err, err
    assert not (tmp_path / "warp").exists()
    rc, out, err = run_cli(["align", *series, "--out-dir", tmp_path / "jou"])
    assert rc == 0 and "passes through every point" not in err


def test_warps_markers_sit_at_the_tomograms_centre():
    """warp's z translation is only nearly a symmetry, so one marker's z is held; held at its first
    estimate, it put BBa's markers 45 px below the centre (mean z -45.2 px, their z spread 80 px),
    which a tomogram as thick as the specimen would cut (audit). The last stage now runs once more
    from the markers at zero mean z: they end within 2 px of it, the fit as good as before (RMS
    0.2610 px against 0.2608) and better than jou's, which warp extends; align_batch does the same
    and gives the same answer (its answers are align()'s)."""
    from helpers import load_resid_observations

    from lmalign_jax import align, align_batch

    obs = load_resid_observations("BBa")
    warp, jou = align(obs, model="warp"), align(obs)
    assert abs(warp.markers[:, 2].mean()) < 2.0 and np.ptp(warp.markers[:, 2]) > 40
    assert warp.rms_residual_px < jou.rms_residual_px
    assert [r.name for r in warp.stages] == ["initial", "main", "tilt", "joint", "joint"]
    (batched,) = align_batch([obs], model="warp")
    np.testing.assert_allclose(batched.markers, warp.markers, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched.views, warp.views, rtol=0, atol=1e-6)


def test_the_reference_views_deformation_is_the_markers_own(warped, domed):
    """The gauge (module docstrings of models.shape and models.warp) fixes the deformation
    coefficients it names at the reference view, so the markers carry that view's shape. They
    were free in the tilt stage, where the markers are held, and came back off zero (shape's
    shrink -0.26 px on the domed series); they are now held in every stage: exactly 0."""
    from lmalign_jax.deformation_parameters import DEFORMATION_PARAMETERS

    for (_, table), name in ((warped, "warp"), (domed, "shape")):
        result = table.results[name]
        model = result.model
        ref = result.settings.ref_view
        ref = int(np.argmin(np.abs(result.tilts_deg))) if ref is None else ref
        held = [n for n in model.gauge if n in DEFORMATION_PARAMETERS[name]]
        assert held, name
        assert np.all(result.views[ref, [model.index(n) for n in held]] == 0.0), name
        # the other views' coefficients are not: the deformation is fitted
        assert np.abs(result.views[:, model.index(held[0])]).max() > 0.1, name
