"""lmalign_jax: fiducial-marker alignment of electron-tomography tilt series in JAX.

Public API:
    Observations          marker positions (views x markers x 2) with a mask, tilts, image size
    align                 the staged Levenberg-Marquardt alignment -> AlignmentResult
    AlignmentResult       solved parameters, residual summaries, IMOD transforms
    simulate              seeded synthetic tilt series with known truth
    uncertainty           standard errors and leave-one-out residuals of a result
    alignment_function    the alignment as a differentiable JAX function (implicit gradients)
    align_robust          iteratively reweighted (Tukey/Huber/Cauchy) alignment
    align_batch           many series at once: shape buckets, one compilation per bucket
    compare_models        fit several projection models to the same data: BIC, leave-out
    MODELS, get_model     projection-model registry
    LMConfig, Status      solver settings and outcomes
"""

from .align import STAGES, align
from .batch import align_batch
from .compare import ModelComparison, compare_models
from .differentiable import alignment_function
from .models import MODELS, ProjectionModel, get_model
from .observations import Observations, markers_seen_at_least
from .result import AlignmentResult, StageReport
from .robust import RobustResult, align_robust
from .solve import LMConfig, Status
from .synthetic import SyntheticSeries, simulate
from .uncertainty import Uncertainty, uncertainty

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
    "simulate",
    "uncertainty",
]
