"""What a bead tracking returns (:class:`TrackResult`), why points are left out (:data:`REASONS`),
and the one rule for views the tracking lost.

A view is **lost** when fewer than :data:`MIN_VIEW_BEADS` beads were found in it (a blank or
pure-noise view, a view where every bead left the image or drowned): the tracking itself treats
such a view as untracked (it never predicts from it), because one or two points can neither fix a
view's rotation, shifts and magnification nor be checked against each other. Its points are
cleared (reason :data:`VIEW_LOST`) and the view is listed in ``TrackResult.lost_views`` with a
one-line reason. :meth:`TrackResult.observations` leaves the lost views out (and the beads then
seen in fewer than 2 views, :func:`lmalign_jax.observations.usable_views_and_markers`), so
``lmalign_jax.align(track.observations())`` works on any tracking; the command line writes the
cleared points to the ``.fid``, whose empty views the same rule excludes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..observations import Observations, usable_views_and_markers

__all__ = [
    "TrackResult",
    "TrackingError",
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
    "MIN_VIEW_BEADS",
    "mark_lost_views",
]

FOUND, WEAK, OUTSIDE, CROWDED, JUMP, OUTLIER, REMOVED, NOT_REACHED, VIEW_LOST = range(9)
#: What each ``reasons`` code means, for reports.
REASONS = ("found", "weak", "outside", "crowded", "jump", "outlier", "removed", "not reached", "view lost")
#: Fewest beads, each found in at least 3 views, an alignment can use.
MIN_TRACKED_BEADS = 4
#: Fewest beads found in a view for the view to count as tracked (module docstring).
MIN_VIEW_BEADS = 3


class TrackingError(ValueError):
    """Tracking cannot go on: no beads on the seed view, or too few beads tracked."""


def _lost_reason(reasons_row: np.ndarray, n_found: int, blank: bool = False) -> str:
    counts = {REASONS[k]: int(np.sum(reasons_row == k)) for k in range(1, len(REASONS) - 1)}
    why = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return (
        f"{n_found} of {reasons_row.size} beads found (fewer than {MIN_VIEW_BEADS})"
        + (f"; left out: {why}" if why else "")
        + ("; the view is blank (one value in every pixel)" if blank else "")
    )


def mark_lost_views(xy, found, reasons, blank=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Clear the points of every view with fewer than :data:`MIN_VIEW_BEADS` found beads, in place
    (``found`` False, ``xy`` NaN, ``reasons`` :data:`VIEW_LOST` where a bead had been found).
    ``blank``: optional (n_views,) bool, the views whose pixels all have one value (said in their
    reason). Returns ``(lost_views (k,) int, reason (k,) str)``."""
    count = found.sum(axis=1)
    lost = np.flatnonzero(count < MIN_VIEW_BEADS)
    blank = np.zeros(count.size, dtype=bool) if blank is None else np.asarray(blank, dtype=bool)
    why = tuple(_lost_reason(reasons[v], int(count[v]), bool(blank[v])) for v in lost)
    for v in lost:
        reasons[v] = np.where(found[v], VIEW_LOST, reasons[v])
    found[lost] = False
    xy[lost] = np.nan
    return lost, why


@dataclass(frozen=True, eq=False)
class TrackResult:
    """Tracked beads of a tilt series.

    Attributes:
        xy: (n_views, n_beads, 2) positions ``(x, y)``, IMOD image coordinates, pixels; NaN where
            the bead was not found.
        found: (n_views, n_beads) bool.
        reasons: (n_views, n_beads) int8, :data:`FOUND` or why the point was left out
            (:data:`REASONS`).
        amplitude: (n_views, n_beads) correlation peak over the average bead's (NaN where not
            measured).
        seed_view: the 0-based view the beads were found on.
        bead_diameter_px: the bead diameter used, pixels.
        candidates: (m, 2) every bead found on the seed view (the chosen ones among them).
        coarse_shifts: (n_views, 2) where the content of the seed view lies in each view, from the
            whole-view correlations, pixels.
        residual_px: (n_beads,) RMS residual of each bead in the last fit (NaN for removed ones).
        rounds: rounds made.
        seconds: wall-clock time of the tracking.
        fit_rms_px: RMS residual of the last fit (per component, found points only).
        tilts_deg: (n_views,) the nominal tilts tracked with.
        image_size: (nx, ny) pixels.
        lost_views: (k,) 0-based views the tracking lost (module docstring), no points there.
        lost_reasons: (k,) one line per lost view saying why.
        bead_z_px: (n_beads,) each bead's height in the last fit, pixels (NaN where not fitted).
    """

    xy: np.ndarray
    found: np.ndarray
    reasons: np.ndarray
    amplitude: np.ndarray
    seed_view: int
    bead_diameter_px: float
    candidates: np.ndarray
    coarse_shifts: np.ndarray
    residual_px: np.ndarray
    rounds: int
    seconds: float
    fit_rms_px: float
    tilts_deg: np.ndarray
    image_size: tuple[float, float]
    lost_views: np.ndarray
    lost_reasons: tuple[str, ...]
    bead_z_px: np.ndarray
    timings: dict = field(default_factory=dict)

    @property
    def n_views(self) -> int:
        return self.found.shape[0]

    @property
    def n_beads(self) -> int:
        return self.found.shape[1]

    @property
    def n_tracked(self) -> int:
        """Beads with a point in at least one view (the others lost every point: the marker files
        leave them out)."""
        return int(np.count_nonzero(self.found.any(axis=0)))

    @property
    def beads_per_view(self) -> np.ndarray:
        """(n_views,) beads found in each view."""
        return self.found.sum(axis=1)

    @property
    def views_per_bead(self) -> np.ndarray:
        """(n_beads,) views each bead was found in."""
        return self.found.sum(axis=0)

    def fit_selection(self) -> tuple[np.ndarray, np.ndarray]:
        """``(views, beads)``: 0-based indices of the views and beads an alignment uses (lost views
        and beads seen in fewer than 2 views left out)."""
        keep_view = np.ones(self.n_views, dtype=bool)
        keep_view[np.asarray(self.lost_views, dtype=np.int64)] = False
        keep_view, keep_bead = usable_views_and_markers(self.found, keep_view)
        return np.flatnonzero(keep_view), np.flatnonzero(keep_bead)

    def observations(self) -> Observations:
        """The tracks as :class:`lmalign_jax.Observations` of the views and beads of
        :meth:`fit_selection` (in that order), ready for ``lmalign_jax.align``."""
        views, beads = self.fit_selection()
        if views.size < 3 or beads.size < 2:
            raise TrackingError(
                f"only {beads.size} bead(s) in {views.size} view(s) are usable; an alignment needs more"
            )
        pick = np.ix_(views, beads)
        return Observations(
            self.xy[pick], self.found[pick], np.asarray(self.tilts_deg)[views], tuple(self.image_size)
        )
