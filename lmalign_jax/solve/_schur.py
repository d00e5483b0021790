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
(``Linearization``); this module runs once per damping trial. When the markers are E, Y is
formed from the per-pair Jacobians one chunk of markers at a time, in two passes (reduce, then
back-substitute), so it is never held whole; when the views are E (few markers), Y is formed
whole, again from the Jacobians. ``partition`` and ``eliminated_coupling`` are the general
form, which the covariance uses. Fixed entries stay in the
system as identity rows, so shapes (and the compiled code) do not depend on what is free.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ._linearize import Linearization, coupling
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
    d_a, d_b, d_g = damping_diagonal(*_normal_diagonals(lin))
    h_aa = _add_diag(lin.h_aa, damping * d_a)
    h_bb = _add_diag(lin.h_bb, damping * d_b)
    h_gg = _add_diag(lin.h_gg, damping * d_g)
    n_a, k_a = lin.grad_a.shape
    n_b, k_b = lin.grad_b.shape
    _check_elimination(lin, eliminate)
    if eliminate == "b":
        h_ga = lin.h_ga.reshape(-1, n_a * k_a)
        h_dd = _with_regularization(jnp.block([[_block_diagonal(h_aa), h_ga.T], [h_ga, h_gg]]), lin)
        h_ab = jnp.transpose(coupling(lin), (1, 2, 0, 3)).reshape(k_b, n_a * k_a, n_b)
        h_ed = jnp.concatenate([h_ab, jnp.transpose(lin.h_gb, (2, 0, 1))], axis=1)
        part = Partition(h_bb, lin.grad_b, h_ed, h_dd, jnp.concatenate([lin.grad_a.reshape(-1), lin.grad_g]))
    else:
        h_gb = lin.h_gb.reshape(-1, n_b * k_b)
        h_dd = jnp.block([[_block_diagonal(h_bb), h_gb.T], [h_gb, h_gg]])
        h_ab = jnp.transpose(coupling(lin), (0, 3, 1, 2)).reshape(k_a, n_b * k_b, n_a)
        h_ed = jnp.concatenate([h_ab, jnp.transpose(lin.h_ga, (2, 0, 1))], axis=1)
        part = Partition(h_aa, lin.grad_a, h_ed, h_dd, jnp.concatenate([lin.grad_b.reshape(-1), lin.grad_g]))
    return part, Variables(d_a, d_b, d_g)


#: Blocks up to this size are factored by unrolled elementwise code (vectorised over the
#: blocks); XLA's CPU backend otherwise calls LAPACK once per 5 x 5 block (3.5x slower).
UNROLLED_BLOCK = 8


def inverse_cholesky_blocks(h_ee):
    """L^{-1} for each block of h_ee = L L^T: (n, k, k). NaN where a block is not positive
    definite, as a factorisation's failure is reported by LAPACK."""
    if h_ee.shape[-1] <= UNROLLED_BLOCK:
        return _unrolled_inverse_cholesky(h_ee)
    chol = jnp.linalg.cholesky(h_ee)
    eye = jnp.broadcast_to(jnp.eye(h_ee.shape[-1], dtype=h_ee.dtype), h_ee.shape)
    return jsl.solve_triangular(chol, eye, lower=True)


def _unrolled_inverse_cholesky(h):
    """``inverse_cholesky_blocks`` for small k, one (n,) vector per matrix entry: the Cholesky
    factor column by column, then its inverse by forward substitution."""
    k = h.shape[-1]
    zero = jnp.zeros_like(h[:, 0, 0])
    chol = [[zero] * k for _ in range(k)]
    for j in range(k):
        chol[j][j] = jnp.sqrt(h[:, j, j] - sum((chol[j][p] * chol[j][p] for p in range(j)), start=zero))
        for i in range(j + 1, k):
            chol[i][j] = (h[:, i, j] - sum((chol[i][p] * chol[j][p] for p in range(j)), start=zero)) / chol[
                j
            ][j]
    inv = [[zero] * k for _ in range(k)]
    for i in range(k):
        inv[i][i] = 1.0 / chol[i][i]
        for j in range(i):
            inv[i][j] = -sum((chol[i][p] * inv[p][j] for p in range(j, i)), start=zero) * inv[i][i]
    return jnp.stack([jnp.stack(row, axis=-1) for row in inv], axis=-2)


