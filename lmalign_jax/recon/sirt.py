"""SIRT of one slab of aligned views, with the re-projector written as the exact adjoint of the
back-projector (JAX).

Model
-----
In the aligned frame (tilt axis = y) a slab of ``rows`` y rows is an independent 2-D problem per
row, all rows sharing the geometry. The back-projector ``A^T`` is :func:`_kernels.backproject`
with unit view weights (linear interpolation along the detector, rows innermost); the
re-projector ``A`` (:func:`project`) is its transpose, :func:`_kernels.reproject`: for each
detector sample, a weighted gather of the few voxel columns whose interpolation weights reach
it, rows innermost (``jax.linear_transpose`` of the back-projector gives the same operator as a
scatter-add: on CPU 8-10 back-projections against 1.6-2.2 for the gathers at +-60-70 degrees,
``benchmarks/recon_kernel_bench.py --reproject``); ``<A x, y> = <x, A^T y>`` holds to rounding and
it equals the ``linear_transpose`` operator to rounding (tested). ``A`` approximates the
line integral: for each z slice the linear-interpolation weights of a detector sample sum to
``1 / cos(theta)`` voxels, the path length through that slice.

SIRT (Gilbert 1972; the form of ASTRA and TIGRE):
``x <- x + lam * C A^T R (b - A x)``, with ``R = 1 / (A 1)`` (one over each ray's length inside
the volume) and ``C = 1 / (A^T 1)`` (one over each voxel's number of rays), started from zero.
For ``0 < lam < 2`` the weighted residual ``||b - A x||_R`` never increases (SIRT is Landweber's
iteration in the ``R``- and ``C^{-1}``-weighted norms); :func:`sirt_slab` records it per
iteration. ``positivity`` clips the volume at zero after each update (the views then keep their
mean level; the residual is then no longer guaranteed monotone).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _kernels

__all__ = ["SirtOptions", "project", "backproject", "sirt_slab", "sirt_solve"]


@dataclass(frozen=True)
class SirtOptions:
    """``iterations`` of SIRT with relaxation ``relaxation`` (0 < lam < 2); ``positivity`` clips
    the volume at zero after each iteration."""

    iterations: int = 10
    relaxation: float = 1.0
    positivity: bool = False

    def __post_init__(self):
        if (
            isinstance(self.iterations, bool)
            or int(self.iterations) != self.iterations
            or self.iterations < 1
        ):
            raise ValueError(f"SIRT iterations must be a positive integer, got {self.iterations!r}")
        if not 0 < float(self.relaxation) < 2:
            raise ValueError(f"SIRT relaxation must lie in (0, 2), got {self.relaxation!r}")


def backproject(
    views: Float[Array, "views det rows"],
    cos_t: Float[Array, " views"],
    sin_t: Float[Array, " views"],
    *,
    nz: int,
    nx: int,
) -> Float[Array, "nz rows nx"]:
    """``A^T``: plain (unweighted, unfiltered) back-projection of ``views (n_views, nd, rows)``
    into a slab ``(nz, rows, nx)`` (geometry of :mod:`lmalign_jax.recon._kernels`)."""
    z_chunk = _kernels.choose_z_chunk(nz, nx, views.shape[2], n_views=views.shape[0])
    return _kernels.backproject(views, cos_t, sin_t, nz=nz, nx=nx, z_chunk=z_chunk)


def project(
    volume: Float[Array, "nz rows nx"],
    cos_t: Float[Array, " views"],
    sin_t: Float[Array, " views"],
    *,
    nd: int,
    taps: int | None = None,
) -> Float[Array, "views det rows"]:
    """``A``: re-project a slab ``(nz, rows, nx)`` to views ``(n_views, nd, rows)``, the exact
    transpose of :func:`backproject` (:func:`_kernels.reproject`, gathers with rows innermost).
    ``taps`` (voxel columns per detector sample and slice) defaults to
    :func:`_kernels.reprojection_taps` of ``cos_t``, which then must be concrete (outside
    ``jit``)."""
    nz, rows, nx = volume.shape
    if taps is None:
        taps = _kernels.reprojection_taps(cos_t, nx)
    z_chunk = _kernels.choose_reproject_z_chunk(nz, cos_t.shape[0], nd, taps)
    return _kernels.reproject(volume, cos_t, sin_t, nd=nd, taps=taps, z_chunk=z_chunk)


def sirt_solve(b, cos_t, sin_t, *, nz: int, nx: int, options: SirtOptions):
    """SIRT from zero for aligned, unfiltered views ``b (n_views, nd, rows)``; ``cos_t, sin_t``
    concrete (the re-projector's footprint is sized from them).

    Returns ``(volume (nz, rows, nx), residuals (iterations + 1,))``: the R-weighted residual
    ``sum R (b - A x)^2`` before the first and after every iteration.

    One compiled call per iteration, each waited for: a signal (Ctrl-C, SIGTERM) stops a
    command between two iterations rather than after all of them.
    """
    geometry = dict(nz=nz, nx=nx, taps=_kernels.reprojection_taps(cos_t, nx))
    x, d, r_w, c_w, r0 = _sirt_start(b, cos_t, sin_t, **geometry)
    lam = jnp.asarray(options.relaxation, b.dtype)
    residuals = [r0]
    for _ in range(options.iterations):
        x, d, r = _sirt_step(x, d, b, r_w, c_w, lam, cos_t, sin_t, positivity=options.positivity, **geometry)
        residuals.append(r.block_until_ready())
    return x, jnp.stack(residuals)


@partial(jax.jit, static_argnames=("nz", "nx", "taps"))
def _sirt_start(b, cos_t, sin_t, *, nz: int, nx: int, taps: int):
    """SIRT's weights and start: x = 0, its residual views d = b and their weighted sum of
    squares, ``R = 1 / (A 1)`` and ``C = 1 / (A^T 1)`` (zero where nothing is reached)."""
    n_views, nd, rows = b.shape
    dt = b.dtype
    ray_length = project(jnp.ones((nz, rows, nx), dt), cos_t, sin_t, nd=nd, taps=taps)
    r_w = jnp.where(ray_length > 1e-6, 1.0 / jnp.where(ray_length > 1e-6, ray_length, 1.0), 0.0)
    hits = backproject(jnp.ones_like(b), cos_t, sin_t, nz=nz, nx=nx)
    c_w = jnp.where(hits > 1e-6, 1.0 / jnp.where(hits > 1e-6, hits, 1.0), 0.0)
    x0 = jnp.zeros((nz, rows, nx), dt)
    d0 = b - project(x0, cos_t, sin_t, nd=nd, taps=taps)
    return x0, d0, r_w, c_w, jnp.sum(r_w * d0 * d0)


@partial(jax.jit, static_argnames=("nz", "nx", "taps", "positivity"))
def _sirt_step(x, d, b, r_w, c_w, lam, cos_t, sin_t, *, nz: int, nx: int, taps: int, positivity: bool):
    """One iteration from ``x`` and its residual views ``d = b - A x``: the new x, its residual
    views (the next iteration's: one projection per iteration) and their weighted sum of squares."""
    x = x + lam * c_w * backproject(r_w * d, cos_t, sin_t, nz=nz, nx=nx)
    if positivity:
        x = jnp.maximum(x, 0.0)
    d = b - project(x, cos_t, sin_t, nd=d.shape[1], taps=taps)
    return x, d, jnp.sum(r_w * d * d)


def sirt_slab(b, *, cos_t, sin_t, nz: int, nx: int, options: SirtOptions):
    """The volume of :func:`sirt_solve` alone (what ``reconstruct(sirt=...)`` calls per slab)."""
    return sirt_solve(b, cos_t, sin_t, nz=nz, nx=nx, options=options)[0]
