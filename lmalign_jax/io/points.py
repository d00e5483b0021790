"""Particle coordinates in a tomogram: a CSV of x, y, z or a RELION particles STAR file.

Every reader returns tomogram points in the convention of MODEL.md "Pixels and the tomogram":
pixels of the tilt series (unbinned) from the tomogram centre, x across the tilt axis, y along
it, z along the beam at zero tilt.

- CSV: three numbers per line (``x, y, z``, commas or white space), in those pixels from the
  centre; a header line naming x, y, z and lines starting with ``#`` are skipped.
- RELION 5 particles STAR: ``rlnCenteredCoordinate{X,Y,Z}Angst``, Angstrom from the tomogram
  centre (RELION 5's tomography particle set, as read by ``ParticleSet::getPosition``), divided
  by the tilt series' pixel size: ``rlnTomoTiltSeriesPixelSize`` of the particle's optics group,
  or the one given.
- RELION 4 (and RELION 5's legacy) ``rlnCoordinate{X,Y,Z}``: unbinned tilt-series pixels from
  the tomogram's corner (RELION 4 docs, "Particle set"); the centre ``(NX, NY, NZ) / 2`` of the
  given tomogram size is subtracted. RELION puts its centre at pixel ``int(N / 2)``, half a
  pixel from IMOD's ``(N - 1) / 2``: immaterial for a smooth uncertainty map.
- Several tomograms in one STAR file (``rlnTomoName``): the one named is selected.

Bad input is an :class:`InputError` naming the file and, where it applies, the line.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ._text import read_lines, show
from .errors import InputError

__all__ = ["read_points", "read_points_csv", "read_points_star"]

_CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
_CORNER = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
_SEPARATOR = re.compile(r"[,\s]+")


def read_points_csv(path: str | os.PathLike) -> np.ndarray:
    """Points (n, 3) from a CSV of x, y, z (px from the tomogram centre)."""
    points = []
    for number, line in enumerate(read_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = [f for f in _SEPARATOR.split(text) if f]
        if not points and [f.lower() for f in fields[:3]] == ["x", "y", "z"]:
            continue  # the header
        if len(fields) != 3:
            raise InputError(
                path, number, f"expected 3 numbers x, y, z, got {len(fields)} fields: {show(text)}"
            )
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise InputError(path, number, f"not a number in {show(text)}") from None
        if not all(np.isfinite(values)):
            raise InputError(path, number, f"coordinate is not finite: {show(text)}")
        points.append(values)
    if not points:
        raise InputError(path, None, "no points (expected lines of x, y, z)")
    return np.asarray(points, dtype=np.float64)


def _data_lines(path, block: str) -> list[int]:
    """1-based line numbers of the data rows of ``block``'s loop, in order (for messages)."""
    lines = read_lines(path)
    rows, inside, in_loop = [], False, False
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text.startswith("data_"):
            inside, in_loop = text[5:] == block, False
            continue
        if not inside or not text or text.startswith("#"):
            continue
        if text.startswith("loop_"):
            in_loop = True
        elif in_loop and not text.startswith("_"):
            rows.append(number)
    return rows


def _column(path, table, block: str, name: str) -> np.ndarray:
    """A numeric column; InputError naming the line of the first bad value."""
    raw = table[name].to_numpy()
    values = np.full(raw.shape, np.nan)
    for i, v in enumerate(raw):
        try:
            values[i] = float(v)
        except (TypeError, ValueError):
            pass
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        row = int(table.index[bad[0]])  # the row of the block (the table may be a selection)
        lines = _data_lines(path, block)
        where = lines[row] if row < len(lines) else None
        value = raw[bad[0]]
        shown = repr(value) if isinstance(value, str) else str(value)  # nan, not np.float64(nan)
        raise InputError(path, where, f"{name} of particle {row + 1} is not a finite number: {shown}")
    return values


