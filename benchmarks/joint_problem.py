"""The joint alignment problem (MODEL.md, "jou" model), written out independently for the peers.

Every peer solver in ``peers.py`` minimises the same function from the same point:

    0.5 * sum over observed (view j, marker i) of |p_model_ij - p_obs_ij|^2

    p_model_ij - c = s_j R(alpha_j) P Ry(theta_j) X_i + d_j          (paper eq. 3)

with every view's (s, alpha, theta, dx, dy) and every marker's (x, y, z) free except the gauge
of MODEL.md: the scale, tilt and shifts of the reference view (nearest 0 degrees) and the z of
the reference marker (seen in most views, preferring those seen in the reference view) are held
at their starting values. This is the gauge that ``lmalign_jax`` uses for its joint stage.

Variables are in the same units as lmalign_jax's solver: angles and ratios are multiplied by
the RMS marker radius L (pixels), so a unit step of any variable moves a point by about one
pixel; every solver, ours included, therefore sees the same, well-scaled problem.

The projection is written here from the formula rather than imported, so the peers do not
depend on the package's internals (which change while the solver is being optimised); the
runner checks that this cost and the package's agree at the start and at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

N_VIEW_PARAMS = 5  # scale, rotation, tilt, dx, dy
ANGLE_OR_RATIO = np.array([True, True, True, False, False])  # scaled by the radius L
VIEW_GAUGE = np.array([True, False, True, True, True])  # fixed at the reference view


def project_jou(view, xyz):
    """Centred image position(s) of marker(s): view (..., 5) model units, xyz (..., 3) -> (..., 2)."""
    s, a, t, dx, dy = (view[..., k] for k in range(5))
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    u = x * jnp.cos(t) + z * jnp.sin(t)  # P Ry(t) X
    ca, sa = jnp.cos(a), jnp.sin(a)
    return jnp.stack([s * (ca * u - sa * y) + dx, s * (sa * u + ca * y) + dy], axis=-1)


def reference_view(tilts_deg) -> int:
    return int(np.argmin(np.abs(np.asarray(tilts_deg))))


def reference_marker(mask, ref_view: int) -> int:
    mask = np.asarray(mask)
    return int(np.argmax(mask.sum(axis=0) + mask.shape[0] * mask[ref_view]))


def radius_px(obs) -> float:
    c = obs.centered_xy[obs.mask]
    return float(max(np.sqrt(np.mean(np.sum(c * c, axis=-1))), 1.0))


@dataclass(eq=False)
class JointProblem:
    """Joint problem on ``obs`` starting from ``views`` (n_views, 5) and ``markers`` (n_markers, 3).

    The free variables form one flat vector ``x`` (views first, row-major, then markers); the
    residual vector ``residuals(x)`` has 2 entries per observation (x then y components).
    """

    obs: object
    views0: np.ndarray
    markers0: np.ndarray

    def __post_init__(self):
        obs = self.obs
        self.views0 = np.asarray(self.views0, np.float64)
        self.markers0 = np.asarray(self.markers0, np.float64)
        self.n_views, self.n_markers = obs.mask.shape
        self.ref_view = reference_view(obs.tilts_deg)
        self.ref_marker = reference_marker(obs.mask, self.ref_view)
        self.unit = np.where(ANGLE_OR_RATIO, 1.0 / radius_px(obs), 1.0)
        free_v = np.ones((self.n_views, N_VIEW_PARAMS), bool)
        free_v[self.ref_view] = ~VIEW_GAUGE
        free_m = np.ones((self.n_markers, 3), bool)
        free_m[self.ref_marker, 2] = False
        self.free = np.concatenate([free_v.ravel(), free_m.ravel()])
        self.free_index = np.flatnonzero(self.free)
        self.full0 = np.concatenate([(self.views0 / self.unit).ravel(), self.markers0.ravel()])
        self.x0 = self.full0[self.free_index].copy()
        self.n_free = int(self.free_index.size)
        self.vi, self.mi = (a.astype(np.int32) for a in np.nonzero(obs.mask))
        self.n_obs = int(self.vi.size)
        self.observed = obs.centered_xy[self.vi, self.mi]  # (n_obs, 2)
        self.n_residuals = 2 * self.n_obs

    # ----- values in model units
    def unpack(self, x):
        """Flat free vector -> (views (n_views, 5) model units, markers (n_markers, 3)), numpy."""
        full = self.full0.copy()
        full[self.free_index] = np.asarray(x, np.float64)
        nv = self.n_views * N_VIEW_PARAMS
        return full[:nv].reshape(self.n_views, N_VIEW_PARAMS) * self.unit, full[nv:].reshape(
            self.n_markers, 3
        )

    def rms_px(self, x) -> float:
        r = np.asarray(self.residual_fn(jnp.asarray(x)))
        return float(np.sqrt(np.mean(r * r)))

    # ----- JAX functions (jitted once per problem)
    def _split(self, x):
        full = jnp.asarray(self.full0).at[jnp.asarray(self.free_index)].set(x)
        nv = self.n_views * N_VIEW_PARAMS
        return full[:nv].reshape(self.n_views, N_VIEW_PARAMS), full[nv:].reshape(self.n_markers, 3)

    @cached_property
    def residual_fn(self):
        """x (n_free,) -> residuals (2 n_obs,), jitted."""
        vi, mi, observed, unit = (
            jnp.asarray(self.vi),
            jnp.asarray(self.mi),
            jnp.asarray(self.observed),
            jnp.asarray(self.unit),
        )

        def residuals(x):
            views, markers = self._split(x)
            return (project_jou(views[vi] * unit, markers[mi]) - observed).reshape(-1)

        return jax.jit(residuals)

    @cached_property
    def cost_and_grad_fn(self):
        """x -> (0.5 |r|^2, gradient), jitted."""
        res = self.residual_fn
        return jax.jit(jax.value_and_grad(lambda x: 0.5 * jnp.sum(res(x) ** 2)))

    @cached_property
    def _pair_jacobians(self):
        """x -> (n_obs, 2, 8) per-observation Jacobian blocks w.r.t. (view params, marker xyz)."""
        vi, mi, unit = jnp.asarray(self.vi), jnp.asarray(self.mi), jnp.asarray(self.unit)

        def one(view, xyz):
            return project_jou(view * unit, xyz)

        jac = jax.vmap(jax.jacfwd(one, argnums=(0, 1)))

        def blocks(x):
            views, markers = self._split(x)
            jv, jm = jac(views[vi], markers[mi])
            return jnp.concatenate([jv, jm], axis=-1)

        return jax.jit(blocks)

    @cached_property
    def _csr_pattern(self):
        """Column indices (free numbering) of each Jacobian row's nonzeros, and which block entries
        survive."""
        nvp = self.n_views * N_VIEW_PARAMS
        cols = np.concatenate(
            [
                self.vi[:, None] * N_VIEW_PARAMS + np.arange(N_VIEW_PARAMS),
                nvp + self.mi[:, None] * 3 + np.arange(3),
            ],
            axis=1,
        )  # (n_obs, 8) full column index
        cols = np.repeat(cols[:, None, :], 2, axis=1)  # (n_obs, 2, 8)
        keep = self.free[cols]
        to_free = np.full(self.free.size, -1, np.int64)
        to_free[self.free_index] = np.arange(self.n_free)
        indices = to_free[cols[keep]].astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(keep.reshape(self.n_residuals, -1).sum(axis=1))]).astype(
            np.int32
        )
        return keep.reshape(-1), indices, indptr

    def jac_sparsity(self) -> sp.csr_matrix:
        _, indices, indptr = self._csr_pattern
        return sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(self.n_residuals, self.n_free))

    def sparse_jacobian(self, x) -> sp.csr_matrix:
        """Exact Jacobian (2 n_obs, n_free) as CSR, from JAX forward-mode blocks."""
        keep, indices, indptr = self._csr_pattern
        data = np.asarray(self._pair_jacobians(jnp.asarray(x))).reshape(-1)[keep]
        return sp.csr_matrix((data, indices, indptr), shape=(self.n_residuals, self.n_free))

    def noise_floor_px(self, sigma: float) -> float:
        return float(sigma * np.sqrt(max(1.0 - self.n_free / self.n_residuals, 0.0)))
