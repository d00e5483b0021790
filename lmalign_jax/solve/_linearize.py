"""Residuals, autodiff Jacobians and the block normal equations of a bipartite problem.

With r the stacked weighted residuals and J its Jacobian, Gauss-Newton needs H = J^T J and
the gradient J^T r. Each pair residual depends on one A block, one B block and the slots its
A block is tied to, so H has the structure

    [ H_AA  H_AB  H_Ag ]      H_AA: (n_a, k_a, k_a) block diagonal
    [ H_BA  H_BB  H_Bg ]      H_BB: (n_b, k_b, k_b) block diagonal
    [ H_gA  H_gB  H_gg ]      H_AB: one (k_a, k_b) block per pair, J_a^T J_b

and the slot rows follow from the chain rule through the one-hot tie map T (n_a, k_a, n_g):
H_gg = T^T H_AA^eff T, H_gB = T^T H_AB^eff, g_g = T^T g_A^eff. Fixed entries (and fixed slots) get an
identity diagonal and a zero gradient, so their step is exactly zero and every array keeps its shape.

The coupling H_AB is not stored: the per-pair Jacobians (m + m numbers per pair instead of
k_a k_b) are, and the Schur complement forms what it needs from them.

Regularization. A residual function may carry an attribute ``regularization``:
``fn.regularization(a_eff (n_a, k_a), const) -> (n_r,)``, extra residual rows that depend on
the A blocks' effective parameters alone (e.g. a smoothness penalty across neighbouring
views). They add to the cost and the gradient, and their Gauss-Newton matrix, which may
couple different A blocks, is kept dense over D = (own free A entries, free slots) in
``Linearization.h_reg``: the marker-eliminating Schur step adds it to its dense reduced
system, so the B blocks are still eliminated exactly. Eliminating the A blocks is then not
possible (they are no longer independent): ``choose_elimination(..., coupled_a=True)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._problem import Structure, Variables, effective_a, tie_weights


class Linearization(NamedTuple):
    """Normal-equation blocks and per-pair Jacobians at one point (shapes: module docstring)."""

    cost: jnp.ndarray  # () 0.5 * sum of squared weighted residuals
    h_aa: jnp.ndarray  # (n_a, k_a, k_a), fixed/tied entries replaced by identity
    h_bb: jnp.ndarray  # (n_b, k_b, k_b), fixed entries replaced by identity
    jac_a: jnp.ndarray  # (m, n_a, k_a, n_b) weighted d(residual)/d(own free A entries); 0 elsewhere
    jac_b: jnp.ndarray  # (m, k_b, n_a, n_b) weighted d(residual)/d(free B entries); 0 elsewhere
    h_gg: jnp.ndarray  # (n_g, n_g)
    h_ga: jnp.ndarray  # (n_g, n_a, k_a)
    h_gb: jnp.ndarray  # (n_g, n_b, k_b)
    grad_a: jnp.ndarray  # (n_a, k_a)
    grad_b: jnp.ndarray  # (n_b, k_b)
    grad_g: jnp.ndarray  # (n_g,)
    b_free: jnp.ndarray  # () bool: any B entry free (else every B block and coupling is trivial)
    h_reg: jnp.ndarray | None = None  # (d, d) regularization J^T J over D = (own A entries, slots)


def regularization_of(fn):
    """``fn``'s regularization rows ``(a_eff (n_a, k_a), const) -> (n_r,)``, or None."""
    return getattr(fn, "regularization", None)


def coupling(lin: Linearization):
    """The coupling blocks H_AB of every pair, (k_a, k_b, n_a, n_b), free entries only."""
    return sum(
        jnp.swapaxes(ja, 0, 1)[:, None] * jb[None] for ja, jb in zip(lin.jac_a, lin.jac_b, strict=True)
    )


def _grid(x: Variables, s: Structure):
    """A and B parameters shaped to broadcast over the pair grid: (k_a, n_a, 1), (k_b, 1, n_b).

    Per-view quantities (a tilt's sine, say) are then computed once per view, not per pair."""
    a_eff = effective_a(x.a, x.g, s.tie_a, s.tie_blend)
    return a_eff.T[:, :, None], x.b.T[:, None, :]


def _weighted(values, weights):
    """values (..., n_a, n_b) times weights, exactly 0 where a pair is missing."""
    return jnp.where(weights != 0, weights * values, 0.0)


def pair_residuals(fn, x: Variables, s: Structure):
    """Weighted residuals of every pair, shape (m, n_a, n_b); zero for missing pairs."""
    a, b = _grid(x, s)
    return _weighted(fn(a, b, s.pair_data, s.const), s.weights)


def cost(fn, x: Variables, s: Structure):
    """Half the sum of squared weighted residuals (and regularization rows, if ``fn`` has them)."""
    r = pair_residuals(fn, x, s)
    total = 0.5 * jnp.sum(r * r)
    reg = regularization_of(fn)
    if reg is not None:
        rows = reg(effective_a(x.a, x.g, s.tie_a, s.tie_blend), s.const)
        total = total + 0.5 * jnp.sum(rows * rows)
    return total


