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

Which set is E is decided once on the host; the blocks are prepared once per L-M iteration
(``Linearization``); this module runs once per damping trial. Fixed entries stay in the
system as identity rows, so shapes (and the compiled code) do not depend on what is free.
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


def _block_diagonal(h):
    """Dense (n k, n k) matrix of a block diagonal given as (n, k, k)."""
    n, k, _ = h.shape
    return jnp.einsum("apq,ab->apbq", h, jnp.eye(n, dtype=h.dtype)).reshape(n * k, n * k)


def schur_solve(h_ee, g_e, h_ed, h_dd, g_d):
    """Solve the partitioned system above.

    Shapes: h_ee (n, k, k), g_e (n, k), h_ed (k, d, n) (the coupling, laid out so every
    product runs along the n blocks), h_dd (d, d), g_d (d,). Returns x_e (n, k), x_d (d,).
    """
    k = h_ee.shape[-1]
    chol = jnp.linalg.cholesky(h_ee)
    eye = jnp.broadcast_to(jnp.eye(k, dtype=h_ee.dtype), h_ee.shape)
    inv = jsl.solve_triangular(chol, eye, lower=True)  # L^{-1}, (n, k, k)
    y = [sum(inv[:, i, j] * h_ed[j] for j in range(k)) for i in range(k)]  # k x (d, n)
    z = jnp.einsum("nij,nj->ni", inv, g_e)
    n_d = h_dd.shape[0]
    if n_d:
        reduced = h_dd - sum(yi @ yi.T for yi in y)
        rhs = -g_d + sum(yi @ z[:, i] for i, yi in enumerate(y))
        x_d = jsl.cho_solve(jsl.cho_factor(reduced, lower=True), rhs)
        back = z + jnp.stack([x_d @ yi for yi in y], axis=-1)
    else:
        x_d = g_d
        back = z
    x_e = -jnp.einsum("nij,ni->nj", inv, back)
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
    n_a, k_a = lin.grad_a.shape
    n_b, k_b = lin.grad_b.shape
    if eliminate == "b":
        h_ga = lin.h_ga.reshape(-1, n_a * k_a)
        h_dd = jnp.block([[_block_diagonal(h_aa), h_ga.T], [h_ga, h_gg]])
        coupling = jnp.transpose(lin.h_ab, (1, 2, 0, 3)).reshape(k_b, n_a * k_a, n_b)
        h_ed = jnp.concatenate([coupling, jnp.transpose(lin.h_gb, (2, 0, 1))], axis=1)
        g_d = jnp.concatenate([lin.grad_a.reshape(-1), lin.grad_g])
        x_b, x_d = schur_solve(h_bb, lin.grad_b, h_ed, h_dd, g_d)
        x_a = x_d[: n_a * k_a].reshape(n_a, k_a)
        x_g = x_d[n_a * k_a :]
    else:
        h_gb = lin.h_gb.reshape(-1, n_b * k_b)
        h_dd = jnp.block([[_block_diagonal(h_bb), h_gb.T], [h_gb, h_gg]])
        coupling = jnp.transpose(lin.h_ab, (0, 3, 1, 2)).reshape(k_a, n_b * k_b, n_a)
        h_ed = jnp.concatenate([coupling, jnp.transpose(lin.h_ga, (2, 0, 1))], axis=1)
        g_d = jnp.concatenate([lin.grad_b.reshape(-1), lin.grad_g])
        x_a, x_d = schur_solve(h_aa, lin.grad_a, h_ed, h_dd, g_d)
        x_b = x_d[: n_b * k_b].reshape(n_b, k_b)
        x_g = x_d[n_b * k_b :]
    return Variables(x_a, x_b, x_g), Variables(d_a, d_b, d_g)
