"""The structure of a bipartite nonlinear least-squares problem.

Two sets of entities, A (n_a blocks of k_a parameters) and B (n_b blocks of k_b), and a
residual for every pair (a, b), masked by a weight. Some A parameters may be *tied* to global
slots ``g`` (one value shared by several A blocks): ``a_eff[a, p] = g[tie[a, p]]`` where
``tie[a, p] >= 0``, else the block's own value. Free/fixed status is a mask on each entry.
The solver knows nothing about tomography: in an alignment A are views, B are markers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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

    pair_data: pytree whose leaves have leading shape (n_a, n_b): per-pair inputs.
    weights: (n_a, n_b) square-root weights of each pair's residual; 0 marks a missing pair.
    free_a: (n_a, k_a) bool, entry solved for (and not tied).
    tie_a: (n_a, k_a) int32, global slot of each entry or -1.
    free_b: (n_b, k_b) bool.
    dense_a: (n_free_a,) int32 flat indices (a * k_a + p) of the free, untied A entries.
    dense_b: (n_free_b,) int32 flat indices of the free B entries.
    const: pytree handed unchanged to the residual function.
    """

    pair_data: Any
    weights: Any
    free_a: Any
    tie_a: Any
    free_b: Any
    dense_a: Any
    dense_b: Any
    const: Any


def make_structure(pair_data, weights, free_a, tie_a, free_b, const=None) -> Structure:
    """Validate host-side masks and derive the dense index lists.

    Shapes: weights (n_a, n_b); free_a, tie_a (n_a, k_a); free_b (n_b, k_b).
    """
    free_a = np.asarray(free_a, dtype=bool)
    tie_a = np.asarray(tie_a, dtype=np.int32)
    free_b = np.asarray(free_b, dtype=bool)
    n_a, n_b = np.shape(weights)
    if free_a.shape[0] != n_a or tie_a.shape != free_a.shape:
        raise ValueError(f"free_a {free_a.shape} and tie_a {tie_a.shape} must both be ({n_a}, k_a)")
    if free_b.shape[0] != n_b:
        raise ValueError(f"free_b {free_b.shape} must be ({n_b}, k_b)")
    own = free_a & (tie_a < 0)
    return Structure(
        pair_data=pair_data,
        weights=weights,
        free_a=own,
        tie_a=tie_a,
        free_b=free_b,
        dense_a=np.flatnonzero(own.reshape(-1)).astype(np.int32),
        dense_b=np.flatnonzero(free_b.reshape(-1)).astype(np.int32),
        const=const,
    )


def choose_elimination(structure: Structure) -> str:
    """Eliminate the block set that leaves the smaller dense reduced system: "a" or "b"."""
    return "a" if len(structure.dense_b) < len(structure.dense_a) else "b"


def effective_a(a, g, tie_a):
    """A parameters with tied entries replaced by their global slot: (n_a, k_a)."""
    if g.shape[0] == 0:
        return a
    return jnp.where(tie_a >= 0, g[jnp.clip(tie_a, 0)], a)