def eliminated_coupling(inv, h_ed):
    """Y = L^{-1} H_ED as k arrays (d, n): row i of every block's Y."""
    k = inv.shape[-1]
    return [sum(inv[:, i, j] * h_ed[j] for j in range(k)) for i in range(k)]


#: Pairs per chunk of the streamed marker-eliminating step (its products stay in cache).
STEP_PAIRS = 8192


def _marker_schur_step(lin: Linearization, damping):
    """The step with B eliminated, streamed over chunks of markers from the pair Jacobians.

    For marker b, Y = L_b^{-1} H_bD has, in the row of A entry (a, p), sum_r J_a[r, a, p, b]
    G[r, a, b] with G = sum_j L_b^{-1}[i, j] J_b[r, j, a, b]: elementwise over pairs. One pass
    over chunks of markers accumulates S = H_DD - sum Y^T Y (only its lower block triangle is
    multiplied out) and the right-hand side; a second pass back-substitutes
    x_b = -H_bb^{-1} (g_b + H_bD x_D), with H_bD x_D again from the Jacobians. Neither H_AB nor
    Y is ever held whole, and each chunk's products stay in cache.
    """
    h_dd, g_d, scaling = _dense_part_a(lin, damping)
    inv = inverse_cholesky_blocks(_add_diag(lin.h_bb, damping * scaling.b))  # (n_b, k_b, k_b)
    z = jnp.einsum("nij,nj->ni", inv, lin.grad_b)  # (n_b, k_b)
    n_res, n_a, k_a, n_b = lin.jac_a.shape
    k_b = lin.jac_b.shape[1]
    size = max(1, min(n_b, STEP_PAIRS // n_a))
    n_chunks = -(-n_b // size)
    take = jax.lax.dynamic_slice_in_dim

    def coupling_rows(m0):
        """Y of markers [m0, m0 + C): k_b arrays (d, C)."""
        ja, jb = take(lin.jac_a, m0, size, 3), take(lin.jac_b, m0, size, 3)
        inv_c, h_gb = take(inv, m0, size, 0), take(lin.h_gb, m0, size, 1)
        rows = []
        for i in range(k_b):
            g = [sum(inv_c[:, i, j] * jb[r, j] for j in range(k_b)) for r in range(n_res)]  # (n_a, C) each
            own = sum(ja[r] * g[r][:, None, :] for r in range(n_res)).reshape(n_a * k_a, size)
            slots = sum(inv_c[:, i, j] * h_gb[:, :, j] for j in range(k_b))  # (n_g, C)
            rows.append(jnp.concatenate([own, slots], axis=0))
        return rows

    def reduce(c, carry):
        reduced, rhs = carry
        m0 = jnp.minimum(c * size, n_b - size)
        counted = (m0 + jnp.arange(size) >= c * size).astype(h_dd.dtype)  # markers not counted before
        y = coupling_rows(m0)
        z_c = take(z, m0, size, 0) * counted[:, None]
        y_all = jnp.concatenate(y, axis=1)  # (d, k_b C)
        reduced = reduced - _gram(y_all * jnp.tile(counted, k_b), y_all)
        rhs = rhs + y_all @ z_c.T.reshape(-1)
        return reduced, rhs

    carry = (h_dd, -g_d)
    reduced, rhs = reduce(0, carry) if n_chunks == 1 else jax.lax.fori_loop(0, n_chunks, reduce, carry)
    x_d = jsl.cho_solve(jsl.cho_factor(reduced, lower=True), rhs)

    x_a = x_d[: n_a * k_a].reshape(n_a, k_a)
    x_g = x_d[n_a * k_a :]

    def back(c, x_e):
        m0 = jnp.minimum(c * size, n_b - size)  # a repeated marker gets the same value again
        ja, jb = take(lin.jac_a, m0, size, 3), take(lin.jac_b, m0, size, 3)
        u = sum(ja[:, :, p, :] * x_a[None, :, p, None] for p in range(k_a))  # (m, n_a, C): J_a x_a per pair
        h_x = sum(jnp.sum(jb[r] * u[r][None], axis=-2) for r in range(n_res)).T  # (C, k_b): H_bA x_A
        h_x = h_x + jnp.einsum("tbq,t->bq", take(lin.h_gb, m0, size, 1), x_g)
        inv_c = take(inv, m0, size, 0)
        w = jnp.einsum("nij,nj->ni", inv_c, take(lin.grad_b, m0, size, 0) + h_x)
        return jax.lax.dynamic_update_slice_in_dim(x_e, -jnp.einsum("nij,ni->nj", inv_c, w), m0, 0)

    x_e = jnp.zeros_like(lin.grad_b)
    x_e = back(0, x_e) if n_chunks == 1 else jax.lax.fori_loop(0, n_chunks, back, x_e)
    return Variables(x_a, x_e, x_g), scaling


def _gram(u, v):
    """u @ v.T for a symmetric result (u, v (d, K) with equal products), multiplying out only
    the lower block triangle of a 2 x 2 split: 3/4 of the work of one product."""
    d = u.shape[0]
    h = d // 2
    if h < 32:
        return u @ v.T
    top = u[:h] @ v[:h].T
    lower = u[h:] @ v[:h].T
    bottom = u[h:] @ v[h:].T
    return jnp.block([[top, lower.T], [lower, bottom]])


def _dense_part_a(lin: Linearization, damping):
    """H_DD and g_D when D = (A entries, slots), damped; and the scaling diagonal."""
    d_a, d_b, d_g = damping_diagonal(*_normal_diagonals(lin))
    h_aa = _add_diag(lin.h_aa, damping * d_a)
    h_gg = _add_diag(lin.h_gg, damping * d_g)
    n_a, k_a = lin.grad_a.shape
    h_ga = lin.h_ga.reshape(-1, n_a * k_a)
    h_dd = _with_regularization(jnp.block([[_block_diagonal(h_aa), h_ga.T], [h_ga, h_gg]]), lin)
    g_d = jnp.concatenate([lin.grad_a.reshape(-1), lin.grad_g])
    return h_dd, g_d, Variables(d_a, d_b, d_g)


def _normal_diagonals(lin: Linearization):
    """Diagonals of the normal matrix (A entries (n_a, k_a), B, slots), regularization included."""
    diag_a, diag_b, diag_g = _diag(lin.h_aa), _diag(lin.h_bb), jnp.diagonal(lin.h_gg)
    if lin.h_reg is not None:
        reg = jnp.diagonal(lin.h_reg)
        diag_a = diag_a + reg[: diag_a.size].reshape(diag_a.shape)
        diag_g = diag_g + reg[diag_a.size :]
    return diag_a, diag_b, diag_g


def _with_regularization(h_dd, lin: Linearization):
    """H_DD (D = own A entries, slots) plus the regularization rows' Gauss-Newton matrix."""
    return h_dd if lin.h_reg is None else h_dd + lin.h_reg


def _check_elimination(lin: Linearization, eliminate: str):
    if eliminate == "a" and lin.h_reg is not None:
        raise ValueError(
            "regularization rows couple the A blocks, so they cannot be eliminated; "
            "use eliminate='b' (choose_elimination(..., coupled_a=True))"
        )


def damped_step(lin: Linearization, damping, eliminate: str):
    """Step (Variables) of (H + damping diag(D)) h = -grad, and the scaling diagonal D.

    ``eliminate`` is "b" (markers) or "a" (views): the block set that is eliminated. When B
    is eliminated but none of its entries is free, nothing couples it to D and the Schur
    complement (the O(n_b d^2) part) is skipped at run time.
    """
    _check_elimination(lin, eliminate)
    if eliminate == "a":
        return _view_schur_step(lin, damping)
    return jax.lax.cond(
        lin.b_free, lambda: _marker_schur_step(lin, damping), lambda: _uncoupled_step(lin, damping)
    )


def _view_schur_step(lin: Linearization, damping):
    """The step with A (views) eliminated, Y formed from the per-pair Jacobians.

    For view a, Y = L_a^{-1} H_aD has, in row (a, i) and the column of marker entry (q, b),
    sum_r G[r, a, i, b] J_b[r, q, a, b] with G = sum_p L_a^{-1}[i, p] J_a[r, a, p, b]:
    elementwise over pairs, written straight into the (n_a k_a, d) layout the reduced
    product contracts over, so nothing is transposed or concatenated pair by pair (forming
    H_AB first and reordering it cost XLA's CPU backend 5x more than the product itself).
    D here orders the marker entries coordinate-major, (k_b, n_b), then the slots.
    """
    d_a, d_b, d_g = damping_diagonal(_diag(lin.h_aa), _diag(lin.h_bb), jnp.diagonal(lin.h_gg))
    n_res, n_a, k_a, n_b = lin.jac_a.shape
    k_b = lin.jac_b.shape[1]
    n_g = lin.grad_g.shape[0]
    h_bb = _add_diag(lin.h_bb, damping * d_b)
    h_gb = jnp.swapaxes(lin.h_gb, 1, 2).reshape(n_g, k_b * n_b)
    h_markers = jnp.einsum("bqs,bc->qbsc", h_bb, jnp.eye(n_b, dtype=h_bb.dtype)).reshape(k_b * n_b, k_b * n_b)
    h_dd = jnp.block([[h_markers, h_gb.T], [h_gb, _add_diag(lin.h_gg, damping * d_g)]])
    g_d = jnp.concatenate([lin.grad_b.T.reshape(-1), lin.grad_g])
    inv = inverse_cholesky_blocks(_add_diag(lin.h_aa, damping * d_a))  # (n_a, k_a, k_a)
    z = jnp.einsum("nij,nj->ni", inv, lin.grad_a)

    def coupling_rows():
        g = sum(
            inv[None, :, :, p, None] * lin.jac_a[:, :, None, p, :] for p in range(k_a)
        )  # (m, n_a, k_a, n_b)
        y = sum(
            g[r][:, :, None, :] * jnp.swapaxes(lin.jac_b[r], 0, 1)[:, None] for r in range(n_res)
        )  # (n_a, k_a, k_b, n_b)
        y = y.reshape(n_a * k_a, k_b * n_b)
        if n_g:
            y = jnp.concatenate(
                [y, jnp.einsum("aip,tap->ait", inv, lin.h_ga).reshape(n_a * k_a, n_g)], axis=1
            )
        return y

    coupled = lin.b_free | jnp.any(lin.h_ga != 0)
    y = jax.lax.cond(coupled, coupling_rows, lambda: jnp.zeros((n_a * k_a, k_b * n_b + n_g), h_dd.dtype))
    reduced = jax.lax.cond(coupled, lambda: h_dd - y.T @ y, lambda: h_dd)
    x_d = jsl.cho_solve(jsl.cho_factor(reduced, lower=True), -g_d + z.reshape(-1) @ y)
    x_e = -jnp.einsum("nij,ni->nj", inv, z + (y @ x_d).reshape(n_a, k_a))
    x_b = x_d[: k_b * n_b].reshape(k_b, n_b).T
    return Variables(x_e, x_b, x_d[k_b * n_b :]), Variables(d_a, d_b, d_g)


def _uncoupled_step(lin: Linearization, damping):
    """The step when no B entry is free: B does not move, D = (A entries, slots) alone."""
    h_dd, g_d, scaling = _dense_part_a(lin, damping)
    n_a, k_a = lin.grad_a.shape
    x_d = jsl.cho_solve(jsl.cho_factor(h_dd, lower=True), -g_d)
    step = Variables(x_d[: n_a * k_a].reshape(n_a, k_a), jnp.zeros_like(lin.grad_b), x_d[n_a * k_a :])
    return step, scaling
