"""IMOD binary model files (``.fid``, ``.mod``) holding fiducial markers, via ``imodmodel``.

A fiducial model has one contour per marker; each point is ``(x, y, z)`` with x, y in pixels
(IMOD image coordinates, origin at the lower-left image corner) and z the 0-based view
(section) index, rounded to the nearest integer here. Marker ids are IMOD's 1-based contour
numbers; in a model with several objects the contours are numbered on across objects
(object 2's first contour follows object 1's last), so a one-object model keeps its contour
numbers. Empty contours are skipped.

``imodmodel``'s parser trusts the file; :func:`read_imod_model` first walks the chunk layout
(declared in ``imodmodel.binary_specification``) and checks every size against the file length,
so truncated or corrupt files raise :class:`InputError` instead of hanging or allocating
without bound.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import warnings

import numpy as np
from imodmodel.binary_specification import ModFileSpecification as _Spec
from imodmodel.models import ImodModel, ModelHeader, Object, ObjectHeader
from imodmodel.parsers import parse_model
from imodmodel.writers import write_model

from ._text import read_bytes
from .atomic import atomic_write
from .errors import InputError
from .markerset import MAX_CONTOUR_ID as _MAX_CONTOUR_ID  # noqa: F401  (kept for callers)
from .markerset import MAX_VIEWS, MarkerSet, build_marker_set, contour_numbers, marker_set_from_arrays

__all__ = ["read_imod_model", "write_imod_model", "contour_numbers"]

# IMOD model header "units" codes -> power of ten of metres (0 = pixels, no physical size).
_UNIT_EXP = {1: 0, 3: 3, -2: -2, -3: -3, -6: -6, -9: -9, -10: -10, -12: -12}
_OPEN_CONTOURS = 1 << 3  # IMOD object flag: contours are open (as in fiducial models)


def _size(spec: dict) -> int:
    return struct.calcsize(">" + "".join(spec.values()))


_ID, _MODEL, _OBJECT = _size(_Spec.ID), _size(_Spec.MODEL_HEADER), _size(_Spec.OBJECT_HEADER)
_CONTOUR, _MESH = _size(_Spec.CONTOUR_HEADER), _size(_Spec.MESH_HEADER)
_FIXED = {b"IMAT": _size(_Spec.IMAT), b"MINX": _size(_Spec.MINX), b"SLAN": _size(_Spec.SLAN)}
_STORAGE = (b"MOST", b"OBST", b"COST", b"MEST")


def _check_layout(data: bytes, path) -> tuple[list[tuple[int, np.ndarray]], list[tuple[int, int]]]:
    """Walk the chunks as ``imodmodel.parsers.parse_model`` will, checking every size.

    Returns the contours, (0-based object, points (n, 3) float64) in file order, and the byte
    spans of the contour chunks (``CONT`` with their ``SIZE`` and ``COST``), which
    :func:`_parse` cuts out before ``imodmodel`` parses the rest: it builds one pydantic object
    per contour (~0.1 ms each: 20 s for the 170,000 contours of ids past 100,000)."""
    n = len(data)
    contours: list[tuple[int, np.ndarray]] = []
    spans: list[tuple[int, int]] = []
    n_objects = 0

    def need(pos: int, count: int, what: str) -> None:
        if count < 0 or pos + count > n:
            raise InputError(
                path,
                None,
                f"truncated or corrupt IMOD model: {what} at byte {pos} runs past the end ({n} bytes)",
            )

    def i32(pos: int) -> int:
        need(pos, 4, "size field")
        return struct.unpack_from(">i", data, pos)[0]

    need(0, _ID + _MODEL, "header")
    if data[:4] != b"IMOD":
        raise InputError(path, None, "not an IMOD model (file does not start with 'IMOD')")
    pos = _ID + _MODEL
    have_obj = have_cont = have_mesh = False
    last_psize = 0
    while True:
        need(pos, 4, "chunk tag")
        tag = data[pos : pos + 4]
        if not (tag.isascii() and tag.isalnum()):
            raise InputError(path, None, f"corrupt IMOD model: bad chunk tag {tag!r} at byte {pos}")
        pos += 4
        if tag == b"IEOF":
            return contours, spans
        if tag == b"OBJT":
            need(pos, _OBJECT, "object header")
            pos += _OBJECT
            have_obj, have_cont, have_mesh = True, False, False
            n_objects += 1
            continue
        if tag in (b"CONT", b"MESH", b"IMAT", b"OBST") and not have_obj:
            raise InputError(path, None, f"corrupt IMOD model: {tag.decode()} chunk before any object")
        if tag == b"CONT":
            last_psize = i32(pos)
            need(pos, _CONTOUR + 12 * last_psize, "contour")
            points = np.frombuffer(data, ">f4", count=3 * last_psize, offset=pos + _CONTOUR)
            with np.errstate(invalid="ignore"):  # a signalling NaN: named by the point-by-point read
                points = points.reshape(-1, 3).astype(np.float64)
            contours.append((n_objects - 1, points))
            spans.append((pos - 4, pos + _CONTOUR + 12 * last_psize))
            pos += _CONTOUR + 12 * last_psize
            have_cont = True
        elif tag == b"MESH":
            vsize, lsize = i32(pos), i32(pos + 4)
            if vsize < 0 or lsize <= 0:
                raise InputError(path, None, f"corrupt IMOD model: bad mesh sizes at byte {pos}")
            need(pos, _MESH + 12 * vsize + 4 * lsize, "mesh")
            pos += _MESH + 12 * vsize + 4 * lsize
            have_mesh = True
        elif tag == b"SIZE":
            if not have_cont:
                raise InputError(path, None, "corrupt IMOD model: SIZE chunk before any contour")
            need(pos, 4 + 4 * last_psize, "point sizes")
            spans.append((pos - 4, pos + 4 + 4 * last_psize))
            pos += 4 + 4 * last_psize
        elif tag in _FIXED:
            need(pos, 4 + _FIXED[tag], tag.decode())
            pos += 4 + _FIXED[tag]
        else:
            size = struct.unpack_from(">I", data, pos)[0] if pos + 4 <= n else -1
            need(pos, 4 + size if size >= 0 else -1, f"{tag.decode(errors='replace')} chunk")
            if tag in _STORAGE:
                if size % 12:
                    raise InputError(
                        path, None, f"corrupt IMOD model: {tag.decode()} size {size} not a multiple of 12"
                    )
                if (tag == b"COST" and not have_cont) or (tag == b"MEST" and not have_mesh):
                    raise InputError(path, None, f"corrupt IMOD model: misplaced {tag.decode()} chunk")
                if tag == b"COST":
                    spans.append((pos - 4, pos + 4 + size))
            pos += 4 + size


def _parse(data: bytes, path) -> tuple[ImodModel, list[tuple[int, np.ndarray]]]:
    """(the model without its contours, parsed and validated by ``imodmodel``; the contours as
    :func:`_check_layout` returns them)."""
    contours, spans = _check_layout(data, path)
    kept, start = [], 0
    for a, b in spans:
        kept.append(data[start:a])
        start = b
    kept.append(data[start:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_model(io.BytesIO(b"".join(kept))), contours
    except Exception as e:  # imodmodel / pydantic validation of field values
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(path, None, f"invalid IMOD model ({type(e).__name__}: {first[:120]})") from None


def _pixel_size_angstrom(header: ModelHeader) -> float | None:
    exp = _UNIT_EXP.get(int(header.units))
    pix = float(header.pixelsize)
    if exp is None or not (math.isfinite(pix) and pix > 0):
        return None
    return float(f"{pix * 10.0 ** (exp + 10):.7g}")  # header is float32: keep 7 digits


def read_imod_model(path: str | os.PathLike, n_views: int | None = None) -> MarkerSet:
    """Read an IMOD binary fiducial model into a :class:`MarkerSet`.

    ``image_size`` comes from the model header (xmax, ymax) when positive; the header's zmax
    (stack size in z) sets the number of views when it is plausible and ``n_views`` is not
    given. ``pixel_size`` (Angstrom) is taken from the header when its units are physical.
    """
    model, contours = _parse(read_bytes(path), path)
    h = model.header
    zmax = int(h.zmax)
    min_views = zmax if n_views is None and 0 < zmax <= MAX_VIEWS else 0
    size = (int(h.xmax), int(h.ymax)) if h.xmax > 0 and h.ymax > 0 else None
    pixel = _pixel_size_angstrom(h)
    per_object = np.bincount([o for o, _ in contours], minlength=len(model.objects))
    offsets = np.concatenate([[0], np.cumsum(per_object)])  # contours are numbered on across objects
    numbers, number = [], {}
    for o, _ in contours:
        number[o] = number.get(o, 0) + 1
        numbers.append(int(offsets[o]) + number[o])
    counts = [len(pts) for _, pts in contours]
    pts = np.concatenate([p for _, p in contours]) if contours else np.zeros((0, 3))
    ids = np.repeat(np.asarray(numbers, dtype=np.int64), counts)
    fast = None
    if ids.size and np.isfinite(pts[:, 2]).all() and np.abs(pts[:, 2]).max() < 2**31:
        view = np.floor(pts[:, 2] + 0.5)
        nv = n_views if n_views is not None else max(min_views, int(view.max()) + 1 if view.size else 0)
        fast = marker_set_from_arrays(
            ids, view.astype(np.int64), pts[:, 0], pts[:, 1], source=os.fspath(path), n_views=nv
        )
    if fast is not None:
        return dataclasses.replace(fast, image_size=size, pixel_size=pixel)
    return build_marker_set(  # point by point: names the first bad point
        path,
        _points(path, model, contours, numbers),
        source=os.fspath(path),
        n_views=n_views,
        min_views=min_views,
        image_size=size,
        pixel_size=pixel,
    )


def _points(path, model, contours, numbers):
    """(marker id, view, x, y, where) of every point, as build_marker_set takes them."""
    within = {}
    for (o, pts), cid in zip(contours, numbers, strict=True):
        within[o] = within.get(o, 0) + 1
        for p, (x, y, z) in enumerate(pts, start=1):
            where = f"object {o + 1}, contour {within[o]}, point {p}"
            if not math.isfinite(z):
                raise InputError(path, None, f"non-finite z ({where})")
            yield cid, math.floor(z + 0.5), float(x), float(y), where


def write_imod_model(path: str | os.PathLike, markers: MarkerSet) -> None:
    """Write ``markers`` as a one-object IMOD fiducial model (open contours, big-endian binary).

    Contour numbers are given by :func:`contour_numbers` (the marker ids when they are valid
    IMOD contour numbers; gaps are filled with empty contours so the ids survive a round trip).
    Point z is the view index. The header records the image size (if known), the number of
    views as zmax and the pixel size in nm (if known).

    The model and object headers are written by ``imodmodel``; the contours (``CONT`` chunks:
    psize, flags, time, surf, then the points as big-endian float32) are laid out here in
    bulk, byte for byte as ``imodmodel`` writes them: one pydantic object per contour took
    ~30 s for the 170,000 contours of ids past 100,000 (tests/test_export_large.py).
    """
    numbers = np.asarray(contour_numbers(markers.marker_ids), dtype=np.int64)
    n_contours = int(numbers.max()) if numbers.size else 0
    nx, ny = markers.image_size or (0, 0)
    header = ModelHeader(xmax=nx, ymax=ny, zmax=markers.n_views)
    if markers.pixel_size is not None:
        header.pixelsize, header.units = markers.pixel_size / 10.0, -9
    obj = Object(header=ObjectHeader(name="fiducials", flags=_OPEN_CONTOURS), contours=[])
    model = ImodModel(header=header, objects=[obj])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        write_model(buffer, model)
    head = bytearray(buffer.getvalue())
    object_at = _ID + _MODEL + 4  # after "OBJT"
    if head[object_at - 4 : object_at] != b"OBJT":
        raise RuntimeError("imodmodel wrote an unexpected layout")  # a changed imodmodel: a bug to fix here
    struct.pack_into(">i", head, object_at + _CONTSIZE_AT, n_contours)
    tail_at = object_at + _OBJECT
    with atomic_write(path, "wb") as f:
        f.write(bytes(head[:tail_at]))
        f.write(_contour_chunks(markers, numbers, n_contours))
        f.write(bytes(head[tail_at:]))


#: Byte offset of ``contsize`` in the object header (after name 64s and extra_data 16I).
_CONTSIZE_AT = struct.calcsize(">64s16I")
_EMPTY_CONTOUR = b"CONT" + struct.pack(">iIii", 0, 0, 0, 0)


def _contour_chunks(markers: MarkerSet, numbers: np.ndarray, n_contours: int) -> bytes:
    """The ``CONT`` chunks of contours 1..n_contours: marker k's points (x, y, view) in contour
    ``numbers[k]``, views increasing; empty contours where no marker has the number."""
    order = np.argsort(numbers, kind="stable")
    mask = np.asarray(markers.mask, dtype=bool)
    counts = mask.sum(axis=0)
    m_idx, v_idx = np.nonzero(mask.T)  # grouped by marker, views increasing
    points = np.column_stack([np.asarray(markers.xy)[v_idx, m_idx], v_idx.astype(np.float64)]).astype(">f4")
    starts = np.concatenate([[0], np.cumsum(counts)])
    pieces, previous = [], 0
    for k in order:
        number = int(numbers[k])
        pieces.append(_EMPTY_CONTOUR * (number - previous - 1))
        pieces.append(b"CONT" + struct.pack(">iIii", int(counts[k]), 0, 0, 0))
        pieces.append(points[starts[k] : starts[k + 1]].tobytes())
        previous = number
    pieces.append(_EMPTY_CONTOUR * (n_contours - previous))
    return b"".join(pieces)
