"""Bead tracking through a tilt series, predicted by the alignment fitted so far.

The procedure (:func:`track_beads`), after IMOD's ``beadtrack`` (its man page: beads are
tracked outward from a starting view, each new position predicted by a tilt alignment of the
positions found so far, refined by correlation with an average of the beads, with rounds that
fill gaps and drop bad points):

1. **Seed.** The view nearest 0 degrees that is not blank (:func:`seed_view`: a view whose pixels
   all have one value, dark or missing, has no beads and is lost like any view without them);
   :func:`lmalign_jax.track.find_beads` finds the beads.
   :func:`choose_beads` keeps up to ``target_beads`` of them, well spread (farthest-point order,
   strongest first) and unambiguous (no other bead within ``2 D``, ``D`` the bead diameter).
   When more qualify than ``target_beads``, all of them are first tracked (one round) through
   the views within ``PILOT_TILT_DEG`` of the seed, and if the fitted heights form two surfaces
   half of the chosen beads come from each (:mod:`lmalign_jax.track.seeding`).
   The averaged bead of the chosen ones is the template (:mod:`lmalign_jax.track.centring`).
2. **Coarse shifts.** Every view is binned and correlated with its neighbour
   (:mod:`lmalign_jax.track.coarse`), streamed one view at a time: the stage moves by tens of
   pixels between views, more than any prediction from markers can know for a view not yet seen.
3. **Sweep.** Views are visited outward from the seed, alternating sides (seed+1, seed-1,
   seed+2, ...). A bead's position in the new view is the projection of its fitted 3-D position
   through the fitted parameters of its neighbour view (the one toward the seed) at the new view's
   tilt plus the nominal step, moved by the coarse shift between the two views. The alignment is
   fitted with the package's own solver (:func:`lmalign_jax.core.align`, stages "initial", "main"
   and "tilt") after every view once three views are tracked, and after every pair of views (one
   on each side, so each new view's neighbour is in the fit) once twelve are. All bead windows of
   the view are correlated with the template in one batched FFT and centred
   (:func:`lmalign_jax.track.centring.correlate_windows`); if the median offset from the
   predictions is large the view is measured again about the shifted predictions. Before that
   the whole view is registered against its predicted beads (:mod:`lmalign_jax.track.register`:
   one shift from the correlation with the averaged bead at every prediction, within ``4 D``,
   else ``12 D``, used when it passes a false-alarm test on its own noise): at cryo dose and
   high tilt the coarse shift can be off by tens of pixels, and each bead alone is too weak
   to be found that far off. The untracked views of the rounds are registered the same way.
4. **Left out** of a view (``reasons``): a prediction within ``D/2 + 1`` px of the border
   (OUTSIDE); two predictions closer than ``2 D``, or a second correlation peak within ``2 D`` of
   the found one above ``RIVAL`` of it and itself ``MIN_SNR`` noise sigmas high (CROWDED: a
   second bead, not a peak of a lattice or ice texture); a peak below ``MIN_AMPLITUDE`` of the
   average bead or ``MIN_SNR`` noise sigmas (``MIN_SNR_REFINE`` in the rounds, where the fit
   predicts within a pixel; in a registered view, a bead found where the registration puts it
   needs only the peak of :func:`lmalign_jax.track.register.bead_threshold`) (WEAK); a found
   position whose offset from the prediction differs from the view's median offset by more than
   ``max(0.4 D, 1.5 px, 4 sigma)`` (JUMP). A view
   that ends with fewer than 3 beads is lost (:mod:`lmalign_jax.track.result`); a view beyond
   a lost one is predicted from the last tracked view with one direct whole-view correlation.
5. **Rounds.** After the sweep, and after each further round: the alignment is fitted to every
   found point; points whose residual exceeds ``max(4 sigma, 0.5 px)`` (``sigma`` the robust
   residual scale) are dropped (OUTLIER), and whole tracks whose RMS residual exceeds three times
   the median and 1 px are dropped (REMOVED: a track that jumped to another bead). Then every
   (bead, view) is measured again about the fitted prediction with a smaller search radius, which
   refills gaps and re-centres. ``rounds`` rounds in all, fewer when nothing changes. At the
   end, tracks found in fewer than 3 views are dropped (REMOVED): two points fit any height, so
   a wrong match cannot be seen.

Fits with a fixed shape
-----------------------
The solver compiles once per problem shape, so every fit uses every view and every bead: a view
not yet tracked is a copy of the nearest tracked view (positions and tilt) with weight
``1e-3``; a bead not found in a view is put at its predicted (or nearest found) position with
weight ``1e-4``. Those points move the fit by far less than a found point's noise, and the whole
tracking compiles the solver once.

Memory: the stack is read one view at a time (``stack[v]``, e.g. a memory-mapped MRC); only the
current view is held in float32, plus the binned previous view for the coarse shifts.
"""

