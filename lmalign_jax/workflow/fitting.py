"""Fitting one series: least squares or the robust reweighted fit, then its standard errors."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..analysis.robust import align_robust
from ..analysis.uncertainty import uncertainty
from ..core.align import align as align_observations
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
