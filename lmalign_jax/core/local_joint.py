"""The kept patches of a local alignment refined together, through the blend tilt applies.

tilt places a point by blending the four patches around it (``core.local_apply``): position
``sum_k f_k (A_k P(t + dt_k) X + D_k)`` with bilinear weights ``f_k``. Each patch solved alone
fits its markers with its own affine map, so at a point between two patch centres the blend
mixes two maps fitted as if each held alone there. For a deformation that curves across the
field (a specimen that domes, an in-plane warp quadratic in the position) each patch's map
takes the local slope, and the blend of two slopes doubles the curvature between their centres
(in 1-D, patches at ``c_j`` fitting ``x^2`` with slopes ``2 c_j`` blend to ``x^2 + t (1 - t) h^2``
at ``x = c_j + t h``, where slopes ``c_j + h / 2`` blend to ``x^2`` exactly). Refining the kept
patches together, as least squares on the blended positions themselves, removes that error:
on a simulated domed series it took the aligned positions' error from 6.6-7.8 to 2.3-2.5 times
the rigid level (``benchmarks/local_joint_bench.py``).

Parameters, per kept patch: the local increments the options leave free (rotation, tilt, scale,
x-stretch, skew; grouped over the views as their modes say, ``core.problem.linear_blend`` and
``mode_labels``, without IMOD's per-patch sets) composed onto the patch's map about its centre c,
``A <- C A``, ``D <- C (D - c) + c`` with ``C = (1 + s) R(r) [[1 + e, k], [0, 1]]``,
``dt <- dt + t``; and a shift per view. A weak prior holds the increments near the patch's own
solution, and in a view where the patch holds almost no weight it keeps that solution. The
markers are refitted through the blend between rounds (``fit_markers_through_local``), as tilt's
positions are judged. The Jacobian of each point's
blended position with respect to its four patches' parameters comes from autodiff; the normal
equations are formed one view at a time in one compiled scan (``_reduced_system``: no view's
Jacobians outlive it), the per-view shifts eliminated there (a Schur complement), leaving one
system in the grouped increments of all kept patches. That system couples only the slots whose
views and patches meet (16% of it on a 4k field of 43 kept patches): it is solved sparse.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu

from ..io.imod_local import LocalAlignment
from .local_apply import fit_markers_through_local, patch_weights
from .problem import linear_blend, mode_labels

__all__ = [
    "JOINT_INCREMENTS",
    "JointOutcome",
    "JointRefinement",
    "MAX_JOINT_PATCHES",
    "MAX_JOINT_UNKNOWNS",
    "increment_bases",
    "refine_kept_patches",
    "refine_patches_jointly",
]

#: The increments a joint refinement composes onto a patch's map, in its parameter order.
JOINT_INCREMENTS = ("rotation", "tilt", "scale", "xstretch", "skew")

#: The least weight (sum of the squared shares of a patch's points in a view, in full points)
#: for which a patch is refined in that view; below it the patch keeps its own solution there,
#: map and shift. Half a point: on the domed series 2 points held corner patches in views where
#: they do carry weight (2.7x the rigid level against 2.5x); where markers left the field in the
#: steepest views, 0.5 and 2 place the hidden points alike (3.3 and 3.6 px; alone 3.6).
MIN_PATCH_WEIGHT = 0.5

#: The most unknowns (kept patches x slots, a kind of one slot given two) refined together:
#: their reduced system is accumulated dense in the scan and solved sparse (at 8000 the call
#: holds about 1.1 GB: the scan's buffers, the fetched copy, the sparse matrix's temporaries).
#: 49 patches of 121 views take 4410 (90 slots each): with 2000 markers the refinement took
#: 4.9 s beside the patches' own 18 s. More keep their own solutions.
MAX_JOINT_UNKNOWNS = 8000

#: The prior sd of a kept patch's increments in the refinement (radians for rotation, tilt and
#: skew, a ratio for scale and x-stretch): 1.1 deg or 2%, far beyond what a patch's points settle
#: (a point 100 px from its patch's centre fixes its rotation to ~sigma / 100 px), so it binds only
#: where a patch's points say almost nothing (a view that holds one point at a neighbour's
#: centre), which a stray fit there turned by hundreds of degrees (an audit: one point of share
#: 0.005 in a patch's six steepest views; 0.05 left its hidden points 1.3x as far off as 0.02).
PRIOR_SD = 0.02

#: The most kept patches refined together (the work per view grows as their square).
MAX_JOINT_PATCHES = 100

#: Rounds of one Gauss-Newton step of the patches and a refit of the markers: at most
#: ``MAX_ROUNDS``, stopping when a round lowers the sum of squares by less than
#: ``ROUND_TOLERANCE`` of what the first round did. A second step between refits changes nothing
#: (the patches' problem is nearly linear with the markers held); the refits are what converges
#: slowly where the markers and the patches' maps trade off (a 12 px warp: 2.8x the rigid level
#: after 1 round, 2.6x after 2, 2.3x after 4, 2.1x after 8; a domed series: 2.5x after 2).
MAX_ROUNDS = 8
ROUND_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class JointRefinement:
    """The refined file, the weighted sum of squares of the points through the file before and
    after (px^2, markers refitted through each), and the free parameters of the refinement."""

    file: LocalAlignment
    before: float
    after: float
    n_free: int


def increment_bases(modes: dict, n_views: int) -> dict[str, np.ndarray]:
    """Per increment left free by ``modes`` (name -> mode), its (n_views, G) basis: column g is
    slot g's share of each view's increment (one-hot for free, shared and grouped modes; the
    linear interpolation between nodes for "linear:N")."""
    bases = {}
    for name in JOINT_INCREMENTS:
        mode = modes.get(name, "fixed")
        blend = linear_blend(name, mode, n_views)
        if blend is not None:
            nodes, low, high, frac = blend
            basis = np.zeros((n_views, nodes.size))
            np.add.at(basis, (np.arange(n_views), low), frac)
            np.add.at(basis, (np.arange(n_views), high), 1.0 - frac)
            bases[name] = basis
            continue
        labels = mode_labels(name, mode, n_views)
        free = np.flatnonzero(labels == -1)
        groups = np.unique(labels[labels >= 0])
        if free.size + groups.size == 0:
            continue
        basis = np.zeros((n_views, free.size + groups.size))
        basis[free, np.arange(free.size)] = 1.0
        for g, label in enumerate(groups):
            basis[labels == label, free.size + g] = 1.0
        bases[name] = basis
    return bases


def _in_plane_change(rot, scale, stretch, skew, xp):
    """``C = (1 + s) R(r) [[1 + e, k], [0, 1]]`` (..., 2, 2) of increments (...,), in numpy or
    jax.numpy (``xp``): one parameterisation for the fit and the file."""
    c, s = xp.cos(rot), xp.sin(rot)
    turn = xp.stack([xp.stack([c, -s], -1), xp.stack([s, c], -1)], -2)
    zero, one = xp.zeros_like(skew), xp.ones_like(skew)
    shear = xp.stack([xp.stack([1 + stretch, skew], -1), xp.stack([zero, one], -1)], -2)
    return (1 + scale)[..., None, None] * turn @ shear


def _point(params, a, d, dt, tilt, w, xyz, centre):
    """Blended position (2,) of centred point ``xyz`` (3,) in one view: four patches' maps
    ``a`` (4, 2, 2), shifts ``d`` (4, 2), delta tilts ``dt`` (4,) radians, weights ``w`` (4,),
    the view's tilt (radians), with increments ``params`` (4, 7): rotation, tilt, scale,
    x-stretch, skew (radians or ratios), shift x, y (px). The in-plane increments act about each
    patch's centre ``centre`` (4, 2) (centred px): alone they do not move it."""
    rot, dtilt, scale, stretch, skew, sx, sy = (params[:, i] for i in range(7))
    change = _in_plane_change(rot, scale, stretch, skew, jnp)
    t = tilt + dt + dtilt
    proj = jnp.stack([jnp.cos(t) * xyz[0] + jnp.sin(t) * xyz[2], jnp.broadcast_to(xyz[1], t.shape)], -1)
    before = jnp.einsum("kij,kj->ki", a, proj) + d - centre
    pos = jnp.einsum("kij,kj->ki", change, before) + centre + jnp.stack([sx, sy], -1)
    return jnp.einsum("k,ki->i", w, pos)


