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

import importlib

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


def __getattr__(name: str):
    """A public name or a subpackage, imported when first asked for."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
