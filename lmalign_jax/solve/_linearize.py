"""Residuals, autodiff Jacobians and the block normal equations of a bipartite problem.

With r the stacked weighted residuals and J its Jacobian, Gauss-Newton needs H = J^T J and
the gradient J^T r. Each pair residual depends on one A block, one B block and the slots its
A block is tied to, so H has the structure

    [ H_AA  H_AB  H_Ag ]      H_AA: (n_a, k_a, k_a) block diagonal
    [ H_BA  H_BB  H_Bg ]      H_BB: (n_b, k_b, k_b) block diagonal
    [ H_gA  H_gB  H_gg ]      H_AB: (k_a, k_b, n_a, n_b), one block per pair

and the slot rows follow from the chain rule through the one-hot tie map T (n_a, k_a, n_g):
H_gg = T^T H_AA^eff T, H_gB = T^T H_AB^eff, g_g = T^T g_A^eff. Fixed entries (and fixed slots) get an
identity diagonal and a zero gradient, so their step is exactly zero and every array keeps its shape.
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
    h_ab: jnp.ndarray  # (k_a, k_b, n_a, n_b), one block per pair, masked to free entries
    h_gg: jnp.ndarray  # (n_g, n_g)
    h_ga: jnp.ndarray  # (n_g, n_a, k_a)
    h_gb: jnp.ndarray  # (n_g, n_b, k_b)
    grad_a: jnp.ndarray  # (n_a, k_a)
    grad_b: jnp.ndarray  # (n_b, k_b)
    grad_g: jnp.ndarray  # (n_g,)
    b_free: jnp.ndarray  # () bool: any B entry free (else every B block and coupling is trivial)


def _grid(x: Variables, s: Structure):
    """A and B parameters broadcast to the pair grid: (k_a, n_a, n_b), (k_b, n_a, n_b)."""
    a_eff = effective_a(x.a, x.g, s.tie_a)
    n_a, n_b = a_eff.shape[0], x.b.shape[0]
    a = jnp.broadcast_to(a_eff.T[:, :, None], (a_eff.shape[1], n_a, n_b))
    b = jnp.broadcast_to(x.b.T[:, None, :], (x.b.shape[1], n_a, n_b))
    return a, b


def _weighted(values, weights):
    """values (..., n_a, n_b) times weights, exactly 0 where a pair is missing."""
    return jnp.where(weights != 0, weights * values, 0.0)


def pair_residuals(fn, x: Variables, s: Structure):
    """Weighted residuals of every pair, shape (m, n_a, n_b); zero for missing pairs."""
    a, b = _grid(x, s)
    return _weighted(fn(a, b, s.pair_data, s.const), s.weights)


def cost(fn, x: Variables, s: Structure):
    """Half the sum of squared weighted residuals."""
    r = pair_residuals(fn, x, s)
    return 0.5 * jnp.sum(r * r)


def _masked_block(h, free):
    """h (n, k, k) restricted to free entries, identity on the others."""
    f = free.astype(h.dtype)
    return h * f[:, :, None] * f[:, None, :] + jax.vmap(jnp.diag)(1.0 - f)


def _jacobian_columns(f, x):
    """Forward-mode derivative of f at x (k, n_a, n_b) along each parameter: (m, k, n_a, n_b)."""
    k = x.shape[0]
    basis = jnp.eye(k, dtype=x.dtype)[:, :, None, None]
    cols = [jax.jvp(f, (x,), (jnp.broadcast_to(basis[p], x.shape),))[1] for p in range(k)]
    return jnp.stack(cols, axis=1)


def linearize(fn, x: Variables, s: Structure) -> Linearization:
    """Residuals and Jacobians by forward-mode autodiff, reduced to normal-equation blocks.

    The residual is evaluated on the whole pair grid at once and differentiated along each
    of the k_a + k_b parameter directions, so every array is laid out as (..., n_a, n_b) and
    the arithmetic is elementwise over pairs.
    """
    a, b = _grid(x, s)
    w = s.weights
    r = _weighted(fn(a, b, s.pair_data, s.const), w)
    ja = _weighted(_jacobian_columns(lambda a_: fn(a_, b, s.pair_data, s.const), a), w)
    n_res = r.shape[0]
    k_a, k_b = a.shape[0], b.shape[0]
    n_a, n_b = w.shape
    b_free = jnp.any(s.free_b)

    # Sums over the (few) residual components written out, so each product is elementwise
    # over the pair grid; XLA handles these far better than tiny-dimension einsums.
    def b_blocks():
        jb = _weighted(_jacobian_columns(lambda b_: fn(a, b_, s.pair_data, s.const), b), w)
        h_ab = sum(ja[i][:, None] * jb[i][None, :] for i in range(n_res))  # (k_a, k_b, n_a, n_b)
        h_bb = jnp.moveaxis(sum(jnp.sum(jb[i][:, None] * jb[i][None, :], axis=-2) for i in range(n_res)), -1, 0)
        grad_b = sum(jnp.sum(jb[i] * r[i], axis=-2) for i in range(n_res)).T  # (n_b, k_b)
        return h_ab, h_bb, grad_b

    def no_b_blocks():  # every B entry fixed (e.g. the tilt-estimate stage): skip their Jacobian
        dtype = r.dtype
        return jnp.zeros((k_a, k_b, n_a, n_b), dtype), jnp.zeros((n_b, k_b, k_b), dtype), jnp.zeros((n_b, k_b), dtype)

    h_ab_eff, h_bb, grad_b = jax.lax.cond(b_free, b_blocks, no_b_blocks)
    h_aa_eff = jnp.moveaxis(sum(jnp.sum(ja[i][:, None] * ja[i][None, :], axis=-1) for i in range(n_res)), -1, 0)
    grad_a_eff = sum(jnp.sum(ja[i] * r[i], axis=-1) for i in range(n_res)).T  # (n_a, k_a)
    fa = s.free_a.astype(r.dtype)
    fb = s.free_b.astype(r.dtype)
    fg = s.free_g.astype(r.dtype)
    n_g = x.g.shape[0]
    tie = jax.nn.one_hot(s.tie_a, n_g, dtype=r.dtype) * fg  # (n_a, k_a, n_g); untied rows and fixed slots are zero
    return Linearization(
        cost=0.5 * jnp.sum(r * r),
        h_aa=_masked_block(h_aa_eff, s.free_a),
        h_bb=_masked_block(h_bb, s.free_b),
        h_ab=h_ab_eff * fa.T[:, None, :, None] * fb.T[None, :, None, :],
        h_gg=jnp.einsum("apt,apq,aqs->ts", tie, h_aa_eff, tie) + jnp.diag(1.0 - fg),
        h_ga=jnp.einsum("apt,apq->taq", tie, h_aa_eff) * fa[None],
        h_gb=jnp.einsum("apt,pqab->tbq", tie, h_ab_eff) * fb[None],
        grad_a=grad_a_eff * fa,
        grad_b=grad_b * fb,
        grad_g=jnp.einsum("apt,ap->t", tie, grad_a_eff),
        b_free=b_free,
    )
