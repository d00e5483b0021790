"""Solvers of the joint problem (``joint_problem.JointProblem``): ours and its peers.

Each ``solve_*`` takes a ``JointProblem`` and returns a *runner*: a zero-argument callable that
solves the problem from ``problem.x0`` once and returns a dict with the solution ``x`` (flat
free vector), ``iterations`` (residual evaluations at trial points: accepted + rejected steps,
the quantity lmalign_jax's ``StageReport.iterations`` counts) and ``status``. Anything that is
set up once per problem (building the package's problem, wrapping functions) happens before the
runner is returned; everything that a user pays on every solve (JIT compilation on the first
call included) happens inside it.

The stopping rule is lmalign_jax's default (``LMConfig()``), mapped onto each peer's knobs:

* relative cost decrease of an accepted step < COST_TOL (scipy ``ftol``; L-BFGS ``ftol``);
* step length < STEP_TOL * (|x| + STEP_TOL) (scipy ``xtol``, identical definition);
* max |gradient| <= GRAD_TOL * (1 + cost) (scipy ``gtol`` on its own gradient measure);
* optimistix has one Cauchy rule instead: every variable moved by < ATOL + RTOL |x_i| *and*
  every residual changed by < ATOL + RTOL |r_i| over an accepted step; OPTX_TOL below.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

COST_TOL, STEP_TOL, GRAD_TOL = 1e-12, 1e-10, 1e-12
OPTX_TOL = 1e-10
MAX_LBFGS_ITERATIONS = 20000


def _gauge_modes():
    from lmalign_jax import get_model

    model = get_model("jou")
    return model, {p: "free" for p in model.parameters}


def solve_ours(problem, config=None):
    """lmalign_jax's joint stage on exactly this start and gauge (Schur-complement L-M, JAX).

    Uses the package's ``build_problem`` and ``solve.least_squares`` -- the same two calls that
    ``align()`` makes for its joint stage -- because ``align()`` always starts from its own
    closed-form guess and so cannot be handed the shared starting point.
    """
    from lmalign_jax import LMConfig
    from lmalign_jax.core.problem import build_problem
    from lmalign_jax.solve import least_squares

    config = LMConfig() if config is None else config
    model, modes = _gauge_modes()
    marker_free = np.ones((problem.n_markers, 3), bool)
    with jax.enable_x64(True):
        built = build_problem(
            model,
            problem.obs,
            problem.views0,
            problem.markers0,
            modes,
            marker_free,
            ref_view=problem.ref_view,
        )
    if built.n_free != problem.n_free:
        raise RuntimeError(
            f"gauge mismatch: package has {built.n_free} free parameters, benchmark {problem.n_free}"
        )

    def run():
        with jax.enable_x64(True):
            sol = jax.block_until_ready(
                least_squares(built.fn, built.x0, built.structure, eliminate=built.eliminate, config=config)
            )
            views, markers = built.to_model_units(sol.x)
        full = np.concatenate([(views / problem.unit).ravel(), markers.ravel()])
        from lmalign_jax import Status

        return {
            "x": full[problem.free_index],
            "iterations": int(sol.iterations),
            "status": Status(int(sol.status)).message,
        }

    return run


def solve_scipy_trf(problem, jacobian="fd-sparsity"):
    """scipy.optimize.least_squares, trust-region reflective, sparse (LSMR) trust-region solves.

    jacobian: "fd-sparsity" -- 2-point finite differences with the block-sparse ``jac_sparsity``
    (scipy groups independent columns, so a Jacobian costs ~9 residual calls); "exact" -- the
    exact sparse Jacobian from JAX forward mode (the information our solver uses).
    """
    from scipy.optimize import least_squares

    def run():
        fun = problem.residual_fn
        kw = (
            {"jac": "2-point", "jac_sparsity": problem.jac_sparsity()}
            if jacobian == "fd-sparsity"
            else {"jac": problem.sparse_jacobian}
        )
        res = least_squares(
            lambda x: np.asarray(fun(x)), problem.x0, method="trf", x_scale="jac",
            ftol=COST_TOL, xtol=STEP_TOL, gtol=GRAD_TOL, **kw,
        )  # fmt: skip
        return {"x": res.x, "iterations": int(res.nfev), "status": _scipy_status(res)}

    return run


def solve_scipy_lm(problem):
    """scipy.optimize.least_squares(method="lm"): MINPACK's dense L-M, exact dense Jacobian."""
    from scipy.optimize import least_squares

    def run():
        fun = problem.residual_fn
        res = least_squares(
            lambda x: np.asarray(fun(x)), problem.x0, method="lm", x_scale="jac",
            jac=lambda x: problem.sparse_jacobian(x).toarray(), ftol=COST_TOL, xtol=STEP_TOL, gtol=GRAD_TOL,
        )  # fmt: skip
        return {"x": res.x, "iterations": int(res.nfev), "status": _scipy_status(res)}

    return run


def _scipy_status(res) -> str:
    return {
        -1: "failed (improper input)", 0: "max evaluations", 1: "converged (gtol)", 2: "converged (ftol)",
        3: "converged (xtol)", 4: "converged (ftol, xtol)",
    }.get(int(res.status), f"status {res.status}")  # fmt: skip