def _masked_block(h, free):
    """h (n, k, k) restricted to free entries, identity on the others."""
    f = free.astype(h.dtype)
    return h * f[:, :, None] * f[:, None, :] + jax.vmap(jnp.diag)(1.0 - f)


def _directional(f, x, weights, axis: int):
    """Weighted forward-mode derivatives of f at x (k, ...) along each of its k rows, stacked
    on ``axis`` of f's output (m, n_a, n_b). One batched jvp: k separate ones put k copies of
    the derivative code in every compiled solve (a third more to compile, and slower to run)."""
    k = x.shape[0]
    basis = jnp.eye(k, dtype=x.dtype).reshape((k, k) + (1,) * (x.ndim - 1))
    derivatives = jax.vmap(lambda t: jax.jvp(f, (x,), (jnp.broadcast_to(t, x.shape),))[1])(basis)
    return jnp.moveaxis(_weighted(derivatives, weights), 0, axis)


def pair_jacobians(fn, x: Variables, s: Structure):
    """Weighted Jacobians of every pair's residual, all entries (none masked):
    (ja (m, k_a, n_a, n_b), jb (m, k_b, n_a, n_b))."""
    a, b = _grid(x, s)
    f = lambda a_, b_: fn(a_, b_, s.pair_data, s.const)  # noqa: E731
    ja = _directional(lambda a_: f(a_, b), a, s.weights, axis=1)
    jb = _directional(lambda b_: f(a, b_), b, s.weights, axis=1)
    return ja, jb


#: Pairs linearised at a time: problems with more than PAIRS_PER_CHUNK pairs run as a loop over
#: chunks of markers (all views each), so each chunk's Jacobians and the sums they feed stay in
#: cache. XLA's CPU reductions over a whole 61 views x 30,000 markers grid ran 3-10x slower.
PAIRS_PER_CHUNK = 16384


