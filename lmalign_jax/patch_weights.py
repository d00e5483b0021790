"""tilt's patch weights along one axis: where a point falls in IMOD's local-alignment patch grid.

One rule for both places that need it: the alignment side (``core.local_apply``, numpy, the
weights of markers and voxel columns) and the reconstruction (``recon.sheets``, JAX, the weights
of positions traced inside a compiled kernel). A module of its own so that neither imports the
other's layer.
"""

import numpy as np

__all__ = ["axis_weights"]


def axis_weights(coord, start: float, spacing: float, n: int, xp=np):
    """tilt's patch cell (0-based, int) and fraction along one axis for image coordinates
    ``coord`` (pixels, corner origin), as tilt weighs the patches around a point:
    ``nint(coord + 0.5) - start`` clamped to the grid, its cell and the fraction across it (the
    outer patches' weights stay at the edges). ``xp``: numpy or ``jax.numpy``."""
    index = xp.round(coord + 0.5)  # tilt's 1-based pixel index (nint; half to even, as rint)
    t = xp.clip(index - start, 0, (n - 1) * spacing)
    cell = xp.minimum(xp.floor(t / spacing), n - 2)
    return cell.astype(xp.int32), t / spacing - cell