@dataclasses.dataclass(frozen=True)
class _SlotLayout:
    """Where each view's increments come from: the kept patches' grouped slots, slot-major
    (unknown ``s * k + p`` is slot ``s`` of kept patch ``p``). A view draws on at most two
    adjacent slots of each increment kind (two nodes of a linear mode, one set of a grouped one):
    ``start`` (V, J) the first of that window, ``weight`` (V, J, 2) its two shares; ``kinds``
    (J,) the increments present (indices into ``JOINT_INCREMENTS``), each given at least two
    slots (an unused one gets no weight, and the prior holds it at zero)."""

    kinds: tuple
    start: np.ndarray
    weight: np.ndarray
    n_slots: int

    @classmethod
    def of(cls, bases: dict) -> _SlotLayout:
        kinds, starts, weights, offset = [], [], [], 0
        for name, basis in bases.items():
            n_views, size = basis.shape
            nonzero = basis != 0
            first = np.argmax(nonzero, 1)
            last = size - 1 - np.argmax(nonzero[:, ::-1], 1)
            if (nonzero.any(1) & (last - first > 1)).any():
                raise ValueError(f"increment {name!r}: a view draws on slots that are not adjacent")
            size = max(size, 2)
            first = np.minimum(first, size - 2)
            padded = np.pad(basis, ((0, 0), (0, size - basis.shape[1])))
            window = first[:, None] + np.arange(2)
            kinds.append(JOINT_INCREMENTS.index(name))
            starts.append(offset + first)
            weights.append(np.take_along_axis(padded, window, 1))
            offset += size
        return cls(tuple(kinds), np.stack(starts, 1), np.stack(weights, 1), offset)

    def increments(self, step: np.ndarray, k: int) -> np.ndarray:
        """Each view's increments (V, k, J) of the slot steps ``step`` (n_slots k,)."""
        per_slot = step.reshape(self.n_slots, k)
        window = per_slot[self.start[..., None] + np.arange(2)]  # (V, J, 2, k)
        return np.einsum("vjx,vjxp->vpj", self.weight, window)


