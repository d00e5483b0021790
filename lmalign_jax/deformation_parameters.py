"""The per-view deformation coefficients of ``--model warp`` and ``--model shape`` (pixels of
displacement 1000 px from the centre), and how a deformation record's rigid part meets its .xf.

A module of its own, with no JAX, so that the models (``models.warp``, ``models.shape``), the
reconstruction (``workflow.reconstruction``) and the exports (``workflow.exporting``) share one
list.
"""

import numpy as np

__all__ = [
    "DEFORMATION_PARAMETERS",
    "SHAPE_PARAMETERS",
    "WARP_PARAMETERS",
    "largest_deformation",
    "rigid_part_through_xf",
]

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


def rigid_part_through_xf(
    parameters: dict, fitted: np.ndarray, xf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A deformation record's rigid part seen through its ``.xf`` (``A``, ``D``): per view the
    matrix ``A s R(rotation)`` (V, 2, 2) and offset ``A d + D`` (V, 2), pixels, that map a
    projected position before the view's rotation, scale and shift (the tilted point, its
    deformation included) into the aligned stack.
    ``parameters``: name -> (V,) values (rotation in degrees); views not ``fitted`` (V,) get the
    unit matrix and no offset, as the rigid reconstruction samples them."""
    rot = np.radians(np.where(fitted, parameters["rotation"], 0.0))
    scale = np.where(fitted, parameters["scale"], 1.0)
    sr = scale[:, None, None] * np.stack(
        [np.stack([np.cos(rot), -np.sin(rot)], -1), np.stack([np.sin(rot), np.cos(rot)], -1)], -2
    )
    a, d = np.asarray(xf, float)[:, :, :2], np.asarray(xf, float)[:, :, 2]
    shifts = np.column_stack(
        [np.where(fitted, parameters["dx"], 0.0), np.where(fitted, parameters["dy"], 0.0)]
    )
    matrices = np.where(fitted[:, None, None], a @ sr, np.eye(2))
    offsets = np.where(fitted[:, None], np.einsum("vij,vj->vi", a, shifts) + d, 0.0)
    return matrices, offsets
