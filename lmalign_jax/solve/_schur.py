"""The damped Gauss-Newton step by the Schur complement.

Order the unknowns as (E, D): E is a set of independent small blocks (the block set being
eliminated: markers, or views), D everything else (the other set's free entries and the
global slots). The damped normal equations

    [ H_EE  H_ED ] [x_E]     [g_E]
    [ H_DE  H_DD ] [x_D] = - [g_D]

are solved by factoring each block of H_EE = L L^T, forming Y = L^{-1} H_ED and
z = L^{-1} g_E, then the reduced system

    S x_D = -g_D + Y^T z,        S = H_DD - Y^T Y,

by Cholesky, and back-substituting x_E = -L^{-T} (z + Y x_D). The cost is linear in the
number of E blocks; S is dense of the size of D.

The plan (which set is E, the index lists of D) is made once on the host; the blocks are
prepared once per L-M iteration (``Linearization``); this module runs once per damping trial.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ._linearize import Linearization
from ._problem import Structure, Variables


def damping_diagonal(*diagonals):
    """Marquardt's scaling: the normal-matrix diagonal, floored relative to its largest entry."""
    largest = jnp.max(jnp.stack([jnp.max(d, initial=0.0) for d in diagonals]))
    floor = 1e-12 * largest + jnp.finfo(diagonals[0].dtype).tiny
    return tuple(jnp.maximum(d, floor) for d in diagonals)


def _diag(h):
    return jnp.diagonal(h, axis1=-2, axis2=-1)


def _add_diag(h, d):
    return h + d[..., None] * jnp.eye(h.shape[-1], dtype=h.dtype)


def _dense_from_blocks(h, index):
    """Rows/columns ``index`` (flat block*k + p) of a block-diagonal (n, k, k): (len, len)."""
    k = h.shape[-1]
    blk, pos = index // k, index % k
    same = blk[:, None] == blk[None, :]
    return jnp.where(same, h[blk[:, None], pos[:, None], pos[None, :]], 0.0)


def schur_solve(h_ee, g_e, h_ed, h_dd, g_d):
    """Solve the partitioned system above. Shapes: h_ee (n, k, k), g_e (n, k),
    h_ed (n, k, d), h_dd (d, d), g_d (d,). Returns x_e (n, k), x_d (d,)."""
    chol = jnp.linalg.cholesky(h_ee)
    y = jsl.solve_triangular(chol, h_ed, lower=True)
    z = jsl.solve_triangular(chol, g_e[..., None], lower=True)[..., 0]
    n_d = h_dd.shape[0]
    if n_d:
        y_flat = y.reshape(-1, n_d)
        reduced = h_dd - y_flat.T @ y_flat
        rhs = -g_d + y_flat.T @ z.reshape(-1)
        x_d = jsl.cho_solve(jsl.cho_factor(reduced, lower=True), rhs)
        back = z + jnp.einsum("nkd,d->nk", y, x_d)
    else:
        x_d = g_d
        back = z
    x_e = jsl.solve_triangular(jnp.swapaxes(chol, -1, -2), -back[..., None], lower=False)[..., 0]
    return x_e, x_d


def damped_step(lin: Linearization, damping, s: Structure, eliminate: str):
    """Step (Variables) of (H + damping diag(D)) h = -grad, and the scaling diagonal D.

    ``eliminate`` is "b" (markers) or "a" (views): the block set that is eliminated.
    """
    d_a, d_b, d_g = damping_diagonal(_diag(lin.h_aa), _diag(lin.h_bb), jnp.diagonal(lin.h_gg))
    h_aa = _add_diag(lin.h_aa, damping * d_a)
    h_bb = _add_diag(lin.h_bb, damping * d_b)
    h_gg = _add_diag(lin.h_gg, damping * d_g)
    n_a, k_a = lin.grad_a.shape
    n_b, k_b = lin.grad_b.shape
    if eliminate == "b":
        idx = s.dense_a
        blk, pos = idx // k_a, idx % k_a
        h_ga = lin.h_ga[:, blk, pos]
        h_dd = jnp.block([[_dense_from_blocks(h_aa, idx), h_ga.T], [h_ga, h_gg]])
        coupling = jnp.transpose(lin.h_ab[blk, :, pos, :], (1, 2, 0))  # (n_b, k_b, n_free_a)
        h_ed = jnp.concatenate([coupling, jnp.transpose(lin.h_gb, (1, 2, 0))], axis=-1)
        g_d = jnp.concatenate([lin.grad_a.reshape(-1)[idx], lin.grad_g])
        x_b, x_d = schur_solve(h_bb, lin.grad_b, h_ed, h_dd, g_d)
        x_a = jnp.zeros(n_a * k_a, x_d.dtype).at[idx].set(x_d[: idx.shape[0]]).reshape(n_a, k_a)
    else:
        idx = s.dense_b
        blk, pos = idx // k_b, idx % k_b
        h_gb = lin.h_gb[:, blk, pos]
        h_dd = jnp.block([[_dense_from_blocks(h_bb, idx), h_gb.T], [h_gb, h_gg]])
        coupling = jnp.transpose(lin.h_ab[:, blk, :, pos], (1, 2, 0))  # (n_a, k_a, n_free_b)
        h_ed = jnp.concatenate([coupling, jnp.transpose(lin.h_ga, (1, 2, 0))], axis=-1)
        g_d = jnp.concatenate([lin.grad_b.reshape(-1)[idx], lin.grad_g])
        x_a, x_d = schur_solve(h_aa, lin.grad_a, h_ed, h_dd, g_d)
        x_b = jnp.zeros(n_b * k_b, x_d.dtype).at[idx].set(x_d[: idx.shape[0]]).reshape(n_b, k_b)
    x_g = x_d[idx.shape[0] :]
    return Variables(x_a, x_b, x_g), Variables(d_a, d_b, d_g)