@functools.partial(jax.jit, static_argnames=("kinds", "k", "n_slots"))
def _reduced_system(
    transforms,
    delta_tilt,
    tilts,
    shares,
    xyz,
    centres,
    patches,
    slot,
    aligned,
    sw,
    start,
    weight,
    *,
    kinds,
    k,
    n_slots,
):
    """The Gauss-Newton normal equations of the kept patches, the per-view shifts eliminated.

    transforms (V, P, 2, 3) and delta_tilt (V, P) (radians) every patch's map per view; tilts
    (V,) radians; shares (M, 4), centres (M, 4, 2) (centred px) and patches (M, 4) each point's
    four patches; slot (M, 4) their ranks among the ``k`` kept ones (-1: not kept); xyz (M, 3)
    markers (centred px); aligned (V, M, 2) measured points (0 where unseen); sw (V, M) square-
    root weights (0 where unseen); start (V, J), weight (V, J, 2) as :class:`_SlotLayout`.
    One view at a time (``lax.scan``): the points' Jacobians in their four patches' increments
    and shifts (autodiff of :func:`_point`), the view's normal equations in the kept patches' J
    increments and 2 shifts, a patch holding under ``MIN_PATCH_WEIGHT`` left out of them, the
    shifts eliminated (a Schur complement), the rest spread onto the view's slots.
    Returns the reduced matrix (n_slots k, n_slots k) and gradient (n_slots k,), and per view
    what the shifts' back-substitution needs: the increment-shift block (V, k J, 2 k), the
    shifts' inverse (V, 2 k, 2 k) and gradient (V, 2 k), and which patches it refines (V, k).
    """
    dtype = transforms.dtype
    n_kinds = len(kinds)
    picked = np.asarray(kinds)
    zero = jnp.zeros((4, 7), dtype)
    rank = jnp.where(slot >= 0, slot, k)  # a patch not kept goes to a dropped row k
    pair = (rank[:, :, None] * (k + 1) + rank[:, None, :]).reshape(-1)

    def point(a, d, dt, tilt, w, x, c):
        args = (a, d, dt, tilt, w, x, c)
        return _point(zero, *args), jax.jacfwd(_point)(zero, *args)

    per_marker = jax.vmap(point, in_axes=(0, 0, 0, None, 0, 0, 0))

    def view(carry, inputs):
        reduced, gradient = carry
        maps, dtilt, tilt, seen_at, root_w, first, share = inputs
        pos, jac = per_marker(
            maps[patches][..., :2], maps[patches][..., 2], dtilt[patches], tilt, shares, xyz, centres
        )
        r = (pos - seen_at) * root_w[:, None]
        jac = jac * root_w[:, None, None, None]  # (M, 2, 4, 7)
        outer = jnp.einsum("mica,midb->mcdab", jac, jac).reshape(-1, 7, 7)
        h = jnp.zeros(((k + 1) ** 2, 7, 7), dtype).at[pair].add(outer)
        h = h.reshape(k + 1, k + 1, 7, 7)[:k, :k].transpose(0, 2, 1, 3)  # (k, 7, k, 7)
        g = (
            jnp.zeros((k + 1, 7), dtype)
            .at[rank.reshape(-1)]
            .add(jnp.einsum("mica,mi->mca", jac, r).reshape(-1, 7))
        )
        # a patch whose points hold less than MIN_PATCH_WEIGHT points' worth of weight in this view
        # (the sum of their squared shares) keeps its own solution here, map and shift: a point at
        # a neighbour's centre gives it almost nothing, and a map fitted to that swings the
        # positions of the markers it holds more (which left the field, or were never seen)
        refines = jnp.diagonal(h[:, 5, :, 5]) >= MIN_PATCH_WEIGHT
        on = refines.astype(dtype)
        h = h * on[:, None, None, None] * on[None, None, :, None]
        g = g[:k] * on[:, None]
        h_ii = h[:, picked][:, :, :, picked].reshape(k * n_kinds, k * n_kinds)
        h_is = h[:, picked, :, 5:].reshape(k * n_kinds, 2 * k)
        h_ss = h[:, 5:, :, 5:].reshape(2 * k, 2 * k)
        ridge = 1e-9 * jnp.maximum(1e-300, jnp.mean(jnp.diagonal(h_ss)))
        inv_ss = jnp.linalg.inv(h_ss + jnp.diag(jnp.where(jnp.repeat(refines, 2), ridge, 1.0)))
        g_s = g[:, 5:].reshape(2 * k)
        t = h_is @ inv_ss
        s_ii = (h_ii - t @ h_is.T).reshape(k, n_kinds, k, n_kinds)
        g_i = (g[:, picked].reshape(-1) - t @ g_s).reshape(k, n_kinds)
        # each kind's window is 2 k contiguous unknowns (slot-major): the view adds J x J blocks
        block = jnp.einsum("pjql,jx,ly->jxplyq", s_ii, share, share).reshape(n_kinds, 2 * k, n_kinds, 2 * k)
        grad = jnp.einsum("pj,jx->jxp", g_i, share).reshape(n_kinds, 2 * k)
        at = first * k
        for j in range(n_kinds):
            here = jax.lax.dynamic_slice(gradient, (at[j],), (2 * k,))
            gradient = jax.lax.dynamic_update_slice(gradient, here + grad[j], (at[j],))
            for i in range(n_kinds):
                here = jax.lax.dynamic_slice(reduced, (at[j], at[i]), (2 * k, 2 * k))
                reduced = jax.lax.dynamic_update_slice(reduced, here + block[j, :, i], (at[j], at[i]))
        return (reduced, gradient), (h_is, inv_ss, g_s, refines)

    n = n_slots * k
    inputs = (transforms, delta_tilt, tilts, aligned, sw, start, weight)
    (reduced, gradient), per_view = jax.lax.scan(
        view, (jnp.zeros((n, n), dtype), jnp.zeros(n, dtype)), inputs
    )
    return reduced, gradient, per_view


