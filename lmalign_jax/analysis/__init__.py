"""Analysis of a solved alignment: standard errors, robust refits, model comparison, gradients,
and where the beads lie (IMOD's surface analysis)."""

from .compare import ModelComparison, compare_models
from .differentiable import alignment_function
from .robust import RobustResult, align_robust
from .surfaces import SurfaceAnalysis, analyze_surfaces
from .uncertainty import Uncertainty, uncertainty

__all__ = [
    "ModelComparison",
    "RobustResult",
    "SurfaceAnalysis",
    "Uncertainty",
    "align_robust",
    "alignment_function",
    "analyze_surfaces",
    "compare_models",
    "uncertainty",
]
