"""Analysis of a solved alignment: standard errors, covariance and misregistration, robust refits,
model comparison, gradients, and where the beads lie (IMOD's surface analysis)."""

from .compare import ModelComparison, compare_models
from .covariance import AlignmentCovariance, Degeneracy, alignment_covariance
from .differentiable import alignment_function
from .misregistration import misregistration, misregistration_map
from .robust import RobustResult, align_robust
from .surfaces import SurfaceAnalysis, analyze_surfaces
from .uncertainty import Uncertainty, uncertainty

__all__ = [
    "AlignmentCovariance",
    "Degeneracy",
    "ModelComparison",
    "RobustResult",
    "SurfaceAnalysis",
    "Uncertainty",
    "align_robust",
    "alignment_covariance",
    "alignment_function",
    "analyze_surfaces",
    "compare_models",
    "misregistration",
    "misregistration_map",
    "uncertainty",
]
