"""Standard errors of a solved alignment and leave-one-out residuals per observation.

The covariance of the estimates is sigma^2 (J^T J)^{-1} at the optimum, with sigma^2 =
RSS / (2 N_obs - n_free) and the gauge fixed as in the fit; the needed blocks of the
inverse come from the Schur complement (``solve.variances``, ``solve.leverages``). The
reported frame (``core.frame``: tilts at zero mean deviation from nominal, or for the imod
model its likeliest tilts and x-stretches; scale 1 and the origin on the image centre in the
view nearest 0 degrees; markers at zero mean z) is a function of the solution, and the
standard errors are projected into it exactly (one extra Gauss-Newton solve per frame scalar,
``solve.factored_solve``): they describe the numbers reported.

The leave-one-out residual of observation i (IMOD's CrossValidate) is the residual it would
have if the fit were redone without it, to first order: (I - H_ii)^{-1} r_i, where
H_ii = J_i (J^T J)^{-1} J_i^T is its 2 x 2 leverage block.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from .. import compiled_cache
from ..core.frame import frame_scalars, framed_marker, framed_view
from ..core.problem import final_problem
from ..core.result import AlignmentResult
from ..models import ProjectionModel, get_model
from ..solve import (
    Variables,
    block_covariances,
    effective_a,
    factored_solve,
    factorize,
    inverse_blocks,
    leverages,
    linearize,
    pair_jacobians,
    pair_residuals,
    tie_weights,
)
from .covariance import (
    AlignmentCovariance,
    count_masks,
    covariance_arguments,
    covariance_core,
    covariance_from_core,
    noise_variance,
    projected_covariance,
)


@dataclass(frozen=True, eq=False)
class Uncertainty:
    """Standard errors (1 sigma) and leave-one-out residuals.

    views_se: (n_views, k) in model units (radians, ratios, pixels); 0 for fixed entries
        (including the gauge entries); NaN (with a warning) when the normal matrix is
        singular, i.e. some combination of parameters is neither determined by the data nor
        fixed by the gauge.
    markers_se: (n_markers, 3) pixels.
    sigma_px: noise estimate per coordinate, pixels.
    loo_residuals: (n_views, n_markers, 2) projected minus measured if the point were left
        out of the fit, pixels; NaN where not observed, and where leaving the point out would
        leave the fit undetermined (a view with no more points than its own parameters need,
        or a marker seen in only two views: without one of them its position along the other's
        ray is free), so that there is no prediction. Points
        with zero weight (rejected by a robust fit) report their plain residual.
    leverage: (n_views, n_markers) trace of each observation's hat block (0..2); NaN where not
        observed.
    model: the fitted projection model (a registry name given here is looked up).
    covariance: the reported view parameters' covariance and near-degenerate directions
        (``covariance.AlignmentCovariance``), when asked for (``with_covariance``), else None.
    """

    model: ProjectionModel
    views_se: Float[np.ndarray, "views k"]
    markers_se: Float[np.ndarray, "markers 3"]
    sigma_px: float
    loo_residuals: Float[np.ndarray, "views markers 2"]
    leverage: Float[np.ndarray, "views markers"]
    covariance: AlignmentCovariance | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", get_model(self.model))

    def parameter_se(self, name: str) -> np.ndarray:
        """Standard error of one view-parameter family (n_views,), degrees for angles."""
        m = self.model
        se = self.views_se[:, m.index(name)]
        return np.degrees(se) if m.kinds[m.index(name)] == "angle" else se

    @property
    def loo_rms_px(self) -> float:
        """Per-component RMS of the leave-one-out residuals, pixels, over the points that have
        one (:attr:`loo_undetermined` do not)."""
        r = self.loo_residuals[np.isfinite(self.loo_residuals[..., 0])]
        return float(np.sqrt(np.mean(r * r))) if r.size else float("nan")

    @property
    def loo_undetermined(self) -> int:
        """Observed points without a leave-one-out residual: the fit without them is undetermined."""
        return int(np.sum(np.isfinite(self.leverage) & ~np.isfinite(self.loo_residuals[..., 0])))


@partial(jax.jit, static_argnames=("fn", "eliminate", "model", "rule"))
def _uncertainty_core(x, structure, counts, unit, nominal, *, fn, eliminate, model, rule):
    """(var_a, var_b, leave-one-out residuals, leverages, RSS) of a problem padded by
    ``core.problem.padded`` (padded entries are fixed and unobserved); ``counts`` (2,): its real
    views and markers, over which the frame's means run; ``unit`` (k,), ``nominal`` (n_a,)
    tilts in radians: as ``covariance_arguments`` gives them."""
    lin = linearize(fn, x, structure)
    options = dict(fn=fn, eliminate=eliminate, model=model, rule=rule)
    return _uncertainty_body(x, structure, counts, unit, nominal, lin, factorize(lin, eliminate), **options)


def _reported_variances(
    x, structure, counts, unit, nominal, lin, factorization, blocks, eliminate, model, rule
):
    """Variances (solver units) of the reported view entries (n_a, k) and markers (n_b, 3): the
    solution moved into the reporting frame (``core.frame.reporting_frame``), whose
    scalars (``core.frame.frame_scalars``) are functions of the whole solution. Each reported value
    is f(its own entries, the scalars); its variance is g C g^T, with g f's gradient and C the
    joint covariance of those entries and scalars (the entries' block of H^{-1}, one solve per
    scalar for their cross terms and the scalars' own)."""
    dtype = x.a.dtype
    tie, blend = structure.tie_a, structure.tie_blend
    n_g = x.g.shape[0]
    shape = (x.a.shape[0], x.b.shape[0])
    free = Variables(*(f.astype(dtype) for f in (structure.free_a, structure.free_b, structure.free_g)))

    def scalars(theta):
        views = effective_a(theta.a, theta.g, tie, blend) * unit
        return frame_scalars(model, views, theta.b, nominal, rule, *count_masks(counts, *shape))

    frame = scalars(x)
    rhs = jax.tree.map(lambda v, f: v * f, jax.jacrev(scalars)(x), free)  # (n_s, ...)
    solved = jax.vmap(lambda v: factored_solve(factorization, eliminate, v))(rhs)
    cov_s = sum(jnp.einsum("r...,s...->rs", u, w) for u, w in zip(rhs, solved, strict=True))  # (n_s, n_s)
    # cross covariance of each effective view entry with the scalars: (n_s, n_a, k)
    weights = tie_weights(tie, blend, n_g, dtype)  # (n_a, k, n_g)
    cross_a = jnp.where(tie[None] >= 0, jnp.einsum("apg,rg->rap", weights, solved.g), solved.a * free.a[None])
    cross_b = solved.b * free.b[None]  # (n_s, n_b, 3)
    c_aa, c_bb = block_covariances(lin, structure, eliminate, blocks)
    views = effective_a(x.a, x.g, tie, blend) * unit

    def one(f, value, c, cross, scale):
        """Variance of each reported entry of one block: value (p,), c (p, p) and cross (n_s, p)
        solver units, scale (p,) model units per solver unit."""
        jv, js = jax.jacfwd(f, argnums=(0, 1))(value, frame)
        g = jnp.concatenate([jv * scale[None, :], js], axis=1)  # (p, p + n_s)
        joint = jnp.block([[c, cross.T], [cross, cov_s]])
        return jnp.maximum(jnp.diagonal(projected_covariance(g, joint)), 0.0) / scale**2

    var_a = jax.vmap(lambda v, c, r: one(partial(framed_view, model, rule=rule), v, c, r, unit))(
        views, c_aa, jnp.moveaxis(cross_a, 0, 1)
    )
    ones = jnp.ones(3, dtype)
    var_b = jax.vmap(lambda m, c, r: one(partial(framed_marker, model, rule=rule), m, c, r, ones))(
        x.b, c_bb, jnp.moveaxis(cross_b, 0, 1)
    )
    return var_a, var_b


def _uncertainty_body(x, structure, counts, unit, nominal, lin, factorization, *, fn, eliminate, model, rule):
    """``_uncertainty_core`` given the linearization at x and its factorization (one of each
    serves every solve and block of H^{-1} below)."""
    blocks = inverse_blocks(lin, eliminate, factorization)
    var_a, var_b = _reported_variances(
        x, structure, counts, unit, nominal, lin, factorization, blocks, eliminate, model, rule
    )
    dtype = x.a.dtype
    wts = structure.weights
    hat = leverages(lin, structure, eliminate, pair_jacobians(fn, x, structure), blocks)
    unweighted = structure._replace(weights=jnp.ones_like(wts))
    raw = jnp.moveaxis(pair_residuals(fn, x, unweighted), 0, -1)  # (n_a, n_b, m)
    eye = jnp.eye(hat.shape[-1], dtype=dtype)
    seen = wts != 0
    safe = jnp.where(seen[..., None, None], eye - hat, eye)
    weighted = jnp.where(seen[..., None], wts[..., None] * raw, 0.0)
    loo = jnp.linalg.solve(safe, weighted[..., None])[..., 0] / jnp.where(seen, wts, 1.0)[..., None]
    # a point whose removal leaves the fit undetermined along some direction (I - H_ii singular:
    # a view left with fewer points than its own parameters, a marker seen in two views) has no
    # leave-one-out prediction: NaN, not the round-off's enormous number
    remaining = jnp.linalg.eigvalsh(0.5 * (safe + jnp.swapaxes(safe, -1, -2)))[..., 0]
    loo = jnp.where((remaining > jnp.sqrt(jnp.finfo(dtype).eps))[..., None], loo, jnp.nan)
    # a point with zero weight did not take part in the fit: its residual already is left-out
    loo = jnp.where(seen[..., None], loo, raw)
    rss = jnp.sum(jnp.square(pair_residuals(fn, x, structure)))  # the data's, without penalty rows
    return var_a, var_b, loo, jnp.trace(hat, axis1=-2, axis2=-1), rss


@partial(jax.jit, static_argnames=("fn", "eliminate", "model", "rule"))
def _errors_core(x, structure, counts, unit, nominal, *, fn, eliminate, model, rule):
    """``_uncertainty_core`` and the covariance computation of the same problem, in one: one
    linearization and one factorization serve both."""
    lin = linearize(fn, x, structure)
    factorization = factorize(lin, eliminate)
    covariance = dict(fn=fn, eliminate=eliminate, model=model, rule=rule)
    return (
        _uncertainty_body(x, structure, counts, unit, nominal, lin, factorization, **covariance),
        covariance_core(
            x, structure, counts, unit, nominal, linearization=(lin, factorization), **covariance
        ),
    )


def uncertainty(result: AlignmentResult, *, with_covariance: bool = False) -> Uncertainty:
    """Standard errors and leave-one-out residuals of a solved alignment (float64);
    ``with_covariance`` adds the view parameters' covariance in the reporting frame (for the
    misregistration map) and the near-degenerate directions, unless the fit is singular."""
    m = result.model
    obs = result.observations
    with jax.enable_x64(True):
        problem = final_problem(result)
        # padded as the solve is: series of nearby sizes share the compiled computation
        args, static = covariance_arguments(result, problem)
        if with_covariance:  # one computation: one compile, one linearization
            core, cov_core = jax.device_get(compiled_cache.call(_errors_core, *args, **static))
        else:
            core = jax.device_get(compiled_cache.call(_uncertainty_core, *args, **static))
        n_a, n_b = problem.x0.a.shape[0], problem.x0.b.shape[0]
        var_a, var_b, loo, lev, rss = core
        var_a, var_b, loo, lev = var_a[:n_a], var_b[:n_b], loo[:n_a, :n_b], lev[:n_a, :n_b]
    # a deformation model counts its effective parameters: the trace of the hat matrix
    n_parameters = float(np.nansum(lev)) if m.regularization is not None else float(problem.n_free)
    sigma = float(np.sqrt(noise_variance(result, float(rss), n_parameters)))
    views_se = sigma * np.sqrt(np.asarray(var_a)) * problem.unit
    markers_se = sigma * np.sqrt(np.asarray(var_b))
    regular = bool(np.isfinite(views_se).all() and np.isfinite(markers_se).all())
    if not regular:
        warnings.warn(
            f"standard errors are NaN: the normal matrix of this {m.name!r} fit is singular, so some "
            "combination of its parameters is neither determined by the data nor fixed by the gauge; "
            "fix or group parameters (modes) to remove it",
            RuntimeWarning,
            stacklevel=2,
        )
    loo = np.where(obs.mask[..., None], np.asarray(loo), np.nan)
    return Uncertainty(
        m,
        views_se,
        markers_se,
        sigma,
        loo,
        np.where(obs.mask, np.asarray(lev), np.nan),
        # singular: warned above
        covariance_from_core(result, problem, cov_core, n_parameters=n_parameters)
        if (with_covariance and regular)
        else None,
    )
