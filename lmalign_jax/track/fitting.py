"""Fixed-shape fits of the tracks so far, and predictions from them (see
:mod:`lmalign_jax.track.tracking`, "Fits with a fixed shape")."""

from __future__ import annotations

import math

import numpy as np

from ..core import align
from ..core.frame import project_all
from ..observations import Observations

__all__ = ["Fitter", "nearest_found", "MISSING_WEIGHT", "UNTRACKED_WEIGHT", "TRACKING_STAGES"]

#: Weights of filled-in points in the fixed-shape fits.
MISSING_WEIGHT, UNTRACKED_WEIGHT = 1e-4, 1e-3
#: Stages of the fits made while tracking (tilts solved: simulated and real tilts are off their
#: nominal values by fractions of a degree, several pixels at high tilt far from the axis).
TRACKING_STAGES = ("initial", "main", "tilt")


def nearest_found(xy: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``xy`` with each missing point replaced by its bead's position in the nearest view where it
    was found (NaN for a bead found nowhere)."""
    out = xy.copy()
    views = np.arange(xy.shape[0])
    for b in range(xy.shape[1]):
        seen = np.flatnonzero(found[:, b])
        if seen.size == 0:
            continue
        nearest = seen[np.argmin(np.abs(views[:, None] - seen[None, :]), axis=1)]
        out[:, b] = xy[nearest, b]
    return out


class Fitter:
    """Fixed-shape fits of the tracks so far (see the module docstring) and predictions from them."""

    def __init__(self, tilts_deg, image_size, seed: int, rotation_deg: float | None):
        self.tilts = np.asarray(tilts_deg, dtype=np.float64)
        self.image_size = (float(image_size[0]), float(image_size[1]))
        self.seed = seed
        self.rotation = rotation_deg
        self.result = None

    def fit(self, xy, found, tracked, previous=None):
        """Fit the found points of the tracked views; returns the AlignmentResult (or None)."""
        n_views = xy.shape[0]
        fill = nearest_found(xy, found)
        if previous is not None:
            fill = np.where(found[..., None] | ~np.isfinite(previous), fill, previous)
        usable = np.all(np.isfinite(fill), axis=(0, 2))
        if usable.sum() < 3 or np.sum(tracked) < 3:
            return None
        fill, ok = fill[:, usable], found[:, usable]
        weights = np.where(ok, 1.0, MISSING_WEIGHT)
        tilts = self.tilts.copy()
        views = np.flatnonzero(tracked)
        for v in np.flatnonzero(~tracked):
            nb = views[np.argmin(np.abs(views - v))]
            fill[v], tilts[v], weights[v] = fill[nb], tilts[nb], UNTRACKED_WEIGHT
        obs = Observations(fill, np.ones(fill.shape[:2], dtype=bool), tilts, self.image_size)
        result = align(
            obs, rotation_deg=self.rotation, stages=TRACKING_STAGES, weights=weights, ref_view=self.seed
        )
        if not np.all(np.isfinite(result.views)) or not np.all(np.isfinite(result.markers)):
            return None
        self.result, self.usable, self.fitted = result, usable, np.array(tracked, dtype=bool)
        if self.rotation is None:  # later fits start from this one's axis
            self.rotation = float(np.median(result.rotation_deg[views]))
        del n_views
        return result

    def predict(self, neighbour: dict[int, int]) -> np.ndarray:
        """(n_views, n_beads, 2) predictions: view v through the parameters of ``neighbour[v]``
        at that view's solved tilt plus the nominal step between the two (v's own parameters
        where v is not in ``neighbour``); NaN for beads the last fit did not include."""
        r = self.result
        views = np.array(r.views, dtype=np.float64, copy=True)
        ti = r.model.index("tilt")
        for v, nb in neighbour.items():
            views[v] = views[nb]
            views[v, ti] = views[nb, ti] + math.radians(self.tilts[v] - self.tilts[nb])
        projected = project_all(r.model, views, r.markers) + r.observations.center
        out = np.full((views.shape[0], self.usable.size, 2), np.nan)
        out[:, self.usable] = projected
        return out

    def residuals(self) -> np.ndarray:
        """(n_views, n_beads, 2) residuals of the last fit (NaN for beads it did not include)."""
        r = self.result
        out = np.full((r.residuals.shape[0], self.usable.size, 2), np.nan)
        out[:, self.usable] = r.residuals
        return out
