"""Where a series' alignment starts: its per-series options checked and its start values.

``start_values`` is the one place that turns a series and its own options (tilt-axis angle,
reference view, weights, a previous solution) into the parameters the first stage starts
from; ``align()`` and ``align_batch()`` both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jaxtyping import Float

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
        start: an ``AlignmentResult`` or :class:`InitialAlignment` of the same model and shape
            to start from, instead of the closed-form estimates (nominal tilts, markers at
            z = 0, mean shifts).
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


@dataclass(frozen=True, eq=False)
class InitialAlignment:
    """A start taken from another program's alignment (e.g. AreTomo's ``.aln``), as ``start=``.

    model: the projection model. views: (n_views, k) view parameters, model units.
    markers: (n_markers, 3) marker positions, pixels from the specimen centre.
    """

    model: ProjectionModel
    views: np.ndarray
    markers: np.ndarray

    @property
    def rotation_deg(self) -> np.ndarray:
        """Starting tilt-axis angle of each view (n_views,), degrees."""
        return np.degrees(self.views[:, self.model.index("rotation")])


def _projection_matrices(model: ProjectionModel, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each view's projection as ``p - c = M X + b``: M (n_views, 2, 3), b (n_views, 2), pixels.
    Every model we solve is affine in the marker position for fixed view parameters."""
    basis = np.vstack([np.zeros(3), np.eye(3)])  # (4, 3): the origin and the unit vectors
    with jax.enable_x64(True):
        projected = np.asarray(model.project(views.T[:, :, None], basis.T[:, None, :]))  # (2, v, 4)
    offset = projected[:, :, 0].T
    return np.transpose(projected[:, :, 1:] - projected[:, :, :1], (1, 0, 2)), offset


def initial_alignment(
    model: ProjectionModel,
    obs: Observations,
    rotation_deg: Float[np.ndarray, " views"],
    tilts_deg: Float[np.ndarray, " views"],
    shift_px: Float[np.ndarray, "views 2"],
    magnification: Float[np.ndarray, " views"] | None = None,
) -> InitialAlignment:
    """A start from given per-view rotation, tilt, shift (and scale) instead of the estimates.

    rotation_deg, tilts_deg: (n_views,) degrees; shift_px: (n_views, 2) where the specimen
    centre projects relative to the image centre, pixels; magnification: (n_views,) the scale
    ``s`` (models with a "scale" parameter; None: 1). A view whose rotation, tilt or shift is
    NaN (an AreTomo dark frame) starts from the nominal one: the circular mean rotation of the
    others, its nominal tilt, scale 1 and the mean offset of its markers from their starting
    projections. Markers: per marker the least-squares X of ``p - c = M_v X + b_v`` over the
    views with a start where it is seen (minimum norm when that does not determine it).
    Other model parameters start neutral.
    Raises:
        ValueError: arrays of the wrong shape, or no view with a start.
    """
    n = obs.n_views
    rotation = np.asarray(rotation_deg, dtype=np.float64)
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    shift = np.asarray(shift_px, dtype=np.float64)
    scale = np.ones(n) if magnification is None else np.asarray(magnification, dtype=np.float64)
    if rotation.shape != (n,) or tilts.shape != (n,) or scale.shape != (n,) or shift.shape != (n, 2):
        raise ValueError(f"the initial alignment must give {n} views, one per view of the series")
    given = np.isfinite(rotation) & np.isfinite(tilts) & np.isfinite(shift).all(axis=1)
    if not given.any():
        raise ValueError("the initial alignment gives no view a start")
    mean_rotation = np.angle(np.exp(1j * np.radians(rotation[given])).mean())
    views = model.neutral_views(n)
    views[:, model.index("rotation")] = np.where(given, np.radians(rotation), mean_rotation)
    views[:, model.index("tilt")] = np.radians(np.where(given, tilts, obs.tilts_deg))
    if "scale" in model.parameters:
        views[:, model.index("scale")] = np.where(given & np.isfinite(scale), scale, 1.0)
    shift_index = [model.index(p) for p in model.shift_parameters] if model.shift_parameters else None
    if shift_index is not None:
        views[:, shift_index] = np.where(given[:, None], shift, 0.0)
    matrices, offsets = _projection_matrices(model, views)
    xy = obs.centered_xy - offsets[:, None, :]  # (v, m, 2)
    markers = np.zeros((obs.n_markers, 3))
    for j in range(obs.n_markers):
        seen = obs.mask[:, j] & given
        if seen.any():
            a = matrices[seen].reshape(-1, 3)
            markers[j] = np.linalg.lstsq(a, xy[seen, j].reshape(-1), rcond=None)[0]
    if shift_index is not None and not given.all():
        predicted = np.einsum("vij,mj->vmi", matrices, markers)
        offset = np.where(obs.mask[..., None], xy - predicted, 0.0).sum(axis=1)
        count = np.maximum(obs.mask.sum(axis=1), 1)[:, None]
        views[np.ix_(~given, shift_index)] = (offset / count)[~given]
    return InitialAlignment(model, views, markers)
