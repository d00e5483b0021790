"""What an alignment returns: parameters, residuals and their summaries, the IMOD transforms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Float

from ..models import ProjectionModel, get_model
from ..observations import Observations
from .settings import AlignmentSettings


@dataclass(frozen=True)
class StageReport:
    """One L-M stage: name, iterations (damping trials), accepted steps, seconds, status, RMS (px)."""

    name: str
    iterations: int
    accepted: int
    seconds: float
    status: str
    rms_residual_px: float
    n_free: int


def underdetermined(n_parameters: float, n_components: int) -> bool:
    """Whether ``n_parameters`` (free, or effective for a regularized model) leave no residual
    degree of freedom among ``n_components`` measured coordinates: ``n_components - n_parameters
    < 1``. Such a fit can pass through every point; its RMS, noise estimate, BIC and predictions
    say nothing about the model. Not known (False) for a NaN count."""
    if not np.isfinite(n_parameters):
        return False
    return bool(n_components - n_parameters < 1)


@dataclass(frozen=True, eq=False)
class AlignmentResult:
    """A solved alignment.

    Attributes:
        model: the projection model that was fitted (the object itself: it need not be
            registered; a registry name given here is looked up once, on construction).
        observations: the observations that were fitted.
        views: (n_views, k) solved view parameters in model units (radians, ratios, pixels).
        markers: (n_markers, 3) solved marker positions, pixels from the specimen origin,
            which projects onto the image centre in the reference view; mean z is 0 when the
            model has shifts.
        residuals: (n_views, n_markers, 2) projected minus measured position, pixels (IMOD's
            sign); NaN where the marker was not observed.
        stages: per-stage reports, in order.
        status: "converged", or why the final stage stopped.
        n_free: number of free parameters in the final stage.
        rotation_estimated_deg: the tilt-axis angle estimated from the tracks, or None if given.
        xf: (n_views, 2, 3) IMOD transforms raw -> aligned, ``[A | D]`` about the image centre.
        settings: the options the run used (modes, stages, dtype, config, reference view,
            weights, batch bucket): enough to rebuild its final problem, for standard errors
            and differentiation.
        n_effective: for a model with regularization rows (a deformation model), its effective
            number of parameters when known (the trace of the data's hat matrix: the sum of
            ``Uncertainty.leverage``); None: ``n_free`` counts.
    """

    model: ProjectionModel
    observations: Observations
    views: Float[np.ndarray, "views k"]
    markers: Float[np.ndarray, "markers 3"]
    residuals: Float[np.ndarray, "views markers 2"]
    stages: tuple[StageReport, ...]
    status: str
    n_free: int
    rotation_estimated_deg: float | None
    xf: Float[np.ndarray, "views 2 3"]
    settings: AlignmentSettings = field(default_factory=AlignmentSettings)
    n_effective: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", get_model(self.model))

    @property
    def model_name(self) -> str:
        """The fitted model's name, for the record."""
        return self.model.name

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def parameter(self, name: str) -> np.ndarray:
        """One view-parameter family (n_views,), degrees for angles, else model units."""
        m = self.model
        value = self.views[:, m.index(name)]
        return np.degrees(value) if m.kinds[m.index(name)] == "angle" else value

    @property
    def tilts_deg(self) -> np.ndarray:
        """Solved tilt angles (n_views,), degrees."""
        return self.parameter("tilt")

    @property
    def rotation_deg(self) -> np.ndarray:
        """Solved tilt-axis angle of each view (n_views,), degrees."""
        return self.parameter("rotation")

    @property
    def residual_lengths(self) -> np.ndarray:
        """|residual| per observation (n_views, n_markers), NaN where missing."""
        return np.linalg.norm(self.residuals, axis=-1)

    @property
    def rms_residual_px(self) -> float:
        """Per-component RMS residual (paper eq. 4), pixels."""
        r = self.residuals[self.observations.mask]
        return float(np.sqrt(np.mean(r * r)))

    @property
    def mean_residual_px(self) -> float:
        """Mean residual length (IMOD's "Residual error mean"), pixels."""
        return float(np.nanmean(self.residual_lengths))

    @property
    def n_parameters(self) -> float:
        """The parameters the residual degrees of freedom are counted against: ``n_effective``
        when known, else ``n_free``."""
        return float(self.n_free if self.n_effective is None else self.n_effective)

    @property
    def noise_floor_factor(self) -> float:
        """sqrt(1 - n_parameters / (2 N_obs)): expected RMS / sigma at the optimum (0 when the
        parameters are as many as the coordinates)."""
        return float(np.sqrt(max(1.0 - self.n_parameters / (2.0 * self.observations.n_observed), 0.0)))

    @property
    def sigma_px(self) -> float:
        """Noise estimate per coordinate: RMS residual / noise_floor_factor, pixels; NaN when less
        than one residual degree of freedom is left to estimate it from (:func:`underdetermined`)."""
        if underdetermined(self.n_parameters, 2 * self.observations.n_observed):
            return float("nan")
        return self.rms_residual_px / self.noise_floor_factor

    @property
    def view_rms_px(self) -> np.ndarray:
        """Per-view RMS residual (n_views,), pixels."""
        return _rms(self.residuals, self.observations.mask, axis=1)

    @property
    def marker_rms_px(self) -> np.ndarray:
        """Per-marker RMS residual (n_markers,), pixels."""
        return _rms(self.residuals, self.observations.mask, axis=0)

    def worst_points(self, n: int = 10) -> list[dict]:
        """The ``n`` observations with the largest residual length, largest first."""
        lengths = np.where(self.observations.mask, self.residual_lengths, -1.0)
        order = np.argsort(lengths, axis=None)[::-1][: min(n, self.observations.n_observed)]
        out = []
        for flat in order:
            v, m = np.unravel_index(flat, lengths.shape)
            out.append(
                {
                    "view": int(v),
                    "marker": int(m),
                    "x": float(self.observations.xy[v, m, 0]),
                    "y": float(self.observations.xy[v, m, 1]),
                    "dx": float(self.residuals[v, m, 0]),
                    "dy": float(self.residuals[v, m, 1]),
                    "length": float(lengths[v, m]),
                }
            )
        return out

    def aligned_xy(self) -> np.ndarray:
        """Measured points mapped by ``xf`` into the aligned frame, (n_views, n_markers, 2), pixels."""
        c = self.observations.center
        a, d = self.xf[:, :, :2], self.xf[:, :, 2]
        return np.einsum("vij,vmj->vmi", a, self.observations.xy - c) + d[:, None, :] + c


