"""The batched solve of a local alignment's patch problems (``core.local`` builds them, of one
padded shape): on a CPU, one compiled ``lax.map`` of the package's L-M solver, a problem at a
time; on an accelerator, a compiled ``vmap`` over the problems, in as few calls as fit a memory
budget.

On a CPU the vmapped solve runs at a fraction of the arithmetic rate of one problem alone, and
every problem iterates as long as the slowest. One at a time, in float64 as ``core.local``
solves them: 2.6-3.3x faster on a 4096 px field's 98 problems, 3.0-4.2x at 2000 markers x 121
views, the same solutions to 7e-12 (``benchmarks/patch_solve_bench.py``).
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from ..solve import LMConfig, least_squares

__all__ = ["PATCH_SOLVE_BYTES", "batched_solver", "one_at_a_time", "problem_bytes", "solve_patches"]

#: The most memory (bytes) the vmapped solve of the patches (on an accelerator) may hold at
#: once; past it the patches are solved in equal chunks, one compiled call each (2000 markers
#: on a 4096 px field of 121 views, 98 problems of 192 markers' slots: 5 GB in one call).
PATCH_SOLVE_BYTES = 1 << 30

_SOLVERS: dict = {}


def batched_solver(fn, eliminate: str, config: LMConfig, sequential: bool = False):
    """``least_squares`` of residual function ``fn`` over problems (leading axis), jitted (one
    per function, elimination, settings and form): vmapped, or with ``sequential`` a
    ``lax.map``, one problem after another."""
    key = (fn, eliminate, config, sequential)
    if key not in _SOLVERS:
        solve = partial(least_squares, fn, eliminate=eliminate, config=config)
        if sequential:
            _SOLVERS[key] = jax.jit(lambda x0, structure: jax.lax.map(lambda p: solve(*p), (x0, structure)))
        else:
            _SOLVERS[key] = jax.jit(jax.vmap(solve))
    return _SOLVERS[key]


def one_at_a_time() -> bool:
    """Whether patch problems are solved one after another (on a CPU) rather than vmapped."""
    return jax.default_backend() == "cpu"


def problem_bytes(x0, capacity: int) -> int:
    """About what the solve of one patch problem of ``x0`` (leading axis: the problems, then
    the views) holds (bytes): its per-view Jacobian blocks, 2 coordinates of ``capacity``
    markers by the view's parameters, the slots and a marker's 3, in float64, three times over
    (measured: 36 MB at 121 views, 96 markers, 8 + 64 parameters, 2.7 times the blocks)."""
    n_views = x0.a.shape[1]
    per_point = x0.a.shape[-1] + x0.g.shape[-1] + 3
    return 3 * 8 * n_views * 2 * capacity * per_point


def solve_patches(fn, eliminate: str, config: LMConfig, x0, structure, capacity: int):
    """The solutions (fetched) of the problems ``x0``, ``structure`` (leading axis: the
    problems), by :func:`batched_solver`: on a CPU in one call, one problem after another; else
    vmapped, in as few calls as hold at most ``PATCH_SOLVE_BYTES`` each (:func:`problem_bytes`),
    of equal size: the last padded with copies of the last problem, fewer than one per call."""
    if one_at_a_time():
        return jax.device_get(batched_solver(fn, eliminate, config, sequential=True)(x0, structure))
    solver = batched_solver(fn, eliminate, config)
    n = x0.a.shape[0]
    calls = -(-n // int(max(1, min(n, PATCH_SOLVE_BYTES // max(1, problem_bytes(x0, capacity))))))
    chunk = -(-n // calls)  # the fewest calls, evenly filled
    if chunk == n:
        return jax.device_get(jax.block_until_ready(solver(x0, structure)))
    pad = -n % chunk
    padded = [
        jax.tree_util.tree_map(lambda a: np.concatenate([a, np.repeat(a[-1:], pad, 0)]), t)
        for t in (x0, structure)
    ]
    parts = [
        jax.device_get(solver(*(jax.tree_util.tree_map(lambda a, i=i: a[i : i + chunk], t) for t in padded)))
        for i in range(0, n + pad, chunk)
    ]
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a)[:n], *parts)
