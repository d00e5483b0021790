"""The batched solve of a local alignment's patch problems: one compiled ``vmap`` of the
package's L-M solver over problems of one padded shape (``core.local`` builds them), in as few
calls as fit a memory budget.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from ..solve import LMConfig, least_squares

__all__ = ["PATCH_SOLVE_BYTES", "batched_solver", "problem_bytes", "solve_patches"]

#: The most memory (bytes) the batched solve of the patches may hold at once; past it the
#: patches are solved in equal chunks, one compiled call each (2000 markers on a 4096 px field
#: of 121 views, 98 problems of 192 markers' slots: 5 GB in one call).
PATCH_SOLVE_BYTES = 1 << 30

_SOLVERS: dict = {}


def batched_solver(fn, eliminate: str, config: LMConfig):
    """``least_squares`` of residual function ``fn`` vmapped over problems and jitted (one per
    function, elimination and settings)."""
    key = (fn, eliminate, config)
    if key not in _SOLVERS:
        solve = partial(least_squares, fn, eliminate=eliminate, config=config)
        _SOLVERS[key] = jax.jit(jax.vmap(solve))
    return _SOLVERS[key]


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
    problems), by :func:`batched_solver` in as few calls as hold at most ``PATCH_SOLVE_BYTES``
    each (:func:`problem_bytes`), of equal size: the last padded with copies of the last
    problem, fewer than one per call."""
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
