"""The criteria of ``compare_models``: the leave-out folds, BIC and the effective number of
parameters (module :mod:`lmalign_jax.analysis.compare` explains them)."""

from __future__ import annotations

import jax
import numpy as np

from ..core.problem import final_problem
from ..core.result import AlignmentResult, underdetermined
from ..solve import effective_parameters, linearize

#: A BIC lower by more than this is decisive evidence (Kass & Raftery 1995).
DECISIVE_BIC = 10.0

__all__ = ["aicc", "bic", "effective_parameter_count", "leave_out_folds", "underdetermined"]


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def leave_out_folds(
    mask, folds: int = 5, seed: int = 0, min_views_per_marker: int = 3, min_markers_per_view: int = 5
) -> np.ndarray:
    """Assign observations to disjoint hold-out folds (see the module docstring).

    Returns (n_views, n_markers) int: the fold an observation is held out in, -1 if never.
    """
    mask = np.asarray(mask, dtype=bool)
    folds = _positive_int("folds", folds, minimum=2)
    rng = np.random.default_rng(seed)
    fold_of = np.full(mask.shape, -1, dtype=int)
    marker_left = np.tile(mask.sum(axis=0), (folds, 1))  # training views per marker, per fold
    view_left = np.tile(mask.sum(axis=1), (folds, 1))  # training markers per view, per fold
    observed = np.argwhere(mask)
    for i, (v, m) in enumerate(observed[rng.permutation(len(observed))]):
        f = i % folds
        if marker_left[f, m] > min_views_per_marker and view_left[f, v] > min_markers_per_view:
            fold_of[v, m] = f
            marker_left[f, m] -= 1
            view_left[f, v] -= 1
    return fold_of


def bic(rss: float, n_components: int, n_free: float) -> float:
    """BIC for Gaussian residuals: N log(RSS / N) + n_free log(N), N residual components
    (``n_free`` may be an effective, non-integer number of parameters)."""
    if n_components <= 0 or not np.isfinite(rss) or rss <= 0:
        return float("nan")
    return float(n_components * np.log(rss / n_components) + n_free * np.log(n_components))


def aicc(rss: float, n_components: int, n_free: float) -> float:
    """AIC with the small-sample correction (Hurvich & Tsai 1989) for Gaussian residuals:
    ``N log(RSS / N) + 2 k + 2 k (k + 1) / (N - k - 1)``, k = ``n_free``; infinite where
    ``N - k - 1 <= 0``. BIC's penalty assumes N much larger than k; near saturation a fit's RSS
    falls towards 0 and BIC favours it whatever its parameters, where AICc does not."""
    if n_components <= 0 or not np.isfinite(rss) or rss <= 0:
        return float("nan")
    room = n_components - n_free - 1
    if room <= 0:
        return float("inf")
    k = n_free
    return float(n_components * np.log(rss / n_components) + 2 * k + 2 * k * (k + 1) / room)


def effective_parameter_count(result: AlignmentResult) -> float:
    """Effective number of parameters of a solved alignment (``solve.effective_parameters``
    at its final joint problem, float64); ``n_free`` for a model without regularization rows."""
    with jax.enable_x64(True):
        problem = final_problem(result)
        value = _effective(problem.x0, problem.structure, fn=problem.fn, eliminate=problem.eliminate)
        return float(value)


def _effective_impl(x, structure, *, fn, eliminate):
    return effective_parameters(linearize(fn, x, structure), structure, eliminate)


_effective = jax.jit(_effective_impl, static_argnames=("fn", "eliminate"))