from __future__ import annotations

import time

import numpy as np
from jaxtyping import ArrayLike, Float

from .centring import window_size
from .coarse import bin_view, binning_factor, neighbour_shifts
from .find import find_beads
from .fitting import Fitter, nearest_found
from .measuring import Measurer
from .result import (
    CROWDED,
    FOUND,
    JUMP,
    MIN_TRACKED_BEADS,
    MIN_VIEW_BEADS,
    NOT_REACHED,
    OUTLIER,
    OUTSIDE,
    REASONS,
    REMOVED,
    VIEW_LOST,
    WEAK,
    TrackingError,
    TrackResult,
    mark_lost_views,
)
from .seeding import choose_beads, choose_on_surfaces, seed_template, split_surfaces

__all__ = [
    "TrackResult",
    "TrackingError",
    "track_beads",
    "choose_beads",
    "seed_view",
    "is_blank",
    "FOUND",
    "WEAK",
    "OUTSIDE",
    "CROWDED",
    "JUMP",
    "OUTLIER",
    "REMOVED",
    "NOT_REACHED",
    "VIEW_LOST",
    "REASONS",
    "MIN_TRACKED_BEADS",
]

#: The same in the rounds, where the fitted alignment predicts within a pixel and a false peak
#: must also pass the residual tests: in a lattice patch of the specimen the correlation's
#: background is structured, and clear beads (amplitude ~0.8) sit only 2-3 of its sigmas above it.
MIN_SNR_REFINE = 2.0
#: Smallest residual, pixels, that makes a point an outlier (else 4 robust sigmas). Half a pixel:
#: where two beads merge in a view (a close pair crossing), the found centre sits between them,
#: 1-2 px off, and a floor of 1 px let such points into the fit.
OUTLIER_FLOOR_PX = 0.5
#: Fewest views a track must be found in to be kept (module docstring, step 5).
MIN_BEAD_VIEWS = 3
#: Views within this many degrees of the seed view give the heights that sort the beads into
#: surfaces before the choice (parallax z sin(15 deg) = 0.26 z: 8 px between surfaces 30 px apart).
PILOT_TILT_DEG = 15.0
#: Views tracked before the sweep fits after every pair of views (one each side) instead of after
#: every view: half the fits, and each new view's neighbour is still in the last fit.
EVERY_VIEW_FITS = 12


def _sweep_order(n_views: int, seed: int) -> list[int]:
    order = []
    for step in range(1, n_views):
        for v in (seed + step, seed - step):
            if 0 <= v < n_views:
                order.append(v)
    return order


def _coarse_shifts(stack, seed: int, factor: int, diameter: float) -> np.ndarray:
    """(n_views, 2) position of the seed view's content in each view (streamed, one pair at a time)."""
    n = stack.shape[0]
    steps = np.zeros((n, 2))  # steps[v]: shift from view v-1 to view v
    previous = bin_view(stack[0], factor)
    for v in range(1, n):
        current = bin_view(stack[v], factor)
        steps[v] = neighbour_shifts(np.stack([previous, current]), [[0, 1]], factor, diameter)[0]
        previous = current
    cumulative = np.cumsum(steps, axis=0)
    return cumulative - cumulative[seed]


def _direct_shift(stack, a: int, b: int, factor: int, diameter: float) -> np.ndarray:
    """(2,) where the content of view ``a`` lies in view ``b``, relative to view ``a``: one whole-view
    correlation of the two (binned), for views that are not neighbours."""
    pair = np.stack([bin_view(stack[a], factor), bin_view(stack[b], factor)])
    return neighbour_shifts(pair, [[0, 1]], factor, diameter)[0]


def _read_view(stack, v: int) -> np.ndarray:
    return np.asarray(stack[v], dtype=np.float32)


def is_blank(image) -> bool:
    """Whether every pixel of ``image`` has one value (a dark, blank or missing view: no beads)."""
    a = np.asarray(image)
    return a.size == 0 or float(np.min(a)) == float(np.max(a))


def seed_view(stack, tilts_deg) -> int:
    """The 0-based view the tracking starts from: the one nearest 0 degrees that is not blank
    (:func:`is_blank`), views read one at a time until one is found; the one nearest 0 degrees when
    every view is blank."""
    order = np.argsort(np.abs(np.asarray(tilts_deg, dtype=np.float64).reshape(-1)), kind="stable")
    for v in order:
        if not is_blank(stack[int(v)]):
            return int(v)
    return int(order[0])


