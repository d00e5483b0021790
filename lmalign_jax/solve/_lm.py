"""Levenberg-Marquardt over a bipartite problem, inside one jitted ``lax.while_loop``.

Each iteration proposes the damped Gauss-Newton step (Schur complement), evaluates the
cost there, and accepts it when the gain ratio rho = actual / predicted decrease is
positive. Damping follows Nielsen (1999): on acceptance lambda *= max(1/3, 1 - (2 rho - 1)^3)
and nu = 2; on rejection lambda *= nu, nu *= 2. Jacobians are recomputed only after an
accepted step that does not end the solve (the last step's point needs only its cost).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import compiled_cache
from ._linearize import Linearization, cost, linearize
from ._problem import Structure, Variables
from ._results import LMConfig, Status
from ._schur import damped_step

_MAX_DAMPING = 1e25


class Solution(NamedTuple):
    """Result of a solve (arrays; ``status`` holds a ``Status`` value)."""

    x: Variables
    cost: jnp.ndarray
    status: jnp.ndarray
    iterations: jnp.ndarray
    accepted: jnp.ndarray


class _State(NamedTuple):
    x: Variables
    cost: jnp.ndarray
    lin: Linearization
    damping: jnp.ndarray
    nu: jnp.ndarray
    iteration: jnp.ndarray
    accepted: jnp.ndarray
    status: jnp.ndarray


def _dot(u: Variables, v: Variables):
    return sum(jnp.vdot(p, q) for p, q in zip(u, v, strict=True))


def _max_abs_gradient(lin: Linearization):
    return jnp.max(
        jnp.stack([jnp.max(jnp.abs(g), initial=0.0) for g in (lin.grad_a, lin.grad_b, lin.grad_g)])
    )


def _gradient(lin: Linearization) -> Variables:
    return Variables(lin.grad_a, lin.grad_b, lin.grad_g)


def least_squares(
    fn, x0: Variables, structure: Structure, *, eliminate: str = "b", config: LMConfig = LMConfig()
):
    """Minimise 0.5 * sum |w_ab fn(a, b, pair_ab)|^2 over the free entries.

    Args:
        fn: ``fn(a (k_a, ...), b (k_b, ...), pair, const) -> (m, ...)``, a pure elementwise
            JAX function (see ``Structure``); hashable, as jit caches on it.
        x0: starting ``Variables``; its dtype sets the precision.
        structure: ``Structure`` from ``make_structure``.
        eliminate: "b" or "a", the block set eliminated by the Schur complement.
        config: ``LMConfig``. Its values are traced, so changing them does not recompile.
    Returns:
        ``Solution``. Never raises on numerical trouble: check ``status``.
    """
    dtype = x0.a.dtype
    values = (*config.tolerances(dtype), config.initial_damping)
    # Host values go in as numpy (transferred with the call); building them with jnp would run
    # several eager device operations per solve. Inside a trace (a batch kernel) they are traced.
    xp = jnp if any(isinstance(v, jax.core.Tracer) for v in (*values, config.max_iterations)) else np
    settings, max_iterations = xp.asarray(values, dtype), xp.asarray(config.max_iterations, np.int32)
    return compiled_cache.call(
        _least_squares, x0, structure, settings, max_iterations, fn=fn, eliminate=eliminate
    )


@partial(jax.jit, static_argnames=("fn", "eliminate"))
def _least_squares(x0: Variables, structure: Structure, settings, max_iterations, *, fn, eliminate: str):
    dtype = x0.a.dtype
    cost_tol, step_tol, gradient_tol, initial_damping = settings
    lin0 = linearize(fn, x0, structure)
    status0 = jnp.where(
        ~jnp.isfinite(lin0.cost),
        Status.FAILED,
        jnp.where(
            _max_abs_gradient(lin0) <= gradient_tol * (1 + lin0.cost), Status.CONVERGED, Status.RUNNING
        ),
    )
    state = _State(
        x=x0,
        cost=lin0.cost,
        lin=lin0,
        damping=initial_damping,
        nu=jnp.asarray(2.0, dtype),
        iteration=jnp.asarray(0),
        accepted=jnp.asarray(0),
        status=jnp.asarray(status0, jnp.int32),
    )

    def body(st: _State) -> _State:
        step, scaling = damped_step(st.lin, st.damping, eliminate)
        x_new = Variables(*(p + h for p, h in zip(st.x, step, strict=True)))
        new_cost = cost(fn, x_new, structure)
        predicted = 0.5 * (
            st.damping * _dot(step, Variables(*(d * h for d, h in zip(scaling, step, strict=True))))
            - _dot(_gradient(st.lin), step)
        )
        actual = st.lin.cost - new_cost
        rho = actual / predicted
        finite = jnp.isfinite(new_cost) & jnp.isfinite(predicted)
        accept = finite & (predicted > 0) & (rho > 0)
        small_change = accept & (actual <= cost_tol * st.lin.cost)
        # A step that converges by the cost test ends the solve: no Jacobians are needed there.
        lin = jax.lax.cond(accept & ~small_change, lambda: linearize(fn, x_new, structure), lambda: st.lin)
        x = jax.tree_util.tree_map(lambda new, old: jnp.where(accept, new, old), x_new, st.x)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        damping = jnp.where(accept, st.damping * shrink, st.damping * st.nu)
        nu = jnp.where(accept, 2.0, 2.0 * st.nu)

        step_norm = jnp.sqrt(_dot(step, step))
        x_norm = jnp.sqrt(_dot(st.x, st.x))
        small_step = finite & (step_norm <= step_tol * (x_norm + step_tol))
        small_gradient = _max_abs_gradient(lin) <= gradient_tol * (1 + lin.cost)
        iteration = st.iteration + 1
        status = jnp.where(
            small_step | small_change | small_gradient,
            Status.CONVERGED,
            jnp.where(
                damping > _MAX_DAMPING,
                Status.FAILED,
                jnp.where(iteration >= max_iterations, Status.MAX_ITERATIONS, Status.RUNNING),
            ),
        )
        cost_now = jnp.where(accept, new_cost, st.cost)
        return _State(
            x, cost_now, lin, damping, nu, iteration, st.accepted + accept, status.astype(jnp.int32)
        )

    final = jax.lax.while_loop(lambda st: st.status == Status.RUNNING, body, state)
    return Solution(final.x, final.cost, final.status, final.iteration, final.accepted)
