"""Differentiating through a solve by the implicit function theorem, not by unrolling.

At the optimum x*(theta) the free part of the gradient vanishes: G(x*, theta) =
P grad_x F(x*, theta) = 0, with P the mask of free entries and theta every input (the
starting values of fixed entries, pair data, weights, constants). Hence, for a cotangent
v on x*,

    theta_bar = -(dG/dtheta)^T u,    H u = P v,

with H = dG/dx on the free entries. u is found with the Gauss-Newton matrix J^T J through
the same Schur complement as the solve, then refined by two steps of iterative refinement
against the exact Hessian (Hessian-vector products by forward-over-reverse autodiff), so
gradients are exact even when residuals are not small. Fixed entries of x* equal their
starting values, so their cotangent passes straight through.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ._linearize import Linearization, cost, linearize
from ._lm import least_squares
from ._problem import Structure, Variables
from ._results import LMConfig
from ._schur import damped_step

_REFINEMENT_STEPS = 2


def _free_mask(s: Structure, dtype) -> Variables:
    return Variables(s.free_a.astype(dtype), s.free_b.astype(dtype), s.free_g.astype(dtype))


def _tree(op, *trees):
    return Variables(*(op(*leaves) for leaves in zip(*trees, strict=True)))


def gauss_newton_solve(lin: Linearization, eliminate: str, v: Variables) -> Variables:
    """(J^T J)^{-1} v on the free entries (undamped), via the Schur complement.

    ``lin``: the linearization at x (``linearize``), whose masks say which entries are free;
    ``v``: Variables shaped like x. Returns Variables of the same shapes, 0 on fixed entries.
    """
    step, _ = damped_step(lin._replace(grad_a=-v.a, grad_b=-v.b, grad_g=-v.g), 0.0, eliminate)
    return step


def _masked_gradient(fn, x, x0, s: Structure):
    """Gradient of the cost at x with fixed entries taken from x0, zero on fixed entries."""
    free = _free_mask(s, x.a.dtype)
    merged = _tree(lambda f, a, b: jnp.where(f > 0, a, b), free, x, x0)
    grad = jax.grad(lambda z: cost(fn, z, s))(merged)
    return _tree(jnp.multiply, grad, free)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _solve(fn, eliminate, config, x0, structure):
    return least_squares(fn, x0, structure, eliminate=eliminate, config=config).x


def _solve_fwd(fn, eliminate, config, x0, structure):
    x = _solve(fn, eliminate, config, x0, structure)
    return x, (x, x0, structure)


def _solve_bwd(fn, eliminate, config, residuals, x_bar):
    x, x0, s = residuals
    free = _free_mask(s, x.a.dtype)
    v = _tree(jnp.multiply, x_bar, free)
    lin = linearize(fn, x, s)
    u = gauss_newton_solve(lin, eliminate, v)
    for _ in range(_REFINEMENT_STEPS):
        hu = jax.jvp(lambda z: _masked_gradient(fn, z, x0, s), (x,), (u,))[1]
        u = _tree(jnp.add, u, gauss_newton_solve(lin, eliminate, _tree(jnp.subtract, v, hu)))
    _, pullback = jax.vjp(lambda x0_, s_: _masked_gradient(fn, x, x0_, s_), x0, s)
    x0_bar, s_bar = pullback(_tree(jnp.negative, u))
    x0_bar = _tree(lambda g, xb, f: g + xb * (1 - f), x0_bar, x_bar, free)
    return x0_bar, s_bar


_solve.defvjp(_solve_fwd, _solve_bwd)


def solve_implicit(
    fn, x0: Variables, structure: Structure, *, eliminate: str = "b", config: LMConfig = LMConfig()
):
    """The optimum x* (Variables) of ``least_squares``, differentiable with respect to ``x0``
    (its fixed entries) and every floating-point leaf of ``structure`` by implicit
    differentiation. Composes with ``jit``, ``vmap`` and ``grad``."""
    return _solve(fn, eliminate, config, x0, structure)
