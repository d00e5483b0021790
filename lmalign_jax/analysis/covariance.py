"""Covariance of a solved alignment's view parameters, in the frame it is reported in.

The fit's covariance is sigma^2 H^{-1}, H = J^T J on the free entries with the gauge fixed as
in the fit (MODEL.md, "Gauge freedoms"), sigma^2 = RSS / (2 N_obs - n_free) (a weighted fit's:
:func:`noise_variance`). A result is
reported in a frame reached by exact symmetries (``core.frame.reporting_frame``): every tilt
moved by ``delta`` = minus the mean deviation from nominal, the markers rotated to match, and
the specimen moved along z by ``zbar`` = their mean z, the shifts absorbing it (the imod
model's frame map, ``ProjectionModel.frame_map``, maps the specimen's x-z plane instead). Each
reported view j is a function of its own (effective) parameters and of the frame's scalars s
(``core.frame.frame_scalars``: delta, the specimen's move and the x-z map), so to first order

    d v_j = L_j d a_j + M_j d s,      L_j = dv_j/da_j (k, k),  M_j = dv_j/ds (k, n_s),

and its covariance needs Cov(a_j), Cov(a_j, s) and Cov(s) only. All of them are quadratic
forms u^T H^{-1} w between the gradients of linear functionals of the parameters: one-hot
vectors for the view entries and global slots, autodiff gradients of s. When the markers are
eliminated the views' block of H^{-1} is the inverse Schur complement (``solve.inverse_blocks``)
and s needs one solve per scalar (``solve.factored_solve``, with the one factorisation); when the views
are, one solve per view entry, batched.

The same matrix names the parameters the data cannot tell apart. S = C^{-1}, C the covariance
of the free view entries and slots, is the information left on them once every marker (and
every other view entry) compensates as well as it can; scaled by their own information
(diag(J^T J)) its eigenvalues lie in (0, 1]: the share of information a combination keeps.
Near 0, its members move the image points almost exactly as other parameters do (for two
parameters, 1 - cos of the angle between their Jacobian columns). The model's exact
symmetries (MODEL.md "Gauge freedoms": the specimen moved or scaled, turned about the tilt
axis), which the gauge fixes by convention, are projected out first. The marker motion that
compensates a weak direction (S's profile: H^{-1} applied to (S step, 0)) says whether the
markers take part, and which of their coordinates.
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
from ..core.frame import N_FRAME_SCALARS, FrameRule, frame_scalars, framed_view
from ..core.problem import final_problem, padded
from ..core.result import AlignmentResult
from ..models import ProjectionModel, get_model
from ..solve import Variables, effective_a, factored_solve, factorize, inverse_blocks, linearize, tie_weights
from .criteria import effective_parameter_count

#: A direction whose scaled information (see the module docstring) is below this is reported:
#: the data hold under 1% of the information its members would carry alone; for two
#: parameters, Jacobian columns at a cosine above 0.99.
DEGENERATE_BELOW = 0.01
#: Weakest directions examined.
N_DIRECTIONS = 4
#: The markers are named in a direction when they carry at least this share of its image motion.
MARKER_SHARE = 0.25
_RHS_BATCH = 64


@dataclass(frozen=True)
class Member:
    """One parameter of a degenerate combination.

    kind: "view" (``view`` is the result's view index), "shared" (a global slot; ``view`` is
    the first view tied to it) or "markers" (``view`` None).
    parameter: the view parameter's name, or which marker coordinates move ("the z of the
        markers").
    weight: its component in the direction (scaled units); for the markers, the share of the
        image motion they carry.
    """

    kind: str
    parameter: str
    view: int | None
    weight: float


@dataclass(frozen=True)
class Degeneracy:
    """A near-degenerate direction: ``members`` (view entries and slots, largest weight first,
    then the markers when they take part) and ``information``: the share of its members' own
    information that is left once the other parameters compensate (0: the data cannot tell
    them apart; 1: independent)."""

    members: tuple[Member, ...]
    information: float


@dataclass(frozen=True, eq=False)
class AlignmentCovariance:
    """Covariance of the reported view parameters of one alignment.

    model: the fitted projection model.
    views: (n_views, k) the result's view parameters, model units (radians, ratios, px).
    view_covariance: (n_views, k, k) covariance of each view's parameters in the reporting
        frame, model units squared (sigma^2 included); 0 for fixed entries.
    sigma_px: the noise estimate per coordinate, pixels.
    degeneracies: near-degenerate directions, most degenerate first.
    """

    model: ProjectionModel
    views: Float[np.ndarray, "views k"]
    view_covariance: Float[np.ndarray, "views k k"]
    sigma_px: float
    degeneracies: tuple[Degeneracy, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "model", get_model(self.model))


def count_masks(counts, n_views: int, n_markers: int):
    """(view mask (n_views,), marker mask (n_markers,)) of a padded problem whose real views and
    markers, ``counts`` (2,), come first."""
    return jnp.arange(n_views) < counts[0], jnp.arange(n_markers) < counts[1]


def projected_covariance(g, joint):
    """``g joint g^T`` (p, p): the covariance of p reported values whose gradients ``g`` (p, q) act
    on quantities of covariance ``joint`` (q, q). A value the frame fixes exactly (the reference
    view's shifts and scale) has terms that cancel to round-off: its row and column are set to
    0 where the variance is below 1e-12 of the sum of its terms' sizes; NaN (singular) stays."""
    covariance = g @ joint @ g.T
    gross = jnp.einsum("ip,pq,iq->i", jnp.abs(g), jnp.abs(joint), jnp.abs(g))
    fixed = jnp.abs(jnp.diagonal(covariance)) <= 1e-12 * gross
    return jnp.where(fixed[:, None] | fixed[None, :], 0.0, covariance)


def _batched(f, tree, batch: int):
    """``vmap(f)`` over the leading axis of ``tree``, ``batch`` rows at a time (``lax.map``);
    unlike ``lax.map(batch_size=)`` it accepts leaves with a zero-sized trailing axis."""
    n = jax.tree.leaves(tree)[0].shape[0]
    n_batches = -(-n // batch)
    padded = jax.tree.map(
        lambda v: jnp.pad(v, [(0, n_batches * batch - n)] + [(0, 0)] * (v.ndim - 1)).reshape(
            (n_batches, batch) + v.shape[1:]
        ),
        tree,
    )
    out = jax.lax.map(jax.vmap(f), padded)
    return jax.tree.map(lambda v: v.reshape((n_batches * batch,) + v.shape[2:])[:n], out)


@partial(jax.jit, static_argnames=("fn", "eliminate", "model", "rule"))
def _covariance_core(x, structure, counts, unit, nominal, *, fn, eliminate, model, rule, linearization=None):
    """The reported covariance (n_a, k, k) in model units without sigma^2, 2 * cost, and the
    ``N_DIRECTIONS`` weakest directions: (eigenvalues (d,), view part (d, n_a k + n_g) in
    solver units, marker part (d, n_b, 3) px, share of the image motion the markers carry (d,)).
    ``counts`` (2,): the real views and markers of a padded problem (``core.problem.padded``:
    padded entries are fixed and unobserved, and take no part in the frame's means);
    ``linearization``: (``Linearization`` at x, its ``Factorization``), when already formed."""
    if linearization is None:
        lin = linearize(fn, x, structure)
        linearization = (lin, factorize(lin, eliminate))
    lin, factorization = linearization

    def solve(v):
        return factored_solve(factorization, eliminate, v)

    dtype = x.a.dtype
    n_a, k = x.a.shape
    n_b = x.b.shape[0]
    n_g = x.g.shape[0]
    n_own = n_a * k
    tie, blend = structure.tie_a, structure.tie_blend

    def scalars(theta):
        views = effective_a(theta.a, theta.g, tie, blend) * unit
        return frame_scalars(model, views, theta.b, nominal, rule, *count_masks(counts, n_a, n_b))

    free = Variables(
        structure.free_a.astype(dtype), structure.free_b.astype(dtype), structure.free_g.astype(dtype)
    )
    f_v = jnp.concatenate([free.a.reshape(-1), free.g])
    frame_rhs = jax.tree.map(lambda v, f: v * f, jax.jacrev(scalars)(x), free)  # (n_s, ...)
    if eliminate == "b":
        # the views are the Schur complement's dense block: their H^{-1} block is S^{-1} itself
        # (own entries row-major, then the slots: ``solve._covariance``); one solve per frame
        # scalar gives its row, and one per weak direction its marker part (below)
        frame_solved = jax.vmap(solve)(frame_rhs)
        view_rows = inverse_blocks(lin, eliminate, factorization).dd * f_v[:, None] * f_v[None, :]
        cross = jnp.concatenate([frame_solved.a.reshape(N_FRAME_SCALARS, n_own), frame_solved.g], axis=1)
        corner = sum(jnp.einsum("r...,s...->rs", u, w) for u, w in zip(frame_rhs, frame_solved, strict=True))
        joint = jnp.block([[view_rows, cross.T], [cross, corner]])

        def marker_parts(pushed):
            """Marker part of H^{-1} applied to view-space right-hand sides (d, n_v)."""
            rhs = Variables(
                pushed[:, :n_own].reshape(-1, n_a, k),
                jnp.zeros((pushed.shape[0], n_b, 3), dtype),
                pushed[:, n_own:],
            )
            return jax.vmap(solve)(rhs).b

    else:
        # few markers: one solve per view entry and slot, batched (the factorisation is shared)
        own = Variables(
            jnp.eye(n_own, dtype=dtype).reshape(n_own, n_a, k),
            jnp.zeros((n_own, n_b, 3), dtype),
            jnp.zeros((n_own, n_g), dtype),
        )
        slots = Variables(
            jnp.zeros((n_g, n_a, k), dtype), jnp.zeros((n_g, n_b, 3), dtype), jnp.eye(n_g, dtype=dtype)
        )
        rhs = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), own, slots, frame_rhs)
        rhs = jax.tree.map(lambda v, f: v * f, rhs, free)  # fixed entries do not move
        solved = _batched(solve, rhs, _RHS_BATCH)
        joint = sum(
            jnp.einsum("ri,si->rs", u.reshape(u.shape[0], u[0].size), w.reshape(w.shape[0], w[0].size))
            for u, w in zip(rhs, solved, strict=True)
        )

        def marker_parts(pushed):
            return jnp.einsum("dr,rbc->dbc", pushed, solved.b[: n_own + n_g])

    joint = 0.5 * (joint + joint.T)  # (n_own + n_g + n_s) square: H^{-1} quadratic forms

    # effective entry (view j, parameter p) -> its rows: the own entry, or the slot it is tied to
    # (frac of one slot and 1 - frac of another where a linear mode blends two)
    tie2, frac = (tie, jnp.ones(tie.shape, dtype)) if blend is None else blend[:2]
    own_rows = jnp.arange(n_own).reshape(n_a, k)
    rows = jnp.where(tie >= 0, n_own + jnp.clip(tie, 0), own_rows)
    rows2 = jnp.where(tie >= 0, n_own + jnp.clip(tie2, 0), own_rows)
    frac = jnp.where(tie >= 0, jnp.asarray(frac, dtype), 1.0)
    s_rows = n_own + n_g + jnp.arange(N_FRAME_SCALARS)
    views = effective_a(x.a, x.g, tie, blend) * unit

    def reported(view, view_rows, view_rows2, view_frac):
        i, i2 = jnp.concatenate([view_rows, s_rows]), jnp.concatenate([view_rows2, s_rows])
        f = jnp.concatenate([view_frac, jnp.ones(N_FRAME_SCALARS, dtype)])
        g = 1 - f
        block = (  # (k + n_s) square, solver units: the blend of the joint's rows and columns
            f[:, None] * f[None, :] * joint[i[:, None], i[None, :]]
            + f[:, None] * g[None, :] * joint[i[:, None], i2[None, :]]
            + g[:, None] * f[None, :] * joint[i2[:, None], i[None, :]]
            + g[:, None] * g[None, :] * joint[i2[:, None], i2[None, :]]
        )
        jac_view, jac_s = jax.jacfwd(lambda v, s: framed_view(model, v, s, rule), argnums=(0, 1))(
            view, jnp.zeros(N_FRAME_SCALARS, dtype)
        )
        full = jnp.concatenate([jac_view * unit[None, :], jac_s], axis=1)  # (k, k + n_s)
        return projected_covariance(full, block)

    # Weak directions: the information left on the view entries and slots once every other
    # parameter (markers included) compensates, S = C^{-1}, scaled by their own information.
    n_v = n_own + n_g
    cov_v = joint[:n_v, :n_v] + jnp.diag(1.0 - f_v)
    info = jnp.linalg.inv(cov_v) * f_v[:, None] * f_v[None, :]
    own_diag = jnp.diagonal(lin.h_aa, axis1=-2, axis2=-1).reshape(-1)
    raw = jnp.where(f_v > 0, jnp.concatenate([own_diag, jnp.diagonal(lin.h_gg)]), 1.0)
    scaled = info / jnp.sqrt(raw[:, None] * raw[None, :]) + jnp.diag(1.0 - f_v)
    # The model's exact symmetries (fixed by the gauge, so weak only by convention) are left out.
    tangents = _symmetry_tangents(model, views, unit, tie, blend, n_g, rule)
    tangents = tangents * (jnp.sqrt(raw) * f_v)[None, :]
    basis = jnp.linalg.svd(tangents.T, full_matrices=False)[0]  # (n_v, n_sym) orthonormal
    keep = jnp.eye(n_v, dtype=dtype) - basis @ basis.T
    eigenvalues, vectors = jnp.linalg.eigh(keep @ scaled @ keep + basis @ basis.T)
    n_dir = min(N_DIRECTIONS, n_v)
    vectors = vectors[:, :n_dir].T  # (d, n_v) in scaled units
    steps = vectors / jnp.sqrt(raw)[None, :]  # solver units

    # the marker motion that best compensates each step: H^{-1} (S step) has the step as its
    # view part and that motion as its marker part, a combination of the solves above
    markers = marker_parts(steps @ info)
    own_steps = steps[:, :n_own].reshape(-1, n_a, k)
    view_norm = jnp.einsum("dap,apq,daq->d", own_steps, lin.h_aa, own_steps)
    view_norm = view_norm + jnp.einsum("dg,gh,dh->d", steps[:, n_own:], lin.h_gg, steps[:, n_own:])
    marker_norm = jnp.einsum("dbp,bpq,dbq->d", markers, lin.h_bb, markers)
    share = jnp.sqrt(marker_norm) / jnp.maximum(jnp.sqrt(view_norm) + jnp.sqrt(marker_norm), 1e-300)
    return (
        jax.vmap(reported)(views, rows, rows2, frac),
        2.0 * lin.cost,
        (eigenvalues[:n_dir], vectors, markers, share),
    )


