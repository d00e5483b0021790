"""Residuals, autodiff Jacobians and the block normal equations of a bipartite problem.

With r the stacked weighted residuals and J its Jacobian, Gauss-Newton needs H = J^T J and
the gradient J^T r. Each pair residual depends on one A block, one B block and the slots its
A block is tied to, so H has the structure

    [ H_AA  H_AB  H_Ag ]      H_AA: (n_a, k_a, k_a) block diagonal
    [ H_BA  H_BB  H_Bg ]      H_BB: (n_b, k_b, k_b) block diagonal
    [ H_gA  H_gB  H_gg ]      H_AB: (n_a, n_b, k_a, k_b), one block per pair

and the slot rows follow from the chain rule through the one-hot tie map T (n_a, k_a, n_g):
H_gg = T^T H_AA^eff T, H_gB = T^T H_AB^eff, g_g = T^T g_A^eff. Fixed entries get an identity
diagonal and a zero gradient, so their step is exactly zero and every array keeps its shape.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._problem import Structure, Variables, effective_a


class Linearization(NamedTuple):
    """Normal-equation blocks at one point (see the module docstring for shapes)."""

    cost: jnp.ndarray  # () 0.5 * sum of squared weighted residuals
    h_aa: jnp.ndarray  # (n_a, k_a, k_a), fixed/tied entries replaced by identity
    h_bb: jnp.ndarray  # (n_b, k_b, k_b), fixed entries replaced by identity
    h_ab: jnp.ndarray  # (n_a, n_b, k_a, k_b), masked to free entries
    h_gg: jnp.ndarray  # (n_g, n_g)
    h_ga: jnp.ndarray  # (n_g, n_a, k_a)
    h_gb: jnp.ndarray  # (n_g, n_b, k_b)
    grad_a: jnp.ndarray  # (n_a, k_a)
    grad_b: jnp.ndarray  # (n_b, k_b)
    grad_g: jnp.ndarray  # (n_g,)


def pair_residuals(fn, x: Variables, s: Structure):
    """Weighted residuals of every pair, shape (n_a, n_b, m); zero for missing pairs."""
    a_eff = effective_a(x.a, x.g, s.tie_a)
    per_b = jax.vmap(fn, in_axes=(None, 0, 0, None))
    r = jax.vmap(per_b, in_axes=(0, None, 0, None))(a_eff, x.b, s.pair_data, s.const)
    w = s.weights[..., None]
    return jnp.where(w != 0, w * r, 0.0)


def cost(fn, x: Variables, s: Structure):
    """Half the sum of squared weighted residuals."""
    r = pair_residuals(fn, x, s)
    return 0.5 * jnp.sum(r * r)


def _masked_block(h, free):
    """h (n, k, k) restricted to free entries, identity on the others."""
    f = free.astype(h.dtype)
    return h * f[:, :, None] * f[:, None, :] + jax.vmap(jnp.diag)(1.0 - f)


def linearize(fn, x: Variables, s: Structure) -> Linearization:
    """Residuals and Jacobians by forward-mode autodiff, reduced to normal-equation blocks."""
    a_eff = effective_a(x.a, x.g, s.tie_a)

    def value_and_jac(a, b, pair, const):
        r = fn(a, b, pair, const)
        ja, jb = jax.jacfwd(fn, argnums=(0, 1))(a, b, pair, const)
        return r, ja, jb

    per_b = jax.vmap(value_and_jac, in_axes=(None, 0, 0, None))
    r, ja, jb = jax.vmap(per_b, in_axes=(0, None, 0, None))(a_eff, x.b, s.pair_data, s.const)
    w = s.weights
    seen = (w != 0)[..., None]
    r = jnp.where(seen, w[..., None] * r, 0.0)
    ja = jnp.where(seen[..., None], w[..., None, None] * ja, 0.0)
    jb = jnp.where(seen[..., None], w[..., None, None] * jb, 0.0)

    h_aa_eff = jnp.einsum("abmp,abmq->apq", ja, ja)
    h_ab_eff = jnp.einsum("abmp,abmq->abpq", ja, jb)
    grad_a_eff = jnp.einsum("abmp,abm->ap", ja, r)
    fa = s.free_a.astype(r.dtype)
    fb = s.free_b.astype(r.dtype)
    n_g = x.g.shape[0]
    tie = jax.nn.one_hot(s.tie_a, n_g, dtype=r.dtype)  # (n_a, k_a, n_g); rows of -1 are zero
    return Linearization(
        cost=0.5 * jnp.sum(r * r),
        h_aa=_masked_block(h_aa_eff, s.free_a),
        h_bb=_masked_block(jnp.einsum("abmp,abmq->bpq", jb, jb), s.free_b),
        h_ab=h_ab_eff * fa[:, None, :, None] * fb[None, :, None, :],
        h_gg=jnp.einsum("apt,apq,aqs->ts", tie, h_aa_eff, tie),
        h_ga=jnp.einsum("apt,apq->taq", tie, h_aa_eff) * fa[None],
        h_gb=jnp.einsum("apt,abpq->tbq", tie, h_ab_eff) * fb[None],
        grad_a=grad_a_eff * fa,
        grad_b=jnp.einsum("abmp,abm->bp", jb, r) * fb,
        grad_g=jnp.einsum("apt,ap->t", tie, grad_a_eff),
    )
