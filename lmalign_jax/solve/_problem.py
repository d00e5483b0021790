"""The structure of a bipartite nonlinear least-squares problem.

Two sets of entities, A (n_a blocks of k_a parameters) and B (n_b blocks of k_b), and a
residual for every pair (a, b), masked by a weight. The residual function is written
elementwise: ``fn(a, b, pair, const) -> (m, ...)`` takes A parameters (k_a, ...), B
parameters (k_b, ...) and pair data (..., ...) whose trailing dimensions broadcast together;
the solver calls it once on the whole (n_a, n_b) grid. Some A parameters may be *tied* to global
slots ``g`` (one value shared by several A blocks): ``a_eff[a, p] = g[tie[a, p]]`` where
``tie[a, p] >= 0``, else the block's own value; or, in general, a blend of two slots plus a
constant, ``a_eff[a, p] = f g[tie[a, p]] + (1 - f) g[tie2[a, p]] + c[a, p]`` (values
interpolated between the slots' views, as IMOD's linear grouping does; ``c`` lets slots carry
increments from per-block values, as grouped tilt angles do). Free/fixed status is a mask on
each entry.
The solver knows nothing about tomography: in an alignment A are views, B are markers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Variables(NamedTuple):
    """Parameters of a bipartite problem.

    a: (n_a, k_a) own values of the A blocks (entries tied to a slot are ignored).
    b: (n_b, k_b) B blocks.
    g: (n_g,) global slots.
    """

    a: Any
    b: Any
    g: Any


class Structure(NamedTuple):
    """Data and sparsity of a bipartite problem (all arrays; a pytree).

    pair_data: pytree whose leaves have trailing shape (n_a, n_b): per-pair inputs.
    weights: (n_a, n_b) square-root weights of each pair's residual; 0 marks a missing pair.
    free_a: (n_a, k_a) bool, an A block's own entry is solved for (never true where tied).
    tie_a: (n_a, k_a) int32, global slot of each entry or -1.
    free_b: (n_b, k_b) bool.
    free_g: (n_g,) bool, global slot solved for.
    const: pytree handed unchanged to the residual function.
    tie_blend: None (every tied entry takes its one slot's value), or ``(tie2 (n_a, k_a) int32,
        frac (n_a, k_a) float, offset (n_a, k_a) float)``: a tied entry is ``frac`` of its
        ``tie_a`` slot plus ``1 - frac`` of its ``tie2`` slot plus ``offset`` (``frac`` 1 where
        an entry has one slot; ``offset`` 0 where slots carry values, not increments).

    Every array keeps its shape whichever entries are free, so one compiled solve serves
    every stage of an alignment.
    """

    pair_data: Any
    weights: Any
    free_a: Any
    tie_a: Any
    free_b: Any
    free_g: Any
    const: Any
    tie_blend: Any = None


def make_structure(
    pair_data, weights, free_a, tie_a, free_b, free_g, const=None, tie_blend=None
) -> Structure:
    """Validate host-side masks. Shapes: weights (n_a, n_b); free_a, tie_a (n_a, k_a);
    free_b (n_b, k_b); free_g (n_g,); ``tie_blend`` None or (tie2, frac, offset), each (n_a, k_a)."""
    free_a = np.asarray(free_a, dtype=bool)
    tie_a = np.asarray(tie_a, dtype=np.int32)
    free_b = np.asarray(free_b, dtype=bool)
    free_g = np.asarray(free_g, dtype=bool).reshape(-1)
    n_a, n_b = np.shape(weights)
    if free_a.shape[0] != n_a or tie_a.shape != free_a.shape:
        raise ValueError(f"free_a {free_a.shape} and tie_a {tie_a.shape} must both be ({n_a}, k_a)")
    if free_b.shape[0] != n_b:
        raise ValueError(f"free_b {free_b.shape} must be ({n_b}, k_b)")
    if tie_a.max(initial=-1) >= free_g.size:
        raise ValueError(f"tie_a refers to slot {tie_a.max()} but there are {free_g.size} slots")
    if tie_blend is not None:
        tie2, frac, offset = (
            np.asarray(x, t) for x, t in zip(tie_blend, (np.int32, float, float), strict=True)
        )
        if not tie2.shape == frac.shape == offset.shape == tie_a.shape:
            raise ValueError(
                f"tie_blend arrays {tie2.shape}, {frac.shape}, {offset.shape} must be {tie_a.shape}"
            )
        if tie2.max(initial=-1) >= free_g.size or ((tie2 >= 0) & (tie_a < 0)).any():
            raise ValueError("tie_blend's second slots must be existing slots of tied entries")
        if not ((frac >= 0) & (frac <= 1)).all():
            raise ValueError("tie_blend's fractions must lie in [0, 1]")
        tie_blend = (
            np.where(tie2 >= 0, tie2, tie_a).astype(np.int32),
            np.where(tie2 >= 0, frac, 1.0),
            np.where(tie_a >= 0, offset, 0.0),
        )
    return Structure(
        pair_data=pair_data,
        weights=weights,
        free_a=free_a & (tie_a < 0),
        tie_a=tie_a,
        free_b=free_b,
        free_g=free_g,
        const=const,
        tie_blend=tie_blend,
    )


def pad_problem(x0: Variables, structure: Structure, n_a: int, n_b: int, n_g: int):
    """``(x0, structure)`` padded on the host (NumPy) to ``n_a`` A blocks, ``n_b`` B blocks and
    ``n_g`` slots, so that problems of nearby sizes share one compiled solve.

    Padded pairs have weight 0 and padded entries are neither free nor tied: they are identity
    rows of the normal equations, and the real entries' solution is that of the unpadded
    problem (to rounding: sums run over more, zero, terms). Padded A and B values copy the last
    real block, so the residual function sees only values it is defined at. Not for residual
    functions with regularization rows (they couple A blocks, padded ones included).
    Returns ``(x0, structure)``; :func:`unpad` takes the solution back."""
    a, b, g = (np.asarray(v) for v in x0)
    old_a, old_b, old_g = a.shape[0], b.shape[0], g.shape[0]
    if n_a < old_a or n_b < old_b or n_g < old_g:
        raise ValueError(f"cannot pad ({old_a}, {old_b}, {old_g}) blocks down to ({n_a}, {n_b}, {n_g})")

    def rows(x, n, mode="edge", value=0):
        width = [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
        if x.shape[0] == 0 or mode == "constant":
            return np.pad(x, width, mode="constant", constant_values=value)
        return np.pad(x, width, mode="edge")

    def pairs(x):
        x = np.asarray(x)
        width = [(0, 0)] * (x.ndim - 2) + [(0, n_a - old_a), (0, n_b - old_b)]
        return np.pad(x, width)

    padded_x0 = Variables(rows(a, n_a), rows(b, n_b), rows(g, n_g, "constant"))
    padded = Structure(
        pair_data=jax.tree_util.tree_map(pairs, structure.pair_data),
        weights=pairs(structure.weights),
        free_a=rows(np.asarray(structure.free_a), n_a, "constant", False),
        tie_a=rows(np.asarray(structure.tie_a), n_a, "constant", -1),
        free_b=rows(np.asarray(structure.free_b), n_b, "constant", False),
        free_g=rows(np.asarray(structure.free_g), n_g, "constant", False),
        const=structure.const,
        tie_blend=None
        if structure.tie_blend is None
        else (
            rows(np.asarray(structure.tie_blend[0]), n_a, "constant", -1),
            rows(np.asarray(structure.tie_blend[1]), n_a, "constant", 1.0),
            rows(np.asarray(structure.tie_blend[2]), n_a, "constant", 0.0),
        ),
    )
    return padded_x0, padded


def unpad(x: Variables, n_a: int, n_b: int, n_g: int) -> Variables:
    """The first ``n_a`` A blocks, ``n_b`` B blocks and ``n_g`` slots of a padded problem's
    ``Variables``."""
    return Variables(x.a[:n_a], x.b[:n_b], x.g[:n_g])


def count_free(structure: Structure) -> int:
    """Number of free parameters."""
    return int(np.sum(structure.free_a) + np.sum(structure.free_b) + np.sum(structure.free_g))


def choose_elimination(n_a: int, k_a: int, n_b: int, k_b: int, coupled_a: bool = False) -> str:
    """Eliminate the block set that leaves the smaller dense reduced system: "a" or "b".

    ``coupled_a``: the residual function has regularization rows coupling A blocks
    (``_linearize``), so only B can be eliminated."""
    if coupled_a:
        return "b"
    return "a" if n_b * k_b < n_a * k_a else "b"


def effective_a(a, g, tie_a, blend=None):
    """A parameters with tied entries replaced by their global slot, or by the blend of their
    two slots plus its offset (``blend``: ``Structure.tie_blend``): (n_a, k_a)."""
    if g.shape[0] == 0:
        return a
    g = jnp.asarray(g)
    tied = g[jnp.clip(tie_a, 0)]
    if blend is not None:
        tie2, frac, offset = blend
        frac, offset = jnp.asarray(frac, g.dtype), jnp.asarray(offset, g.dtype)  # the solve's precision
        tied = frac * tied + (1 - frac) * g[jnp.clip(tie2, 0)] + offset
    return jnp.where(tie_a >= 0, tied, a)


def tie_weights(tie_a, blend, n_g: int, dtype):
    """(n_a, k_a, n_g): d a_eff[a, p] / d g[slot], the chain rule from the slots to the entries
    they set (zero rows for untied entries)."""
    weights = jax.nn.one_hot(tie_a, n_g, dtype=dtype)
    if blend is None:
        return weights
    tie2, frac, _ = blend
    frac = jnp.asarray(frac, dtype)[..., None]
    return frac * weights + (1 - frac) * jax.nn.one_hot(tie2, n_g, dtype=dtype)
