"""lmalign_jax: fiducial-marker alignment of electron-tomography tilt series in JAX.

Public API:
    Observations          marker positions (views x markers x 2) with a mask, tilts, image size
    align                 the staged Levenberg-Marquardt alignment -> AlignmentResult
    AlignmentResult       solved parameters, residual summaries, IMOD transforms
    simulate              seeded synthetic tilt series with known truth
    uncertainty           standard errors and leave-one-out residuals of a result
    misregistration       predicted misregistration (px) of tomogram points, from the covariance
    alignment_function    the alignment as a differentiable JAX function (implicit gradients)
    align_robust          iteratively reweighted (Tukey/Huber/Cauchy) alignment
    align_batch           many series at once: shape buckets, one compilation per bucket
    compare_models        fit several projection models to the same data: BIC, leave-out
    MODELS, get_model     projection-model registry
    LMConfig, Status      solver settings and outcomes
"""

from .analysis import (
    ModelComparison,
    RobustResult,
    Uncertainty,
    align_robust,
    alignment_function,
    compare_models,
    misregistration,
    uncertainty,
)
from .batch import align_batch
from .core import STAGES, AlignmentResult, StageReport, align
from .models import MODELS, ProjectionModel, get_model
from .observations import Observations, markers_seen_at_least
from .simulation import SyntheticSeries, simulate
from .solve import LMConfig, Status

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "STAGES",
    "AlignmentResult",
    "LMConfig",
    "ModelComparison",
    "RobustResult",
    "Uncertainty",
    "Observations",
    "ProjectionModel",
    "StageReport",
    "Status",
    "SyntheticSeries",
    "__version__",
    "align",
    "align_batch",
    "align_robust",
    "alignment_function",
    "compare_models",
    "get_model",
    "markers_seen_at_least",
    "misregistration",
    "simulate",
    "uncertainty",
]
