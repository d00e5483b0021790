"""Fortran fixed-width text records (IMOD's ``.xf``, ``.resid``, ``fid.xyz`` layouts), written fast.

IMOD writes these files with Fortran edit descriptors such as ``i4,3f10.2``; a number too wide for
its field comes out as asterisks, and a number that fills its field exactly runs into the one
before it. IMOD's readers of these files read them list-directed (free format: numbers separated
by blanks; e.g. ``xfread`` for ``.xf``, solvematch's ``getFiducials`` for ``fid.xyz``), and so
does Etomo (``FidXyz`` splits the first line on whitespace). A field made wider is read correctly
by all of them; numbers run together are not.

The rule used here: the first field of a record is written in its Fortran width, right-justified;
every later field is a blank followed by the number right-justified in ``width - 1`` characters.
Where a number fits its field with a blank to spare, the text is byte for byte Fortran's; where it
does not, only that field grows, to the number plus one leading blank (Python's ``%`` formatting
widens and never truncates). The first field needs no blank: it starts the line.

Records are formatted a block of rows at a time with one ``%`` operation on the whole block, so
a million rows take about a second.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import IO

import numpy as np

__all__ = ["record_format", "format_records", "write_records", "CHUNK_ROWS"]

#: Rows formatted per ``%`` operation (bounds the temporary memory to some tens of MB).
CHUNK_ROWS = 65_536

_DESCRIPTOR = re.compile(r"([1-9][0-9]*)?([if])([1-9][0-9]*)(?:\.([0-9]+))?")


def record_format(descriptors: str) -> str:
    """``%``-format of one record from Fortran edit descriptors, widening as the module says.

    ``descriptors``: comma-separated ``[repeat]iW`` or ``[repeat]fW.D`` items, e.g.
    ``"i4,3f10.2,i7,i5"`` gives ``"%4d %9.2f %9.2f %9.2f %6d %4d"``.
    """
    fields = []
    for item in descriptors.replace(" ", "").split(","):
        m = _DESCRIPTOR.fullmatch(item)
        if not m or (m.group(2) == "f") != (m.group(4) is not None) or int(m.group(3)) < 2:
            raise ValueError(f"unsupported Fortran edit descriptor {item!r}")
        repeat, kind, width = int(m.group(1) or 1), m.group(2), int(m.group(3))
        for _ in range(repeat):
            first = not fields
            body = width if first else width - 1
            spec = f"%{body}d" if kind == "i" else f"%{body}.{m.group(4)}f"
            fields.append(spec if first else " " + spec)
    return "".join(fields)


def format_records(record: str, columns: Sequence[np.ndarray]) -> str:
    """The rows of ``columns`` (equal-length 1-D arrays, one per field) as text, one ``record``
    line each (``record`` from :func:`record_format`, without the newline)."""
    n = len(columns[0]) if columns else 0
    if n == 0:
        return ""
    values = itertools.chain.from_iterable(zip(*[np.asarray(c).tolist() for c in columns], strict=True))
    return ((record + "\n") * n) % tuple(values)


def write_records(
    f: IO[str], record: str, columns: Sequence[np.ndarray], chunk_rows: int | None = None
) -> None:
    """Write the rows of ``columns`` to the text file ``f`` (see :func:`format_records`) in blocks
    of ``chunk_rows`` (default :data:`CHUNK_ROWS`)."""
    n = len(columns[0]) if columns else 0
    chunk_rows = CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    for start in range(0, n, chunk_rows):
        f.write(format_records(record, [c[start : start + chunk_rows] for c in columns]))
