"""Standard errors and leave-one-out residuals against dense references and Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmalign_jax import Observations, align, get_model, simulate
from lmalign_jax.analysis.uncertainty import uncertainty
from lmalign_jax.core.frame import project_all
from lmalign_jax.core.problem import build_problem
from lmalign_jax.solve import leverages, linearize, pair_jacobians, pair_residuals, variances
from lmalign_jax.solve._dense import _flatten, _unflatten


@pytest.mark.parametrize("modes", [{}, {"rotation": "shared", "scale": "group:3"}])
@pytest.mark.parametrize("eliminate", ["a", "b"])
def test_schur_inverse_blocks_equal_dense_inverse(modes, eliminate):
    series = simulate(n_views=9, n_markers=6, seed=3, missing_fraction=0.1)
    problem = build_problem(get_model("jou"), series.observations, series.views, series.markers, modes, np.ones((6, 3), bool))
    x, st = problem.x0, problem.structure
    lin = linearize(problem.fn, x, st)
    flat = lambda v: pair_residuals(problem.fn, _unflatten(v, x), st).reshape(-1)
    free = jnp.concatenate([st.free_a.reshape(-1), st.free_b.reshape(-1), st.free_g]).astype(float)
    jac = jax.jacfwd(flat)(_flatten(x)) * free
    inv = jnp.linalg.inv(jac.T @ jac + jnp.diag(1 - free)) * free[:, None] * free[None, :]
    dense = _unflatten(jnp.diag(inv), x)
    var_a, var_b = variances(lin, st, eliminate)
    tied = jnp.where(st.tie_a >= 0, dense.g[jnp.clip(st.tie_a, 0)] if x.g.size else 0.0, dense.a)
    np.testing.assert_allclose(var_a, tied, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(var_b, dense.b, rtol=1e-8, atol=1e-12)

    hat = leverages(lin, st, eliminate, pair_jacobians(problem.fn, x, st))
    hat_dense = (jac @ inv @ jac.T).reshape(2, 9, 6, 2, 9, 6)
    expected = jnp.einsum("iabjab->abij", hat_dense)
    np.testing.assert_allclose(hat, expected, atol=1e-10)


def test_leave_one_out_matches_refit():
    series = simulate(n_views=21, n_markers=10, seed=3, missing_fraction=0.1)
    obs = series.observations
    result = align(obs)
    unc = uncertainty(result)
    for view, marker in [(0, 1), (10, 3), (20, 5)]:
        assert obs.mask[view, marker]
        mask = obs.mask.copy()
        mask[view, marker] = False
        refit = align(Observations(obs.xy, mask, obs.tilts_deg, obs.image_size), start=result, stages=("joint",))
        predicted = project_all(get_model("jou"), refit.views, refit.markers)[view, marker]
        np.testing.assert_allclose(unc.loo_residuals[view, marker], predicted - obs.centered_xy[view, marker], atol=2e-3)
    assert unc.loo_rms_px > result.rms_residual_px


def test_standard_errors_match_monte_carlo_spread():
    """Over many noise draws the estimates scatter as the predicted standard errors say."""
    truth = simulate(n_views=21, n_markers=12, seed=30, noise_px=0.0)
    obs0 = truth.observations
    rng = np.random.default_rng(0)
    first = align(obs0)
    tilts, rotations, marker_xy, chi2 = [], [], [], []
    predicted = None
    for _ in range(120):
        noisy = obs0.xy + 0.5 * rng.standard_normal(obs0.xy.shape)
        result = align(Observations(noisy, obs0.mask, obs0.tilts_deg, obs0.image_size), start=first, stages=("joint",))
        if predicted is None:
            predicted = uncertainty(result)
        tilts.append(result.tilts_deg)
        rotations.append(result.rotation_deg)
        marker_xy.append(result.markers[:, :2])
        chi2.append(np.nansum(result.residuals**2) / 0.5**2)
    for name, samples, se in [
        ("tilt", np.array(tilts), predicted.parameter_se("tilt")),
        ("rotation", np.array(rotations), predicted.parameter_se("rotation")),
        ("marker x, y", np.array(marker_xy), predicted.markers_se[:, :2]),
    ]:
        spread = samples.std(axis=0, ddof=1)
        ratio = np.sqrt(np.mean(spread**2)) / np.sqrt(np.mean(se**2))
        assert abs(ratio - 1) < 0.15, (name, ratio)
    dof = 2 * obs0.n_observed - first.n_free
    assert abs(np.mean(chi2) / dof - 1) < 0.05
