"""Fitting one series: least squares or the robust reweighted fit, then its standard errors."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..analysis.robust import align_robust
from ..analysis.uncertainty import uncertainty
from ..core.align import align as align_observations
from ..core.settings import is_fixed
from ..deformation_parameters import DEFORMATION_PARAMETERS
from ..models import get_model
from ..solve import LMConfig
from .settings import AlignSettings
from .status import UsageError


@dataclass
class Fit:
    """A solved series: its AlignmentResult, the RobustResult of a robust fit (else None) and
    the Uncertainty of a converged one (None when not asked for or not converged)."""

    result: object
    robust: object = None
    errors: object = None


#: Fewest fitted views a deformation model (warp, shape) with its coefficients free can take:
#: its per-view coefficients are tied only by second differences across neighbouring views
#: (``models.warp.second_differences``), one per coefficient with 3 views, which left them
#: undetermined on rigid data (coefficients of thousands of px, predicted misregistrations of
#: 10^3 to 10^5 px; 4 views gave 0.2 to 1.5 px).
DEFORMATION_MIN_VIEWS = 4
#: Fewest fitted markers a deformation model with its coefficients free can take: both deform
#: by quadratics of a position (warp's in the image, shape's z over the specimen's (x, y)), and
#: a quadratic has 6 terms (1, a, b, a^2, a b, b^2): through 5 or fewer markers one passes through
#: every marker (a conic through any 5 points), so a deformation that moves no marker, less its
#: constant and linear part, which shifts and the rigid terms take, is not fixed by the data (on
#: rigid data 4 markers gave predicted misregistrations of 300 px (warp) and 77,000 px (shape),
#: 5 markers up to 28 and 471 px, 6 markers 12 and 4.5 px).
DEFORMATION_MIN_MARKERS = 6


def check_deformation_determined(obs, settings: AlignSettings, option: str | None = None) -> None:
    """UsageError, before the solve, when a deformation model's (``settings.model``: warp, shape)
    per-view coefficients cannot be determined by ``obs`` (Observations: the fitted views and
    markers): fewer than ``DEFORMATION_MIN_VIEWS`` views or ``DEFORMATION_MIN_MARKERS`` markers,
    unless every coefficient is fixed (``--mode``). Nothing for a rigid model. ``option`` starts
    the message (default ``--model NAME``)."""
    name = get_model(settings.model).name
    coefficients = DEFORMATION_PARAMETERS.get(name, ())
    modes = settings.all_modes()
    if not coefficients or all(is_fixed(modes.get(c, "free")) for c in coefficients):
        return
    option = option or f"--model {name}"
    if obs.n_views < DEFORMATION_MIN_VIEWS:
        raise UsageError(
            f"{option}: needs at least {DEFORMATION_MIN_VIEWS} fitted views, this series has {obs.n_views}: "
            f"its {len(coefficients)} deformation coefficients per view are tied across views only by "
            f"second differences of neighbouring views, and with {obs.n_views} views the data leave them "
            "undetermined (they would take any value, and the deformed projections with them); use a rigid "
            "model (--model jou, imod or luther)"
        )
    if obs.n_markers < DEFORMATION_MIN_MARKERS:
        what = "image position" if name == "warp" else "marker's (x, y)"
        raise UsageError(
            f"{option}: needs at least {DEFORMATION_MIN_MARKERS} markers (seen in 2 or more fitted views), "
            f"this series has {obs.n_markers}: its deformation is a quadratic of the {what}, 6 terms, and "
            f"through {obs.n_markers} markers some quadratic passes through all of them, a deformation the "
            "data cannot determine; use a rigid model (--model jou, imod or luther)"
        )


def fit_series(
    obs,
    settings: AlignSettings,
    *,
    rotation_deg: float | None = None,
    with_errors: bool = True,
    progress=None,
    start=None,
) -> Fit:
    """Align ``obs`` (Observations) as ``settings`` say, starting from ``rotation_deg`` (None:
    estimated). ``progress(stage_report)`` hears each finished stage of a least-squares fit.
    ``start``: an InitialAlignment (or result) to start from instead of the estimates.
    The engine's checks of the problem (modes, sizes) are raised as UsageError."""
    kwargs = dict(
        model=settings.model,
        rotation_deg=rotation_deg,
        modes=settings.modes,
        stages=settings.stages,
        config=LMConfig(max_iterations=settings.max_iterations),
        dtype=settings.dtype,
        start=start,
    )
    robust = None
    try:
        if settings.robust:
            robust = align_robust(obs, loss=settings.robust, group_size=settings.robust_group_size, **kwargs)
            result = robust.result
        else:
            result = align_observations(obs, progress=progress, **kwargs)
    except np.linalg.LinAlgError:
        raise  # a ValueError, but numerical breakdown, not a fault of the input: reported as internal
    except ValueError as e:
        raise UsageError(str(e)) from None
    errors = uncertainty(result, with_covariance=True) if (result.converged and with_errors) else None
    deformation = result.model.regularization is not None
    if errors is not None and deformation and np.all(np.isfinite(errors.leverage)):
        # a deformation model's noise estimate counts its effective parameters, not n_free (not
        # known where the normal matrix is singular: its leverages are NaN, and n_free is counted)
        result = replace(result, n_effective=float(np.sum(errors.leverage)))
    return Fit(result, robust, errors)