def _symmetry_tangents(model: ProjectionModel, views, unit, tie, blend, n_g: int, rule: FrameRule):
    """View-space parts (n_sym, n_a k + n_g), solver units, of the model's exact symmetries
    (MODEL.md "Gauge freedoms"): the specimen moved along x, y, z (the shifts follow), scaled
    (the scales follow) and, with free tilts, turned about the tilt axis. A slot gets the mean
    of its members' parts (weighted by their share of it, where a linear mode blends two slots)."""
    n_a, k = views.shape
    rows = []
    if model.shift_parameters is not None:
        sx, sy = (model.index(p) for p in model.shift_parameters)
        for axis in jnp.eye(3):
            moved = jax.vmap(jax.jacfwd(lambda c, v, e=axis: model.project(v, c * e)))(jnp.zeros(n_a), views)
            rows.append(jnp.zeros((n_a, k)).at[:, sx].set(-moved[:, 0]).at[:, sy].set(-moved[:, 1]))
    if "scale" in model.parameters:
        rows.append(jnp.zeros((n_a, k)).at[:, model.index("scale")].set(views[:, model.index("scale")]))
    if rule.tilts and not rule.mapped and model.tilt_offset is not None:
        rows.append(
            jax.vmap(jax.jacfwd(lambda d, v: model.tilt_offset(v[None], jnp.zeros((1, 3)), d)[0][0]))(
                jnp.zeros(n_a), views
            )
        )
    if not rows:
        return jnp.zeros((1, n_a * k + n_g))
    model_units = jnp.stack(rows) / unit  # (n_sym, n_a, k) solver units
    tied = tie_weights(tie, blend, n_g, model_units.dtype) if n_g else jnp.zeros((n_a, k, 0))  # (n_a, k, n_g)
    slot_part = jnp.einsum("sap,apg->sg", model_units, tied) / jnp.maximum(tied.sum((0, 1)), 1.0)
    own_part = jnp.where(tie[None] >= 0, 0.0, model_units).reshape(len(rows), n_a * k)
    return jnp.concatenate([own_part, slot_part], axis=1)


