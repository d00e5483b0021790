"""The ``--model warp`` per-view warp coefficients (pixels of displacement 1000 px from the centre).

A module of its own, with no JAX, so that the model (``models.warp``), the reconstruction
(``workflow.reconstruction``) and the exports (``workflow.exporting``) share one list.
"""

__all__ = ["WARP_PARAMETERS"]

#: ``warp_<row>_<term>``: the displacement along u or v caused by the a^2, a b or b^2 term
#: (a, b = u, v over 1000 px), in this order (the model's parameter columns 5 to 10).
WARP_PARAMETERS = ("warp_u_uu", "warp_u_uv", "warp_u_vv", "warp_v_uu", "warp_v_uv", "warp_v_vv")