def _compose(
    file: LocalAlignment, kept: np.ndarray, inc: np.ndarray, shift: np.ndarray, centres: np.ndarray
) -> LocalAlignment:
    """``file`` with increments ``inc`` (K, V, 5) and shifts ``shift`` (K, V, 2) composed onto
    its kept patches (``kept`` (K,) patch indices; in-plane increments about ``centres`` (K, 2),
    their centres in centred px), as :func:`_point` applies them."""
    rot, dtilt, scale, stretch, skew = np.moveaxis(inc, -1, 0)
    change = _in_plane_change(rot, scale, stretch, skew, np)  # (K, V, 2, 2)
    transforms = file.transforms.copy()
    a, d = transforms[kept, :, :, :2], transforms[kept, :, :, 2]
    centre = centres[:, None, :]
    transforms[kept, :, :, :2] = change @ a
    transforms[kept, :, :, 2] = np.einsum("pvij,pvj->pvi", change, d - centre) + centre + shift
    delta = file.delta_tilt_deg.copy()
    delta[kept] += np.degrees(dtilt)
    return dataclasses.replace(file, transforms=transforms, delta_tilt_deg=delta)


def _weighted_ss(file, aligned, mask, tilts_deg, image_size, xyz, weights):
    xyz, res = fit_markers_through_local(
        file, aligned, mask, tilts_deg, image_size, xyz, point_weights=weights
    )
    return float(np.sum(np.where(mask, weights, 0.0)[..., None] * np.nan_to_num(res) ** 2)), xyz