def _drop_outliers(fitter, found, reasons, xy):
    """Drop points and whole tracks with outlying residuals (module docstring, step 5), in place.
    Returns the (n_beads,) RMS residual of each bead."""
    res = fitter.residuals()
    length = np.linalg.norm(res, axis=2)
    pts = np.abs(res[found])
    sigma = 1.4826 * float(np.median(pts)) if pts.size else 0.0
    bad = found & (length > max(4.0 * sigma, OUTLIER_FLOOR_PX))
    found &= ~bad
    reasons[bad] = OUTLIER
    alive = found.sum(axis=0) > 0
    sums = np.sum(np.where(found, length, 0.0) ** 2, axis=0)
    per_bead = np.where(alive, np.sqrt(sums / np.maximum(2 * found.sum(axis=0), 1)), np.nan)
    if alive.sum() >= MIN_TRACKED_BEADS:
        typical = float(np.median(per_bead[alive]))
        removed = alive & (per_bead > max(3.0 * typical, 1.0))
        reasons[:, removed] = np.where(found[:, removed], REMOVED, reasons[:, removed])
        found[:, removed] = False
        per_bead[removed] = np.nan
    xy[~found] = np.nan
    return per_bead


def track_beads(
    stack,
    tilts_deg: Float[ArrayLike, " views"],
    bead_diameter_px: float,
    *,
    rotation_deg: float | None = None,
    target_beads: int = 40,
    rounds: int = 3,
    register_views: bool = True,
    progress=None,
) -> TrackResult:
    """Track gold beads through a tilt series (see the module docstring).

    Args:
        stack: (n_views, NY, NX) array-like indexed by view (a memory-mapped MRC stack is read
            one view at a time), ``stack[v][row, column]``.
        tilts_deg: (n_views,) nominal tilt angles, degrees.
        bead_diameter_px: bead diameter, pixels.
        rotation_deg: tilt-axis angle in the raw images (IMOD's RotationAngle), degrees; estimated
            by the fits when None.
        target_beads: how many beads to track at most.
        rounds: refinement rounds after the sweep (at least 1).
        register_views: register each new view as a whole against its predicted beads before
            centring them (:mod:`lmalign_jax.track.register`); False predicts from the coarse
            shifts alone (the behaviour before; for comparisons).
        progress: optional ``callable(str)`` told what is being done.

    Returns:
        :class:`TrackResult`. Raises :class:`TrackingError` when the seed view has no beads or
        fewer than :data:`MIN_TRACKED_BEADS` beads are found in 3 or more views.
    """
    began = time.perf_counter()
    say = progress or (lambda text: None)
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    n_views, ny, nx = (int(s) for s in stack.shape)
    if tilts.size != n_views:
        raise ValueError(f"{tilts.size} tilt angles for {n_views} views")
    d = float(bead_diameter_px)
    timings = {}
    seed = seed_view(stack, tilts)
    seed_image = _read_view(stack, seed)
    if is_blank(seed_image):
        value = float(seed_image.flat[0]) if seed_image.size else 0.0
        raise TrackingError(
            f"every view is blank (view {seed + 1}: every pixel {value:g}); there are no beads"
        )
    candidates, scores = find_beads(seed_image, d)
    if candidates.shape[0] == 0:
        nearest = (
            "the one nearest 0" if seed == int(np.argmin(np.abs(tilts))) else "the non-blank one nearest 0"
        )
        raise TrackingError(
            f"no bead-like features found in view {seed + 1} (tilt {tilts[seed]:g} deg, {nearest}) "
            f"with a bead diameter of {d:g} px"
        )
    chosen = choose_beads(candidates, scores, (nx, ny), d, int(target_beads))
    if chosen.size < MIN_TRACKED_BEADS:
        raise TrackingError(
            f"only {chosen.size} well-separated bead(s) among the {candidates.shape[0]} found in view "
            f"{seed + 1} (tilt {tilts[seed]:g} deg) with a bead diameter of {d:g} px; tracking needs "
            f"at least {MIN_TRACKED_BEADS}"
        )
    eligible = choose_beads(candidates, scores, (nx, ny), d, candidates.shape[0])
    if eligible.size > chosen.size:  # a choice to make: spread it over both surfaces, if two
        say(f"heights of {eligible.size} beads from the views nearest view {seed + 1}")
        upper = split_surfaces(
            _pilot_heights(
                stack, tilts, seed, d, seed_image, candidates, eligible, rotation_deg, register_views
            ),
            d,
        )
        if upper is not None:
            chosen = choose_on_surfaces(candidates, scores, eligible, upper, int(target_beads))
    timings["choice_s"] = time.perf_counter() - began
    track, _ = _track(
        stack,
        tilts,
        seed,
        d,
        seed_image,
        candidates,
        chosen,
        rotation_deg,
        rounds,
        say,
        began,
        timings,
        register_views,
    )
    return track


