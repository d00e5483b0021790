"""An ``align.log`` in the layout of IMOD's ``tiltalign``, for programs that parse that log.

What reads it (public sources):

- teamtomo's ``yet_another_imod_wrapper.utils.etomo`` (used by RELION 5's IMOD alignment
  job, ``align_tilt_series/imod/_utils.py``): the first line containing ``RotationAngle =``
  gives the starting tilt-axis angle (its number after the last ``=``), which picks the sign
  of the in-plane rotation it derives from the ``.xf``; the first line containing
  ``AngleOffset =`` gives the tilt-angle offset. It looks for the file as ``align.log`` in the
  series' folder.
- People and etomo read the per-view table (``view rotation tilt deltilt mag dmag skew mean
  resid``), the 3-D point table and ``Residual error mean and sd:``.

Layout (as tiltalign prints it; see the real logs in tests/data/imod-logs): the echoed entries
``*** Entries to program tiltalign ***`` ... ``*** End of entries ***`` (two-space indent,
``Key = value``), the counts, `` At minimum tilt, rotation angle is``, the view table
(``i4,2f10.1,f10.2,2f10.4,2f10.2``), the 3-D point table with centroid zero
(``i4,3f10.2,i7,i5,f12.4``), `` Residual error mean and sd:``, then the surface analysis
block (``surface_lines``, written by the surface analysis), where tiltalign prints it.

The AngleOffset entry is 0: lmalign adds no offset to the input tilts; the solved tilts,
offset included, are in the ``.tlt`` (RELION 5's importer reads the ``.tlt`` as final). Lengths
are pixels. numpy only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from ..io import atomic_write
from ..io.fixed_width import format_records, record_format

__all__ = ["AlignLog", "format_align_log", "write_align_log"]

VIEW_RECORD = record_format("i4,2f10.1,f10.2,2f10.4,2f10.2")
POINT_RECORD = record_format("i4,3f10.2,i7,i5,f12.4")
VIEW_HEADER = " view   rotation    tilt    deltilt     mag      dmag      skew    mean resid"
POINT_TITLE = "                     3-D point coordinates (with centroid zero)"
POINT_HEADER = "   #       X         Y         Z      obj  cont   mean resid"


@dataclasses.dataclass(frozen=True)
class AlignLog:
    """What the log says; arrays over the views in the solution (k of them) or the markers (m).

    Attributes:
        entries: (key, value) pairs echoed as tiltalign's entries (ModelFile, TiltFile,
            Output...File, RotationAngle, AngleOffset ...), in order.
        view_numbers: (k,) 1-based views in the solution.
        rotation_deg, tilt_deg, delta_tilt_deg: (k,) degrees (deltilt: solved - nominal).
        magnification, dmag: (k,) per-view scale and x-stretch increment.
        skew_deg: (k,) degrees.
        view_mean_residual_px: (k,) mean residual length per view, pixels (NaN: none).
        contour_numbers: (m,) IMOD contour of each marker (object 1).
        markers_xyz: (m, 3) solved positions, pixels (centroid is removed when written).
        marker_mean_residual_px: (m,) mean residual length per marker, pixels.
        n_points: projection points fitted; n_unknowns: free parameters.
        residual_mean_px, residual_sd_px: mean and sd of the residual lengths, pixels.
        note: one line saying which program wrote the log.
    """

    entries: tuple[tuple[str, str], ...]
    view_numbers: np.ndarray
    rotation_deg: np.ndarray
    tilt_deg: np.ndarray
    delta_tilt_deg: np.ndarray
    magnification: np.ndarray
    dmag: np.ndarray
    skew_deg: np.ndarray
    view_mean_residual_px: np.ndarray
    contour_numbers: np.ndarray
    markers_xyz: np.ndarray
    marker_mean_residual_px: np.ndarray
    n_points: int
    n_unknowns: int
    residual_mean_px: float
    residual_sd_px: float
    note: str = ""


def _zero_nan(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values), values, 0.0)


def format_align_log(log: AlignLog, surface_lines: Sequence[str] = ()) -> str:
    """The log as text; ``surface_lines`` (the surface analysis, one string per line) are
    inserted after the residual summary, where tiltalign prints its SURFACE ANALYSIS block."""
    for key, value in log.entries:
        if "=" in key or "\n" in key + str(value):
            raise ValueError(f"entry {key!r} = {value!r}: keys hold no '=', entries no line breaks")
    k = len(log.view_numbers)
    m = len(log.contour_numbers)
    lines = ["", "*** Entries to program tiltalign ***"]
    lines += [f"  {key} = {value}" for key, value in log.entries if str(value)]
    lines += ["*** End of entries ***", ""]
    if log.note:
        lines += [f" {log.note}", ""]
    lines += [
        f" {k:3d} views, {log.n_unknowns:5d} unknowns, {m:4d} 3-D points, "
        f"{log.n_points:5d} projection points",
        "",
    ]
    if k:
        nearest = int(np.argmin(np.abs(log.tilt_deg)))
        lines += [f" At minimum tilt, rotation angle is{log.rotation_deg[nearest]:8.2f}", ""]
    lines.append(VIEW_HEADER)
    table = format_records(
        VIEW_RECORD,
        [
            np.asarray(log.view_numbers, dtype=np.int64),
            _zero_nan(log.rotation_deg),
            _zero_nan(log.tilt_deg),
            _zero_nan(log.delta_tilt_deg),
            _zero_nan(log.magnification),
            _zero_nan(log.dmag),
            _zero_nan(log.skew_deg),
            _zero_nan(log.view_mean_residual_px),
        ],
    )
    lines += table.splitlines()
    xyz = np.asarray(log.markers_xyz, dtype=np.float64).reshape(-1, 3)
    centred = xyz - xyz.mean(axis=0) if m else xyz
    lines += ["", "", POINT_TITLE, POINT_HEADER]
    points = format_records(
        POINT_RECORD,
        [
            np.arange(1, m + 1),
            centred[:, 0],
            centred[:, 1],
            centred[:, 2],
            np.ones(m, dtype=np.int64),
            np.asarray(log.contour_numbers, dtype=np.int64),
            _zero_nan(log.marker_mean_residual_px),
        ],
    )
    lines += points.splitlines()
    lines += [
        "",
        f" Residual error mean and sd: {log.residual_mean_px:8.3f}{_zero_nan(log.residual_sd_px):8.3f}",
    ]
    if surface_lines:
        lines += ["", *(str(s).rstrip("\n") for s in surface_lines)]
    lines.append("")
    return "\n".join(lines) + "\n"


def write_align_log(path: str | os.PathLike, log: AlignLog, surface_lines: Sequence[str] = ()) -> None:
    """Write :func:`format_align_log` atomically."""
    text = format_align_log(log, surface_lines)
    with atomic_write(path) as f:
        f.write(text)
