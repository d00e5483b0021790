"""The observation data model: marker positions in every view, with a mask for missing ones."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from jaxtyping import Bool, Float


@dataclass(frozen=True, eq=False)
class Observations:
    """Clicked or tracked fiducial positions of one tilt series.

    Attributes:
        xy: (n_views, n_markers, 2) float64, image coordinates in pixels (origin at the
            lower-left image corner, y up; IMOD's convention). Unobserved entries are ignored
            (NaN is fine there).
        mask: (n_views, n_markers) bool, True where the marker was seen in the view.
        tilts_deg: (n_views,) nominal tilt angle of each view, degrees.
        image_size: (nx, ny) in pixels; the model works about the centre (nx/2, ny/2).
    """

    xy: Float[np.ndarray, "views markers 2"]
    mask: Bool[np.ndarray, "views markers"]
    tilts_deg: Float[np.ndarray, " views"]
    image_size: tuple[float, float]

    def __post_init__(self):
        xy = np.asarray(self.xy, dtype=np.float64)
        mask = np.asarray(self.mask)
        tilts = np.asarray(self.tilts_deg, dtype=np.float64)
        if xy.ndim != 3 or xy.shape[-1] != 2:
            raise ValueError(f"xy must have shape (n_views, n_markers, 2), got {xy.shape}")
        if mask.shape != xy.shape[:2]:
            raise ValueError(f"mask must have shape {xy.shape[:2]} (n_views, n_markers), got {mask.shape}")
        if mask.dtype != bool:
            raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
        if tilts.shape != (xy.shape[0],):
            raise ValueError(
                f"tilts_deg has {tilts.size} angles but the observations have {xy.shape[0]} views; "
                "the tilt file must have one angle per view"
            )
        if not np.all(np.isfinite(tilts)):
            raise ValueError(
                f"tilt angle of view {int(np.flatnonzero(~np.isfinite(tilts))[0])} is not finite"
            )
        if len(self.image_size) != 2 or not all(np.isfinite(s) and s > 0 for s in self.image_size):
            raise ValueError(f"image_size must be two positive numbers (nx, ny), got {self.image_size}")
        bad = mask & ~np.all(np.isfinite(xy), axis=-1)
        if bad.any():
            view, marker = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"marker {marker} in view {view} has a non-finite coordinate {xy[view, marker].tolist()}"
            )
        per_marker = mask.sum(axis=0)
        if (per_marker < 2).any():
            marker = int(np.flatnonzero(per_marker < 2)[0])
            raise ValueError(
                f"marker {marker} is seen in {int(per_marker[marker])} view(s); each marker needs at least 2 "
                "(drop it first, e.g. with lmalign_jax.observations.markers_seen_at_least)"
            )
        per_view = mask.sum(axis=1)
        if (per_view == 0).any():
            view = int(np.flatnonzero(per_view == 0)[0])
            raise ValueError(f"view {view} has no markers; exclude it (e.g. Observations.select_views)")
        xy, mask, tilts = np.where(mask[..., None], xy, np.nan), mask.copy(), tilts.copy()
        for array in (xy, mask, tilts):  # shared by every result made from these observations
            array.setflags(write=False)
        object.__setattr__(self, "xy", xy)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "tilts_deg", tilts)
        object.__setattr__(self, "image_size", (float(self.image_size[0]), float(self.image_size[1])))

    @property
    def n_views(self) -> int:
        return self.xy.shape[0]

    @property
    def n_markers(self) -> int:
        return self.xy.shape[1]

    @cached_property
    def n_observed(self) -> int:
        """Number of observed (view, marker) pairs."""
        return int(self.mask.sum())

    @property
    def center(self) -> np.ndarray:
        """Image centre (nx/2, ny/2), pixels."""
        return np.asarray(self.image_size) / 2.0

    @cached_property
    def centered_xy(self) -> np.ndarray:
        """Observed positions relative to the image centre, (n_views, n_markers, 2), 0 where missing
        (read-only)."""
        centered = np.where(self.mask[..., None], self.xy - self.center, 0.0)
        centered.setflags(write=False)
        return centered

    def select_views(self, keep) -> Observations:
        """Observations restricted to the views ``keep`` (indices or boolean mask)."""
        keep = np.arange(self.n_views)[keep]
        return Observations(self.xy[keep], self.mask[keep], self.tilts_deg[keep], self.image_size)


def markers_seen_at_least(mask, min_views: int = 2) -> np.ndarray:
    """Indices of the markers seen in at least ``min_views`` views; mask (n_views, n_markers)."""
    return np.flatnonzero(np.asarray(mask).sum(axis=0) >= min_views)


def usable_views_and_markers(
    mask, keep_view=None, min_views: int = 2, min_points=1
) -> tuple[np.ndarray, np.ndarray]:
    """Which views and markers of ``mask`` (n_views, n_markers) an alignment can use: markers seen in
    at least ``min_views`` kept views, views with at least ``min_points`` (an int, or one per view)
    such markers, repeated until nothing changes (dropping a marker can empty a view, and the
    reverse). ``keep_view``: (n_views,) bool, views already left out are False. Returns
    ``(keep_view, keep_marker)``, boolean arrays."""
    mask = np.asarray(mask, dtype=bool)
    keep_view = np.ones(mask.shape[0], dtype=bool) if keep_view is None else np.array(keep_view, dtype=bool)
    keep_marker = np.ones(mask.shape[1], dtype=bool)
    while True:
        seen = mask[keep_view].sum(axis=0)
        marker = keep_marker & (seen >= min_views)
        view = keep_view & (mask[:, marker].sum(axis=1) >= np.maximum(min_points, 1))
        if np.array_equal(marker, keep_marker) and np.array_equal(view, keep_view):
            return keep_view, keep_marker
        keep_view, keep_marker = view, marker