def _name_markers(markers: np.ndarray) -> str:
    """'the z of the markers', 'the x and z of the markers', ... from a marker motion (m, 3)."""
    power = np.sum(markers**2, axis=0)
    names = [c for c, p in zip("xyz", power, strict=True) if p >= 0.3 * power.max()]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"the {listed} of the markers"


def _degeneracies(weak, labels, threshold: float) -> tuple[Degeneracy, ...]:
    """The weak directions under ``threshold``, their members named."""
    eigenvalues, vectors, markers, share = (np.asarray(w) for w in weak)
    found = []
    for value, vector, motion, part in zip(eigenvalues, vectors, markers, share, strict=True):
        if not value < threshold:
            break
        order = np.argsort(-np.abs(vector))
        big = [i for i in order[:4] if abs(vector[i]) >= 0.3 * abs(vector[order[0]])]
        members = [Member(*labels[i], weight=float(vector[i])) for i in big]
        if part >= MARKER_SHARE:
            members.append(Member("markers", _name_markers(motion), None, weight=float(part)))
        found.append(Degeneracy(tuple(members), float(max(value, 0.0))))
    return tuple(found)


def _labels(model: ProjectionModel, tie: np.ndarray, n_g: int) -> list[tuple]:
    """(kind, parameter, view) of every view entry and slot."""
    n_a, k = tie.shape
    labels: list[tuple] = [("view", model.parameters[p], j) for j in range(n_a) for p in range(k)]
    for slot in range(n_g):
        j, p = (int(i[0]) for i in np.nonzero(tie == slot))
        labels.append(("shared", model.parameters[p], j))
    return labels


