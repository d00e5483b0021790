"""The per-view deformation coefficients of ``--model warp`` and ``--model shape`` (pixels of
displacement 1000 px from the centre).

A module of its own, with no JAX, so that the models (``models.warp``, ``models.shape``), the
reconstruction (``workflow.reconstruction``) and the exports (``workflow.exporting``) share one
list.
"""

import numpy as np

__all__ = ["DEFORMATION_PARAMETERS", "SHAPE_PARAMETERS", "WARP_PARAMETERS", "largest_deformation"]

#: ``warp_<row>_<term>``: the displacement along u or v caused by the a^2, a b or b^2 term
#: (a, b = u, v over 1000 px), in this order (the model's parameter columns 5 to 10).
WARP_PARAMETERS = ("warp_u_uu", "warp_u_uv", "warp_u_vv", "warp_v_uu", "warp_v_uv", "warp_v_vv")

#: The shape model's thinning (change of z 1000 px above the centre plane) and doming (z
#: displacement 1000 px from the centre) per view, in this order (its parameter columns 5 to 8).
SHAPE_PARAMETERS = ("shrink", "dome_xx", "dome_xy", "dome_yy")

#: Each deformation model's per-view coefficients, by model name.
DEFORMATION_PARAMETERS = {"warp": WARP_PARAMETERS, "shape": SHAPE_PARAMETERS}


def largest_deformation(model_name: str, parameters: dict) -> float | None:
    """The largest per-view deformation coefficient (px) of a ``model_name`` alignment whose view
    parameters are ``parameters`` (name -> per-view values); None for a rigid model, or a
    deformation model whose coefficients are all zero."""
    names = DEFORMATION_PARAMETERS.get(model_name, ())
    coef = [np.asarray(parameters[n], float) for n in names if n in parameters]
    largest = float(np.nanmax(np.abs(coef))) if coef else 0.0
    return largest if largest > 0 else None
