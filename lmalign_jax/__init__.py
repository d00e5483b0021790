"""lmalign_jax: fiducial-marker alignment of electron-tomography tilt series in JAX.

Public API:
    Observations          marker positions (views x markers x 2) with a mask, tilts, image size
    align                 the staged Levenberg-Marquardt alignment -> AlignmentResult
    AlignmentResult       solved parameters, residual summaries, IMOD transforms
    simulate              seeded synthetic tilt series with known truth
    MODELS, get_model     projection-model registry
    LMConfig, Status      solver settings and outcomes
"""

from .align import STAGES, align
from .models import MODELS, ProjectionModel, get_model
from .observations import Observations, markers_seen_at_least
from .result import AlignmentResult, StageReport
from .solve import LMConfig, Status
from .synthetic import SyntheticSeries, simulate

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "STAGES",
    "AlignmentResult",
    "LMConfig",
    "Observations",
    "ProjectionModel",
    "StageReport",
    "Status",
    "SyntheticSeries",
    "__version__",
    "align",
    "get_model",
    "markers_seen_at_least",
    "simulate",
]
