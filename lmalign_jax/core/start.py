"""Where a series' alignment starts: its per-series options checked and its start values.

``start_values`` is the one place that turns a series and its own options (tilt-axis angle,
reference view, weights, a previous solution) into the parameters the first stage starts
from; ``align()`` and ``align_batch()`` both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models import ProjectionModel
from ..observations import Observations
from .initial import estimate_rotation_deg, starting_markers_and_shifts
from .problem import reference_view


@dataclass(frozen=True, eq=False)
class StartValues:
    """Start of one series' alignment.

    views: (n_views, k) view parameters, model units (radians, ratios, pixels).
    markers: (n_markers, 3) marker positions, pixels.
    ref_view: the gauge reference view.
    rotation_estimated_deg: the tilt-axis angle estimated from the tracks (degrees), or None
        when it was given or taken from a previous solution.
    """

    views: np.ndarray
    markers: np.ndarray
    ref_view: int
    rotation_estimated_deg: float | None


def start_values(
    model: ProjectionModel,
    obs: Observations,
    *,
    rotation_deg: float | None = None,
    ref_view: int | None = None,
    weights: np.ndarray | None = None,
    start=None,
) -> StartValues:
    """Check one series' options and compute where its first stage starts.

    Args:
        rotation_deg: tilt-axis angle (degrees); None estimates it from the tracks, or takes
            the mean of ``start``'s when a start is given.
        ref_view: gauge reference view (None: the view nearest 0 degrees).
        weights: (n_views, n_markers) observation weights or None; only its shape is checked.
        start: an ``AlignmentResult`` of the same model and shape to start from, instead of
            the closed-form estimates (nominal tilts, markers at z = 0, mean shifts).
    Raises:
        ValueError: an option that does not fit the series (one line, naming it).
    """
    ref_view = reference_view(obs.tilts_deg) if ref_view is None else int(ref_view)
    if not 0 <= ref_view < obs.n_views:
        raise ValueError(f"ref_view {ref_view} is outside 0..{obs.n_views - 1}")
    estimated = None
    if rotation_deg is None and start is not None:
        rotation_deg = float(np.mean(start.rotation_deg))
    if rotation_deg is None:
        estimated = rotation_deg = estimate_rotation_deg(obs)
    if not np.isfinite(rotation_deg):
        raise ValueError(f"rotation_deg must be finite, got {rotation_deg}")
    if weights is not None and np.shape(weights) != obs.mask.shape:
        raise ValueError(
            f"weights must have shape {obs.mask.shape} (n_views, n_markers), got {np.shape(weights)}"
        )
    if start is not None:
        if (
            start.model != model
            or start.views.shape[0] != obs.n_views
            or start.markers.shape[0] != obs.n_markers
        ):
            namesake = (
                " (another model of that name)"
                if start.model != model and start.model.name == model.name
                else ""
            )
            raise ValueError(
                f"start is a {start.model.name!r} solution of {start.views.shape[0]} views "
                f"x {start.markers.shape[0]} markers; "
                f"expected {model.name!r}{namesake} with {obs.n_views} x {obs.n_markers}"
            )
        return StartValues(start.views.copy(), start.markers.copy(), ref_view, estimated)
    views = model.neutral_views(obs.n_views)
    views[:, model.index("rotation")] = np.radians(rotation_deg)
    views[:, model.index("tilt")] = np.radians(obs.tilts_deg)
    markers, shifts = starting_markers_and_shifts(obs, views[:, model.index("rotation")], ref_view)
    if model.shift_parameters is not None:
        views[:, [model.index(p) for p in model.shift_parameters]] = shifts
    return StartValues(views, markers, ref_view, estimated)