def result_from_solution(
    model: ProjectionModel,
    obs: Observations,
    views: np.ndarray,
    markers: np.ndarray,
    predicted: np.ndarray,
    *,
    stages: tuple[StageReport, ...],
    status: str,
    n_free: int,
    rotation_estimated_deg: float | None,
    settings: AlignmentSettings,
) -> AlignmentResult:
    """The result of a solution already in the reporting frame.

    views (n_views, k), markers (n_markers, 3): float64, model units and pixels;
    predicted: (n_views, n_markers, 2) their centred image positions, pixels. Adds the
    residuals and the IMOD transforms (markers rotated by each view's tilt, then y kept):
    :func:`image_transforms`.
    """
    residuals = np.where(obs.mask[..., None], predicted - obs.centered_xy, np.nan)
    tilt = views[:, model.index("tilt")]
    aligned = markers[None, :, 0] * np.cos(tilt)[:, None] + markers[None, :, 2] * np.sin(tilt)[:, None]
    aligned = np.stack([aligned, np.broadcast_to(markers[:, 1], aligned.shape)], axis=-1)
    return AlignmentResult(
        model=model,
        observations=obs,
        views=views,
        markers=markers,
        residuals=residuals,
        stages=stages,
        status=status,
        n_free=n_free,
        rotation_estimated_deg=rotation_estimated_deg,
        xf=image_transforms(predicted, aligned, markers, tilt),
        settings=settings,
    )


def _rms(residuals, mask, axis):
    sq = np.where(mask[..., None], residuals**2, 0.0).sum(axis=(axis, 2))
    n = 2 * mask.sum(axis=axis)
    return np.sqrt(np.divide(sq, n, out=np.full(sq.shape, np.nan), where=n > 0))


#: Largest deviation (px) from an affine function of the marker position for which a view's
#: projection is taken as affine by :func:`image_transforms`.
AFFINE_TOLERANCE_PX = 1e-3


