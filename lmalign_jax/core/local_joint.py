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
blended position with respect to its four patches' parameters comes from autodiff; the per-view
shifts are eliminated view by view (a Schur complement), leaving one dense system in the grouped
increments of all kept patches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

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

#: The most grouped increments (kept patches x slots) refined together: their dense system is
#: held and solved whole (4000: 128 MB, seconds); more kept patches keep their own solutions.
MAX_JOINT_UNKNOWNS = 4000

#: The prior sd of a kept patch's increments in the refinement (radians for rotation, tilt and
#: skew, a ratio for scale and x-stretch): 1.1 deg or 2%, far beyond what a patch's points settle
#: (a point 100 px from its patch's centre fixes its rotation to ~sigma / 100 px), so it binds only
#: where a patch's points say almost nothing (a view that holds one point at a neighbour's
#: centre), which a stray fit there turned by hundreds of degrees (an audit: one point of share
#: 0.005 in a patch's six steepest views; 0.05 left its hidden points 1.3x as far off as 0.02).
PRIOR_SD = 0.02

#: The most kept patches refined together (the work per view grows as their square).
MAX_JOINT_PATCHES = 100

#: Gauss-Newton steps per round, and rounds (markers refitted between them).
_STEPS, _ROUNDS = 2, 2


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


@jax.jit
def _point_jacobians(a, d, dt, tilts, w, xyz, centre):
    """Positions (V, M, 2) and their Jacobians (V, M, 2, 4, 7) at zero increments: ``a`` (V, M,
    4, 2, 2), ``d`` (V, M, 4, 2), ``dt`` (V, M, 4), ``tilts`` (V,), ``w`` (M, 4), ``xyz`` (M, 3),
    ``centre`` (M, 4, 2) the centres of each point's patches."""
    zero = jnp.zeros((4, 7), a.dtype)

    def one(a, d, dt, tilt, w, xyz, centre):
        args = (a, d, dt, tilt, w, xyz, centre)
        return _point(zero, *args), jax.jacfwd(_point)(zero, *args)

    per_marker = jax.vmap(one, in_axes=(0, 0, 0, None, 0, 0, 0))
    return jax.vmap(per_marker, in_axes=(0, 0, 0, 0, None, None, None))(a, d, dt, tilts, w, xyz, centre)


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


