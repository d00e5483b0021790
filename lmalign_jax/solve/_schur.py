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

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ._linearize import Linearization
from ._problem import Variables


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


class Partition(NamedTuple):
    """The damped normal equations split into eliminated blocks E and the dense rest D.

    h_ee (n, k, k), g_e (n, k), h_ed (k, d, n), h_dd (d, d), g_d (d,). D holds the other
    block set's entries (flattened, block-major) followed by the global slots.
    """

    h_ee: jnp.ndarray
    g_e: jnp.ndarray
    h_ed: jnp.ndarray
    h_dd: jnp.ndarray
    g_d: jnp.ndarray


def partition(lin: Linearization, damping, eliminate: str):
    """Damped normal equations (Marquardt scaling) in E/D form, and the scaling diagonal D."""
    d_a, d_b, d_g = damping_diagonal(_diag(lin.h_aa), _diag(lin.h_bb), jnp.diagonal(lin.h_gg))
    h_aa = _add_diag(lin.h_aa, damping * d_a)
    h_bb = _add_diag(lin.h_bb, damping * d_b)
    h_gg = _add_diag(lin.h_gg, damping * d_g)
    n_a, k_a = lin.grad_a.shape
    n_b, k_b = lin.grad_b.shape
    if eliminate == "b":
        h_ga = lin.h_ga.reshape(-1, n_a * k_a)
        h_dd = jnp.block([[_block_diagonal(h_aa), h_ga.T], [h_ga, h_gg]])
        coupling = jnp.transpose(lin.h_ab, (1, 2, 0, 3)).reshape(k_b, n_a * k_a, n_b)
        h_ed = jnp.concatenate([coupling, jnp.transpose(lin.h_gb, (2, 0, 1))], axis=1)
        part = Partition(h_bb, lin.grad_b, h_ed, h_dd, jnp.concatenate([lin.grad_a.reshape(-1), lin.grad_g]))
    else:
        h_gb = lin.h_gb.reshape(-1, n_b * k_b)
        h_dd = jnp.block([[_block_diagonal(h_bb), h_gb.T], [h_gb, h_gg]])
        coupling = jnp.transpose(lin.h_ab, (0, 3, 1, 2)).reshape(k_a, n_b * k_b, n_a)
        h_ed = jnp.concatenate([coupling, jnp.transpose(lin.h_ga, (2, 0, 1))], axis=1)
        part = Partition(h_aa, lin.grad_a, h_ed, h_dd, jnp.concatenate([lin.grad_b.reshape(-1), lin.grad_g]))
    return part, Variables(d_a, d_b, d_g)


def unpartition(x_e, x_d, shape_a, shape_b, eliminate: str) -> Variables:
    """E/D vectors back to Variables (a (n_a, k_a), b (n_b, k_b), g)."""
    if eliminate == "b":
        n = shape_a[0] * shape_a[1]
        return Variables(x_d[:n].reshape(shape_a), x_e, x_d[n:])
    n = shape_b[0] * shape_b[1]
    return Variables(x_e, x_d[:n].reshape(shape_b), x_d[n:])


def inverse_cholesky_blocks(h_ee):
    """L^{-1} for each block of h_ee = L L^T: (n, k, k)."""
    chol = jnp.linalg.cholesky(h_ee)
    eye = jnp.broadcast_to(jnp.eye(h_ee.shape[-1], dtype=h_ee.dtype), h_ee.shape)
    return jsl.solve_triangular(chol, eye, lower=True)


def eliminated_coupling(inv, h_ed):
    """Y = L^{-1} H_ED as k arrays (d, n): row i of every block's Y."""
    k = inv.shape[-1]
    return [sum(inv[:, i, j] * h_ed[j] for j in range(k)) for i in range(k)]


def schur_solve(h_ee, g_e, h_ed, h_dd, g_d):
    """Solve the partitioned system above.

    Shapes: h_ee (n, k, k), g_e (n, k), h_ed (k, d, n) (the coupling, laid out so every
    product runs along the n blocks), h_dd (d, d), g_d (d,). Returns x_e (n, k), x_d (d,).
    """
    inv = inverse_cholesky_blocks(h_ee)
    y = eliminated_coupling(inv, h_ed)
    z = jnp.einsum("nij,nj->ni", inv, g_e)
    n_d = h_dd.shape[0]
    if n_d:
        # Skip the O(n d^2) product when nothing couples (e.g. every eliminated block fixed).
        coupled = jnp.any(h_ed != 0)
        reduced = jax.lax.cond(coupled, lambda: h_dd - sum(yi @ yi.T for yi in y), lambda: h_dd)
        rhs = -g_d + sum(yi @ z[:, i] for i, yi in enumerate(y))
        x_d = jsl.cho_solve(jsl.cho_factor(reduced, lower=True), rhs)
        back = z + jnp.stack([x_d @ yi for yi in y], axis=-1)
    else:
        x_d = g_d
        back = z
    x_e = -jnp.einsum("nij,ni->nj", inv, back)
    return x_e, x_d


def damped_step(lin: Linearization, damping, eliminate: str):
    """Step (Variables) of (H + damping diag(D)) h = -grad, and the scaling diagonal D.

    ``eliminate`` is "b" (markers) or "a" (views): the block set that is eliminated. When B
    is eliminated but none of its entries is free, nothing couples it to D and the Schur
    complement (the O(n_b d^2) part) is skipped at run time.
    """

    def full():
        part, scaling = partition(lin, damping, eliminate)
        x_e, x_d = schur_solve(*part)
        return unpartition(x_e, x_d, lin.grad_a.shape, lin.grad_b.shape, eliminate), scaling

    if eliminate == "a":
        return full()
    return jax.lax.cond(lin.b_free, full, lambda: _uncoupled_step(lin, damping))


def _uncoupled_step(lin: Linearization, damping):
    """The step when no B entry is free: B does not move, D = (A entries, slots) alone."""
    d_a, d_b, d_g = damping_diagonal(_diag(lin.h_aa), _diag(lin.h_bb), jnp.diagonal(lin.h_gg))
    h_aa = _add_diag(lin.h_aa, damping * d_a)
    h_gg = _add_diag(lin.h_gg, damping * d_g)
    n_a, k_a = lin.grad_a.shape
    h_ga = lin.h_ga.reshape(-1, n_a * k_a)
    h_dd = jnp.block([[_block_diagonal(h_aa), h_ga.T], [h_ga, h_gg]])
    g_d = jnp.concatenate([lin.grad_a.reshape(-1), lin.grad_g])
    x_d = jsl.cho_solve(jsl.cho_factor(h_dd, lower=True), -g_d)
    step = Variables(x_d[: n_a * k_a].reshape(n_a, k_a), jnp.zeros_like(lin.grad_b), x_d[n_a * k_a :])
    return step, Variables(d_a, d_b, d_g)