def image_transforms(
    predicted: np.ndarray, aligned: np.ndarray, markers: np.ndarray, tilts_rad: np.ndarray
) -> np.ndarray:
    """Per-view IMOD transforms ``[A | D]`` (n_views, 2, 3), raw (centred) -> aligned.

    Where a view's projection is an affine function of the marker position, ``p = M X + o``
    (every model but the deformation models: jou, luther, imod), the transform is computed as
    tiltalign computes its ``.xf`` together with its ``.zfac``: from the x and y columns of
    ``M`` alone, ``A M[:, :2] = diag(cos t, 1)``, ``D = -A o``. Then ``A p + D`` is IMOD tilt's
    ``(x cos t + z sin t, y)`` plus ``z A M[:, 2] - z (sin t, 0)``, the height-dependent part
    that tilt's z factors carry (:func:`lmalign_jax.workflow.exporting.z_factors` finds it
    exactly). For jou and imod (whose image side is a 2-D affine map of the tilted projection)
    that part is 0 and the transform equals the least-squares one; for luther (x, y and z scaled
    before the tilt) the least-squares transform spread that part over x and y: on a 41-view
    series with mag_z of sd 0.02 the pair left 0.13 px RMS, the exact pair 0.0002 px, while
    the transform alone (for a program without z factors) goes from 0.553 to 0.569 px.

    ``M`` and ``o`` are fitted to ``predicted`` (n_views, n_markers, 2) over the markers
    (n_markers, 3); a view whose fit misses by more than :data:`AFFINE_TOLERANCE_PX`, or whose
    markers do not span 3-D, gets the least-squares map to ``aligned`` (n_views, n_markers, 2),
    :func:`fit_image_transforms`. ``tilts_rad`` (n_views,): each view's solved tilt.
    """
    xf = fit_image_transforms(predicted, aligned)
    design = np.column_stack([markers, np.ones(len(markers))])  # (m, 4)
    if len(markers) < 4 or np.linalg.matrix_rank(design) < 4:
        return xf
    coef, *_ = np.linalg.lstsq(design, predicted.transpose(1, 0, 2).reshape(len(markers), -1), rcond=None)
    coef = coef.reshape(4, -1, 2).transpose(1, 2, 0)  # (v, 2, 4): [M | o]
    miss = np.abs(np.einsum("vik,mk->vmi", coef, design) - predicted).max(axis=(1, 2))
    m2, offset = coef[:, :, :2], coef[:, :, 3]
    det = np.linalg.det(m2)
    scale = np.abs(m2).max(axis=(1, 2)) ** 2
    affine = (miss < AFFINE_TOLERANCE_PX) & (np.abs(det) > 1e-6 * scale)
    if not affine.any():
        return xf
    target = np.zeros((len(tilts_rad), 2, 2))
    target[:, 0, 0], target[:, 1, 1] = np.cos(tilts_rad), 1.0
    a = target[affine] @ np.linalg.inv(m2[affine])
    xf[affine, :, :2] = a
    xf[affine, :, 2] = -np.einsum("vij,vj->vi", a, offset[affine])
    return xf


def fit_image_transforms(predicted: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """Per-view 2-D affine map from predicted to aligned positions, least squares.

    predicted, aligned: (n_views, n_points, 2) centred coordinates. Returns (n_views, 2, 3)
    ``[A | D]`` with aligned ~ A predicted + D. For models whose image side is a 2-D affine
    map of the tilted projection (jou, imod without beam tilt) the fit is exact. Points are
    centred per view first, so the 2 x 2 normal equations are well conditioned.
    """
    p_mean = predicted.mean(axis=1, keepdims=True)
    q_mean = aligned.mean(axis=1, keepdims=True)
    p, q = predicted - p_mean, aligned - q_mean
    pt = np.swapaxes(p, 1, 2)
    a = np.linalg.solve(pt @ p, pt @ q)  # (v, 2, 2): q ~ p a
    a = np.swapaxes(a, 1, 2)
    d = q_mean[:, 0] - np.einsum("vij,vj->vi", a, p_mean[:, 0])
    return np.concatenate([a, d[:, :, None]], axis=2)
