"""Tilt angles: IMOD ``.tlt``/``.rawtlt`` files and SerialEM ``.mdoc`` autodocs.

A ``.tlt``/``.rawtlt`` file holds one tilt angle in degrees per line; line k is view k
(0-based inside). IMOD reads these free-format.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import typing

import numpy as np

from ._text import check_extension, parse_float, read_lines, show
from .atomic import atomic_write
from .errors import InputError
from .fixed_width import write_records
from .markerset import IMAGE_SIZE_RULE, image_size_ok

__all__ = ["check_tilt_range", "read_angles", "read_tilts", "write_tlt", "MdocTilts", "read_mdoc"]

TILT_EXTENSIONS = (".tlt", ".rawtlt")


def read_tilts(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.tlt``/``.rawtlt`` file: float64 (n_views,) tilt angles in degrees.

    Blank lines at the end are allowed; a blank line before the last angle, a line with more
    than one value, or a value that is not a finite number is an :class:`InputError`. (Any
    finite value is read, as any is written; :func:`check_tilt_range` judges them as tilts.)
    """
    check_extension(path, TILT_EXTENSIONS, "tilt-angle")
    return read_angles(path, "tilt angle")


def check_tilt_range(tilts_deg, path, *, lines: bool = False, what: str = "view") -> None:
    """An :class:`InputError` naming ``path`` (and the line, with ``lines``: line k is view k, or
    else the 0-based ``what``) of the first tilt angle (degrees) outside the open interval
    (-90, 90): no specimen is imaged edge-on or beyond, so such an angle is a typing or unit
    error in the file."""
    bad = np.flatnonzero(~(np.abs(np.asarray(tilts_deg, np.float64)) < 90.0))
    if bad.size:
        k = int(bad[0])
        raise InputError(
            path,
            k + 1 if lines else None,
            ("" if lines else f"{what} {k}: ")
            + f"tilt angle {float(tilts_deg[k]):g} degrees is outside -90..90"
            + (f" ({bad.size} such angles)" if bad.size > 1 else ""),
        )


def read_angles(path: str | os.PathLike, what: str = "tilt angle") -> np.ndarray:
    """Read a file of one angle per line (line k = view k), any extension: float64 (n_views,)
    degrees. IMOD's ``.tlt``, ``.rawtlt`` and ``.xtilt`` files have this layout; ``what`` names
    the angle in messages. Errors as :func:`read_tilts`.
    """
    lines = read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(path, None, f"no {what}s")
    out = []
    for k, raw in enumerate(lines, start=1):
        tok = raw.split()
        if not tok:
            raise InputError(path, k, f"blank line before the last {what} (line k must be view k)")
        if len(tok) != 1:
            raise InputError(path, k, f"expected one {what} per line, got {len(tok)} values")
        out.append(parse_float(tok[0], path, k, what))
    return np.array(out, dtype=np.float64)


