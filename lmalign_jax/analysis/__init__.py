"""Analysis of a solved alignment: standard errors, robust refits, model comparison, gradients."""

from .compare import ModelComparison, compare_models
from .differentiable import alignment_function
from .robust import RobustResult, align_robust
from .uncertainty import Uncertainty, uncertainty

__all__ = [
    "ModelComparison",
    "RobustResult",
    "Uncertainty",
    "align_robust",
    "alignment_function",
    "compare_models",
    "uncertainty",
]
