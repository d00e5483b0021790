"""File input/output for tilt-series alignment (numpy only; no JAX).

Every parser raises :class:`InputError` (a ``ValueError``) for a missing, unreadable or
malformed file; every writer writes atomically (:func:`atomic_write`). Views are 0-based;
coordinates are pixels in IMOD image coordinates (origin at the lower-left corner, y up);
angles are degrees.
"""

from ._text import read_lines
from .atomic import atomic_write
from .errors import InputError
from .imod import (
    FidXYZ,
    ResidualTable,
    read_fid_xyz,
    read_resid,
    read_xf,
    resid_to_markers,
    write_fid_xyz,
    write_resid,
    write_xf,
)
from .markers import (
    MARKER_EXTENSIONS,
    MarkerSet,
    read_markers,
    read_markers_csv,
    read_model2point,
    read_pytom_markers,
    write_markers_csv,
    write_model2point,
)
from .tilts import MdocTilts, check_tilt_range, read_mdoc, read_tilts, write_tlt

__all__ = [
    "InputError",
    "atomic_write",
    "read_lines",
    "MarkerSet",
    "MARKER_EXTENSIONS",
    "read_markers",
    "read_markers_csv",
    "write_markers_csv",
    "read_model2point",
    "write_model2point",
    "read_imod_model",
    "write_imod_model",
    "read_pytom_markers",
    "read_tilts",
    "check_tilt_range",
    "write_tlt",
    "MdocTilts",
    "read_mdoc",
    "read_xf",
    "write_xf",
    "ResidualTable",
    "read_resid",
    "write_resid",
    "resid_to_markers",
    "FidXYZ",
    "read_fid_xyz",
    "write_fid_xyz",
]


def __getattr__(name):
    """IMOD binary models need ``imodmodel`` (pandas, pydantic: ~0.25 s to import): load on use."""
    if name in ("read_imod_model", "write_imod_model"):
        from . import imod_model

        return getattr(imod_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