def _gauss_newton_step(jac, r, slot, basis, k, prior, total):
    """One Gauss-Newton step of the kept patches: ``jac`` (V, M, 2, 4, 7) weighted Jacobians of
    each point's position in its four patches' increments and shifts, ``r`` (V, M, 2) weighted
    residuals, ``slot`` (M, 4) each of a point's patches' rank among the ``k`` kept ones (-1: not
    kept), ``basis`` (V, 5, G) each view's increments from a patch's G slots. The shifts are
    eliminated view by view, each view adding to the slots it draws on (two nodes of a linear mode,
    one set of a grouped one). ``prior``: the weight (per unit increment squared) of a prior that
    holds each slot near the patch's own solution, ``total`` (k G) the slots' sum of earlier steps.
    Returns (slot steps (k G), increments (k, V, 5), shifts (k, V, 2), free parameters)."""
    n_views, n_markers = r.shape[:2]
    n_slots = basis.shape[-1]
    one_hot = np.zeros((n_markers, 4, k))  # a point's patch -> kept rank (none for the others)
    m_idx, c_idx = np.nonzero(slot >= 0)
    one_hot[m_idx, c_idx, slot[m_idx, c_idx]] = 1.0
    reduced = np.zeros((k * n_slots, k * n_slots))
    rhs = np.zeros(k * n_slots)
    per_view, n_shifts = [], 0
    held = np.zeros((n_views, k), bool)
    for v in range(n_views):  # one view's points at a time: (2M, 7k) at most in memory
        jp = np.einsum("mikc,mkp->mipc", jac[v], one_hot, optimize=True).reshape(-1, k, 7)
        # a patch whose points hold less than MIN_PATCH_WEIGHT points' worth of weight in this view
        # (the sum of their squared shares) keeps its own solution here, map and shift: a point at
        # a neighbour's centre gives it almost nothing, and a map fitted to that swings the
        # positions of the markers it holds more (which left the field, or were never seen)
        weighs = np.sum(jp[:, :, 5] ** 2, axis=0) >= MIN_PATCH_WEIGHT  # (k,)
        held[v] = ~weighs
        jp = (jp * weighs[None, :, None]).reshape(-1, 7 * k)
        hv = (jp.T @ jp).reshape(k, 7, k, 7)
        gv = (jp.T @ r[v].reshape(-1)).reshape(k, 7)
        h_ss = hv[:, 5:, :, 5:].reshape(2 * k, 2 * k)
        seen = np.repeat(weighs, 2)
        n_shifts += int(np.count_nonzero(seen))
        g_s = gv[:, 5:].reshape(2 * k)
        ridge = 1e-9 * max(1e-300, float(np.mean(np.diagonal(h_ss))))
        inv_ss = np.linalg.inv(h_ss + np.diag(np.where(seen, ridge, 1.0)))
        active = np.flatnonzero(np.any(basis[v] != 0, axis=0))  # the slots view v draws on
        b = basis[v][:, active]  # (5, a)
        rows = (np.arange(k)[:, None] * n_slots + active[None, :]).ravel()
        h_gg = np.einsum("paqb,ag,bh->pgqh", hv[:, :5, :, :5], b, b, optimize=True).reshape(rows.size, -1)
        h_gs = np.einsum("paqs,ag->pgqs", hv[:, :5, :, 5:], b, optimize=True).reshape(rows.size, 2 * k)
        t = h_gs @ inv_ss
        reduced[np.ix_(rows, rows)] += h_gg - t @ h_gs.T
        rhs[rows] += np.einsum("pa,ag->pg", gv[:, :5], b).ravel() - t @ g_s
        per_view.append((rows, h_gs, inv_ss, g_s))
    diag = np.diagonal(reduced).copy()
    seen_g = diag > 1e-12 * max(1e-300, float(np.max(np.abs(diag))))
    # a slot the points hardly inform (a patch's increments in views it weighs almost nothing) is
    # held near its own solution by the prior, not fitted to a stray point
    reduced[np.diag_indices_from(reduced)] += np.where(seen_g, prior, 1.0)
    rhs = rhs + prior * total * seen_g
    step_g = -np.linalg.solve(reduced, rhs)
    step_s = np.stack([-inv @ (g + h.T @ step_g[rows]) for rows, h, inv, g in per_view])
    inc = np.einsum("vag,pg->pva", basis, step_g.reshape(k, n_slots)) * ~held.T[..., None]
    shift = step_s.reshape(n_views, k, 2).transpose(1, 0, 2) * ~held.T[..., None]
    return step_g, inc, shift, int(np.count_nonzero(seen_g)) + n_shifts


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
    names = list(bases)
    order = [JOINT_INCREMENTS.index(n) for n in names]
    sizes = [bases[n].shape[1] for n in names]
    n_slots = sum(sizes)
    basis = np.zeros((n_views, 5, n_slots))  # increment of each kind per view, from the slots
    col = 0
    for n, o, g in zip(names, order, sizes, strict=True):
        basis[:, o, col : col + g] = bases[n]
        col += g
    where = np.full(file.transforms.shape[0], -1)
    where[kept] = np.arange(kept.size)
    k = kept.size
    tilts = np.radians(np.asarray(tilts_deg, float))
    centres = file.centres - np.asarray(image_size, float) / 2  # (P, 2) centred px
    total = np.zeros(k * n_slots)
    sw = np.sqrt(weights)[..., None]  # square-root weights: the cost is sum (sw r)^2
    current, best, ss = file, (before, file, 0), before
    for _ in range(_ROUNDS):
        # the prior: a slot's increment has sd PRIOR_SD (rad or ratio) against the scatter of a
        # point about the current fit
        prior = ss / max(1.0, 2 * float(np.sum(weights > 0))) / PRIOR_SD**2
        patches, shares = patch_weights(current, xyz[:, :2] + np.asarray(image_size) / 2)
        slot = where[patches]  # (M, 4): the kept patch of each of a point's patches, or -1
        for _ in range(_STEPS):
            a = current.transforms[:, :, :, :2][patches].transpose(2, 0, 1, 3, 4)  # (V, M, 4, 2, 2)
            d = current.transforms[:, :, :, 2][patches].transpose(2, 0, 1, 3)
            dt = np.radians(current.delta_tilt_deg)[patches].transpose(2, 0, 1)
            with jax.enable_x64(True):
                pos, jac = jax.device_get(_point_jacobians(a, d, dt, tilts, shares, xyz, centres[patches]))
            r = np.asarray(pos - aligned) * sw  # (V, M, 2), weighted
            r = np.where(mask[..., None], r, 0.0)
            jac = np.asarray(jac) * sw[..., None, None]
            step, inc, shift, n_free = _gauss_newton_step(jac, r, slot, basis, k, prior, total)
            total = total + step
            current = _compose(current, kept, inc, shift, centres[kept])
        ss, xyz = _weighted_ss(current, aligned, mask, tilts_deg, image_size, xyz, weights)
        if ss < best[0]:
            best = (ss, current, n_free)
    return JointRefinement(best[1], before, best[0], best[2])


@dataclasses.dataclass(frozen=True)
class JointOutcome:
    """What a local alignment takes from refining its kept patches together: the file, the
    refinement's free parameters and the slots it added to the patches' own solves (0 and 0 when
    it was not done or did not lower the sum of squares), and the note that says so (or None)."""

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
    why); kept only when it lowers the weighted sum of squares. ``solved``: the increments the
    patches solved alone, for the slots the refinement adds (``JointOutcome.added``)."""
    bases = increment_bases(modes, mask.shape[0])
    unknowns = len(kept) * sum(b.shape[1] for b in bases.values())
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
    return JointOutcome(
        joint.file,
        joint.n_free,
        len(kept) * sum(b.shape[1] for name, b in bases.items() if name not in solved),
        f"{len(kept)} kept patch(es) refined together through tilt's blend: the points' weighted sum "
        f"of squares {joint.before:.4g} -> {joint.after:.4g} px^2 ({joint.n_free} parameters)",
    )
