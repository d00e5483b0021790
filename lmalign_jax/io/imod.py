"""IMOD alignment text files: ``.xf`` transforms, ``.resid`` residuals, ``fid.xyz`` 3-D points.

Fortran layouts (as written by IMOD ``tiltalign``/``xfproduct``); readers split on whitespace and
fall back to the fixed columns when numbers run together (as IMOD's own Fortran output may).
The writers keep these layouts byte for byte where every number fits its field with a blank to
spare, and widen a field that would overflow, so that a blank always separates the numbers (see
:mod:`.fixed_width`: IMOD reads these files free-format, where a wider field is read correctly
and numbers run together are not):

- ``.xf``: per view ``A11 A12 A21 A22 DX DY`` as ``4f12.7,2f12.3``; the transform maps raw to
  aligned image about the image centre c: ``x' = A (x - c) + d + c``.
- ``.resid``: line 1 ``N residuals``, then N lines ``X Y view dx dy`` as ``2f10.2,i5,2f8.2``:
  measured position (pixels), 0-based view, residual = projected - measured (pixels). Points
  come in one block per fiducial with increasing views; a new fiducial starts where the view
  does not increase.
- ``fid.xyz``: per fiducial ``#  X  Y  Z  obj  cont`` as ``i4,3f10.2,i7,i5``, the first line
  followed by `` Pix:`` (f12.5, IMOD's model pixel spacing) and `` Dim:`` nx ny (2i6). X, Y in
  pixels of the image frame, Z relative to the section centre; obj/cont are IMOD's 1-based
  object and contour numbers; # numbers the points from 1.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ._text import parse_float, parse_int, read_lines, show, split_fields
from .atomic import atomic_write
from .errors import InputError
from .fixed_width import record_format, write_records
from .markerset import MAX_VIEWS, MarkerSet, build_marker_set

__all__ = [
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

_XF_WIDTHS = (12, 12, 12, 12, 12, 12)
_RESID_WIDTHS = (10, 10, 5, 8, 8)
_FID_WIDTHS = (4, 10, 10, 10, 7, 5)
_XF_RECORD = record_format("4f12.7,2f12.3")
_RESID_RECORD = record_format("2f10.2,i5,2f8.2")
_FID_RECORD = record_format("i4,3f10.2,i7,i5")
# The first fid.xyz line goes on with ``a,f12.5,a,2i6``: ' Pix:', pixel size, ' Dim:', nx, ny.
_FID_FIRST_TAIL = " Pix: %11.5f Dim: %5d %5d"


def _data_lines(path, lines: list[str], start: int = 1) -> list[tuple[int, str]]:
    """(line number, text) of the lines up to the last non-blank one, numbered from ``start``;
    inner blank lines are errors."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    out = []
    for k, raw in enumerate(lines, start=start):
        if not raw.strip():
            raise InputError(path, k, "blank line inside the data")
        out.append((k, raw))
    return out


