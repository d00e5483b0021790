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

from .lazy_exports import lazy_getattr

#: public name -> the module that defines it. Loaded on first use (PEP 562), so that importing
#: one part of the package (the file readers, the exports, the command-line launcher) does not
#: import JAX and the solver with it.
_PUBLIC = {
    "ModelComparison": ".analysis",
    "RobustResult": ".analysis",
    "Uncertainty": ".analysis",
    "align_robust": ".analysis",
    "alignment_function": ".analysis",
    "compare_models": ".analysis",
    "misregistration": ".analysis",
    "uncertainty": ".analysis",
    "align_batch": ".batch",
    "STAGES": ".core",
    "AlignmentResult": ".core",
    "StageReport": ".core",
    "align": ".core",
    "MODELS": ".models",
    "ProjectionModel": ".models",
    "get_model": ".models",
    "Observations": ".observations",
    "markers_seen_at_least": ".observations",
    "SyntheticSeries": ".simulation",
    "simulate": ".simulation",
    "LMConfig": ".solve",
    "Status": ".solve",
}

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


__getattr__ = lazy_getattr(__name__, globals(), {name: (module, name) for name, module in _PUBLIC.items()})


def __dir__():
    return sorted(set(globals()) | set(__all__))