def _sparse(symmetric: np.ndarray, ridge: np.ndarray):
    """``symmetric`` (n, n) plus ``diag(ridge)`` as a sparse CSC matrix, from its nonzeros read
    row by row (the CSR of a symmetric matrix is its CSC)."""
    n = symmetric.shape[0]
    nonzero = symmetric != 0
    nonzero.flat[:: n + 1] = True
    at = np.flatnonzero(nonzero)
    values = symmetric.reshape(-1)[at] + np.where(at % (n + 1) == 0, ridge[at // n], 0.0)
    starts = np.concatenate([[0], np.cumsum(np.bincount(at // n, minlength=n))])
    return csc_matrix((values, at % n, starts), shape=(n, n))


def _gauss_newton_step(reduced, gradient, per_view, layout: _SlotLayout, k, prior, total):
    """One Gauss-Newton step of the kept patches from :func:`_reduced_system`'s normal equations
    (moved to numpy): ``prior`` the weight (per unit increment squared) of a prior that holds each
    slot near the patch's own solution, ``total`` (n_slots k) the slots' sum of earlier steps.
    The reduced matrix couples only slots whose views and patches meet (a few percent of it):
    solved sparse. Returns (slot steps (n_slots k), increments (k, V, 5), shifts (k, V, 2), free
    parameters)."""
    h_is, inv_ss, g_s, refines = per_view
    diag = np.diagonal(reduced)
    seen = diag > 1e-12 * max(1e-300, float(np.max(np.abs(diag))))
    # a slot the points hardly inform (a patch's increments in views it weighs almost nothing) is
    # held near its own solution by the prior, not fitted to a stray point
    rhs = gradient + prior * total * seen
    matrix = _sparse(reduced, np.where(seen, prior, 1.0))  # positive definite: no pivoting
    step = -splu(
        matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
    ).solve(rhs)
    per_view_inc = layout.increments(step, k)  # (V, k, J)
    n_views = per_view_inc.shape[0]
    shifts = -np.einsum(
        "vab,vb->va", inv_ss, g_s + np.einsum("vib,vi->vb", h_is, per_view_inc.reshape(n_views, -1))
    )
    moves = refines.T[..., None]  # (k, V, 1): a patch keeps its own solution where it is not refined
    inc = np.zeros((k, n_views, len(JOINT_INCREMENTS)))
    inc[:, :, list(layout.kinds)] = per_view_inc.transpose(1, 0, 2)
    shift = shifts.reshape(n_views, k, 2).transpose(1, 0, 2)
    return step, inc * moves, shift * moves, int(np.count_nonzero(seen)) + 2 * int(np.count_nonzero(refines))


def refine_patches_jointly(
    file: LocalAlignment,
    kept: np.ndarray,
    aligned: np.ndarray,
    mask: np.ndarray,
    tilts_deg: np.ndarray,
    image_size: tuple[float, float],
    markers: np.ndarray,
    modes: dict,
    point_weights: np.ndarray | None = None,
) -> JointRefinement:
    """The patches ``kept`` (indices) of ``file`` refined together (module docstring).

    aligned: (V, M, 2) measured points mapped into the globally aligned stack, centred; mask (V,
    M); markers (M, 3) centred start positions; modes: increment -> mode (``LocalOptions.modes``);
    point_weights: each point's weight (a robust fit's, squared; default 1). In a view where a
    patch holds less than ``MIN_PATCH_WEIGHT`` of weight it keeps its own solution (map and
    shift); its slots, shared with other views as the modes group them, are held near its own
    solution by the prior (``PRIOR_SD``). Returns the refined file with the sums of squares
    before and after (markers refitted through each); the file is unchanged when nothing can be
    refined or the refinement does not lower the sum.
    """
    kept = np.asarray(kept, int)
    n_views, n_markers = mask.shape
    weights = np.where(mask, 1.0 if point_weights is None else point_weights, 0.0)
    before, xyz = _weighted_ss(file, aligned, mask, tilts_deg, image_size, markers, weights)
    bases = increment_bases(modes, n_views)
    if kept.size == 0 or not bases:
        return JointRefinement(file, before, before, 0)
    layout = _SlotLayout.of(bases)
    where = np.full(file.transforms.shape[0], -1)
    where[kept] = np.arange(kept.size)
    # kept patches padded to a multiple of 8 (patches without points: their slots held at zero by
    # the prior), so that refits of the series (compare's folds) reuse the compiled scan
    k = -(-kept.size // 8) * 8
    tilts = np.radians(np.asarray(tilts_deg, float))
    centres = file.centres - np.asarray(image_size, float) / 2  # (P, 2) centred px
    total = np.zeros(layout.n_slots * k)
    sw = np.sqrt(weights)  # square-root weights: the cost is sum (sw r)^2
    seen_at = np.where(mask[..., None], aligned, 0.0)
    current, best, ss, first_drop = file, (before, file, 0), before, None
    for _ in range(MAX_ROUNDS):
        # the prior: a slot's increment has sd PRIOR_SD (rad or ratio) against the scatter of a
        # point about the current fit
        prior = ss / max(1.0, 2 * float(np.sum(weights > 0))) / PRIOR_SD**2
        patches, shares = patch_weights(current, xyz[:, :2] + np.asarray(image_size) / 2)
        slot = where[patches]  # (M, 4): the kept patch of each of a point's patches, or -1
        with jax.enable_x64(True):
            system = jax.device_get(
                _reduced_system(
                    current.transforms.transpose(1, 0, 2, 3),
                    np.radians(current.delta_tilt_deg).T,
                    tilts,
                    shares,
                    xyz,
                    centres[patches],
                    patches,
                    slot,
                    seen_at,
                    sw,
                    layout.start,
                    layout.weight,
                    kinds=layout.kinds,
                    k=k,
                    n_slots=layout.n_slots,
                )
            )
        reduced, gradient, per_view = system
        step, inc, shift, n_free = _gauss_newton_step(reduced, gradient, per_view, layout, k, prior, total)
        total = total + step
        current = _compose(current, kept, inc[: kept.size], shift[: kept.size], centres[kept])
        previous = ss
        ss, xyz = _weighted_ss(current, aligned, mask, tilts_deg, image_size, xyz, weights)
        if ss < best[0]:
            best = (ss, current, n_free)
        first_drop = previous - ss if first_drop is None else first_drop
        if not previous - ss > ROUND_TOLERANCE * first_drop:
            break
    return JointRefinement(best[1], before, best[0], best[2])


@dataclasses.dataclass(frozen=True)
class JointOutcome:
    """What a local alignment takes from refining its kept patches together: the file, the
    refinement's free parameters and the slots it added to the patches' own solves (0 and 0 when
    it was not done, did not lower the sum of squares or BIC declined it), and the note that says
    so (or None)."""

    file: LocalAlignment
    free: int = 0
    added: int = 0
    note: str | None = None


def refine_kept_patches(
    file: LocalAlignment,
    kept: np.ndarray,
    aligned: np.ndarray,
    mask: np.ndarray,
    tilts_deg: np.ndarray,
    image_size: tuple[float, float],
    markers: np.ndarray,
    modes: dict,
    solved: set,
    point_weights: np.ndarray | None = None,
) -> JointOutcome:
    """:func:`refine_patches_jointly` of the ``kept`` patches within ``MAX_JOINT_PATCHES`` and
    ``MAX_JOINT_UNKNOWNS`` (past them the patches keep their own solutions, and the note says
    why); kept only when BIC favours it over the patches alone: the points' ``n`` coordinates'
    weighted sum of squares falls from ``before`` to ``after`` with ``n log(before / after)`` above
    ``log(n)`` per slot the refinement adds (``JointOutcome.added``; ``solved``: the increments
    the patches solved alone). On the benchmark's series (41 views, 60 markers: log(n) = 8.5) that
    gain came to 4.6-6.1 per added slot on a weak 3 px warp, where the refinement placed the
    markers worse than the patches alone (4 of 5 seeds), and to 12-34 on a 12 px warp and 62-74 on
    a domed specimen, where it placed them better (``benchmarks/local_joint_bench.py``)."""
    bases = increment_bases(modes, mask.shape[0])
    unknowns = len(kept) * (_SlotLayout.of(bases).n_slots if bases else 0)
    if len(kept) > MAX_JOINT_PATCHES or unknowns > MAX_JOINT_UNKNOWNS:
        return JointOutcome(
            file,
            note=f"{len(kept)} kept patches are too many to refine together ({unknowns} grouped "
            f"increments; at most {MAX_JOINT_PATCHES} patches and {MAX_JOINT_UNKNOWNS} increments): each "
            "keeps its own solution",
        )
    joint = refine_patches_jointly(
        file, kept, aligned, mask, tilts_deg, image_size, markers, modes, point_weights
    )
    if not joint.after < joint.before:
        return JointOutcome(file)
    added = len(kept) * sum(b.shape[1] for name, b in bases.items() if name not in solved)
    weighed = mask if point_weights is None else mask & (np.nan_to_num(point_weights) > 0)
    n_coords = 2 * int(np.count_nonzero(weighed))
    # BIC, as compare judges models: the fit's gain against the slots the refinement adds
    gain = n_coords * np.log(joint.before / joint.after) if joint.after > 0 else np.inf
    cost = added * np.log(max(n_coords, 2))
    change = f"the points' weighted sum of squares {joint.before:.4g} -> {joint.after:.4g} px^2"
    if not gain > cost:
        return JointOutcome(
            file,
            note=f"{len(kept)} kept patch(es) refined together through tilt's blend: {change}, not worth "
            f"its {added} added parameters by BIC ({gain:.0f} < {cost:.0f}): each keeps its own solution",
        )
    return JointOutcome(
        joint.file,
        joint.n_free,
        added,
        f"{len(kept)} kept patch(es) refined together through tilt's blend: {change} ({joint.n_free} "
        f"parameters, {added} more than the patches alone; BIC {gain:.0f} > {cost:.0f})",
    )
