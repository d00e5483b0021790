"""The compiled batch solve: every stage of a chunk of padded series in one jitted call.

The kernel runs a ``lax.fori_loop`` over groups of ``vmap_width`` series, each group one
``jax.vmap`` of a ``lax.scan`` over the stages; with several local devices the chunk is split
across them with ``jax.shard_map`` (see :mod:`lmalign_jax.batch.runner`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from ..core.frame import FrameRule, predicted_positions, reporting_frame
from ..models import ProjectionModel
from ..solve import LMConfig, Status, Structure, Variables, effective_a, least_squares
from .plan import SERIES_AXIS

__all__ = ["batch_kernel", "reporting_frames", "solve_local", "solve_stages"]


def solve_stages(fn, eliminate, x0: Variables, structure: Structure, stage_free, settings, max_iterations):
    """Every stage of one series: ``lax.scan`` over the stages, each a ``least_squares``.

    ``structure``'s free masks are replaced per stage by ``stage_free`` = (free_a (S, n_a, k_a),
    free_b (S, n_b, k_b), free_g (S, n_g)); ``settings`` (S, 4) are each stage's tolerances and
    initial damping, ``max_iterations`` (S,). Between stages tied entries take their slot's
    value, as ``align()``'s round trip through model units does. A stage that fails ends the
    series: later stages leave x unchanged (their outputs are not reported). Returns x after the
    last stage that did not fail, and per stage (S,) cost, status, iterations, accepted.
    """

    def stage(carry, data):
        x, stopped = carry
        free_a, free_b, free_g, setting, max_it = data
        config = LMConfig(
            max_iterations=max_it,
            cost_tol=setting[0],
            step_tol=setting[1],
            gradient_tol=setting[2],
            initial_damping=setting[3],
        )
        sol = least_squares(
            fn,
            x,
            structure._replace(free_a=free_a, free_b=free_b, free_g=free_g),
            eliminate=eliminate,
            config=config,
        )
        stop = stopped | (sol.status == Status.FAILED)
        solved = Variables(
            effective_a(sol.x.a, sol.x.g, structure.tie_a, structure.tie_blend), sol.x.b, sol.x.g
        )
        x = jax.tree_util.tree_map(lambda new, old: jnp.where(stop, old, new), solved, x)
        as_int = partial(jnp.asarray, dtype=jnp.int32)
        return (x, stop), (sol.cost, as_int(sol.status), as_int(sol.iterations), as_int(sol.accepted))

    (x, _), per_stage = jax.lax.scan(stage, (x0, jnp.asarray(False)), (*stage_free, settings, max_iterations))
    return x, *per_stage


def solve_local(fn, eliminate, width, x0, structure, stage_free, settings, max_iterations, count):
    """Solve the first ``count`` stacked series (leading axis), ``width`` at a time.

    ``stage_free`` leaves are (B, S, ...); outputs x (B, ...) and per-stage arrays (B, S)."""
    solve = partial(solve_stages, fn, eliminate, settings=settings, max_iterations=max_iterations)
    n, n_stages = x0.a.shape[0], settings.shape[0]
    out = (
        jax.tree_util.tree_map(jnp.zeros_like, x0),
        jnp.zeros((n, n_stages), x0.a.dtype),
        *(jnp.zeros((n, n_stages), jnp.int32) for _ in range(3)),
    )

    def group(i, out):
        start = i * width
        x, s, f = jax.tree_util.tree_map(
            lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, start, width), (x0, structure, stage_free)
        )
        if width == 1:
            squeeze = partial(jax.tree_util.tree_map, lambda leaf: leaf[0])
            res = jax.tree_util.tree_map(lambda leaf: leaf[None], solve(squeeze(x), squeeze(s), squeeze(f)))
        else:
            res = jax.vmap(solve)(x, s, f)
        return jax.tree_util.tree_map(
            lambda buf, r: jax.lax.dynamic_update_slice_in_dim(buf, r, start, 0), out, res
        )

    return jax.lax.fori_loop(0, (count + width - 1) // width, group, out)


_KERNELS: dict = {}


def batch_kernel(fn, eliminate: str, width: int, mesh: Mesh | None):
    """The jitted batch solve for one residual function, elimination, width and device mesh."""
    key = (fn, eliminate, width, mesh)
    if key not in _KERNELS:
        local = partial(solve_local, fn, eliminate, width)
        if mesh is None:
            _KERNELS[key] = jax.jit(local)
        else:
            spec, rep = PartitionSpec(SERIES_AXIS), PartitionSpec()

            def sharded(x0, structure, stage_free, settings, max_iterations, counts):
                return local(x0, structure, stage_free, settings, max_iterations, counts[0])

            _KERNELS[key] = jax.jit(
                jax.shard_map(
                    sharded,
                    mesh=mesh,
                    in_specs=(spec, spec, spec, rep, rep, spec),
                    out_specs=spec,
                    check_vma=False,
                )
            )
    return _KERNELS[key]


@partial(jax.jit, static_argnums=(0, 1))
def reporting_frames(
    model: ProjectionModel, rule: FrameRule, views, markers, nominal, view_mask, marker_mask
):
    """Reporting frame and predicted positions of padded series (leading batch axis).

    The frame is that of ``align()`` (``core.frame.reporting_frame``) with the means taken over
    the real views and markers only. Returns views (B, V, k), markers (B, M, 3), predicted
    centred positions (B, V, M, 2).
    """

    def one(views, markers, nominal, view_mask, marker_mask):
        views, markers = reporting_frame(model, views, markers, nominal, rule, view_mask, marker_mask)
        return views, markers, predicted_positions(model, views, markers)

    return jax.vmap(one)(views, markers, nominal, view_mask, marker_mask)