def _plain_table(body: list[tuple[int, str]], n_columns: int, int_column: int) -> list[np.ndarray] | None:
    """The columns of ``body`` when every line holds ``n_columns`` plain ASCII numbers separated by
    blanks, finite, with decimal integers in ``int_column``: float64 arrays (n,), the integer
    column exact. None otherwise, and the line-by-line parser then names the line and problem.
    (The fast path for large files: numpy parses the whole table at once.)"""
    text = "\n".join(raw for _, raw in body)
    if not text.isascii() or "_" in text:
        return None
    tokens = text.split()
    if len(tokens) != n_columns * len(body) or any(len(raw.split()) != n_columns for _, raw in body):
        return None
    cells = np.array(tokens, dtype=object).reshape(len(body), n_columns)
    ints = cells[:, int_column].tolist()
    if not "".join(t.lstrip("+-") for t in ints).isdigit() and ints:
        return None
    try:
        values = cells.astype(np.float64)
        exact = np.array([int(t) for t in ints], dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    if not np.all(np.isfinite(values)):
        return None
    columns = [values[:, j].copy() for j in range(n_columns)]
    columns[int_column] = exact
    return columns


# ---------------------------------------------------------------- .xf


def read_xf(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an IMOD ``.xf`` (or ``.tltxf``/``.prexf``...) file.

    Returns ``(A, shifts)``: float64 (n, 2, 2) matrices ``[[A11, A12], [A21, A22]]`` and
    float64 (n, 2) shifts ``(DX, DY)`` in pixels, one per view (line k = view k).
    """
    rows = []
    for k, raw in _data_lines(path, read_lines(path)):
        f = split_fields(raw, _XF_WIDTHS)
        if len(f) != 6:
            raise InputError(path, k, f"expected 6 values (A11 A12 A21 A22 DX DY), got {len(raw.split())}")
        names = ("A11", "A12", "A21", "A22", "DX", "DY")
        rows.append([parse_float(t, path, k, n) for t, n in zip(f, names, strict=True)])
    if not rows:
        raise InputError(path, None, "no transforms")
    a = np.array(rows, dtype=np.float64)
    return a[:, :4].reshape(-1, 2, 2), a[:, 4:].copy()


def write_xf(path: str | os.PathLike, A, shifts) -> None:
    """Write ``A`` (n, 2, 2) and ``shifts`` (n, 2) pixels as IMOD ``.xf`` (``4f12.7,2f12.3``).

    A number without a blank to spare in its field (an entry of A from 1000 or from -100, a shift
    from 10^7 px or from -10^6 px) widens that field to the number plus one blank instead of
    running into its neighbour: IMOD reads ``.xf`` files list-directed (``xfread``), which needs
    the blank and not the columns.
    """
    A = np.asarray(A, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=np.float64)
    if A.ndim != 3 or A.shape[1:] != (2, 2) or shifts.shape != (A.shape[0], 2) or A.shape[0] == 0:
        raise ValueError(f"need A (n, 2, 2) and shifts (n, 2) with n > 0, got {A.shape} and {shifts.shape}")
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(shifts))):
        raise ValueError("A and shifts must be finite")
    a = A.reshape(-1, 4)
    with atomic_write(path) as f:
        write_records(f, _XF_RECORD, [a[:, 0], a[:, 1], a[:, 2], a[:, 3], shifts[:, 0], shifts[:, 1]])


# ---------------------------------------------------------------- .resid


@dataclasses.dataclass(frozen=True, eq=False)
class ResidualTable:
    """Contents of an IMOD ``.resid`` file (n projection points).

    Attributes
    ----------
    xy : float64 (n, 2)       measured position, pixels (IMOD image coordinates).
    view : int64 (n,)         0-based view index.
    marker : int64 (n,)       0-based fiducial index (block number in the file; block k is the
                              k-th point of the matching ``fid.xyz``).
    residual : float64 (n, 2) projected - measured, pixels.
    """

    xy: np.ndarray
    view: np.ndarray
    marker: np.ndarray
    residual: np.ndarray

    @property
    def n_markers(self) -> int:
        return int(self.marker.max()) + 1 if self.marker.size else 0


def read_resid(path: str | os.PathLike) -> ResidualTable:
    """Read an IMOD ``.resid`` file (see module docstring). The count on line 1 must match."""
    lines = read_lines(path)
    if not lines or not lines[0].strip():
        raise InputError(path, 1, "expected 'N residuals' on line 1")
    head = lines[0].split()
    if len(head) != 2 or head[1].lower() != "residuals":
        raise InputError(path, 1, f"expected 'N residuals' on line 1, got {show(lines[0].strip())}")
    n = parse_int(head[0], path, 1, "residual count")
    body = _data_lines(path, lines[1:], start=2)
    if len(body) != n:
        raise InputError(path, None, f"line 1 announces {n} residuals but {len(body)} follow")
    table = _plain_table(body, 5, int_column=2)
    if table is not None and table[2].min(initial=0) >= 0 and table[2].max(initial=0) < MAX_VIEWS:
        view = table[2].astype(np.int64)
        marker = np.cumsum(np.r_[True, np.diff(view) <= 0]) - 1 if n else np.zeros(0, np.int64)
        return ResidualTable(
            xy=np.column_stack(table[:2]),
            view=view,
            marker=marker.astype(np.int64),
            residual=np.column_stack(table[3:]),
        )
    xy, view, marker, res = [], [], [], []
    current, last_view = -1, None
    for k, raw in body:
        f = split_fields(raw, _RESID_WIDTHS)
        if len(f) != 5:
            raise InputError(path, k, f"expected 5 values (X Y view dx dy), got {len(raw.split())}")
        v = parse_int(f[2], path, k, "view")
        if v < 0:
            raise InputError(path, k, f"negative view index {v}")
        if v >= MAX_VIEWS:
            raise InputError(path, k, f"view index {v} exceeds the limit of {MAX_VIEWS} views")
        if last_view is None or v <= last_view:
            current += 1
        last_view = v
        xy.append((parse_float(f[0], path, k, "X"), parse_float(f[1], path, k, "Y")))
        res.append((parse_float(f[3], path, k, "dx"), parse_float(f[4], path, k, "dy")))
        view.append(v)
        marker.append(current)
    return ResidualTable(
        xy=np.array(xy, dtype=np.float64).reshape(-1, 2),
        view=np.array(view, dtype=np.int64),
        marker=np.array(marker, dtype=np.int64),
        residual=np.array(res, dtype=np.float64).reshape(-1, 2),
    )


def write_resid(path: str | os.PathLike, xy, view, residual) -> None:
    """Write an IMOD ``.resid`` file: ``xy`` (n, 2) measured px, ``view`` (n,) 0-based,
    ``residual`` (n, 2) px (projected - measured). Points must be grouped by fiducial with
    increasing views, as the reader infers fiducials from that order.

    Layout ``i6,a`` then ``2f10.2,i5,2f8.2`` as tiltalign writes it. A number without a blank to
    spare in its field (a residual from 10^4 px or from -1000 px, Y from 10^6 px or from -10^5 px,
    a view from 10^4; X starts the line and needs no blank) widens that field to the number plus
    one blank instead of running into its neighbour: free-format readers need the blank, not
    the columns (and this module's reader splits on whitespace first).
    """
    xy = np.asarray(xy, dtype=np.float64)
    residual = np.asarray(residual, dtype=np.float64)
    view = np.asarray(view)
    n = xy.shape[0] if xy.ndim == 2 else -1
    if xy.shape != (n, 2) or residual.shape != (n, 2) or view.shape != (n,):
        raise ValueError(
            f"need xy (n, 2), view (n,), residual (n, 2); got {xy.shape}, {view.shape}, {residual.shape}"
        )
    if not (np.all(np.isfinite(xy)) and np.all(np.isfinite(residual))):
        raise ValueError("xy and residual must be finite")
    if n and (not np.issubdtype(view.dtype, np.integer) or view.min() < 0):
        raise ValueError("view must hold non-negative integers")
    with atomic_write(path) as f:
        f.write(f"{n:6d} residuals\n")
        write_records(
            f, _RESID_RECORD, [xy[:, 0], xy[:, 1], view.astype(np.int64), residual[:, 0], residual[:, 1]]
        )


def resid_to_markers(
    table: ResidualTable,
    image_size: tuple[int, int] | None,
    n_views: int | None = None,
    pixel_size: float | None = None,
    path: str | os.PathLike = "<resid table>",
) -> MarkerSet:
    """The measured positions of a :class:`ResidualTable` as a :class:`MarkerSet`.

    Marker ids are 1, 2, ... in block order, matching the ``#`` column of IMOD's ``fid.xyz``.
    ``n_views`` defaults to the highest view + 1; ``path``: the file the table came from (named in
    messages).
    """
    points = (
        (int(m) + 1, int(v), float(x), float(y), None)
        for m, v, (x, y) in zip(table.marker, table.view, table.xy, strict=True)
    )
    return build_marker_set(
        path,
        points,
        source="IMOD .resid",
        n_views=n_views,
        image_size=image_size,
        pixel_size=pixel_size,
    )


# ---------------------------------------------------------------- fid.xyz


@dataclasses.dataclass(frozen=True, eq=False)
class FidXYZ:
    """Contents of an IMOD ``fid.xyz`` file (m fiducials).

    Attributes
    ----------
    xyz : float64 (m, 3)     X, Y in image pixels (centre at nx/2, ny/2), Z relative to the
                             section centre, pixels.
    point : int64 (m,)       the ``#`` column (1-based point number).
    object : int64 (m,)      IMOD object number (1-based).
    contour : int64 (m,)     IMOD contour number (1-based); the marker id of a fiducial model.
    pixel_size : float or None  the ``Pix:`` value as written (IMOD's model pixel spacing, in
                             IMOD's units; 1.0 means not set).
    image_size : (nx, ny) or None  the ``Dim:`` values.
    """

    xyz: np.ndarray
    point: np.ndarray
    object: np.ndarray
    contour: np.ndarray
    pixel_size: float | None
    image_size: tuple[int, int] | None


def read_fid_xyz(path: str | os.PathLike) -> FidXYZ:
    """Read an IMOD ``fid.xyz`` file (see module docstring)."""
    body = _data_lines(path, read_lines(path))
    if not body:
        raise InputError(path, None, "no fiducial points")
    pix, dim = None, None
    xyz, point, obj, cont = [], [], [], []
    for k, raw in body:
        text = raw
        if k == 1 and "Pix:" in raw:
            text, _, tail = raw.partition("Pix:")
            pix_tok, dim_sep, dim_tok = tail.partition("Dim:")
            pix = parse_float(pix_tok, path, k, "Pix:")
            if dim_sep:
                d = dim_tok.split()
                if len(d) != 2:
                    raise InputError(path, k, f"expected 'Dim: nx ny', got {show(dim_tok.strip())}")
                dim = (parse_int(d[0], path, k, "Dim nx"), parse_int(d[1], path, k, "Dim ny"))
                if min(dim) <= 0:
                    raise InputError(path, k, f"image size must be positive, got {dim}")
        f = split_fields(text.rstrip(), _FID_WIDTHS)
        if len(f) != 6:
            raise InputError(path, k, f"expected 6 values (# X Y Z obj cont), got {len(text.split())}")
        point.append(parse_int(f[0], path, k, "point number"))
        xyz.append([parse_float(t, path, k, n) for t, n in zip(f[1:4], "XYZ", strict=True)])
        obj.append(parse_int(f[4], path, k, "object"))
        cont.append(parse_int(f[5], path, k, "contour"))
    return FidXYZ(
        xyz=np.array(xyz, dtype=np.float64),
        point=np.array(point, dtype=np.int64),
        object=np.array(obj, dtype=np.int64),
        contour=np.array(cont, dtype=np.int64),
        pixel_size=pix,
        image_size=dim,
    )


def write_fid_xyz(
    path: str | os.PathLike, xyz, ids, pixel_size: float | None, image_size: tuple[int, int], objects=None
) -> None:
    """Write an IMOD ``fid.xyz`` file.

    ``xyz`` (m, 3) pixels; ``ids`` (m,) contour numbers (the ``cont`` column); ``objects`` (m,)
    object numbers (default 1); ``pixel_size`` goes after ``Pix:`` as given (None writes 1.0,
    IMOD's "not set"); ``image_size`` (nx, ny) after ``Dim:``. Points are numbered 1..m.

    Layout ``i4,3f10.2,i7,i5`` as tiltalign writes it; the point number starts the line and
    needs no blank (1000..9999 fill ``i4`` exactly, as in IMOD's own files), any other number too
    wide for its field widens that field to the number plus one blank: solvematch reads these
    lines list-directed and Etomo splits the first one on whitespace, so blanks matter, columns
    do not.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    ids = np.asarray(ids)
    m = xyz.shape[0] if xyz.ndim == 2 else -1
    objects = np.ones(max(m, 0), dtype=np.int64) if objects is None else np.asarray(objects)
    if xyz.shape != (m, 3) or m == 0 or ids.shape != (m,) or objects.shape != (m,):
        raise ValueError(
            "need xyz (m, 3) with m > 0, ids (m,), objects (m,); "
            f"got {xyz.shape}, {ids.shape}, {objects.shape}"
        )
    if not np.all(np.isfinite(xyz)):
        raise ValueError("xyz must be finite")
    if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(objects.dtype, np.integer)):
        raise ValueError("ids and objects must hold integers")
    nx, ny = (int(n) for n in image_size)
    pix = 1.0 if pixel_size is None else float(pixel_size)
    if not np.isfinite(pix):
        raise ValueError("pixel_size must be finite")
    columns = [
        np.arange(1, m + 1),
        xyz[:, 0],
        xyz[:, 1],
        xyz[:, 2],
        objects.astype(np.int64),
        ids.astype(np.int64),
    ]
    with atomic_write(path) as f:
        first = _FID_RECORD + _FID_FIRST_TAIL
        f.write((first + "\n") % (*(c[0].item() for c in columns), pix, nx, ny))
        write_records(f, _FID_RECORD, [c[1:] for c in columns])