def solve_optimistix_lm(problem, max_steps=1000):
    """optimistix.LevenbergMarquardt: dense Jacobian (forward mode), QR solves, all in JAX."""
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=OPTX_TOL, atol=OPTX_TOL)
    residual = problem.residual_fn

    @jax.jit
    def solve(x0):
        sol = optx.least_squares(lambda y, args: residual(y), solver, x0, max_steps=max_steps, throw=False)
        return sol.value, sol.stats["num_steps"], sol.result == optx.RESULTS.successful

    def run():
        with jax.enable_x64(True):
            x, steps, ok = jax.block_until_ready(solve(jnp.asarray(problem.x0)))
        return {
            "x": np.asarray(x),
            "iterations": int(steps),
            "status": "converged" if bool(ok) else "not converged",
        }

    return run


def solve_optax_lbfgs(problem, max_iterations=MAX_LBFGS_ITERATIONS):
    """optax.lbfgs (memory 10, zoom line search): a variable-metric method as in IMOD's tiltalign.

    Stops when an iteration lowers the cost by less than COST_TOL * cost, when
    max |gradient| <= GRAD_TOL * (1 + cost), or after ``max_iterations``; the whole loop is one
    jitted ``lax.while_loop``. ``iterations`` counts L-BFGS iterations (each runs a line search).
    """
    import optax

    residual = problem.residual_fn

    def cost(x):
        r = residual(x)
        return 0.5 * jnp.sum(r * r)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(cost)

    @jax.jit
    def solve(x0):
        def body(carry):
            x, state, it, _, _ = carry
            f, g = value_and_grad(x, state=state)
            updates, state = opt.update(g, state, x, value=f, grad=g, value_fn=cost)
            x = optax.apply_updates(x, updates)
            f_new = optax.tree_utils.tree_get(state, "value")
            g_new = optax.tree_utils.tree_get(state, "grad")
            small = (f - f_new <= COST_TOL * f) | (jnp.max(jnp.abs(g_new)) <= GRAD_TOL * (1 + f_new))
            return x, state, it + 1, f_new, small

        def cond(carry):
            return (~carry[4]) & (carry[2] < max_iterations)

        init = (x0, opt.init(x0), jnp.asarray(0), cost(x0), jnp.asarray(False))
        x, _, it, _, small = jax.lax.while_loop(cond, body, init)
        return x, it, small

    def run():
        with jax.enable_x64(True):
            x, it, small = jax.block_until_ready(solve(jnp.asarray(problem.x0)))
        return {
            "x": np.asarray(x),
            "iterations": int(it),
            "status": "converged" if bool(small) else "iteration limit",
        }

    return run


def solve_scipy_lbfgsb(problem, max_iterations=MAX_LBFGS_ITERATIONS):
    """scipy.optimize.minimize(method="L-BFGS-B") with the exact JAX gradient (variable metric)."""
    from scipy.optimize import minimize

    def run():
        fg = problem.cost_and_grad_fn

        def fun(x):
            f, g = fg(jnp.asarray(x))
            return float(f), np.asarray(g, np.float64)

        f0 = fun(problem.x0)[0]
        res = minimize(
            fun, problem.x0, jac=True, method="L-BFGS-B",
            options={"ftol": COST_TOL, "gtol": GRAD_TOL * (1 + f0),
                     "maxiter": max_iterations, "maxfun": 2 * max_iterations},
        )  # fmt: skip
        return {
            "x": res.x,
            "iterations": int(res.nit),
            "status": "converged" if res.success else str(res.message),
        }

    return run


#: name -> (factory, description, maximum observations for which it is run)
PEERS = {
    "lmalign_jax (ours)": (solve_ours, "Schur-complement L-M, JAX, jitted", None),
    "scipy trf + FD jac_sparsity": (
        lambda p: solve_scipy_trf(p, "fd-sparsity"),
        "trust-region reflective, LSMR",
        None,
    ),
    "scipy trf + exact sparse J": (
        lambda p: solve_scipy_trf(p, "exact"),
        "trust-region reflective, LSMR",
        None,
    ),
    "scipy lm (MINPACK)": (solve_scipy_lm, "dense L-M (QR), exact dense J", 6000),
    "optimistix LevenbergMarquardt": (solve_optimistix_lm, "dense L-M (QR), JAX, jitted", 6000),
    "optax lbfgs": (solve_optax_lbfgs, "L-BFGS + zoom line search, JAX, jitted", None),
    "scipy L-BFGS-B": (solve_scipy_lbfgsb, "L-BFGS-B, exact JAX gradient", None),
}


def time_runner(make_runner, problem, repeats: int, budget_s: float = 10.0, clear_caches: bool = True):
    """Time a solver: (result, first-call seconds incl. compilation, steady-state median, steady times).

    JAX's caches are cleared first so the first call pays its compilation. Then up to
    ``repeats`` further calls (at least one; fewer once ``budget_s`` of steady runs is spent).
    """
    if clear_caches:
        jax.clear_caches()
    runner = make_runner(problem)
    t0 = time.perf_counter()
    out = runner()
    first = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < max(repeats, 1) and (not times or sum(times) + times[-1] <= budget_s):
        t0 = time.perf_counter()
        out = runner()
        times.append(time.perf_counter() - t0)
    return out, first, float(np.median(times)), times
