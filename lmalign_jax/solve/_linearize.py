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


#: Markers (B blocks) linearised together; larger problems are processed chunk by chunk so the
#: (parameters x views x markers) Jacobian temporaries stay small (30,000 markers: 14.0 -> 8.9 s).
B_CHUNK = 1024


class _Raw(NamedTuple):
    """Unmasked sums over pairs (see ``linearize``), with B-indexed pieces last along B."""

    cost: jnp.ndarray  # ()
    h_aa: jnp.ndarray  # (n_a, k_a, k_a)
    grad_a: jnp.ndarray  # (n_a, k_a)
    h_ab: jnp.ndarray  # (k_a, k_b, n_a, n_b)
    h_bb: jnp.ndarray  # (n_b, k_b, k_b)
    grad_b: jnp.ndarray  # (n_b, k_b)


def _raw_blocks(fn, a_eff, b, s: Structure) -> _Raw:
    """Residuals and Jacobians on the pair grid of ``a_eff`` (n_a, k_a) x ``b`` (n_b, k_b)."""
    n_a, n_b = a_eff.shape[0], b.shape[0]
    a = jnp.broadcast_to(a_eff.T[:, :, None], (a_eff.shape[1], n_a, n_b))
    bg = jnp.broadcast_to(b.T[:, None, :], (b.shape[1], n_a, n_b))
    w = s.weights
    r = _weighted(fn(a, bg, s.pair_data, s.const), w)
    ja = _weighted(_jacobian_columns(lambda a_: fn(a_, bg, s.pair_data, s.const), a), w)
    n_res = r.shape[0]
    k_a, k_b = a.shape[0], bg.shape[0]

    # Sums over the (few) residual components written out, so each product is elementwise
    # over the pair grid; XLA handles these far better than tiny-dimension einsums.
    def b_blocks():
        jb = _weighted(_jacobian_columns(lambda b_: fn(a, b_, s.pair_data, s.const), bg), w)
        h_ab = sum(ja[i][:, None] * jb[i][None, :] for i in range(n_res))  # (k_a, k_b, n_a, n_b)
        h_bb = jnp.moveaxis(sum(jnp.sum(jb[i][:, None] * jb[i][None, :], axis=-2) for i in range(n_res)), -1, 0)
        grad_b = sum(jnp.sum(jb[i] * r[i], axis=-2) for i in range(n_res)).T  # (n_b, k_b)
        return h_ab, h_bb, grad_b

    def no_b_blocks():  # every B entry fixed (e.g. the tilt-estimate stage): skip their Jacobian
        dtype = r.dtype
        return jnp.zeros((k_a, k_b, n_a, n_b), dtype), jnp.zeros((n_b, k_b, k_b), dtype), jnp.zeros((n_b, k_b), dtype)

    h_ab, h_bb, grad_b = jax.lax.cond(jnp.any(s.free_b), b_blocks, no_b_blocks)
    h_aa = jnp.moveaxis(sum(jnp.sum(ja[i][:, None] * ja[i][None, :], axis=-1) for i in range(n_res)), -1, 0)
    grad_a = sum(jnp.sum(ja[i] * r[i], axis=-1) for i in range(n_res)).T  # (n_a, k_a)
    return _Raw(0.5 * jnp.sum(r * r), h_aa, grad_a, h_ab, h_bb, grad_b)


def _b_slice(b, s: Structure, start, size):
    """B blocks [start, start + size) of the variables and the structure."""
    take = lambda arr, axis: jax.lax.dynamic_slice_in_dim(arr, start, size, axis)  # noqa: E731
    part = s._replace(
        pair_data=jax.tree_util.tree_map(lambda leaf: take(leaf, leaf.ndim - 1), s.pair_data),
        weights=take(s.weights, 1),
        free_b=take(s.free_b, 0),
    )
    return take(b, 0), part


def _raw_in_chunks(fn, a_eff, b, s: Structure, chunk: int) -> _Raw:
    """``_raw_blocks`` over B in chunks of ``chunk`` (a ``lax.map``) plus one remainder chunk."""
    n_b = b.shape[0]
    n_chunks = n_b // chunk
    mapped = jax.lax.map(lambda c: _raw_blocks(fn, a_eff, *_b_slice(b, s, c * chunk, chunk)), jnp.arange(n_chunks))
    k_a, k_b, n_a = mapped.h_ab.shape[1:4]
    parts = [
        _Raw(
            jnp.sum(mapped.cost),
            jnp.sum(mapped.h_aa, axis=0),
            jnp.sum(mapped.grad_a, axis=0),
            jnp.moveaxis(mapped.h_ab, 0, -2).reshape(k_a, k_b, n_a, n_chunks * chunk),
            mapped.h_bb.reshape(-1, k_b, k_b),
            mapped.grad_b.reshape(-1, k_b),
        )
    ]
    if n_b > n_chunks * chunk:
        start = n_chunks * chunk
        parts.append(_raw_blocks(fn, a_eff, *_b_slice(b, s, start, n_b - start)))
    if len(parts) == 1:
        return parts[0]
    first, rest = parts
    return _Raw(
        first.cost + rest.cost,
        first.h_aa + rest.h_aa,
        first.grad_a + rest.grad_a,
        jnp.concatenate([first.h_ab, rest.h_ab], axis=-1),
        jnp.concatenate([first.h_bb, rest.h_bb], axis=0),
        jnp.concatenate([first.grad_b, rest.grad_b], axis=0),
    )


def linearize(fn, x: Variables, s: Structure, chunk: int = B_CHUNK) -> Linearization:
    """Residuals and Jacobians by forward-mode autodiff, reduced to normal-equation blocks.

    The residual is evaluated on the pair grid and differentiated along each of the
    k_a + k_b parameter directions, so every array is laid out as (..., n_a, n_b) and the
    arithmetic is elementwise over pairs; past ``chunk`` B blocks the grid is processed in
    chunks of B (the result is the same).
    """
    a_eff = effective_a(x.a, x.g, s.tie_a)
    if x.b.shape[0] > chunk:
        raw = _raw_in_chunks(fn, a_eff, x.b, s, chunk)
    else:
        raw = _raw_blocks(fn, a_eff, x.b, s)
    dtype = raw.h_aa.dtype
    fa = s.free_a.astype(dtype)
    fb = s.free_b.astype(dtype)
    fg = s.free_g.astype(dtype)
    n_g = x.g.shape[0]
    tie = jax.nn.one_hot(s.tie_a, n_g, dtype=dtype) * fg  # (n_a, k_a, n_g); untied rows and fixed slots are zero
    return Linearization(
        cost=raw.cost,
        h_aa=_masked_block(raw.h_aa, s.free_a),
        h_bb=_masked_block(raw.h_bb, s.free_b),
        h_ab=raw.h_ab * fa.T[:, None, :, None] * fb.T[None, :, None, :],
        h_gg=jnp.einsum("apt,apq,aqs->ts", tie, raw.h_aa, tie) + jnp.diag(1.0 - fg),
        h_ga=jnp.einsum("apt,apq->taq", tie, raw.h_aa) * fa[None],
        h_gb=jnp.einsum("apt,pqab->tbq", tie, raw.h_ab) * fb[None],
        grad_a=raw.grad_a * fa,
        grad_b=raw.grad_b * fb,
        grad_g=jnp.einsum("apt,ap->t", tie, raw.grad_a),
        b_free=jnp.any(s.free_b),
    )
