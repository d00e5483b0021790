"""Projection models, registered by name. A new variant is one module plus one line below."""

from ._base import PARAMETER_KINDS, FrameMap, ProjectionModel
from .diez import MODEL as DIEZ
from .imod import MODEL as IMOD
from .jou import MODEL as JOU
from .luther import MODEL as LUTHER
from .shape import MODEL as SHAPE
from .warp import MODEL as WARP

MODELS: dict[str, ProjectionModel] = {m.name: m for m in (JOU, LUTHER, DIEZ, IMOD, WARP, SHAPE)}
#: Models with regularization rows tying neighbouring views: deformations beyond a rigid specimen.
DEFORMATION_MODELS = tuple(name for name, m in MODELS.items() if m.regularization is not None)


def get_model(model: str | ProjectionModel) -> ProjectionModel:
    """The model registered under ``model``; a model object is returned unchanged (it need not
    be registered, and the registry is not consulted for its name)."""
    if isinstance(model, ProjectionModel):
        return model
    try:
        return MODELS[model]
    except KeyError:
        raise ValueError(f"unknown projection model {model!r}; choose one of {', '.join(MODELS)}") from None


__all__ = ["DEFORMATION_MODELS", "MODELS", "PARAMETER_KINDS", "FrameMap", "ProjectionModel", "get_model"]