def markers_per_chunk(n_a: int, n_b: int) -> int:
    """Markers per chunk (static; all of them for small problems), for ``PAIRS_PER_CHUNK`` pairs."""
    return max(1, min(n_b, PAIRS_PER_CHUNK // max(n_a, 1)))


def linearize(fn, x: Variables, s: Structure, chunk: int | None = None) -> Linearization:
    """Residuals and Jacobians by forward-mode autodiff, reduced to normal-equation blocks.

    The residual is evaluated on all views x a chunk of C markers at a time, with A
    parameters shaped (k_a, n_a, 1) and B parameters (k_b, 1, C), and differentiated along each
    of the k_a + k_b parameter directions, so every pair-sized array is (..., n_a, C), per-view
    quantities (a tilt's sine) are computed once per view, and the arithmetic is elementwise.
    Chunks run in a loop; the last one is shifted back to end at the last marker, and the
    markers it repeats are not counted twice. ``chunk`` overrides ``markers_per_chunk``.
    """
    a_eff = effective_a(x.a, x.g, s.tie_a, s.tie_blend)  # (n_a, k_a)
    n_a, k_a = a_eff.shape
    n_b, k_b = x.b.shape
    dtype = a_eff.dtype
    n_g = x.g.shape[0]
    fa = s.free_a.astype(dtype)
    fb = s.free_b.astype(dtype)
    fg = s.free_g.astype(dtype)
    tie = tie_weights(s.tie_a, s.tie_blend, n_g, dtype) * fg  # (n_a, k_a, n_g); untied rows, fixed slots 0
    b_free = jnp.any(s.free_b)
    a = a_eff.T[:, :, None]  # (k_a, n_a, 1)
    size = min(chunk, n_b) if chunk else markers_per_chunk(n_a, n_b)
    n_chunks = -(-n_b // size)
    n_res = jax.eval_shape(lambda: fn(a, x.b[:1].T[:, None, :], _markers(s.pair_data, 0, 1), s.const)).shape[
        0
    ]

    def one_chunk(c, carry):
        cost_, h_aa, grad_a, jac_a, jac_b, h_bb, grad_b, h_gb = carry
        m0 = jnp.minimum(c * size, n_b - size)
        counted = (m0 + jnp.arange(size) >= c * size).astype(dtype)  # (C,) 0 for markers counted before
        b = jax.lax.dynamic_slice_in_dim(x.b, m0, size, 0).T[:, None, :]  # (k_b, 1, C)
        pair = _markers(s.pair_data, m0, size)
        w = jax.lax.dynamic_slice_in_dim(s.weights, m0, size, 1)  # (n_a, C)
        f = lambda a_, b_: fn(a_, b_, pair, s.const)  # noqa: E731
        r = _weighted(f(a, b), w)  # (m, n_a, C)
        rc = r * counted
        ja = _directional(lambda a_: f(a_, b), a, w, axis=2)  # (m, n_a, k_a, C), every entry
        jac = ja * counted
        d_aa = sum(jnp.einsum("apb,aqb->apq", jac[i], ja[i]) for i in range(n_res))  # (n_a, k_a, k_a)
        d_a = sum(jnp.einsum("apb,ab->ap", ja[i], rc[i]) for i in range(n_res))  # (n_a, k_a)
        fb_c = jax.lax.dynamic_slice_in_dim(fb, m0, size, 0)

        def b_blocks():
            jb = (
                _directional(lambda b_: f(a, b_), b, w, axis=1) * fb_c.T[None, :, None, :]
            )  # (m, k_b, n_a, C)
            # Sums over the (few) residual components written out: elementwise products over
            # the chunk, which XLA fuses far better than tiny-dimension einsums.
            d_bb = sum(jnp.sum(jb[i][:, None] * jb[i][None], axis=-2) for i in range(n_res))  # (k_b, k_b, C)
            d_b = sum(jnp.sum(jb[i] * r[i][None], axis=-2) for i in range(n_res))  # (k_b, C)
            if n_g:
                jg = jnp.einsum("apt,rapb->rtab", tie, ja)
                d_gb = sum(
                    jnp.sum(jg[i][:, None] * jb[i][None], axis=-2) for i in range(n_res)
                )  # (n_g, k_b, C)
            else:
                d_gb = jnp.zeros((0, k_b, size), dtype)
            return jb, d_bb, d_b, d_gb

        def no_b_blocks():  # every B entry fixed (e.g. the tilt-estimate stage): skip their Jacobian
            return (
                jnp.zeros((n_res, k_b, n_a, size), dtype),
                jnp.zeros((k_b, k_b, size), dtype),
                jnp.zeros((k_b, size), dtype),
                jnp.zeros((n_g, k_b, size), dtype),
            )

        jb, d_bb, d_b, d_gb = jax.lax.cond(b_free, b_blocks, no_b_blocks)
        put = jax.lax.dynamic_update_slice_in_dim  # a repeated marker gets the same values again
        return (
            cost_ + 0.5 * jnp.sum(rc * r),
            h_aa + d_aa,
            grad_a + d_a,
            put(jac_a, ja * fa[None, :, :, None], m0, 3),
            put(jac_b, jb, m0, 3),
            put(h_bb, d_bb, m0, 2),
            put(grad_b, d_b, m0, 1),
            put(h_gb, d_gb, m0, 2),
        )

    carry = (
        jnp.zeros((), dtype),
        jnp.zeros((n_a, k_a, k_a), dtype),
        jnp.zeros((n_a, k_a), dtype),
        jnp.zeros((n_res, n_a, k_a, n_b), dtype),
        jnp.zeros((n_res, k_b, n_a, n_b), dtype),
        jnp.zeros((k_b, k_b, n_b), dtype),
        jnp.zeros((k_b, n_b), dtype),
        jnp.zeros((n_g, k_b, n_b), dtype),
    )
    carry = one_chunk(0, carry) if n_chunks == 1 else jax.lax.fori_loop(0, n_chunks, one_chunk, carry)
    cost_, h_aa, grad_a, jac_a, jac_b, h_bb, grad_b, h_gb = carry
    h_reg = None
    reg = regularization_of(fn)
    if reg is not None:
        rows = reg(a_eff, s.const)  # (n_r,)
        jac = jax.jacfwd(reg)(a_eff, s.const).reshape(rows.shape[0], n_a * k_a)  # d rows / d a_eff
        cost_ = cost_ + 0.5 * jnp.sum(rows * rows)
        grad_a = grad_a + (rows @ jac).reshape(n_a, k_a)  # before masking, so the slots get theirs
        # d a_eff / d D: own free entries one to one, free slots through the tie map.
        to_d = jnp.concatenate([jnp.diag(fa.reshape(-1)), tie.reshape(n_a * k_a, n_g)], axis=1)
        jac_d = jac @ to_d  # (n_r, d)
        h_reg = jac_d.T @ jac_d
    return Linearization(
        cost=cost_,
        h_aa=_masked_block(h_aa, s.free_a),
        h_bb=_masked_block(jnp.moveaxis(h_bb, -1, 0), s.free_b),
        jac_a=jac_a,
        jac_b=jac_b,
        h_gg=jnp.einsum("apt,apq,aqs->ts", tie, h_aa, tie) + jnp.diag(1.0 - fg),
        h_ga=jnp.einsum("apt,apq->taq", tie, h_aa) * fa[None],
        h_gb=jnp.moveaxis(h_gb, -1, 1),
        grad_a=grad_a * fa,
        grad_b=grad_b.T,
        grad_g=jnp.einsum("apt,ap->t", tie, grad_a),
        b_free=b_free,
        h_reg=h_reg,
    )


def _markers(pair_data, start, size):
    """Markers [start, start + size) of every pair-data leaf (trailing shape (n_a, n_b))."""
    return jax.tree_util.tree_map(
        lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, start, size, leaf.ndim - 1), pair_data
    )
