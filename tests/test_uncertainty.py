"""Standard errors and leave-one-out residuals against dense references and Monte Carlo."""

import dataclasses
import importlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_resid_observations

from lmalign_jax import Observations, align, get_model, simulate
from lmalign_jax.analysis.uncertainty import uncertainty
from lmalign_jax.core.frame import project_all
from lmalign_jax.core.problem import build_problem
from lmalign_jax.solve import (
    effective_a,
    factored_solve,
    factorize,
    leverages,
    linearize,
    pair_jacobians,
    pair_residuals,
    variances,
)
from lmalign_jax.solve._dense import _flatten, _unflatten


@pytest.mark.parametrize(
    "modes",
    [
        {},
        {"rotation": "shared", "scale": "group:3"},
        {"rotation": "linear:3", "tilt": "linear:4", "scale": "group:3"},  # blended slots, tilt increments
    ],
)
@pytest.mark.parametrize("eliminate", ["a", "b"])
def test_schur_inverse_blocks_equal_dense_inverse(modes, eliminate):
    series = simulate(n_views=9, n_markers=6, seed=3, missing_fraction=0.1)
    problem = build_problem(
        get_model("jou"), series.observations, series.views, series.markers, modes, np.ones((6, 3), bool)
    )
    x, st = problem.x0, problem.structure
    # compiled whole: op by op, every small op compiles separately (seconds per case)
    lin = jax.jit(linearize, static_argnums=0)(problem.fn, x, st)

    def flat(v):
        return pair_residuals(problem.fn, _unflatten(v, x), st).reshape(-1)

    free = jnp.concatenate([st.free_a.reshape(-1), st.free_b.reshape(-1), st.free_g]).astype(float)
    jac = jax.jacfwd(flat)(_flatten(x)) * free
    inv = jnp.linalg.inv(jac.T @ jac + jnp.diag(1 - free)) * free[:, None] * free[None, :]
    dense = _unflatten(jnp.diag(inv), x)
    var_a, var_b = jax.jit(variances, static_argnums=2)(lin, st, eliminate)
    # each view entry's variance: the effective entry's (own, slot, or blend of two slots)
    to_entries = jax.jacfwd(lambda v: effective_a(*_unflatten(v, x)[::2], st.tie_a, st.tie_blend).reshape(-1))
    e = to_entries(_flatten(x))
    np.testing.assert_allclose(var_a.reshape(-1), jnp.diag(e @ inv @ e.T), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(var_b, dense.b, rtol=1e-8, atol=1e-12)

    jacobians = jax.jit(pair_jacobians, static_argnums=0)(problem.fn, x, st)
    hat = jax.jit(leverages, static_argnums=2)(lin, st, eliminate, jacobians)
    hat_dense = (jac @ inv @ jac.T).reshape(2, 9, 6, 2, 9, 6)
    expected = jnp.einsum("iabjab->abij", hat_dense)
    np.testing.assert_allclose(hat, expected, atol=1e-10)

    # solves with the one factorization: H^{-1} v on the free entries, 0 where v is 0
    v = _unflatten(jnp.asarray(np.random.default_rng(1).standard_normal(free.shape[0])) * free, x)
    solved = _flatten(jax.jit(lambda lin, v: factored_solve(factorize(lin, eliminate), eliminate, v))(lin, v))
    want = inv @ _flatten(v)
    np.testing.assert_allclose(solved, want, rtol=0, atol=1e-9 * float(jnp.max(jnp.abs(want))))


def test_leave_one_out_matches_refit():
    series = simulate(n_views=21, n_markers=10, seed=3, missing_fraction=0.1)
    obs = series.observations
    result = align(obs)
    unc = uncertainty(result)
    for view, marker in [(0, 1), (10, 3), (20, 5)]:
        assert obs.mask[view, marker]
        mask = obs.mask.copy()
        mask[view, marker] = False
        refit = align(
            Observations(obs.xy, mask, obs.tilts_deg, obs.image_size), start=result, stages=("joint",)
        )
        predicted = project_all(get_model("jou"), refit.views, refit.markers)[view, marker]
        np.testing.assert_allclose(
            unc.loo_residuals[view, marker], predicted - obs.centered_xy[view, marker], atol=2e-3
        )
    assert unc.loo_rms_px > result.rms_residual_px


def test_a_point_the_fit_cannot_do_without_has_no_leave_one_out_residual():
    """A view kept at exactly the 3 points jou's own parameters need, and a marker seen in only
    two views: leaving any of these 5 points out leaves the fit undetermined (I - H_ii singular),
    so there is no prediction. They were reported as the round-off's millions of pixels, which
    the leave-one-out RMS then showed (4.6e6 px on a small simulated series); now NaN, counted,
    and the RMS is over the others."""
    obs = simulate(n_views=21, n_markers=10, seed=3).observations
    mask = obs.mask.copy()
    mask[5, 3:] = False  # view 5 keeps markers 0, 1, 2
    mask[:, 7] = False
    mask[[2, 12], 7] = True  # marker 7 in two views
    assert mask[5].sum() == 3 and mask[:, 7].sum() == 2
    result = align(Observations(obs.xy, mask, obs.tilts_deg, obs.image_size))
    unc = uncertainty(result)
    missing = mask & np.isnan(unc.loo_residuals[..., 0])
    assert sorted(zip(*np.nonzero(missing), strict=True)) == [(2, 7), (5, 0), (5, 1), (5, 2), (12, 7)]
    assert unc.loo_undetermined == 5
    others = unc.loo_residuals[mask & ~missing]
    assert np.all(np.isfinite(others)) and np.max(np.abs(others)) < 20 * result.rms_residual_px
    assert result.rms_residual_px < unc.loo_rms_px < 3 * result.rms_residual_px


def test_standard_errors_match_monte_carlo_spread():
    """Over many noise draws the estimates scatter as the predicted standard errors say."""
    truth = simulate(n_views=21, n_markers=12, seed=30, noise_px=0.0)
    obs0 = truth.observations
    rng = np.random.default_rng(0)
    first = align(obs0)
    tilts, rotations, shifts, marker_xyz, chi2 = [], [], [], [], []
    predicted = None
    for _ in range(120):
        noisy = obs0.xy + 0.5 * rng.standard_normal(obs0.xy.shape)
        result = align(
            Observations(noisy, obs0.mask, obs0.tilts_deg, obs0.image_size), start=first, stages=("joint",)
        )
        if predicted is None:
            predicted = uncertainty(result)
        tilts.append(result.tilts_deg)
        rotations.append(result.rotation_deg)
        shifts.append(np.stack([result.parameter("dx"), result.parameter("dy")], axis=1))
        marker_xyz.append(result.markers)
        chi2.append(np.nansum(result.residuals**2) / 0.5**2)
    for name, samples, se in [
        ("tilt", np.array(tilts), predicted.parameter_se("tilt")),
        ("rotation", np.array(rotations), predicted.parameter_se("rotation")),
        # the shifts follow the markers' mean z into the reporting frame (they were reported
        # about 2x too large at high tilt before the frame's two scalars were propagated)
        (
            "shifts",
            np.array(shifts),
            np.stack([predicted.parameter_se("dx"), predicted.parameter_se("dy")], 1),
        ),
        ("marker x, y, z", np.array(marker_xyz), predicted.markers_se),
    ]:
        spread = samples.std(axis=0, ddof=1)
        ratio = np.sqrt(np.mean(spread**2)) / np.sqrt(np.mean(se**2))
        assert abs(ratio - 1) < 0.15, (name, ratio)
    dof = 2 * obs0.n_observed - first.n_free
    assert abs(np.mean(chi2) / dof - 1) < 0.05


def imod_series(seed=30, noise_px=0.5):
    """A small simulated imod-model series with per-view stretch and skew."""
    return simulate(
        n_views=21,
        n_markers=12,
        seed=seed,
        noise_px=noise_px,
        model="imod",
        extra={"xstretch": (0.0, 0.01), "skew": (0.0, 0.01)},
    )


def test_imod_gauge_leaves_no_null_direction_and_keeps_the_optimum():
    """Per-view image stretch and skew absorb an affine change of the markers' z exactly (three
    null directions at the reference view's gauge alone, models/imod.py). With the far-view
    gauge the normal matrix is regular, and the fit reaches the same minimum as without it."""
    series = imod_series()
    obs = series.observations
    imod = get_model("imod")
    with jax.enable_x64(True):

        def smallest_eigenvalues(model):
            problem = build_problem(model, obs, series.views, series.markers, {}, np.ones((12, 3), bool))
            x, st = problem.x0, problem.structure

            def flat(v):
                return pair_residuals(problem.fn, _unflatten(v, x), st).reshape(-1)

            free = np.concatenate([np.ravel(st.free_a), np.ravel(st.free_b), np.ravel(st.free_g)])
            jac = np.asarray(jax.jacfwd(flat)(_flatten(x)))[:, free]
            eig = np.linalg.eigvalsh(jac.T @ jac)
            return eig / eig[-1]

        without = smallest_eigenvalues(dataclasses.replace(imod, far_gauge=()))
        with_gauge = smallest_eigenvalues(imod)
    assert (without[:3] < 1e-12).all() and without[3] > 1e-6  # exactly three null directions
    assert with_gauge[0] > 1e-6
    gauged, ungauged = align(obs, model=imod), align(obs, model=dataclasses.replace(imod, far_gauge=()))
    assert gauged.converged and ungauged.converged
    np.testing.assert_allclose(gauged.rms_residual_px, ungauged.rms_residual_px, rtol=1e-6)
    assert np.isfinite(uncertainty(gauged).views_se).all()
    with pytest.warns(RuntimeWarning, match="singular"):
        uncertainty(ungauged)


def test_imod_standard_errors_match_monte_carlo_spread():
    """The imod model's tilt and rotation standard errors (in its gauge) against the scatter of
    refits over fresh noise draws; 60 draws give the RMS spread to about 5%."""
    obs0 = imod_series(noise_px=0.0).observations
    rng = np.random.default_rng(1)
    first = align(obs0, model="imod")
    tilts, rotations = [], []
    predicted = None
    for _ in range(60):
        noisy = obs0.xy + 0.5 * rng.standard_normal(obs0.xy.shape)
        noisy_obs = Observations(noisy, obs0.mask, obs0.tilts_deg, obs0.image_size)
        result = align(noisy_obs, model="imod", start=first, stages=("joint",))
        if predicted is None:
            predicted = uncertainty(result)
        tilts.append(result.tilts_deg)
        rotations.append(result.rotation_deg)
    for name, samples in [("tilt", np.array(tilts)), ("rotation", np.array(rotations))]:
        se = predicted.parameter_se(name)
        assert np.isfinite(se).all()
        spread = samples.std(axis=0, ddof=1)
        ratio = np.sqrt(np.mean(spread**2)) / np.sqrt(np.mean(se**2))
        assert abs(ratio - 1) < 0.2, (name, ratio)


def test_imod_errors_describe_fresh_full_alignments():
    """The imod model's tilt and x-stretch errors against the scatter of full alignments (every
    stage) of fresh noise draws. The gauge holds a tilt and x-stretch at two views where the
    tilt stage left them, which differs from draw to draw: reported as they were, those views'
    errors were 0 while their tilts moved by 0.05 degrees, and the others' errors were 1.4x
    their scatter. The reporting frame is now a function of the solution (models/imod.py).
    40 draws: each view's scatter is known to about 11% (chi, 39 degrees of freedom), so its
    ratio to the error lies in 0.55-1.55 (4 sigma either way), their RMS within 20%."""
    obs0 = imod_series(noise_px=0.0).observations
    rng = np.random.default_rng(2)
    values, errors = {"tilt": [], "xstretch": []}, {"tilt": [], "xstretch": []}
    for _ in range(40):
        noisy = obs0.xy + 0.5 * rng.standard_normal(obs0.xy.shape)
        result = align(Observations(noisy, obs0.mask, obs0.tilts_deg, obs0.image_size), model="imod")
        se = uncertainty(result)
        for name in values:
            values[name].append(result.views[:, result.model.index(name)])
            errors[name].append(se.views_se[:, result.model.index(name)])
    for name in values:
        spread = np.std(values[name], axis=0, ddof=1)
        error = np.sqrt(np.mean(np.square(errors[name]), axis=0))
        assert (error > 0).all(), name
        ratio = spread / error
        assert 0.55 < ratio.min() and ratio.max() < 1.55, (name, ratio.min(), ratio.max())
        assert abs(np.sqrt(np.mean(spread**2) / np.mean(error**2)) - 1) < 0.2, name


def test_imod_standard_errors_on_real_data_are_finite_and_near_jous():
    """BBa (real IMOD data): the imod model fits the same points as jou with per-view stretch
    and skew added, so its tilt and rotation errors are finite (NaN before its affine-z gauge was
    fixed) and mostly larger than jou's: rotations 1.2-1.7x here, tilts up to 1.4x at high tilt
    but alike near 0 degrees, where the two frames' tilts agree (both have zero mean deviation
    from nominal; the imod frame's x-z map moves a tilt t by terms in sin t cos t and sin^2 t,
    small near 0), so 0.95 is
    the floor. No view's tilt is exact: not even at the gauge's two views, whose tilts were held
    where the earlier stages left them."""
    obs = load_resid_observations("BBa")
    jou, imod = uncertainty(align(obs, model="jou")), uncertainty(align(obs, model="imod"))
    for name in ("tilt", "rotation"):
        se_imod, se_jou = imod.parameter_se(name), jou.parameter_se(name)
        assert np.isfinite(se_imod).all(), name
        ratio = se_imod / se_jou
        assert 0.95 < ratio.min() and ratio.max() < 3.0, (name, ratio.min(), ratio.max())
        assert np.median(ratio) > 1.1, name


def test_padded_errors_equal_the_unpadded_and_nearby_sizes_share_one_compile(monkeypatch):
    """The errors run on the problem padded as the solve pads it: one compiled computation
    serves series of nearby sizes (here 21 x 13 and 22 x 14, both padded to 24 x 16), and the
    numbers are those of the problem itself (padded views and markers are fixed, unobserved
    and left out of the reporting frame's means; the slots are padded too)."""
    C = importlib.import_module("lmalign_jax.analysis.covariance")
    U = importlib.import_module("lmalign_jax.analysis.uncertainty")  # the package exports the function
    # every one of the four weakest directions is named, whatever its information
    monkeypatch.setattr(U, "covariance_from_core", partial(C.covariance_from_core, degenerate_below=1.0))

    results = [
        align(simulate(n_views=n_v, n_markers=n_m, seed=3, missing_fraction=0.1).observations, modes=modes)
        for n_v, n_m, modes in ((21, 13, {"rotation": "group:5"}), (22, 14, {"rotation": "group:5"}))
    ]
    got = uncertainty(results[0], with_covariance=True)
    compiled = U._errors_core._cache_size()
    uncertainty(results[1], with_covariance=True)
    assert U._errors_core._cache_size() == compiled

    # the same problem unpadded (a compile of its own shape): the same numbers
    monkeypatch.setattr(C, "padded", lambda fn, x, s: (x, s, (x.a.shape[0], x.b.shape[0], x.g.shape[0])))
    want = uncertainty(results[0], with_covariance=True)
    for name in ("views_se", "markers_se", "loo_residuals", "leverage"):
        a, b = getattr(got, name), getattr(want, name)
        if name.endswith("_se"):  # variances: an SE the frame makes 0 is the root of round-off
            a, b = a**2, b**2
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.nanmax(np.abs(b)), err_msg=name)
    scale = np.sqrt(np.einsum("nii->ni", want.covariance.view_covariance))
    np.testing.assert_allclose(
        got.covariance.view_covariance / (scale[:, :, None] * scale[:, None, :] + 1e-300),
        want.covariance.view_covariance / (scale[:, :, None] * scale[:, None, :] + 1e-300),
        atol=1e-10,
    )
    # the weakest directions: the same, member by member (an eigenvector's sign is arbitrary)
    weak, want = got.covariance.degeneracies, want.covariance.degeneracies
    assert len(weak) == len(want) == C.N_DIRECTIONS
    for g, w in zip(weak, want, strict=True):
        assert g.information == pytest.approx(w.information, rel=1e-8, abs=1e-12)
        assert [(m.kind, m.parameter, m.view) for m in g.members] == [
            (m.kind, m.parameter, m.view) for m in w.members
        ]
        np.testing.assert_allclose(
            [abs(m.weight) for m in g.members], [abs(m.weight) for m in w.members], rtol=1e-6
        )