def write_tlt(path: str | os.PathLike, tilts_deg) -> None:
    """Write tilt angles (n_views,) in degrees, one per line as ``%9.3f`` (IMOD itself writes
    ``f7.2``). IMOD reads ``.tlt`` files free-format, one value per line, so an angle wider than
    the field simply widens it (Python's ``%`` never truncates)."""
    t = np.asarray(tilts_deg, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"tilts_deg must be a non-empty 1-D array, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("tilts_deg must be finite")
    with atomic_write(path) as f:
        write_records(f, TILT_RECORD, [t])


#: One ``.tlt`` line (without the newline).
TILT_RECORD = "%9.3f"


@dataclasses.dataclass(frozen=True, eq=False)
class MdocTilts:
    """Tilt information from a SerialEM ``.mdoc`` file, in ``ZValue`` (stack section) order.

    Attributes
    ----------
    tilts_deg : float64 (n,)    nominal tilt angle of each section, degrees.
    z_values : int64 (n,)       the sections' ``ZValue`` (0-based index into the image stack).
    tilt_axis_angle_deg : float or None   from the ``Tilt axis angle = ...`` title line.
    pixel_size : float or None  ``PixelSpacing`` in Angstrom.
    image_size : (nx, ny) or None  ``ImageSize`` in pixels.
    """

    tilts_deg: np.ndarray
    z_values: np.ndarray
    tilt_axis_angle_deg: float | None
    pixel_size: float | None
    image_size: tuple[int, int] | None


_AXIS = re.compile(r"tilt\s*axis\s*angle\s*=\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", re.IGNORECASE)


def _drop_all(record: logging.LogRecord) -> bool:
    return False


_SECTION = "[ZValue ="  # how mdocfile recognises a tilt-series section


def read_mdoc(path: str | os.PathLike) -> MdocTilts:
    """Read tilt angles from a SerialEM tilt-series ``.mdoc`` (parsed with ``mdocfile``).

    Sections are sorted by ``ZValue``. Missing ``TiltAngle``, duplicate ``ZValue`` or a file
    without ``[ZValue = ...]`` sections is an :class:`InputError`.
    """
    lines = read_lines(path)
    starts = [k for k, ln in enumerate(lines, start=1) if ln.strip().startswith(_SECTION)]
    if not starts:
        raise InputError(path, None, "no '[ZValue = ...]' sections (not a tilt-series mdoc)")
    quiet = logging.getLogger("mdocfile")
    quiet.addFilter(_drop_all)  # mdocfile logs a warning for every field it does not know
    try:
        from mdocfile.data_models import Mdoc  # pandas and pydantic load only for .mdoc files

        mdoc = Mdoc.from_lines(lines)
    except Exception as e:  # mdocfile / pydantic: any malformed value
        bad = next(
            (
                k
                for k, ln in enumerate(lines, start=1)
                if ln.strip() and not ln.strip().startswith("[") and ln.count("=") != 1
            ),
            None,
        )
        if bad is not None:  # the likely culprit: a line that is not one 'key = value'
            raise InputError(
                path, bad, f"expected 'key = value', got {show(lines[bad - 1].strip())}"
            ) from None
        located = _refused_value(lines)
        if located is not None:  # the line of the value mdocfile's models refuse
            raise InputError(path, *located) from None
        first = str(e).strip().splitlines()
        problem = " ".join(first[:3])[:200] if first else type(e).__name__
        raise InputError(path, None, f"invalid mdoc ({type(e).__name__}: {problem})") from None
    finally:
        quiet.removeFilter(_drop_all)
    sections = mdoc.section_data
    if len(sections) != len(starts):
        raise InputError(path, None, "mixed ZValue/MontSection/FrameSet sections are not supported")
    ends = [*starts[1:], len(lines) + 1]
    tilts, zs = [], []
    first_line: dict[int, int] = {}
    for line, end, sec in zip(starts, ends, sections, strict=True):
        if not 0 <= sec.ZValue < 2**31:
            raise InputError(path, line, f"ZValue = {sec.ZValue} out of range")
        if sec.TiltAngle is None:
            raise InputError(path, line, f"section ZValue = {sec.ZValue} has no TiltAngle")
        if not math.isfinite(sec.TiltAngle):
            at, raw = _key_line(lines, line - 1, end - 1, ("TiltAngle",)) or (line, str(sec.TiltAngle))
            raise InputError(path, at, f"TiltAngle is not finite: {show(raw)}")
        if sec.ZValue in first_line:
            raise InputError(
                path, line, f"duplicate ZValue = {sec.ZValue} (first on line {first_line[sec.ZValue]})"
            )
        first_line[sec.ZValue] = line
        tilts.append(float(sec.TiltAngle))
        zs.append(int(sec.ZValue))
    order = np.argsort(zs, kind="stable")
    axis = None
    for title in mdoc.titles:
        m = _AXIS.search(title)
        if m:
            axis = parse_float(m.group(1), path, None, "tilt axis angle")
            break
    g = mdoc.global_data
    pix = g.PixelSpacing if g.PixelSpacing is not None else sections[0].PixelSpacing
    pix = float(pix) if pix is not None and math.isfinite(pix) and pix > 0 else None
    size = tuple(g.ImageSize) if g.ImageSize is not None else None
    if size is not None and not image_size_ok(size):
        at, raw = _key_line(lines, 0, starts[0] - 1, ("ImageSize",)) or (None, str(g.ImageSize))
        raise InputError(path, at, f"ImageSize must be {IMAGE_SIZE_RULE}: {show(raw)}")
    size = None if size is None else tuple(int(n) for n in size)
    return MdocTilts(
        tilts_deg=np.array(tilts, dtype=np.float64)[order],
        z_values=np.array(zs, dtype=np.int64)[order],
        tilt_axis_angle_deg=axis,
        pixel_size=pix,
        image_size=size,
    )


def _key_line(lines, lo: int, hi: int, keys) -> tuple[int, str] | None:
    """(1-based line, value) of the last ``key = value`` line among ``lines[lo:hi]`` whose key is
    one of ``keys`` (a section's ``[ZValue = 3]`` counts), as mdocfile reads them; None if none."""
    found = None
    for k in range(lo, hi):
        text = lines[k].strip().strip("[]")
        if "=" in text:
            key, value = text.split("=", 1)
            if key.strip() in keys:
                found = (k + 1, value.strip())
    return found


#: What a pydantic error type's first word expects, for messages.
_EXPECTED = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def _refused_value(lines) -> tuple[int | None, str] | None:
    """(line, problem) of the first value mdocfile's models refuse, found by validating the header
    and each section on its own as ``Mdoc.from_lines`` does; None when none is (another error)."""
    from mdocfile.data_models import MdocGlobalData, MdocSectionData
    from mdocfile.utils import find_section_entries

    stripped = [ln.strip() for ln in lines]
    bounds = [0, *find_section_entries(stripped), len(stripped)]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        model = MdocGlobalData if i == 0 else MdocSectionData
        try:
            model.from_lines(stripped[lo:hi])
        except Exception as e:
            errors = e.errors() if hasattr(e, "errors") else None
            if not errors or not errors[0].get("loc"):
                return None
            err = errors[0]
            name = str(err["loc"][0])
            info = model.model_fields.get(name)
            keys = (name, info.validation_alias) if info is not None and info.validation_alias else (name,)
            at = _key_line(stripped, lo, hi, keys)
            raw = at[1] if at else str(err.get("input", ""))
            line = at[0] if at else (lo + 1 if i else None)
            kind = _EXPECTED.get(str(err.get("type", "")).split("_")[0])
            if not raw:
                return line, f"{name} has no value"
            if len(err["loc"]) > 1 or err.get("type") in ("missing", "too_short", "too_long"):
                return line, f"{name} should be {_expected_items(info)}, got {show(raw)}"
            if kind:
                return line, f"{name} is not {kind}: {show(raw)}"
            return line, f"{name}: {err.get('msg', 'invalid value')}: {show(raw)}"
    return None


def _expected_items(info) -> str:
    """What a tuple-valued mdoc field holds, e.g. "2 whole numbers" (ImageSize)."""
    args = typing.get_args(info.annotation) if info is not None else ()
    tuple_type = next((a for a in args if typing.get_origin(a) is tuple), None)
    items = typing.get_args(tuple_type) if tuple_type is not None else ()
    if not items or Ellipsis in items or len(set(items)) != 1:
        return "several values"
    noun = {int: "whole numbers", float: "numbers"}.get(items[0], "values")
    return f"{len(items)} {noun}"
