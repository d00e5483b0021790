"""The generic L-M engine: Schur step = dense step, honest statuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmalign_jax import LMConfig, Status, get_model, simulate
from lmalign_jax.core.problem import build_problem
from lmalign_jax.solve import _linearize, _schur, damped_step, dense_step, least_squares, linearize


@pytest.fixture(scope="module")
def small_series():
    return simulate(n_views=13, n_markers=7, missing_fraction=0.15, seed=4)


# Compiled whole: run op by op, each step's two ``lax.cond`` branches and every small op
# compile separately for each problem shape (seconds per case). Keyed on the residual function
# and the block set, as the solver's own jit is.
_linearize_jit = jax.jit(linearize, static_argnums=0, static_argnames="chunk")
_step_jit = jax.jit(damped_step, static_argnums=2)
_dense_jit = jax.jit(dense_step, static_argnums=0)


def _perturbed_problem(series, modes, marker_free=None, model="jou"):
    m = get_model(model)
    views = series.views.copy()
    views[:, m.index("rotation")] += 0.02
    views[:, m.index("dx")] += 3.0
    markers = series.markers + np.array([2.0, -1.0, 4.0])
    free = np.ones((series.observations.n_markers, 3), bool) if marker_free is None else marker_free
    return build_problem(m, series.observations, views, markers, modes, free)


CASES = {
    "per-view": {},
    "shared rotation": {"rotation": "shared"},
    "grouped": {"scale": "group:4", "rotation": "group:3", "tilt": "group:5"},
    "linear": {"scale": "linear:4", "rotation": "linear:3", "tilt": "linear:5"},
    "tilts fixed": {"tilt": "fixed"},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("eliminate", ["a", "b"])
@pytest.mark.parametrize("damping", [0.0, 1e-2])
def test_schur_step_equals_dense_step(small_series, case, eliminate, damping):
    problem = _perturbed_problem(small_series, CASES[case])
    lin = _linearize_jit(problem.fn, problem.x0, problem.structure)
    schur, _ = _step_jit(lin, damping, eliminate)
    dense = _dense_jit(problem.fn, problem.x0, problem.structure, damping)
    scale = max(float(jnp.max(jnp.abs(d))) for d in dense if d.size)
    for s, d in zip(schur, dense, strict=True):
        np.testing.assert_allclose(s, d, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("eliminate", ["a", "b"])
def test_schur_step_with_markers_fixed(small_series, eliminate):
    """No marker free: eliminating views, or the uncoupled shortcut when eliminating markers."""
    n = small_series.observations.n_markers
    problem = _perturbed_problem(small_series, {"rotation": "group:4"}, marker_free=np.zeros((n, 3), bool))
    lin = _linearize_jit(problem.fn, problem.x0, problem.structure)
    assert not bool(lin.b_free)
    schur, _ = _step_jit(lin, 1e-3, eliminate)
    dense = _dense_jit(problem.fn, problem.x0, problem.structure, 1e-3)
    np.testing.assert_allclose(schur.a, dense.a, atol=1e-10 * float(jnp.max(jnp.abs(dense.a))))
    np.testing.assert_allclose(schur.g, dense.g, atol=1e-10 * float(jnp.max(jnp.abs(dense.a))))
    assert float(jnp.max(jnp.abs(schur.b))) == 0.0


def test_fixed_entries_do_not_move(small_series):
    problem = _perturbed_problem(small_series, {"scale": "fixed"})
    sol = least_squares(problem.fn, problem.x0, problem.structure, eliminate=problem.eliminate)
    assert Status(int(sol.status)) == Status.CONVERGED
    views, _ = problem.to_model_units(sol.x)
    np.testing.assert_allclose(views[:, 0], small_series.views[:, 0], rtol=1e-14)


def test_shared_parameter_takes_one_value(small_series):
    problem = _perturbed_problem(small_series, {"rotation": "shared"})
    sol = least_squares(problem.fn, problem.x0, problem.structure, eliminate=problem.eliminate)
    views, _ = problem.to_model_units(sol.x)
    assert np.ptp(views[:, 1]) == 0.0
    assert abs(views[0, 1] - np.radians(-12.0)) < np.radians(0.2)


def test_max_iterations_is_reported(small_series):
    problem = _perturbed_problem(small_series, {})
    sol = least_squares(
        problem.fn,
        problem.x0,
        problem.structure,
        eliminate=problem.eliminate,
        config=LMConfig(max_iterations=1),
    )
    assert Status(int(sol.status)) == Status.MAX_ITERATIONS
    assert int(sol.iterations) == 1


def test_non_finite_start_fails_honestly(small_series):
    problem = _perturbed_problem(small_series, {})
    x0 = problem.x0._replace(b=problem.x0.b.at[0, 0].set(jnp.nan))
    sol = least_squares(problem.fn, x0, problem.structure, eliminate=problem.eliminate)
    assert Status(int(sol.status)) == Status.FAILED
    assert Status.FAILED.message.startswith("failed")


def test_exact_data_converges_to_zero_cost():
    series = simulate(n_views=13, n_markers=7, noise_px=0.0, seed=5)
    problem = _perturbed_problem(series, {})
    sol = least_squares(problem.fn, problem.x0, problem.structure, eliminate=problem.eliminate)
    assert Status(int(sol.status)) == Status.CONVERGED
    assert float(sol.cost) < 1e-12


@pytest.mark.parametrize("chunk", [2, 3, 6])
def test_linearization_in_marker_chunks_equals_whole(small_series, chunk):
    """Large problems are linearised chunk by chunk over markers; the last chunk is shifted
    back and overlaps the one before it, and overlapping markers must not count twice."""
    problem = _perturbed_problem(small_series, {"rotation": "group:3"})
    whole = _linearize_jit(problem.fn, problem.x0, problem.structure)
    chunked = _linearize_jit(problem.fn, problem.x0, problem.structure, chunk=chunk)
    for name, u, v in zip(whole._fields, whole, chunked, strict=True):
        u, v = np.asarray(u, float), np.asarray(v, float)
        np.testing.assert_allclose(
            v, u, rtol=1e-12, atol=1e-12 * max(np.max(np.abs(u), initial=0.0), 1.0), err_msg=name
        )


@pytest.mark.parametrize("eliminate", ["a", "b"])
def test_schur_step_streamed_over_marker_chunks(small_series, eliminate, monkeypatch):
    """Large problems form the Schur complement chunk by chunk (the last chunk overlapping)."""
    three_markers = 3 * small_series.observations.n_views  # 7 markers: chunks 0-2, 3-5, 4-6
    monkeypatch.setattr(_linearize, "PAIRS_PER_CHUNK", three_markers)
    monkeypatch.setattr(_schur, "STEP_PAIRS", three_markers)
    problem = _perturbed_problem(small_series, {"rotation": "group:3", "scale": "shared"})
    # traced afresh (new functions), so the patched chunk sizes are the ones compiled in
    lin = jax.jit(lambda x, s: linearize(problem.fn, x, s))(problem.x0, problem.structure)
    schur, _ = jax.jit(lambda lin: damped_step(lin, 1e-2, eliminate))(lin)
    dense = _dense_jit(problem.fn, problem.x0, problem.structure, 1e-2)
    scale = max(float(jnp.max(jnp.abs(d))) for d in dense if d.size)
    for s, d in zip(schur, dense, strict=True):
        np.testing.assert_allclose(s, d, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_inverse_cholesky_blocks(k):
    """L^{-1} of every block (unrolled for small blocks, LAPACK above): L^{-1} H L^{-T} = I with
    L^{-1} lower triangular; a block that is not positive definite gives NaN, not a number."""
    rng = np.random.default_rng(k)
    a = rng.normal(size=(6, k, k + 2))
    h = a @ np.swapaxes(a, 1, 2) + 1e-3 * np.eye(k)
    h[5] = -np.eye(k)
    inv = np.asarray(_schur.inverse_cholesky_blocks(jnp.asarray(h)))
    np.testing.assert_allclose(
        inv[:5] @ h[:5] @ np.swapaxes(inv[:5], 1, 2), np.broadcast_to(np.eye(k), (5, k, k)), atol=1e-9
    )
    assert np.all(np.triu(inv[:5], 1) == 0)
    assert np.isnan(inv[5]).any()
