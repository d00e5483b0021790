"""Dense Gauss-Newton step from the full Jacobian: the test oracle for the Schur path.

It forms J by autodiff of the flattened residual vector with respect to every parameter
(A blocks, B blocks, global slots) and solves the damped normal equations directly, with no
knowledge of the block structure. A residual function's regularization rows (``_linearize``)
are appended to the residual vector. Memory is O(n_obs * n_params): small problems only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._linearize import pair_residuals, regularization_of
from ._problem import Structure, Variables, effective_a
from ._schur import damping_diagonal


def _flatten(x: Variables):
    return jnp.concatenate([x.a.reshape(-1), x.b.reshape(-1), x.g])


def _unflatten(v, like: Variables):
    n_a, n_b = like.a.size, like.b.size
    return Variables(v[:n_a].reshape(like.a.shape), v[n_a : n_a + n_b].reshape(like.b.shape), v[n_a + n_b :])


def dense_step(fn, x: Variables, s: Structure, damping):
    """The damped step (Variables) computed from the dense normal matrix."""

    reg = regularization_of(fn)

    def flat_residual(v):
        z = _unflatten(v, x)
        r = pair_residuals(fn, z, s).reshape(-1)
        if reg is not None:
            r = jnp.concatenate([r, reg(effective_a(z.a, z.g, s.tie_a, s.tie_blend), s.const)])
        return r

    v = _flatten(x)
    r = flat_residual(v)
    free = jnp.concatenate([s.free_a.reshape(-1), s.free_b.reshape(-1), s.free_g]).astype(v.dtype)
    jac = jax.jacfwd(flat_residual)(v) * free[None, :]
    h = jac.T @ jac + jnp.diag(1.0 - free)
    (d,) = damping_diagonal(jnp.diagonal(h))
    step = jnp.linalg.solve(h + damping * jnp.diag(d), -(jac.T @ r))
    return _unflatten(step, x)