def covariance_arguments(result: AlignmentResult, problem) -> tuple[tuple, dict]:
    """(arguments, static options) of the covariance computation of ``result``'s final
    ``problem`` (built under float64), padded as the solve is (``core.problem.padded``) so
    that series of nearby sizes share the compiled computation: ``(x, structure, counts (2,),
    unit, nominal tilts)``; :func:`unpadded_core` takes the outputs back."""
    settings, obs = result.settings, result.observations
    x, structure, sizes = padded(problem.fn, problem.x0, problem.structure)
    nominal = np.radians(obs.tilts_deg)
    nominal = np.pad(nominal, (0, x.a.shape[0] - nominal.shape[0]), mode="edge")
    counts = np.asarray(sizes[:2], np.float64)
    args = (x, structure, jnp.asarray(counts), jnp.asarray(problem.unit), jnp.asarray(nominal))
    static = dict(
        fn=problem.fn,
        eliminate=problem.eliminate,
        model=result.model,
        rule=settings.frame_rule(result.model),
    )
    return args, static


#: The traceable covariance computation, for callers that fuse it into their own jitted
#: computation (and may pass the (``Linearization``, ``Factorization``) they already formed at
#: x); its outputs go to :func:`covariance_from_core`. Inside a jitted caller it is inlined.
covariance_core = _covariance_core


