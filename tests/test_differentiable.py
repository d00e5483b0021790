"""Implicit differentiation through the alignment agrees with finite differences of re-solves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmalign_jax import LMConfig, Observations, align, simulate
from lmalign_jax.analysis.differentiable import alignment_function


@pytest.fixture(scope="module")
def series():
    return simulate(n_views=15, n_markers=8, seed=2, missing_fraction=0.1)


def _inputs(obs):
    return jnp.asarray(np.where(obs.mask[..., None], obs.xy, 0.0)), jnp.asarray(obs.tilts_deg)


@pytest.mark.parametrize(
    "modes", [{}, {"tilt": "fixed"}, {"rotation": "shared"}, {"tilt": "linear:4", "rotation": "group:5"}]
)
def test_gradients_match_central_differences(series, modes):
    obs = series.observations
    # tight tolerances: the finite differences below resolve 1e-7 of the objective
    f = alignment_function(
        align(obs, modes=modes), config=LMConfig(cost_tol=1e-16, step_tol=1e-14, gradient_tol=0.0)
    )
    xy, tilts = _inputs(obs)
    rng = np.random.default_rng(0)
    views, markers = f(xy, tilts)
    w_views, w_markers = rng.normal(size=views.shape), rng.normal(size=markers.shape)

    def objective(xy, tilts):
        v, m = f(xy, tilts)
        return jnp.sum(w_views * v) + 1e-3 * jnp.sum(w_markers * m)

    # compiled: run op by op, the backward pass's Schur steps compile each small op separately
    g_xy, g_tilts = jax.jit(jax.grad(objective, argnums=(0, 1)))(xy, tilts)
    assert np.all(np.asarray(g_xy)[~obs.mask] == 0)  # unobserved entries do not matter
    h = 1e-2  # larger steps keep the re-solves' round-off (~1e-8 of the objective) out of the quotient
    for _ in range(2):
        d_xy = rng.normal(size=xy.shape) * obs.mask[..., None]
        d_t = rng.normal(size=tilts.shape)
        fd_xy = (objective(xy + h * d_xy, tilts) - objective(xy - h * d_xy, tilts)) / (2 * h)
        fd_t = (objective(xy, tilts + h * d_t) - objective(xy, tilts - h * d_t)) / (2 * h)
        np.testing.assert_allclose(jnp.sum(g_xy * d_xy), fd_xy, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(jnp.sum(g_tilts * d_t), fd_t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("modes", [{"tilt": "group:4"}, {"tilt": "linear:4"}])
def test_grouped_tilts_follow_the_nominal_tilts_given(series, modes):
    """Grouped tilts share a change from their nominal angles: the function at other nominal
    tilts is the alignment of the series with those tilts (not the first series' angles)."""
    obs = series.observations
    tight = LMConfig(cost_tol=1e-16, step_tol=1e-14, gradient_tol=0.0)
    f = alignment_function(align(obs, modes=modes), config=tight)
    xy, tilts = _inputs(obs)
    shifted = tilts.at[3].add(0.5).at[10].add(-0.3)
    with jax.enable_x64(True):
        views, _ = f(jnp.asarray(xy, jnp.float64), jnp.asarray(shifted, jnp.float64))
    again = align(
        Observations(obs.xy, obs.mask, np.asarray(shifted), obs.image_size), modes=modes, config=tight
    )
    np.testing.assert_allclose(np.degrees(np.asarray(views)[:, 2]), again.tilts_deg, atol=1e-6)


def test_reproduces_the_alignment(series):
    result = align(series.observations)
    views, markers = alignment_function(result)(*_inputs(series.observations))
    np.testing.assert_allclose(views[:, :3], result.views[:, :3], atol=1e-9)  # scale, rotation, tilt
    np.testing.assert_allclose(markers[:, 2], result.markers[:, 2], atol=1e-6)


def test_jit_vmap_and_grad_compose(series):
    obs = series.observations
    f = alignment_function(align(obs))
    xy, tilts = _inputs(obs)

    def tilt_of_view(xy):
        return f(xy, tilts)[0][3, 2]

    # jit outside grad and grad outside jit give one gradient (both compiled: eager while-loops are slow)
    outer = jax.jit(jax.grad(tilt_of_view))(xy)
    inner = jax.grad(jax.jit(tilt_of_view))(xy)
    np.testing.assert_allclose(outer, inner, rtol=1e-10, atol=1e-14)
    batch = jnp.stack([xy, xy + 0.3 * obs.mask[..., None]])
    single = jax.jit(lambda q: f(q, tilts)[0])
    batched = jax.jit(jax.vmap(lambda q: f(q, tilts)[0]))(batch)
    for i in range(2):
        np.testing.assert_allclose(batched[i], single(batch[i]), atol=1e-9)
    # d tilt(view 3) / d every clicked coordinate: only observed points, and view 3's own among them
    assert outer.shape == xy.shape
    assert np.all(np.asarray(outer)[~obs.mask] == 0) and np.abs(np.asarray(outer)[3]).sum() > 0