def _pilot_heights(
    stack, tilts, seed, d, seed_image, candidates, eligible, rotation_deg, register_views
) -> np.ndarray:
    """(eligible,) height of each ``eligible`` candidate (NaN where unknown), from tracking them all
    through the views within ``PILOT_TILT_DEG`` of the seed view ``seed`` (one round)."""
    lo, hi = seed, seed
    while lo > max(0, seed - 4) and abs(tilts[lo - 1] - tilts[seed]) <= PILOT_TILT_DEG:
        lo -= 1
    while hi < min(tilts.size - 1, seed + 4) and abs(tilts[hi + 1] - tilts[seed]) <= PILOT_TILT_DEG:
        hi += 1
    near = np.arange(lo, hi + 1)  # up to 4 views each side, contiguous (coarse shifts are between neighbours)
    z = np.full(eligible.size, np.nan)
    if near.size < 5:
        return z
    try:
        track, chosen = _track(
            _Views(stack, near),
            tilts[near],
            seed - lo,
            d,
            seed_image,
            candidates,
            eligible,
            rotation_deg,
            1,
            lambda text: None,
            time.perf_counter(),
            {},
            register_views,
        )
    except TrackingError:
        return z
    where = {int(c): k for k, c in enumerate(eligible)}
    for b, c in enumerate(chosen):
        z[where[int(c)]] = track.bead_z_px[b]
    return z


class _Views:
    """The views ``index`` of ``stack``, indexed from 0 (read one at a time, as the stack)."""

    def __init__(self, stack, index):
        self.stack, self.index = stack, np.asarray(index)
        self.shape = (self.index.size, *stack.shape[1:])

    def __getitem__(self, v):
        return self.stack[int(self.index[v])]