def unpadded_core(problem, core):
    """The covariance computation's outputs (fetched) for a padded problem, cut to
    ``problem``'s own views, slots and markers."""
    reported, rss, (eigenvalues, vectors, markers, share) = core
    n_a, k = np.shape(problem.x0.a)
    n_b, n_g = np.shape(problem.x0.b)[0], np.shape(problem.x0.g)[0]
    reported, vectors, markers = (np.asarray(v) for v in (reported, vectors, markers))
    own_padded = reported.shape[0] * k  # the view part: own entries view by view, then the slots
    own = vectors[:, :own_padded].reshape(len(vectors), -1, k)[:, :n_a].reshape(len(vectors), n_a * k)
    vectors = np.concatenate([own, vectors[:, own_padded : own_padded + n_g]], axis=1)
    return reported[:n_a], rss, (eigenvalues, vectors, markers[:, :n_b], share)


def noise_variance(result: AlignmentResult, rss: float, n_parameters: float) -> float:
    """The noise variance per coordinate, px^2, that scales the fit's H^{-1} into a covariance.

    Unweighted: ``rss / (2 N_obs - n_parameters)``. A weighted fit (robust: cost sum w r^2,
    ``result.settings.weights`` = sqrt(w)) has covariance (J^T W J)^{-1} J^T W C W J (J^T W J)^{-1},
    C the points' own variances; with W C W ~ sigma^2 W it is sigma^2 (J^T W J)^{-1} for
    sigma^2 = sum w^2 r^2 / (2 sum w - n_parameters), w relative to the largest (so weights that
    are all alike give the unweighted answer): a rejected point (w = 0) counts neither in
    the sum nor in the degrees of freedom, and a down-weighted one (Huber's w = k s / |r|) adds
    its bounded w^2 r^2, not the w r^2 that grows with its displacement (which made Huber's
    errors 1.2x their scatter, its sigma 1.25x the noise with 3% of the points mis-clicked).
    Tukey's and Cauchy's weights fall below 1 on the larger inlier residuals too, so their sigma
    reads 4-9% below the noise (simulated, tests/test_robust.py). NaN when no degree of freedom
    is left."""
    obs = result.observations
    weights = result.settings.weights
    if weights is None:
        dof = 2 * obs.n_observed - n_parameters
        return float(rss) / dof if dof > 0 else float("nan")
    w = np.where(obs.mask, np.asarray(weights, np.float64) ** 2, 0.0)
    largest = float(w.max())
    if not largest > 0:
        return float("nan")
    w = w / largest  # relative: weights all alike give the unweighted answer
    squared = np.where(obs.mask, np.sum(np.nan_to_num(result.residuals) ** 2, axis=-1), 0.0)
    dof = 2 * float(np.sum(w)) - n_parameters
    # in the weighted cost's units (H carries the weights): the noise itself when the largest is 1
    return largest * float(np.sum(w**2 * squared)) / dof if dof > 0 else float("nan")


