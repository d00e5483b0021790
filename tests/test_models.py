"""Every registered projection model: shape contract, jit, autodiff against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmalign_jax import MODELS, get_model

MODEL_NAMES = sorted(MODELS)


def _random_view(model, rng):
    view = np.array(model.neutral, dtype=float)
    for p, kind in enumerate(model.kinds):
        view[p] += {"angle": 0.3, "ratio": 0.05, "length": 10.0}[kind] * rng.standard_normal()
    return jnp.asarray(view)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shape_and_jit(name):
    model = get_model(name)
    rng = np.random.default_rng(0)
    view, xyz = _random_view(model, rng), jnp.asarray(rng.normal(0, 200, 3))
    out = model.project(view, xyz)
    assert out.shape == (2,)
    np.testing.assert_allclose(jax.jit(model.project)(view, xyz), out, rtol=1e-12, atol=1e-9)
    batched = jax.vmap(model.project, in_axes=(None, 0))(view, jnp.stack([xyz, 2 * xyz]))
    np.testing.assert_allclose(batched[0], out, rtol=1e-12)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_elementwise_grid_evaluation_matches_vmap(name):
    """The solver evaluates models on (k, n_views, n_markers) grids: same values as per point."""
    model = get_model(name)
    rng = np.random.default_rng(3)
    views = jnp.stack([_random_view(model, rng) for _ in range(3)])  # (3, k)
    xyz = jnp.asarray(rng.normal(0, 200, (4, 3)))
    per_point = jax.vmap(jax.vmap(model.project, in_axes=(None, 0)), in_axes=(0, None))(views, xyz)
    grid = model.project(
        jnp.broadcast_to(views.T[:, :, None], (model.n_parameters, 3, 4)),
        jnp.broadcast_to(xyz.T[:, None, :], (3, 3, 4)),
    )
    np.testing.assert_allclose(jnp.moveaxis(grid, 0, -1), per_point, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_neutral_view_is_orthographic_projection(name):
    model = get_model(name)
    out = model.project(jnp.asarray(model.neutral), jnp.array([12.0, -30.0, 55.0]))
    np.testing.assert_allclose(out, [12.0, -30.0], atol=1e-12)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_autodiff_jacobian_matches_central_differences(name):
    model = get_model(name)
    rng = np.random.default_rng(1)
    view, xyz = _random_view(model, rng), jnp.asarray(rng.normal(0, 200, 3))
    j_view, j_xyz = jax.jacfwd(model.project, argnums=(0, 1))(view, xyz)
    for arg, jac, step in ((0, j_view, 1e-6), (1, j_xyz, 1e-4)):
        base = [view, xyz]
        fd = []
        for i in range(base[arg].size):
            e = jnp.zeros_like(base[arg]).at[i].set(step)
            plus, minus = list(base), list(base)
            plus[arg], minus[arg] = base[arg] + e, base[arg] - e
            fd.append((model.project(*plus) - model.project(*minus)) / (2 * step))
        np.testing.assert_allclose(jac, jnp.stack(fd, axis=-1), rtol=1e-6, atol=1e-6)


def test_jou_is_paper_equation_3():
    s, a, t, dx, dy = 1.02, 0.2, 0.5, 3.0, -4.0
    x = np.array([100.0, 50.0, 20.0])
    ry = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    expected = s * r @ (ry @ x)[:2] + [dx, dy]
    np.testing.assert_allclose(
        get_model("jou").project(jnp.array([s, a, t, dx, dy]), jnp.asarray(x)), expected, rtol=1e-12
    )


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if get_model(n).tilt_offset is not None])
def test_tilt_offset_is_an_exact_symmetry(name):
    model = get_model(name)
    rng = np.random.default_rng(2)
    views = jnp.stack([_random_view(model, rng) for _ in range(4)])
    xyz = jnp.asarray(rng.normal(0, 200, (5, 3)))
    proj = jax.vmap(jax.vmap(model.project, in_axes=(None, 0)), in_axes=(0, None))
    views2, xyz2 = model.tilt_offset(views, xyz, 0.07)
    np.testing.assert_allclose(
        views2[:, model.index("tilt")] - views[:, model.index("tilt")], 0.07, rtol=1e-12
    )
    np.testing.assert_allclose(proj(views2, xyz2), proj(views, xyz), atol=1e-9)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown projection model 'nope'; choose one of"):
        get_model("nope")
