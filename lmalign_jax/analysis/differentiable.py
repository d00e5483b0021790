"""The alignment as a differentiable JAX function of the clicked positions and nominal tilts.

``alignment_function(result)`` returns ``f(observed_xy, nominal_tilts_deg)`` that re-solves
the joint problem from ``result`` (warm start, same model, modes, gauge and weights) and
returns the solved parameters in the reported frame. Gradients come from the implicit
function theorem at the optimum (``solve.solve_implicit``), so ``jax.grad``, ``jax.jacrev``,
``jax.jit`` and ``jax.vmap`` all work on ``f`` and cost about one extra linear solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..core.frame import jit_reporting_frame
from ..core.problem import final_problem
from ..core.result import AlignmentResult
from ..solve import LMConfig, effective_a, solve_implicit


def alignment_function(result: AlignmentResult, *, config: LMConfig = LMConfig()):
    """A pure function ``f(observed_xy, nominal_tilts_deg) -> (views, markers)``.

    observed_xy: (n_views, n_markers, 2) measured positions, image pixels (entries of
        markers not observed in ``result`` are ignored).
    nominal_tilts_deg: (n_views,) nominal tilts: they fix the tilt of views whose tilt is
        not free (the reference view's, or all when the tilt mode is "fixed"), are what grouped
        tilts share a change from, and set the reported frame (zero mean deviation of the
        solved tilts from them).
    Returns views (n_views, k) in model units (radians, ratios, pixels) and markers
    (n_markers, 3) pixels, as ``result.views``/``result.markers``.

    Use it inside ``with jax.enable_x64(True):`` (or with x64 enabled) for float64.
    """
    model, settings = result.model, result.settings
    obs = result.observations
    with jax.enable_x64(True):
        problem = final_problem(result)
    warm = jax.tree_util.tree_map(np.asarray, problem.x0)
    structure = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf), problem.structure)
    unit = np.asarray(problem.unit)
    tie = np.asarray(problem.tie)
    center = np.asarray(obs.center)
    mask = np.asarray(obs.mask)
    tilt = model.index("tilt")
    rule = settings.frame_rule(model)
    base_views = np.asarray(result.views)

    def f(observed_xy, nominal_tilts_deg):
        dtype = jnp.result_type(observed_xy, float)
        nominal = jnp.radians(jnp.asarray(nominal_tilts_deg, dtype))
        views_in = jnp.asarray(base_views, dtype).at[:, tilt].set(nominal)
        centered = jnp.where(mask[..., None], jnp.asarray(observed_xy, dtype) - center, 0.0)
        blend = structure.tie_blend
        if blend is not None:  # grouped tilts: a shared change from these nominal angles
            tied = tie[:, tilt] >= 0
            offset = jnp.asarray(blend[2], dtype).at[:, tilt].set(jnp.where(tied, nominal / unit[tilt], 0.0))
            blend = (blend[0], jnp.asarray(blend[1], dtype), offset)
        s = structure._replace(
            pair_data=jnp.moveaxis(centered, -1, 0),
            weights=jnp.asarray(structure.weights, dtype),
            const=jnp.asarray(structure.const, dtype),
            tie_blend=blend,
        )
        x0 = problem.x0._replace(
            a=jnp.where(structure.free_a, jnp.asarray(warm.a, dtype), views_in / unit),
            b=jnp.asarray(warm.b, dtype),
            g=jnp.asarray(warm.g, dtype),
        )
        x = solve_implicit(problem.fn, x0, s, eliminate=problem.eliminate, config=config)
        views = effective_a(x.a, x.g, jnp.asarray(tie), blend) * unit
        return jit_reporting_frame(model, views, x.b, nominal, rule)

    return f
