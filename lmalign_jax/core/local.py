"""Local alignment after the global solve, as IMOD's tiltalign does it, all patches in one call.

IMOD (tiltalign.f90 ``setupAndDoLocalAlignments``, man page "Local Alignments"; GitHub
``LabShare-Archive/IMOD``):

- Grid (TargetPatchSizeXandY, default 700 x 700; MinSizeOrOverlapXandY, default overlap 0.5): the
  extent of the fiducials' solved (X, Y) plus a 5 px border; ``n = int((extent - target) /
  (target (1 - overlap)) + 1)``, at least 2, one more if the minimum size
  ``int(extent / (n - overlap (n - 1)))`` exceeds 1.05 target; spacing
  ``int((extent - size) / (n - 1) + 1)``, first centre ``int(min + size // 2)``.
- Each patch takes the fiducials whose solved (X, Y) lie in a box of the minimum size about its
  centre, grown by 40 px in X and Y until it holds MinFidsTotalAndEachSurface (default 8 in all and
  3 on each surface). tiltalign stops when even a box 4 times the image cannot; here the patch
  keeps the global solution (unit transform) and is reported.
- The local solution is incremental: the Local*Option variables (rotation, tilt, magnification;
  x-stretch and skew optional) are added to the global values, grouped as LocalRotDefaultGrouping
  etc. (Etomo's defaults: rotation and tilt in groups of 6 views, magnification in groups of 7,
  linearly: increments every 6 or 7 views, interpolated between, as its options 3 and 5 make
  them); the shifts are always solved per view; the markers are held
  at the global solution (FixXYZCoordinates 1, what Etomo writes) or solved too (gauge fixed at
  the reference view). Views without a marker in the patch keep the global solution.

One departure, on by default (``LocalOptions.weighting``): tilt places a point by blending the
four patches around it with bilinear weights, so a patch's solution decides only part of the
position of a marker near a neighbour's centre, and nothing of one beyond its neighbours. Each
patch therefore weighs its markers by the share tilt gives it at their (X, Y) (tiltalign weighs
every marker of the patch fully, ``"even"``). The file then fits the positions tilt computes
from it: on IMOD's BB and midzone2 sets, every patch kept, the mean residual falls 1.6-1.9 times
as much as IMOD's own local files make it fall, and the leave-out prediction improves on every
axis (benchmarks/README, "Patch weights"). Whether a patch keeps its solution is still judged
by its fit with every marker weighted fully (``LocalOptions.significance``).

Every patch is the same-shaped masked problem (markers padded to the largest patch, missing pairs
weighted 0), so all are solved by one ``jax.vmap`` of the package's L-M solver in one compiled
call. The transforms written for IMOD map each patch's ideal projection into the globally aligned
stack (module :mod:`lmalign_jax.io.imod_local`), found, like the global ``.xf``, by fitting the
affine map that the two solutions imply on a grid of points of the patch.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..io.imod_local import LocalAlignment
from ..models import ProjectionModel
from ..solve import (
    Status,
    Variables,
    choose_elimination,
    effective_a,
    make_structure,
    pad_problem,
)
from .grouping import group_sizes
from .local_apply import fit_markers_through_local
from .local_grid import checked_patch_grid, marker_shares, patch_grid, select_patch_markers, surfaces
from .local_joint import JointOutcome, refine_kept_patches
from .local_maps import global_z_factors, patch_file_maps, project_points
from .local_options import ETOMO_MODES, INCREMENTS, PER_VIEW_MODES, WEIGHTINGS, LocalOptions
from .local_solve import solve_patches
from .problem import (
    characteristic_radius,
    is_linear,
    linear_blend,
    mode_labels,
    padded_size,
    reference_marker,
    residual_function,
)
from .result import AlignmentResult

__all__ = [
    "ETOMO_MODES",
    "INCREMENTS",
    "PER_VIEW_MODES",
    "WEIGHTINGS",
    "LocalOptions",
    "LocalSolution",
    "PatchReport",
    "patch_grid",
    "select_patch_markers",
    "align_local",
]

#: How far (px, and as a fraction) the global alignment through tilt's formulas may miss more than
#: the model's own solve before the notes say so (jou and imod: a few 1e-4 px, the .xf's fit).
TILT_FORMULA_SLACK_PX = 0.005
TILT_FORMULA_SLACK = 0.02


@dataclasses.dataclass(frozen=True)
class PatchReport:
    """One patch: its grid cell, centre (pixels), markers, RMS residual of its markers under the global
    solution and under what the file holds for the patch (its own local fit when kept, else the global
    solution again; px, each marker weighted by the patch's share in it, ``LocalOptions.weighting``, and
    each point by a robust fit's weight), its free parameters, the drop of its sum of squares in units
    of sigma^2 (of the keeping test's fit, every marker weighted fully), whether its local solution was
    kept (else the global one stands for it), the drop it needed to be kept (NaN: no test, every patch
    kept; or the patch was not solved) and its markers (indices into the result's; for a patch with too
    few markers, those its largest box held, at their global residual), and the coordinates its fit
    weighs (those of markers it has a share in), and the free parameters of the keeping test's fit (p of
    its threshold; 0 without a test)."""

    index: tuple[int, int]
    centre: tuple[int, int]
    n_markers: int
    box: tuple[int, int]
    global_rms_px: float
    local_rms_px: float
    status: str
    n_free: int = 0
    chi2_drop: float = 0.0
    kept_local: bool = False
    threshold: float = float("nan")
    marker_indices: tuple[int, ...] = ()
    n_coordinates: int = 0
    test_n_free: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class LocalSolution:
    """A local alignment: the file IMOD's tilt reads, per-patch reports and overall residuals.

    views: (n_patches, n_views, k) each patch's full view parameters (model units), as solved alone.
    global_mean_px / local_mean_px: mean residual length with every marker fitted through the
    global transform alone / through the local alignment as tilt applies it.
    seconds: wall time of the batched solve (compiled call included).
    keep_test: whether patches were kept by the significance test (else every solved one was).
    joint_free: the free parameters of the kept patches refined together (``LocalOptions.joint``;
    0: not refined), which then replace their own solutions' in the file (``views`` holds those);
    joint_added: the grouped increments the refinement adds to what the patches solved alone
    (x-stretch and skew slots for a model without them), which with the kept patches' own
    ``n_free`` count the file's parameters (``compare``'s).
    z_factors: (n_views, 2) the global alignment's z factors (:func:`global_z_factors`), which the
    residuals above are judged with (tilt uses the file's own, ``file.z_factors``, in their place),
    or None.
    """

    file: LocalAlignment
    patches: tuple[PatchReport, ...]
    views: np.ndarray
    markers: tuple[np.ndarray, ...]
    global_mean_px: float
    local_mean_px: float
    seconds: float
    notes: tuple[str, ...]
    keep_test: bool = True
    z_factors: np.ndarray | None = None
    joint_free: int = 0
    joint_added: int = 0


def _bucket(n: int) -> int:
    """``n`` rounded up to 2^k x (1, 1.25, 1.5 or 1.75): patches padded to it (weight-0 markers,
    the same answer) keep one compiled solve for similar series and for refits of one series
    (``compare``'s leave-out folds), whose patches differ by a few markers."""
    if n <= 8:
        return n
    step = 1 << (int(n - 1).bit_length() - 3)  # a quarter of the power of two below n
    return -(-n // step) * step


def check_local_model(model: ProjectionModel) -> None:
    """ValueError unless ``model`` has the per-view rotation, tilt and shifts a local alignment refines."""
    missing = [n for n in ("rotation", "tilt", "dx", "dy") if n not in model.parameters]
    if missing:
        raise ValueError(
            f"local alignment needs per-view {', '.join(missing)}; model {model.name!r} has "
            f"{', '.join(model.parameters)} (use jou, imod or luther)"
        )


_LOCAL_MODELS: dict = {}


def local_model(model: ProjectionModel) -> ProjectionModel:
    """The model with additive increments ("d" + name) appended to its view vector (one object per
    base model, so the compiled solve is shared)."""
    if model not in _LOCAL_MODELS:
        names = tuple(n for n in INCREMENTS if n in model.parameters)
        where = tuple(model.index(n) for n in names)
        k = model.n_parameters

        def project(view, xyz):
            base = [view[i] for i in range(k)]
            for j, i in enumerate(where):
                base[i] = base[i] + view[k + j]
            return model.project(jnp.stack(base), xyz)

        _LOCAL_MODELS[model] = ProjectionModel(
            name=f"{model.name}-local",
            parameters=model.parameters + tuple("d" + n for n in names),
            kinds=model.kinds + tuple(INCREMENTS[n] for n in names),
            neutral=model.neutral + (0.0,) * len(names),
            default_modes=("fixed",) * (k + len(names)),
            gauge=model.gauge,
            gauge_marker_z=model.gauge_marker_z,
            project=project,
            description=f"{model.name} plus local increments of {', '.join(names)}",
        )
    return _LOCAL_MODELS[model]


def _patch_problem(lm, base_k, result, idx, share, capacity, options, radius, ref_view):
    """Host arrays of one patch's problem, markers padded to ``capacity``; ``share`` (idx.size,)
    multiplies each marker's weight in the cost (markers with none do not count)."""
    obs = result.observations
    n_views, k = obs.n_views, lm.n_parameters
    modes = dict(options.modes)
    weights = obs.mask[:, idx].astype(float)
    if result.settings.weights is not None:
        weights = np.where(obs.mask[:, idx], result.settings.weights[:, idx], 0.0)
    weights = weights * np.sqrt(share)[None, :]  # square-root weights: the cost is sum (w r)^2
    mask = weights > 0
    seen = mask.any(axis=1)
    pair = np.zeros((2, n_views, capacity))
    pair[:, :, : idx.size] = np.moveaxis(obs.centered_xy[:, idx], -1, 0)
    w = np.zeros((n_views, capacity))
    w[:, : idx.size] = weights
    free = np.zeros((n_views, k), bool)
    tie = np.full((n_views, k), -1, np.int32)
    tie2 = np.full((n_views, k), -1, np.int32)
    frac = np.ones((n_views, k))
    slot_free: list[bool] = []
    markers_free = not options.fix_markers
    for name in ("dx", "dy"):
        free[:, lm.index(name)] = seen
        if markers_free:
            free[ref_view, lm.index(name)] = False
    for p in range(base_k, k):
        name = lm.parameters[p][1:]
        mode = modes.get(name, "fixed")
        # IMOD's sets for this patch: views with fewer than 3 points in it do not count
        sizes, counts = group_sizes(result.model, name, mode, obs.tilts_deg), mask.sum(axis=1)
        blend = linear_blend(name, mode, n_views, ref_view if markers_free else None, sizes, counts)
        if blend is not None:  # a node's value reaches the views on both sides of it
            nodes, low, high, frac[:, p] = blend
            tie[:, p], tie2[:, p] = len(slot_free) + low, len(slot_free) + high
            for r in range(nodes.size):
                reached = (low == r) | ((high == r) & (frac[:, p] < 1))
                slot_free.append(bool(seen[reached].any()) and not (markers_free and nodes[r] == ref_view))
            continue
        labels = mode_labels(name, mode, n_views, sizes=sizes, counts=counts)
        free[:, p] = (labels == -1) & seen
        if markers_free and labels[ref_view] == -1:
            free[ref_view, p] = False
        for label in np.unique(labels[labels >= 0]):
            members = labels == label
            tie[members, p] = len(slot_free)
            slot_free.append(bool(seen[members].any()) and not (markers_free and labels[ref_view] == label))
    # a view whose points in the patch cannot determine its own increments (two coordinates
    # a point) keeps the global ones there, and only its local shift is fitted
    own = free[:, base_k:].sum(axis=1) + 2 * seen
    free[2 * mask.sum(axis=1) < own, base_k:] = False
    free_b = np.zeros((capacity, 3), bool)
    if markers_free:
        free_b[: idx.size] = mask.any(axis=0)[:, None]  # a marker the patch weighs nowhere stays put
        if lm.gauge_marker_z:
            free_b[reference_marker(mask, ref_view), 2] = False
    unit = np.array([1.0 if kind == "length" else 1.0 / radius for kind in lm.kinds])
    views = np.concatenate([result.views, np.zeros((n_views, k - base_k))], axis=1)
    b = np.zeros((capacity, 3))
    b[: idx.size] = result.markers[idx]
    # whether there is a blend follows from the modes alone: every patch's problem has one layout
    blend = (tie2, frac, np.zeros((n_views, k))) if any(is_linear(m) for m in modes.values()) else None
    structure = make_structure(pair, w, free, tie, free_b, np.asarray(slot_free, bool), unit, blend)
    return Variables(views / unit, b, np.zeros(len(slot_free))), structure


def align_local(result: AlignmentResult, options: LocalOptions = LocalOptions()) -> LocalSolution:
    """Local alignment of a solved global alignment (see the module docstring).

    Raises ValueError when the model has no per-view rotation/tilt to refine, every chosen
    increment is missing from the model, or the grid has more than ``MAX_PATCHES`` patches.
    """
    model, obs = result.model, result.observations
    check_local_model(model)
    lm = local_model(model)
    base_k = model.n_parameters
    active = [n for n, mode in options.modes if mode != "fixed" and n in model.parameters]
    if not active:
        raise ValueError(
            f"no local increment to solve: model {model.name!r} has none of {dict(options.modes)}"
        )
    centre_px = obs.center
    xy = result.markers[:, :2] + centre_px
    n_patches, start, spacing, min_size = checked_patch_grid(xy, options.patch_size, options.overlap)
    side = surfaces(result.markers)
    ref_view = result.settings.ref_view
    ref_view = int(np.argmin(np.abs(result.tilts_deg))) if ref_view is None else ref_view
    cells, selections, notes = [], [], []
    for j in range(n_patches[1]):
        for i in range(n_patches[0]):
            c = (start[0] + i * spacing[0], start[1] + j * spacing[1])
            idx, box, enough = select_patch_markers(xy, side, c, min_size, options.min_fids, obs.image_size)
            cells.append(((i, j), c, box, enough, idx))
            selections.append(idx if enough else np.zeros(0, int))
            if not enough:
                top = int(side[idx].sum())
                split = f", {idx.size - top} bottom / {top} top" if options.min_fids[1] > 0 else ""
                notes.append(
                    f"patch ({i}, {j}) at ({c[0]}, {c[1]}): only {idx.size} markers{split} "
                    f"(needs {options.min_fids[0]}, {options.min_fids[1]} per surface); global solution kept"
                )
    smaller = int(min(side.sum(), side.size - side.sum()))
    if options.min_fids[1] > smaller:
        notes.append(
            f"the series' markers split {side.size - int(side.sum())} bottom / {int(side.sum())} top "
            f"about their least-squares plane: no patch can hold {options.min_fids[1]} on each surface "
            f"(at most {smaller} here; 0: no per-surface minimum)"
        )
    capacity = _bucket(max(1, max(s.size for s in selections)))
    radius = characteristic_radius(obs)
    shares = (
        marker_shares(xy, n_patches, start, spacing)
        if options.weighting == "blend"
        else np.ones((len(xy), len(selections)))
    )
    # min_fids counts the markers of a patch's box; a box grown past its neighbours' centres holds
    # markers that tilt takes nothing of from the patch, so it may weigh fewer. Weighing those
    # patches' boxes evenly instead (tiltalign's extrapolation) predicted held-out points worse on
    # IMOD's midzone2 sets (measured in commit 912acde's message): they are only named, and the
    # keeping test judges their fits
    short = [
        cells[p][0]
        for p, idx in enumerate(selections)
        if options.weighting == "blend"
        and np.count_nonzero(shares[idx, p])  # none: not solved, and said so in its status
        and (
            np.count_nonzero(shares[idx, p]) < options.min_fids[0]
            or min(np.sum(shares[idx, p][side[idx] == k] > 0) for k in (0, 1)) < options.min_fids[1]
        )
    ]
    if short:
        notes.append(
            f"patch(es) {', '.join(f'({i}, {j})' for i, j in short)} weigh fewer than {options.min_fids[0]} "
            f"markers ({options.min_fids[1]} per surface): tilt blends their other markers from "
            "neighbouring patches"
            + (
                "; the keeping test judges each patch by its fit with every marker weighted fully, "
                "and only the parameters-against-coordinates rule guards their blend fits"
                if options.significance is not None
                else ""
            )
            + " (larger patches hold more)"
        )
    built = [
        _patch_problem(lm, base_k, result, s, shares[s, p], capacity, options, radius, ref_view)
        for p, s in enumerate(selections)
    ]
    # the keeping test judges each patch by its fit with every marker weighted fully (a
    # chi-square test with its known scatter); blend weights dilute that evidence (a bilinear
    # share's (mean w)^2 / mean w^2 is about 0.56): solved beside the blend ones, in the same call
    n_patches_all = len(selections)
    split = options.weighting == "blend" and options.significance is not None
    if split:
        built += [
            _patch_problem(lm, base_k, result, s, np.ones(s.size), capacity, options, radius, ref_view)
            for s in selections
        ]
    # IMOD's sets depend on the points a patch has in each view: pad to the most slots of any,
    # rounded up so that refits of the series (compare's folds) reuse the compiled solve
    n_slots = padded_size(max(x.g.shape[0] for x, _ in built))
    built = [pad_problem(x, st, obs.n_views, capacity, n_slots) for x, st in built]
    x0 = jax.tree_util.tree_map(lambda *a: np.stack(a), *[b[0] for b in built])
    structure = jax.tree_util.tree_map(lambda *a: np.stack(a), *[b[1] for b in built])
    eliminate = "a" if options.fix_markers else choose_elimination(obs.n_views, lm.n_parameters, capacity, 3)
    began = time.perf_counter()
    if any(s.size for s in selections):  # (2P problems when split: the test's after the solutions)
        with jax.enable_x64(True):
            sol = solve_patches(residual_function(lm), eliminate, options.config, x0, structure, capacity)
            a_eff = np.asarray(jax.vmap(effective_a)(sol.x.a, sol.x.g, structure.tie_a, structure.tie_blend))
        status_of, solved_markers = sol.status, sol.x.b
    else:  # no patch has enough markers: nothing to solve, every patch keeps the global solution
        a_eff, solved_markers = x0.a, x0.b
        status_of = np.full(len(built), int(Status.CONVERGED))
    seconds = time.perf_counter() - began
    unit = structure.const  # (P or 2P, k)
    full = a_eff * unit[:, None, :]
    views = full[:, :, :base_k].copy()
    for j, name in enumerate(n for n in INCREMENTS if n in model.parameters):
        views[:, :, model.index(name)] += full[:, :, base_k + j]

    n_free = [
        int(structure.free_a[p].sum() + structure.free_b[p].sum() + structure.free_g[p].sum())
        for p in range(len(built))
    ]
    resid = np.where(obs.mask[..., None], result.residuals, 0.0)
    # the noise of the points the fit weighs (a robust fit's weights: its outliers would inflate
    # sigma^2 and turn every patch's weighted drop "not significant"); weights are square roots
    fit_w = (
        obs.mask.astype(float) if result.settings.weights is None else result.settings.weights**2 * obs.mask
    )
    sigma2 = float(np.sum(fit_w[..., None] * resid**2) / max(1.0, 2 * fit_w.sum() - result.n_parameters))
    reports, marker_sets, report_weights = [], [], []
    n_underdetermined = 0
    for p, ((cell, c, box, enough, in_box), idx) in enumerate(zip(cells, selections, strict=True)):
        status = Status(int(status_of[p]))
        m = obs.mask[:, idx]
        cost_w = np.asarray(structure.weights[p, :, : idx.size]) ** 2  # each point's weight in the cost
        counted = int(np.count_nonzero(cost_w))
        # as many parameters as coordinates (a marker or two, with --min-fids lowered, or markers
        # that tilt hardly takes from this patch): the fit passes through every point it weighs
        # and its corrections are noise, whatever the test says
        underdetermined = bool(enough and n_free[p] >= 2 * counted)
        markers = np.asarray(solved_markers[p, : idx.size])
        g_res = resid[:, idx]

        def residuals_of(q, idx=idx, m=m):  # the patch's residuals under problem q's solution
            pred = project_points(model, views[q], np.asarray(solved_markers[q]))[:, : idx.size]  # one shape
            return np.where(m[..., None], pred - obs.centered_xy[:, idx], 0.0)

        l_res = residuals_of(p)
        # the test: the drop of the test fit's (weighted) sum of squares against fitting noise's
        t = p + n_patches_all if split else p
        test_w = np.asarray(structure.weights[t, :, : idx.size]) ** 2
        test_res = residuals_of(t) if split else l_res
        drop = float(np.sum(test_w[..., None] * (g_res**2 - test_res**2)) / sigma2) if sigma2 > 0 else np.inf
        # lam: 1 for even weights (robust weights make it less)
        spread = float(np.sum(test_w**2) / np.sum(test_w)) if np.any(test_w) else 1.0
        if not enough:  # nothing solved: the markers its largest box held, under the global fit
            g_res = l_res = resid[:, in_box]
        threshold = (
            np.inf
            if options.significance is None
            else spread * (n_free[t] + options.significance * np.sqrt(2 * n_free[t]))
        )
        test_failed = split and Status(int(status_of[t])) == Status.FAILED
        if not enough or not counted:  # not solved: no drop
            drop = 0.0
        if not enough:
            text = "too few markers; global kept"
        elif counted == 0 and not shares[idx, p].any():
            text = "tilt takes none of its markers' positions from it (beyond its neighbours); global kept"
        elif counted == 0:
            text = "none of its markers' points carries weight in the fit (robust or held out); global kept"
        elif underdetermined:
            text = f"underdetermined ({n_free[p]} parameters, {2 * counted} coordinates); global kept"
            n_underdetermined += 1
        elif status == Status.FAILED:
            text = f"solve failed ({status.message}); global kept"
            notes.append(f"patch {cell}: {text}")
        elif test_failed:
            text = f"the keeping test's fit failed ({Status(int(status_of[t])).message}); global kept"
            notes.append(f"patch {cell}: {text}")
        elif options.significance is not None and not drop > threshold:
            text = f"not significant (needs {threshold:.0f}); global kept"
        else:
            text = status.message
        keep = bool(
            enough
            and not underdetermined
            and status != Status.FAILED
            and not test_failed
            and (options.significance is None or drop > threshold)
        )
        if not keep:  # the file holds the global solution: so do its residuals in the report
            views[p] = result.views
            markers = result.markers[idx]
            l_res = g_res
        marker_sets.append(markers)
        shown = idx if enough else in_box
        share_w = (
            obs.mask[:, shown] * shares[shown, p][None] if enough and counted else obs.mask[:, shown] * 1.0
        ) * np.where(obs.mask[:, shown], fit_w[:, shown], 0.0)  # and a robust fit's weights
        n_coords = max(1e-300, 2 * float(share_w.sum()))
        report_weights.append((shown, share_w, n_coords))
        reports.append(
            PatchReport(
                cell,
                c,
                int(shown.size),
                box,
                float(np.sqrt(np.sum(share_w[..., None] * g_res**2) / n_coords)),
                float(np.sqrt(np.sum(share_w[..., None] * l_res**2) / n_coords)),
                text,
                n_free[p],
                drop,
                keep,
                float("nan")
                if options.significance is None or not enough or not counted
                else float(threshold),
                tuple(int(i) for i in shown),
                2 * counted if enough else 0,
                n_free[t] if options.significance is not None and enough and counted else 0,
            )
        )
    if n_underdetermined:
        notes.append(
            f"{n_underdetermined} patch(es) hold too few markers for their own parameters (as many or more "
            "parameters than coordinates) and keep the global solution: raise the markers per patch "
            "(min_fids, --min-fids) or the patch size"
        )
    tilt = model.index("tilt")
    views = views[:n_patches_all]  # the solutions (the test's fits follow them when split)
    delta_tilt = np.degrees(views[:, :, tilt] - result.views[None, :, tilt])
    # a projection that varies with height beyond tilt's formula (luther's magnifications): each
    # patch's own z factors go in the file, as tiltalign writes them, and tilt uses them in place
    # of the global .zfac
    global_zfac = global_z_factors(result)
    transforms, patch_zfac = patch_file_maps(result, views, reports, global_zfac is not None)
    file = LocalAlignment(n_patches, start, spacing, 0.0, delta_tilt, transforms, z_factors=patch_zfac)
    aligned = result.aligned_xy() - centre_px
    # each marker refitted as the solve weighed its points (a robust fit's outliers would pull it)
    through = dict(z_factors=global_zfac, point_weights=fit_w)
    g_xyz, g_res = fit_markers_through_local(
        None, aligned, obs.mask, result.tilts_deg, obs.image_size, result.markers, **through
    )
    kept = np.flatnonzero([r.kept_local for r in reports])
    joint = JointOutcome(file)
    if options.joint and global_zfac is None and kept.size:  # the file's z factors are not refined
        joint = refine_kept_patches(
            file,
            kept,
            aligned,
            obs.mask,
            result.tilts_deg,
            obs.image_size,
            g_xyz,
            options.joint_modes(),
            set(active),
            fit_w,
        )
    file = joint.file
    if joint.note is not None:
        notes.append(joint.note)
    l_xyz, l_res = fit_markers_through_local(
        file, aligned, obs.mask, result.tilts_deg, obs.image_size, g_xyz, **through
    )
    for p in kept if joint.free else ():  # what the file now holds for a kept patch: its refined blend
        shown, share_w, n_coords = report_weights[p]
        rms = float(np.sqrt(np.nansum(share_w[..., None] * l_res[:, shown] ** 2) / n_coords))
        reports[p] = dataclasses.replace(reports[p], local_rms_px=rms)
    global_mean = float(np.nanmean(np.hypot(g_res[..., 0], g_res[..., 1])))
    solved_mean = result.mean_residual_px
    if global_mean > solved_mean + max(TILT_FORMULA_SLACK_PX, TILT_FORMULA_SLACK * solved_mean):
        notes.append(
            f"model {model.name!r}: its global alignment as tilt applies it (.xf and .tlt"
            + ("" if global_zfac is None else " with its z factors")
            + f") misses the points by {global_mean:.4f} px (mean), where its own solve reaches "
            f"{solved_mean:.4f}: part of the local drop only makes up for that (a model whose projection "
            "is affine in the point, jou, imod or luther, has no such loss)"
        )
    return LocalSolution(
        file=file,
        patches=tuple(reports),
        views=views,
        markers=tuple(marker_sets),
        global_mean_px=global_mean,
        local_mean_px=float(np.nanmean(np.hypot(l_res[..., 0], l_res[..., 1]))),
        seconds=seconds,
        notes=tuple(notes),
        keep_test=options.significance is not None,
        z_factors=global_zfac,
        joint_free=joint.free,
        joint_added=joint.added,
    )