def covariance_from_core(
    result: AlignmentResult,
    problem,
    core,
    *,
    n_parameters: float | None = None,
    degenerate_below: float = DEGENERATE_BELOW,
) -> AlignmentCovariance:
    """The AlignmentCovariance of ``result`` from the fetched outputs of the covariance
    computation on its final ``problem``; the noise is estimated by :func:`noise_variance` against
    ``n_parameters`` (default: the final problem's free parameters, or ``result.n_effective``)."""
    model = result.model
    reported, rss, weak = unpadded_core(problem, core)
    if n_parameters is None:  # the final problem's free parameters, or a deformation model's effective ones
        n_parameters = problem.n_free if result.n_effective is None else result.n_effective
    sigma2 = noise_variance(result, float(rss), n_parameters)
    reported = sigma2 * np.asarray(reported, np.float64)
    finite = bool(np.isfinite(reported).all())
    if not finite:
        why = (
            "its normal matrix is singular"
            if np.isfinite(sigma2)
            else "no degrees of freedom are left for the noise"
        )
        warnings.warn(
            f"the covariance of this {model.name!r} fit is not finite: {why}",
            RuntimeWarning,
            stacklevel=3,
        )
    labels = _labels(model, problem.tie, int(np.shape(problem.x0.g)[0]))
    degenerate = _degeneracies(weak, labels, degenerate_below) if finite else ()
    return AlignmentCovariance(
        model, np.asarray(result.views, np.float64), reported, float(np.sqrt(sigma2)), degenerate
    )


def alignment_covariance(
    result: AlignmentResult, *, degenerate_below: float = DEGENERATE_BELOW
) -> AlignmentCovariance:
    """Covariance of ``result``'s reported view parameters and its near-degenerate directions
    (float64). ``degenerate_below``: the scaled information under which a direction is
    reported (see ``DEGENERATE_BELOW``)."""
    with jax.enable_x64(True):
        problem = final_problem(result)
        args, static = covariance_arguments(result, problem)
        core = jax.device_get(compiled_cache.call(_covariance_core, *args, **static))
    n_parameters = None
    if result.n_effective is None and result.model.regularization is not None:
        n_parameters = effective_parameter_count(result)  # a deformation model's
    return covariance_from_core(
        result, problem, core, n_parameters=n_parameters, degenerate_below=degenerate_below
    )
