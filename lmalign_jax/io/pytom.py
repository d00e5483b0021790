"""PyTom fiducial marker text files (``*_markerfile.txt``).

Layout (as written by PyTom): a comment header naming the columns, then one row per marker and
view::

    # MarkerIndex
    # TiltAngle (degrees)
    # PositionX (px)
    # PositionY (px)
    #
      0  -60.000  1113.10   241.50

``MarkerIndex`` is PyTom's 0-based marker number (kept as the marker id). Each marker lists
every view; a point not clicked has coordinates ``-1 -1`` (PyTom treats x or y <= -1 as
missing, and so do we). Views are the distinct tilt angles in increasing order, which is
PyTom's order of projections. Coordinates are passed through unchanged as pixels of the raw
projection (PyTom's sub-pixel origin convention is not verified; a constant offset of up to half
a pixel is absorbed by the per-view shifts of any alignment).
"""

from __future__ import annotations

import os
import re

import numpy as np

from ._text import parse_float, read_lines, show
from .errors import InputError
from .markerset import MarkerSet, build_marker_set

__all__ = ["read_pytom_markers", "is_pytom_header"]

_HEADER = re.compile(r"#\s*MarkerIndex\b", re.IGNORECASE)
#: PyTom's marker for a point that was not clicked: coordinates <= this value.
MISSING = -1.0


def is_pytom_header(lines: list[str]) -> bool:
    """True when the first non-blank line is PyTom's ``# MarkerIndex`` header."""
    for ln in lines:
        if ln.strip():
            return bool(_HEADER.match(ln.strip()))
    return False


def read_pytom_markers(path: str | os.PathLike, n_views: int | None = None) -> tuple[MarkerSet, np.ndarray]:
    """Read a PyTom marker file.

    Returns ``(markers, tilts_deg)``: a :class:`MarkerSet` with views ordered by increasing tilt,
    and the tilt angles (n_views,) in degrees found in the file. ``n_views`` (optional) pads the
    set to that many views; it must be at least the number of tilt angles in the file.
    """
    return parse_pytom_lines(read_lines(path), path, n_views)


def parse_pytom_lines(lines: list[str], path, n_views: int | None = None) -> tuple[MarkerSet, np.ndarray]:
    """Parse the lines of a PyTom marker file (see :func:`read_pytom_markers`)."""
    if not is_pytom_header(lines):
        raise InputError(path, None, "not a PyTom marker file (no '# MarkerIndex' header)")
    rows = []
    angle_of: dict[float, float] = {}
    for k, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        tok = text.split()
        if len(tok) != 4:
            raise InputError(
                path, k, f"expected 4 columns (MarkerIndex TiltAngle PositionX PositionY), got {len(tok)}"
            )
        index = parse_float(tok[0], path, k, "MarkerIndex")
        if index != int(index) or abs(index) >= 2**53:
            raise InputError(path, k, f"MarkerIndex is not an integer: {show(tok[0])}")
        tilt = parse_float(tok[1], path, k, "TiltAngle")
        if not abs(tilt) < 90.0:  # as io.check_tilt_range: edge-on or beyond is a typing or unit error
            raise InputError(path, k, f"TiltAngle {tilt:g} degrees is outside -90..90")
        x = parse_float(tok[2], path, k, "PositionX")
        y = parse_float(tok[3], path, k, "PositionY")
        key = round(tilt, 3)
        angle_of.setdefault(key, tilt)
        rows.append((int(index), key, x, y, k))
    if not rows:
        raise InputError(path, None, "no marker rows")
    keys = sorted(angle_of)
    view_of = {key: v for v, key in enumerate(keys)}
    tilts = np.array([angle_of[key] for key in keys], dtype=np.float64)
    points = ((mid, view_of[key], x, y, k) for mid, key, x, y, k in rows if x > MISSING and y > MISSING)
    markers = build_marker_set(path, points, source=os.fspath(path), n_views=n_views, min_views=len(tilts))
    return markers, tilts
