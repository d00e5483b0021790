"""Marker files: the :class:`MarkerSet` readers/writers for text formats, and ``read_markers``.

Formats (all coordinates in pixels, IMOD image coordinates, origin at the lower-left corner):

- CSV (``.csv``): header line exactly ``marker,view,x,y``, then one row per observation;
  ``view`` is 0-based, ``marker`` any integer id.
- IMOD ``model2point`` text (``.txt``, ``.pt``): whitespace-separated lines ``contour x y z`` or
  ``object contour x y z``; z is the 0-based view (section) index, possibly written as a float
  (``3.00``) and rounded to the nearest integer. Object and contour numbers are IMOD's 1-based
  numbers; contour numbers are kept as marker ids (with several objects, contour numbers of later
  objects are offset by the highest contour number of the objects before). Blank lines and
  ``#`` comments are ignored.
- PyTom marker text (``.txt`` whose first line is ``# MarkerIndex``): see :mod:`.pytom`.
- IMOD binary model (``.fid``, ``.mod``): see :mod:`.imod_model`.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ._text import check_extension, parse_float, parse_int, read_lines, show
from .atomic import atomic_write
from .errors import InputError
from .fixed_width import write_records
from .markerset import MAX_VIEWS, MarkerSet, build_marker_set, contour_numbers, marker_set_from_arrays
from .pytom import is_pytom_header, parse_pytom_lines, read_pytom_markers

__all__ = [
    "MarkerSet",
    "MARKER_EXTENSIONS",
    "read_markers",
    "read_markers_csv",
    "write_markers_csv",
    "read_model2point",
    "write_model2point",
    "read_pytom_markers",
]

MARKER_EXTENSIONS = (".csv", ".fid", ".mod", ".pt", ".txt")
CSV_HEADER = "marker,view,x,y"


def read_markers(path: str | os.PathLike, n_views: int | None = None) -> MarkerSet:
    """Read fiducial markers from any supported file, chosen by extension.

    ``.fid``/``.mod`` IMOD binary model; ``.csv`` marker CSV; ``.pt`` model2point text; ``.txt``
    PyTom marker file when its header says so, else model2point text. ``n_views`` fixes the
    number of views (default: as many as the file implies). For PyTom files the tilt angles
    are dropped; use :func:`read_pytom_markers` to get them.
    """
    ext = check_extension(path, MARKER_EXTENSIONS, "marker")
    if ext in (".fid", ".mod"):
        from .imod_model import read_imod_model  # imodmodel (pandas, pydantic) loads only when needed

        return read_imod_model(path, n_views)
    if ext == ".csv":
        return read_markers_csv(path, n_views)
    lines = read_lines(path)
    if ext == ".txt" and is_pytom_header(lines):
        return parse_pytom_lines(lines, path, n_views)[0]
    return _parse_model2point(lines, path, n_views)


def read_markers_csv(path: str | os.PathLike, n_views: int | None = None) -> MarkerSet:
    """Read a ``marker,view,x,y`` CSV file (view 0-based). Blank lines are ignored."""
    lines = read_lines(path)
    if not lines or lines[0].strip() != CSV_HEADER:
        got = show(lines[0].strip()) if lines else "an empty file"
        raise InputError(path, 1, f"CSV header must be {CSV_HEADER!r}, got {got}")
    fast = _csv_fast(lines[1:], os.fspath(path), n_views)
    if fast is not None:
        return fast

    def rows():
        for k, raw in enumerate(lines[1:], start=2):
            if not raw.strip():
                continue
            f = raw.split(",")
            if len(f) != 4:
                raise InputError(
                    path, k, f"expected 4 comma-separated fields (marker,view,x,y), got {len(f)}"
                )
            yield (
                parse_int(f[0], path, k, "marker"),
                parse_int(f[1], path, k, "view"),
                parse_float(f[2], path, k, "x"),
                parse_float(f[3], path, k, "y"),
                k,
            )

    return build_marker_set(path, rows(), source=os.fspath(path), n_views=n_views)


def _csv_fast(body: list[str], source: str, n_views: int | None) -> MarkerSet | None:
    """The rows of a marker CSV parsed by numpy in one go, or None when any row is not plain
    (integers, finite ASCII decimals): then the line-by-line parser reads the file and names the
    line at fault."""
    rows = [line for line in body if line.strip()]
    if not rows or not all(line.isascii() and "_" not in line for line in rows):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # anything numpy only warns about goes the slow way
            table = np.loadtxt(rows, delimiter=",", dtype=_CSV_DTYPE, ndmin=1, comments=None)
    except (ValueError, OverflowError):
        return None
    return marker_set_from_arrays(
        table["marker"], table["view"], table["x"], table["y"], source=source, n_views=n_views
    )


_CSV_DTYPE = np.dtype([("marker", np.int64), ("view", np.int64), ("x", np.float64), ("y", np.float64)])


def read_model2point(path: str | os.PathLike, n_views: int | None = None) -> MarkerSet:
    """Read IMOD ``model2point`` text (``contour x y z`` or ``object contour x y z`` lines)."""
    return _parse_model2point(read_lines(path), path, n_views)


def _parse_model2point(lines: list[str], path, n_views: int | None) -> MarkerSet:
    parsed = []
    ncol, ncol_line = None, None
    for k, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        tok = text.split()
        if ncol is None:
            if len(tok) not in (4, 5):
                raise InputError(
                    path, k, f"expected 4 columns (contour x y z) or 5 (object contour x y z), got {len(tok)}"
                )
            ncol, ncol_line = len(tok), k
        elif len(tok) != ncol:
            raise InputError(path, k, f"expected {ncol} columns as on line {ncol_line}, got {len(tok)}")
        obj = parse_int(tok[0], path, k, "object") if ncol == 5 else 1
        cont = parse_int(tok[-4], path, k, "contour")
        x = parse_float(tok[-3], path, k, "x")
        y = parse_float(tok[-2], path, k, "y")
        z = parse_float(tok[-1], path, k, "z")
        if abs(z) > MAX_VIEWS:
            raise InputError(path, k, f"z (view index) {z} exceeds the limit of {MAX_VIEWS} views")
        parsed.append((obj, cont, math.floor(z + 0.5), x, y, k))
    # Number contours on across objects: offset = sum of the highest contour of earlier objects.
    top: dict[int, int] = {}
    for obj, cont, *_ in parsed:
        top[obj] = max(top.get(obj, cont), cont)
    offset, acc = {}, 0
    for obj in sorted(top):
        offset[obj] = acc
        acc += top[obj]
    points = ((offset[obj] + cont, view, x, y, k) for obj, cont, view, x, y, k in parsed)
    return build_marker_set(path, points, source=os.fspath(path), n_views=n_views)


def write_markers_csv(path: str | os.PathLike, markers: MarkerSet) -> None:
    """Write ``markers`` as ``marker,view,x,y`` CSV (observed points only, full float precision:
    ``repr``, which reads back to the same float)."""
    m_idx, views, xy = markers.points()
    ids = np.asarray(markers.marker_ids, dtype=np.int64)[m_idx]
    with atomic_write(path) as f:
        f.write(CSV_HEADER + "\n")
        write_records(f, "%d,%d,%r,%r", [ids, views.astype(np.int64), xy[:, 0], xy[:, 1]])


def write_model2point(path: str | os.PathLike, markers: MarkerSet, with_object: bool = False) -> None:
    """Write ``markers`` as IMOD ``model2point`` text: ``contour x y z`` per observed point.

    Contour numbers are the marker ids when they are all >= 1 (else 1..n in marker order, see
    :func:`.imod_model.contour_numbers`), z the 0-based view index; with ``with_object`` each
    line starts with object number 1. Coordinates are written to 1/1000 pixel (``point2model`` reads
    this free-format text back into a model). Fields are ``i6`` (object, contour), ``f12.3`` (x,
    y) and ``f8.2`` (z), each but the first with a blank to spare; a wider number widens its
    field instead of running into its neighbour (free-format readers need the blank).
    """
    m_idx, views, xy = markers.points()
    ids = np.asarray(contour_numbers(markers.marker_ids), dtype=np.int64)[m_idx]
    columns = [ids, xy[:, 0], xy[:, 1], views.astype(np.float64)]
    record = "%6d %11.3f %11.3f %7.2f"
    if with_object:
        columns = [np.ones_like(ids), *columns]
        record = "%6d %5d %11.3f %11.3f %7.2f"
    with atomic_write(path) as f:
        write_records(f, record, columns)