def read_points_star(
    path: str | os.PathLike,
    *,
    pixel_size: float | None = None,
    tomogram_size: tuple[float, float, float] | None = None,
    tomo_name: str | None = None,
) -> np.ndarray:
    """Points (n, 3), px from the tomogram centre, from a RELION particles STAR file (module
    docstring). ``pixel_size`` (A/px) overrides the file's; ``tomogram_size`` (NX, NY, NZ),
    unbinned px, is needed for corner-based ``rlnCoordinate`` columns; ``tomo_name`` selects
    one tomogram of several."""
    import starfile  # pandas: imported on use

    text_check = read_lines(path)  # missing, unreadable or non-UTF-8 files as InputError
    if not any(line.strip().startswith("data_") for line in text_check):
        raise InputError(path, None, "not a STAR file (no data_ block)")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as e:  # the parser's own errors are of many types
        raise InputError(path, None, f"cannot parse as STAR ({type(e).__name__}: {e})") from None
    tables = {name: t for name, t in blocks.items() if hasattr(t, "columns")}
    wanted = {_CORNER[0], _CENTRED[0]}
    name = next((n for n in ("particles", *tables) if n in tables and wanted & set(tables[n].columns)), None)
    if name is None:
        raise InputError(
            path,
            None,
            "no particle coordinates: expected rlnCenteredCoordinate{X,Y,Z}Angst or rlnCoordinate{X,Y,Z}",
        )
    table = tables[name]
    if "rlnTomoName" in table.columns:
        names = sorted({str(t) for t in table["rlnTomoName"]})
        if tomo_name is not None:
            if tomo_name not in names:
                raise InputError(
                    path, None, f"no particles of tomogram {tomo_name!r}; it has {', '.join(names)}"
                )
            table = table[table["rlnTomoName"].astype(str) == tomo_name]
        elif len(names) > 1:
            raise InputError(
                path, None, f"particles of {len(names)} tomograms ({', '.join(names[:5])}): choose one"
            )
    elif tomo_name is not None:
        raise InputError(path, None, f"no rlnTomoName column to select tomogram {tomo_name!r}")
    if len(table) == 0:
        raise InputError(path, None, "no particles")

    if all(c in table.columns for c in _CENTRED):
        angst = np.stack([_column(path, table, name, c) for c in _CENTRED], axis=1)
        size = pixel_size if pixel_size is not None else _star_pixel_size(path, blocks, table)
        return angst / size
    if all(c in table.columns for c in _CORNER):
        if tomogram_size is None:
            raise InputError(
                path,
                None,
                "rlnCoordinateX/Y/Z count unbinned pixels from the tomogram's corner: give the tomogram "
                "size (NX NY NZ, unbinned px)",
            )
        corner = np.stack([_column(path, table, name, c) for c in _CORNER], axis=1)
        return corner - np.asarray(tomogram_size, dtype=np.float64) / 2
    missing = [c for c in (_CENTRED if _CENTRED[0] in table.columns else _CORNER) if c not in table.columns]
    raise InputError(path, None, f"block {name!r} lacks column(s) {', '.join(missing)}")


def _star_pixel_size(path, blocks, table) -> float:
    """The tilt series' pixel size (A/px) of the particles, from the optics block."""
    optics = blocks.get("optics")
    column = "rlnTomoTiltSeriesPixelSize"
    if optics is None or column not in getattr(optics, "columns", ()):
        raise InputError(path, None, f"no {column} in an optics block: give the pixel size (A/px)")
    sizes = dict(zip(optics.get("rlnOpticsGroup", [1] * len(optics)), optics[column], strict=True))
    groups = set(table["rlnOpticsGroup"]) if "rlnOpticsGroup" in table.columns else set(sizes)
    values = {float(sizes[g]) for g in groups if g in sizes}
    if len(values) != 1 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(
            path, None, f"no single valid {column} for these particles: give the pixel size (A/px)"
        )
    return values.pop()


def read_points(path: str | os.PathLike, **star_options) -> np.ndarray:
    """Points (n, 3), px from the tomogram centre, from a ``.star`` (``read_points_star``, with
    its options) or any other file read as CSV (``read_points_csv``)."""
    if os.fspath(path).lower().endswith(".star"):
        return read_points_star(path, **star_options)
    if any(v is not None for v in star_options.values()):
        given = [k for k, v in star_options.items() if v is not None]
        verb = "applies" if len(given) == 1 else "apply"
        raise InputError(
            path,
            None,
            f"{', '.join(given)} only {verb} to a RELION .star file; a CSV holds px from the centre",
        )
    return read_points_csv(path)