def _track(
    stack,
    tilts,
    seed,
    d,
    seed_image,
    candidates,
    chosen,
    rotation_deg,
    rounds,
    say,
    began,
    timings,
    register_views,
):
    """Track ``candidates[chosen]`` of the seed view ``seed`` through ``stack``; returns
    ``(TrackResult, chosen)`` (the chosen kept by :func:`seed_template`, one per bead)."""
    n_views, ny, nx = (int(s) for s in stack.shape)
    blank = np.zeros(n_views, dtype=bool)  # views with one value in every pixel, named if lost
    search = max(d, 5.0)
    size = window_size(d, search)
    n_chosen = chosen.size
    chosen, template = seed_template(seed_image, candidates, chosen, d, size)
    m = chosen.size
    measurer = Measurer(template, d, (nx, ny), size, n_chosen, register_views)  # one batch shape: one compile
    timings["seed_s"] = time.perf_counter() - began

    say(f"coarse shifts between {n_views} neighbouring views")
    t0 = time.perf_counter()
    factor = binning_factor((nx, ny))
    coarse = _coarse_shifts(stack, seed, factor, d)
    timings["coarse_s"] = time.perf_counter() - t0

    xy = np.full((n_views, m, 2), np.nan)
    found = np.zeros((n_views, m), dtype=bool)
    reasons = np.full((n_views, m), NOT_REACHED, dtype=np.int8)
    amplitude = np.full((n_views, m), np.nan)
    xy[seed], found[seed], reasons[seed] = candidates[chosen], True, FOUND
    tracked = np.zeros(n_views, dtype=bool)
    tracked[seed] = True
    fitter = Fitter(tilts, (nx, ny), seed, rotation_deg)
    have_fit = False

    say(f"tracking {m} beads outward from view {seed + 1}")
    t0 = time.perf_counter()
    for k, v in enumerate(_sweep_order(n_views, seed)):
        step = 1 if v < seed else -1
        nb = v + step
        while nb != seed and not tracked[nb]:
            nb += step
        if have_fit:
            while nb != seed and not fitter.fitted[nb]:  # a view the last fit saw as tracked
                nb += step
            predicted = fitter.predict({v: nb})[v]
        else:
            predicted = nearest_found(xy, found)[nb]
        if abs(v - nb) == 1:
            predicted = predicted + (coarse[v] - coarse[nb])
        else:  # views between were lost (blank, noise): their shifts are meaningless, correlate v with nb
            predicted = predicted + _direct_shift(stack, nb, v, factor, d)
        image = _read_view(stack, v)
        blank[v] = is_blank(image)
        pos, why, amp = measurer.measure(image, predicted, np.ones(m, dtype=bool), search, register=True)
        ok = why == FOUND
        xy[v], found[v], reasons[v], amplitude[v] = pos, ok, why, amp
        tracked[v] = ok.sum() >= MIN_VIEW_BEADS
        if tracked.sum() >= 3 and (tracked.sum() < EVERY_VIEW_FITS or k % 2 == 1):
            have_fit = fitter.fit(xy, found, tracked) is not None or have_fit
    timings["sweep_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fine = max(0.6 * d, 3.0)
    per_bead = np.full(m, np.nan)
    done = 0
    for done in range(1, max(1, int(rounds)) + 1):
        say(f"round {done}: fit, outliers, re-measure")
        if fitter.fit(xy, found, found.sum(axis=1) >= MIN_VIEW_BEADS) is None:
            break
        per_bead = _drop_outliers(fitter, found, reasons, xy)
        active = ~np.isin(reasons, (REMOVED,)).any(axis=0)
        tracked = found.sum(axis=1) >= MIN_VIEW_BEADS
        views = np.flatnonzero(tracked)
        neighbour = {int(v): int(views[np.argmin(np.abs(views - v))]) for v in np.flatnonzero(~tracked)}
        predicted = fitter.predict(neighbour)
        for v, nb in neighbour.items():
            predicted[v] += coarse[v] - coarse[nb]
        before = found.copy()
        for v in range(n_views):
            pos, why, amp = measurer.measure(
                _read_view(stack, v),
                predicted[v],
                active,
                fine,
                MIN_SNR_REFINE,
                register=v in neighbour,
            )
            keep = reasons[v] == REMOVED
            reasons[v] = np.where(keep, REMOVED, why)
            found[v] = why == FOUND
            xy[v] = pos
            amplitude[v] = np.where(keep, amplitude[v], amp)
        if np.array_equal(before, found) and done > 1:
            break
    fit_rms = float("nan")
    bead_z = np.full(m, np.nan)
    if fitter.fit(xy, found, found.sum(axis=1) >= MIN_VIEW_BEADS) is not None:
        per_bead = _drop_outliers(fitter, found, reasons, xy)
        bead_z[fitter.usable] = fitter.result.markers[:, 2]
    # A track of two points fits any pair exactly (its height follows the second point), so a
    # wrong match far from the seed cannot be told: such tracks are dropped (REMOVED).
    found_anywhere = np.flatnonzero(found.any(axis=1))  # for the message below
    short = (found.sum(axis=0) > 0) & (found.sum(axis=0) < MIN_BEAD_VIEWS)
    reasons[:, short] = np.where(found[:, short], REMOVED, reasons[:, short])
    found[:, short] = False
    xy[:, short] = np.nan
    per_bead[short], bead_z[short] = np.nan, np.nan
    lost, lost_why = mark_lost_views(xy, found, reasons, blank)
    if fitter.result is not None:
        res = fitter.residuals()[found]
        fit_rms = float(np.sqrt(np.mean(res**2))) if res.size else float("nan")
    timings["rounds_s"] = time.perf_counter() - t0

    seen = found.sum(axis=0)
    if int(np.sum(seen >= 3)) < MIN_TRACKED_BEADS:
        views = found_anywhere + 1
        shown = ", ".join(str(int(v)) for v in views[:20]) + (", ..." if views.size > 20 else "")
        raise TrackingError(
            f"only {int(np.sum(seen >= 3))} of {m} beads were tracked through 3 or more views (at least "
            f"{MIN_TRACKED_BEADS} are needed to align); beads were found in views {shown or 'none'} "
            "(1-based)"
        )
    return TrackResult(
        xy=np.where(found[..., None], xy, np.nan),
        found=found,
        reasons=reasons,
        amplitude=amplitude,
        seed_view=seed,
        bead_diameter_px=d,
        candidates=candidates,
        coarse_shifts=coarse,
        residual_px=per_bead,
        rounds=done,
        seconds=time.perf_counter() - began,
        fit_rms_px=fit_rms,
        tilts_deg=tilts,
        image_size=(float(nx), float(ny)),
        lost_views=lost,
        lost_reasons=lost_why,
        bead_z_px=bead_z,
        timings=timings,
    ), chosen
