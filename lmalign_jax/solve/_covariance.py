"""Parameter covariance (J^T J)^{-1} and observation leverages through the Schur complement.

With the partition of ``_schur`` (E blocks eliminated, D dense) and H_EE = L L^T,
Y = L^{-1} H_ED and S = H_DD - Y^T Y, the inverse of the normal matrix has blocks

    (H^{-1})_DD = S^{-1}
    (H^{-1})_ED = -L^{-T} Y S^{-1}                     (block e: -L_e^{-T} Y_e S^{-1})
    (H^{-1})_ee = L_e^{-T} (I + Y_e S^{-1} Y_e^T) L_e^{-1}

so every quantity below costs about as much as forming S: no dense inverse of H.
Multiply by sigma^2 for the covariance of the estimates. Fixed entries get zero variance.
``factorize`` keeps (L^{-1}, Y, chol S) so that any number of solves H^{-1} v
(``factored_solve``) and the blocks above share one factorization: each is two triangular
passes, not another Schur step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ._linearize import Linearization
from ._problem import Structure, Variables
from ._schur import eliminated_coupling, inverse_cholesky_blocks, partition


class InverseBlocks(NamedTuple):
    """Blocks of H^{-1}: e (n, k, k), cross (n, k, d) = (H^{-1})_ED, dd (d, d)."""

    e: jnp.ndarray
    cross: jnp.ndarray
    dd: jnp.ndarray


class Factorization(NamedTuple):
    """The undamped normal matrix factored once through the Schur complement, for any number
    of solves: inv (n, k, k) = L^{-1} of each eliminated block, y (k, d, n) the rows of
    Y = L^{-1} H_ED, chol (d, d) the lower Cholesky factor of S."""

    inv: jnp.ndarray
    y: jnp.ndarray
    chol: jnp.ndarray


def factorize(lin: Linearization, eliminate: str) -> Factorization:
    """Factor H = J^T J (free entries; fixed ones are identity rows) with ``eliminate``'s
    blocks as E."""
    part, _ = partition(lin, 0.0, eliminate)
    inv = inverse_cholesky_blocks(part.h_ee)
    y = eliminated_coupling(inv, part.h_ed)
    reduced = part.h_dd - sum(yi @ yi.T for yi in y)
    return Factorization(inv, jnp.stack(y), jsl.cho_factor(reduced, lower=True)[0])


def factored_solve(f: Factorization, eliminate: str, v: Variables) -> Variables:
    """H^{-1} v (``v`` shaped like the variables): z = L^{-1} v_E, S x_D = v_D - Y^T z,
    x_E = L^{-T} (z - Y x_D). Entries fixed in the fit are identity rows of H (x = v there)."""
    if eliminate == "b":
        v_e, own = v.b, v.a
    else:
        v_e, own = v.a, v.b
    z = jnp.einsum("nij,nj->ni", f.inv, v_e)
    x_d = jsl.cho_solve(
        (f.chol, True), jnp.concatenate([own.reshape(-1), v.g]) - jnp.einsum("idn,ni->d", f.y, z)
    )
    x_e = jnp.einsum("nij,ni->nj", f.inv, z - jnp.einsum("idn,d->ni", f.y, x_d))
    x_own = x_d[: own.size].reshape(own.shape)
    if eliminate == "b":
        return Variables(x_own, x_e, x_d[own.size :])
    return Variables(x_e, x_own, x_d[own.size :])


def inverse_blocks(
    lin: Linearization, eliminate: str, factorization: Factorization | None = None
) -> InverseBlocks:
    """The blocks of the (undamped) inverse normal matrix that the block structure needs
    (from ``factorization`` of the same ``lin`` when given)."""
    f = factorize(lin, eliminate) if factorization is None else factorization
    inv, y = f.inv, list(f.y)
    n_d = f.chol.shape[0]
    s_inv = jsl.cho_solve((f.chol, True), jnp.eye(n_d, dtype=f.chol.dtype))
    z = [s_inv @ yi for yi in y]  # S^{-1} Y_i^T, (d, n)
    k = len(y)
    middle = jnp.stack(
        [jnp.stack([jnp.sum(y[i] * z[j], axis=0) for j in range(k)], -1) for i in range(k)], -2
    )
    middle = middle + jnp.eye(k, dtype=middle.dtype)  # (n, k, k): I + Y_e S^-1 Y_e^T
    e = jnp.einsum("nij,nil,nlm->njm", inv, middle, inv)
    cross = -jnp.einsum("nij,idn->njd", inv, jnp.stack(z))
    return InverseBlocks(e, cross, s_inv)


def effective_parameters(lin: Linearization, s: Structure, eliminate: str):
    """Effective number of parameters of a fit with regularization rows: tr(H^{-1} H_data)
    = n_free - tr(H^{-1} H_reg), with H = H_data + H_reg the Gauss-Newton matrix (the trace of
    the data's hat matrix; Hastie & Tibshirani's effective degrees of freedom of a penalised
    fit). H_reg lives on D, so only (H^{-1})_DD = S^{-1} is needed. Without regularization
    rows: the number of free parameters."""
    n_free = jnp.sum(s.free_a) + jnp.sum(s.free_b) + jnp.sum(s.free_g)
    if lin.h_reg is None:
        return n_free.astype(lin.cost.dtype)
    blocks = inverse_blocks(lin, eliminate)
    return n_free - jnp.sum(blocks.dd * lin.h_reg)


def _positions(s: Structure, n_a, k_a, n_b, k_b, eliminate):
    """Where each A and B entry lives in the partition.

    Returns (a_in_e (n_a, k_a) bool, a_d, b_in_e (n_b, k_b) bool, b_d (n_b, k_b) int). An A
    entry in D is a blend of at most two D entries, ``a_d = (index, index2, frac)`` each
    (n_a, k_a): ``frac`` of D entry ``index`` plus ``1 - frac`` of ``index2`` (a slot's blend,
    ``Structure.tie_blend``; otherwise ``index2`` is the zero padding row d and ``frac`` 1).
    Fixed entries point at d. Entries in E live in their own block at their own position.
    """
    n_g = s.free_g.shape[0]
    n_own = (n_a * k_a) if eliminate == "b" else (n_b * k_b)
    d = n_own + n_g
    tie = s.tie_a
    tie2, frac = (tie, jnp.ones(tie.shape)) if s.tie_blend is None else s.tie_blend[:2]
    frac = jnp.where(tie >= 0, frac, 1.0)

    def slot_index(t):
        if not n_g:
            return jnp.full(t.shape, d)
        return jnp.where((t >= 0) & s.free_g[jnp.clip(t, 0)], n_own + t, d)

    second = slot_index(tie2) if s.tie_blend is not None else jnp.full(tie.shape, d)
    if eliminate == "b":
        own = jnp.arange(n_a * k_a).reshape(n_a, k_a)
        a_d = (jnp.where(s.free_a, own, slot_index(tie)), jnp.where(s.free_a, d, second), frac)
        return jnp.zeros((n_a, k_a), bool), a_d, s.free_b, jnp.full((n_b, k_b), d)
    own = jnp.arange(n_b * k_b).reshape(n_b, k_b)
    return s.free_a, (slot_index(tie), second, frac), jnp.zeros((n_b, k_b), bool), jnp.where(s.free_b, own, d)


def _take(m, position, axis: int):
    """``m`` indexed along ``axis`` by a blended position ``(index, index2, frac)``."""
    index, index2, frac = position
    frac = frac.reshape(frac.shape + (1,) * (m.ndim - axis - 1)).astype(m.dtype)
    return frac * jnp.take(m, index, axis=axis) + (1 - frac) * jnp.take(m, index2, axis=axis)


def _pick(m, rows, columns):
    """``m[rows, columns]`` (a 2-D ``m``) for blended positions ``(index, index2, frac)`` whose
    arrays broadcast together."""
    (i, i2, f), (j, j2, g) = rows, columns
    f, g = f.astype(m.dtype), g.astype(m.dtype)
    return f * g * m[i, j] + f * (1 - g) * m[i, j2] + (1 - f) * g * m[i2, j] + (1 - f) * (1 - g) * m[i2, j2]


def variances(lin: Linearization, s: Structure, eliminate: str, blocks: InverseBlocks | None = None):
    """Diagonal of H^{-1} for every entry: (var_a (n_a, k_a), var_b (n_b, k_b)), solver units.

    Tied entries report their slot's variance (a blended entry its blend's); fixed entries
    report 0. ``blocks``: the ``inverse_blocks`` of ``lin``, when already computed.
    """
    blocks = inverse_blocks(lin, eliminate) if blocks is None else blocks
    n_a, k_a = lin.grad_a.shape
    n_b, k_b = lin.grad_b.shape
    a_e, a_d, b_e, b_d = _positions(s, n_a, k_a, n_b, k_b, eliminate)
    dd = jnp.pad(blocks.dd, ((0, 1), (0, 1)))
    var_d = _pick(dd, a_d, a_d)
    diag_e = jnp.diagonal(blocks.e, axis1=-2, axis2=-1)
    if eliminate == "b":
        return var_d, jnp.where(b_e, diag_e, 0.0)
    return jnp.where(a_e, diag_e, var_d), jnp.diagonal(dd)[b_d]


def leverages(
    lin: Linearization, s: Structure, eliminate: str, jacobians, blocks: InverseBlocks | None = None
):
    """Hat-matrix blocks J_i H^{-1} J_i^T of every pair: (n_a, n_b, m, m).

    ``jacobians`` = (ja (m, k_a, n_a, n_b), jb (m, k_b, n_a, n_b)), weighted as in the fit;
    ``blocks``: the ``inverse_blocks`` of ``lin``, when already computed.
    """
    ja, jb = jacobians
    c_aa, c_bb, c_ab = _pair_covariances(lin, s, eliminate, blocks)
    ja_p = jnp.moveaxis(ja, (2, 3), (0, 1))  # (n_a, n_b, m, k_a)
    jb_p = jnp.moveaxis(jb, (2, 3), (0, 1))
    hat = jnp.einsum("abip,apq,abjq->abij", ja_p, c_aa, ja_p)
    hat = hat + jnp.einsum("abip,bpq,abjq->abij", jb_p, c_bb, jb_p)
    both = jnp.einsum("abip,abpq,abjq->abij", ja_p, c_ab, jb_p)
    return hat + both + jnp.swapaxes(both, -1, -2)


def block_covariances(lin: Linearization, s: Structure, eliminate: str, blocks: InverseBlocks | None = None):
    """The (H^{-1}) blocks of each A block's effective entries and of each B block: (c_aa (n_a,
    k_a, k_a), c_bb (n_b, k_b, k_b)), solver units; fixed entries 0."""
    c_aa, c_bb, _ = _pair_covariances(lin, s, eliminate, blocks)
    return c_aa, c_bb


def _pair_covariances(lin: Linearization, s: Structure, eliminate: str, blocks: InverseBlocks | None):
    """(c_aa (n_a, k_a, k_a), c_bb (n_b, k_b, k_b), c_ab (n_a, n_b, k_a, k_b)): the blocks of
    H^{-1} that one pair's parameters span."""
    blocks = inverse_blocks(lin, eliminate) if blocks is None else blocks
    n_a, k_a = lin.grad_a.shape
    n_b, k_b = lin.grad_b.shape
    a_e, a_d, b_e, b_d = _positions(s, n_a, k_a, n_b, k_b, eliminate)
    dd = jnp.pad(blocks.dd, ((0, 1), (0, 1)))
    cross = jnp.pad(blocks.cross, ((0, 0), (0, 0), (0, 1)))  # (n_e, k_e, d + 1)
    # D x D covariance of each view's entries: (n_a, k_a, k_a)
    dd_aa = _pick(dd, tuple(p[:, :, None] for p in a_d), tuple(p[:, None, :] for p in a_d))
    # Local covariance of each pair's parameters, split by where they live.
    if eliminate == "b":
        c_aa = dd_aa[:, None]  # (n_a, 1, k_a, k_a)
        fb = b_e.astype(dd.dtype)
        c_bb = (blocks.e * fb[:, :, None] * fb[:, None, :])[None]  # (1, n_b, k_b, k_b)
        # (n_a, n_b, k_a, k_b)
        c_ab = jnp.transpose(_take(cross, a_d, 2), (2, 0, 3, 1)) * fb[None, :, None, :]
    else:
        fa = a_e.astype(dd.dtype)
        e_part = blocks.e * fa[:, :, None] * fa[:, None, :]
        cross_a = _take(cross, a_d, 2)[jnp.arange(n_a), :, jnp.arange(n_a), :]  # (n_a, k_a, k_a)
        mixed = cross_a * fa[:, :, None]  # E own entry x D slot entry of the same view
        c_aa = (e_part + mixed + jnp.swapaxes(mixed, -1, -2) + dd_aa)[:, None]
        c_bb = dd[b_d[:, :, None], b_d[:, None, :]][None]
        c_ab = cross[:, :, b_d] * fa[:, :, None, None]  # (n_a, k_a, n_b, k_b) for own entries
        c_ab = jnp.transpose(c_ab, (0, 2, 1, 3)) + jnp.transpose(_take(dd, a_d, 0)[:, :, b_d], (0, 2, 1, 3))
    return c_aa[:, 0], c_bb[0], c_ab
