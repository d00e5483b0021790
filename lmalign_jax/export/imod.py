"""IMOD's extra alignment files: ``.xtilt``, the gap-filled fiducial model and the erase model.

What ``tiltalign`` writes besides ``.xf``/``.tlt``/``.resid``/``fid.xyz`` (its man page,
bio3d.colorado.edu/imod/doc/man/tiltalign.html; etomo's ``align.com``):

- ``OutputXAxisTiltFile`` (``.xtilt``): the X-axis tilt of each view, one angle in degrees per
  line, read free-format by ``tilt`` (XTILTFILE); etomo writes ``f7.2``. Our ``.xf`` are
  fitted to an aligned frame without X-axis tilt (MODEL.md), so the file holds zeros.
- ``OutputFilledInModel`` (``<prefix>_nogaps.fid``): the fiducial model with every gap filled
  by projecting the solved 3-D position of its bead into the view. Measured points are kept.
- The erase model (``<prefix>_erase.fid``): each bead's position in every view of the
  *aligned* stack, one contour per bead, z = view, for ``ccderaser -CircleObjects /`` run on
  the aligned stack as etomo's gold-erasing step does (etomo transforms the filled model by
  the alignment transforms with ``xfmodel``, which gives these points).
- ``OutputZFactorFile`` (``.zfac``): per view, ``xzfac yzfac``, read free-format by ``tilt``
  (ZFACTORFILE, ``read(3,*) (xzfac(i), yzfac(i), i = 1, numViews)``), which back-projects a
  point at height z to ``x cos(tilt) + z (sin(tilt) + xzfac)``, ``y + z yzfac`` in the aligned
  image (tilt.f90, X-axis tilt 0): the z-dependent part of a distortion the 2-D ``.xf``
  cannot remove (a stretch of the specimen before the tilt).
- ``OutputTransformFile`` (``.tltxf``): the transforms from the *prealigned* stack to the
  aligned one; etomo multiplies them with the prealignment (``xfproduct`` of ``.prexg`` and
  ``.tltxf``) into the ``.xf``. We align the raw images, so ``.tltxf`` equals ``.xf`` and is
  not written.

Positions are pixels in IMOD image coordinates (origin at the lower-left image corner, centre
``(nx/2, ny/2)``); views are 0-based. numpy only.
"""

from __future__ import annotations

import os

import numpy as np
from jaxtyping import Bool, Float

from ..io import InputError, MarkerSet, atomic_write, read_lines
from ..io.fixed_width import record_format, write_records
from ..io.tilts import read_angles
from .conventions import ViewGeometry, our_project

__all__ = [
    "aligned_positions",
    "filled_marker_set",
    "projected_positions",
    "read_xtilt",
    "read_zfac",
    "write_erase_model",
    "write_filled_model",
    "write_xtilt",
    "xtilt_file_value_deg",
    "write_zfac",
]

#: One ``.xtilt`` line, etomo's ``f7.2`` (widened, never truncated, for angles that need more).
XTILT_RECORD = record_format("f7.2")


def write_xtilt(path: str | os.PathLike, x_tilt_deg: Float[np.ndarray, " n_views"]) -> None:
    """Write X-axis tilts (n_views,) in degrees, one per line as IMOD's ``f7.2``; a wider
    angle widens its line (``tilt`` reads the file free-format)."""
    values = np.asarray(x_tilt_deg, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"x_tilt_deg must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("x_tilt_deg must be finite")
    with atomic_write(path) as f:
        write_records(f, XTILT_RECORD, [values])


def xtilt_file_value_deg(x_axis_tilt_deg: float | None) -> float:
    """The ``.xtilt`` value (degrees) that applies an X-axis tilt needed to level the specimen
    (IMOD's surface analysis): IMOD's ``tilt`` uses ``xtilt(view) - XAXISTILT`` (tilt.f90) and the
    X-axis tilt needed is an XAXISTILT value, so the file gets its negative (0 for None)."""
    return -float(x_axis_tilt_deg) if x_axis_tilt_deg else 0.0


def read_xtilt(path: str | os.PathLike) -> Float[np.ndarray, " n_views"]:
    """Read an IMOD ``.xtilt`` file: float64 (n_views,) X-axis tilts in degrees (the reader of
    ``.tlt`` files, :func:`lmalign_jax.io.tilts.read_angles`, with its messages)."""
    return read_angles(path, "X-axis tilt angle")


#: One ``.zfac`` line: xzfac, yzfac (tilt reads them free-format).
ZFAC_RECORD = record_format("2f12.7")


def write_zfac(path: str | os.PathLike, z_factors: Float[np.ndarray, "n_views 2"]) -> None:
    """Write per-view ``(xzfac, yzfac)`` (n_views, 2), dimensionless, as ``2f12.7`` lines."""
    values = np.asarray(z_factors, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 2 or values.shape[0] == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"z_factors must be finite, shape (n_views, 2), got {values.shape}")
    with atomic_write(path) as f:
        write_records(f, ZFAC_RECORD, [values[:, 0], values[:, 1]])


def read_zfac(path: str | os.PathLike) -> Float[np.ndarray, "n_views 2"]:
    """Read a ``.zfac`` file: (n_views, 2) ``xzfac, yzfac``, two finite numbers per line. A missing
    file, a folder or one that is not UTF-8 text is an :class:`InputError` worded as the other text
    readers word it (:func:`lmalign_jax.io.read_lines`)."""
    lines = read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for k, raw in enumerate(lines, start=1):
        tokens = raw.split()
        try:
            row = [float(t) for t in tokens]
        except ValueError:
            row = []
        if len(row) != 2 or not np.all(np.isfinite(row)):
            raise InputError(
                path, k, f"expected two finite z factors (xzfac yzfac), got {raw.strip()[:60]!r}"
            )
        rows.append(row)
    if not rows:
        raise InputError(path, None, "no z factors")
    return np.array(rows, dtype=np.float64)


def _centre(geometry: ViewGeometry) -> np.ndarray:
    return np.asarray(geometry.image_size, dtype=np.float64) / 2.0


def projected_positions(
    geometry: ViewGeometry, markers_xyz: Float[np.ndarray, "m 3"]
) -> Float[np.ndarray, "n_views m 2"]:
    """Where the solved markers (m, 3), pixels from the specimen centre, project in each raw
    image through the exported geometry (:func:`.conventions.our_project`): (n_views, m, 2)
    IMOD image coordinates, pixels."""
    return our_project(geometry, markers_xyz) + _centre(geometry)


def aligned_positions(
    geometry: ViewGeometry, markers_xyz: Float[np.ndarray, "m 3"]
) -> Float[np.ndarray, "n_views m 2"]:
    """The markers' positions in the aligned stack (raw images mapped by ``xf``):
    ``c + P Ry(theta) Rx(xi) X``, (n_views, m, 2) IMOD image coordinates, pixels."""
    raw = our_project(geometry, markers_xyz)
    aligned = np.einsum("nij,nmj->nmi", geometry.xf[:, :, :2], raw) + geometry.xf[:, None, :, 2]
    return aligned + _centre(geometry)


def filled_marker_set(
    geometry: ViewGeometry,
    markers_xyz: Float[np.ndarray, "m 3"],
    marker_ids,
    measured: MarkerSet | None,
    fitted_views: Bool[np.ndarray, " n_views"],
    *,
    pixel_size_angst: float | None = None,
    projected: Float[np.ndarray, "n_views m 2"] | None = None,
) -> MarkerSet:
    """The fiducial model with its gaps filled (IMOD's OutputFilledInModel).

    markers_xyz (m, 3): solved positions, pixels from the specimen centre; marker_ids (m,):
    their ids in the input file; measured: the input's measured points (None: every point is
    projected), matched by marker id and view; fitted_views (n_views,): views in the solution.
    Each marker keeps its measured points and gets its projection on every fitted view where
    it was not measured: ``projected`` (n_views, m, 2) IMOD image coordinates when given (the
    record's own model, ``workflow.record_markers.fitted_positions``), else through ``geometry``.
    """
    n = geometry.n_views
    ids = [int(i) for i in marker_ids]
    if projected is None:
        projected = projected_positions(geometry, markers_xyz)
    fitted = np.asarray(fitted_views, dtype=bool)
    if fitted.shape != (n,):
        raise ValueError(f"fitted_views must be ({n},), got {fitted.shape}")
    xy = np.where(fitted[:, None, None], projected, np.nan)
    mask = np.broadcast_to(fitted[:, None], xy.shape[:2]).copy()
    if measured is not None:
        column = {mid: k for k, mid in enumerate(measured.marker_ids)}
        views = min(n, measured.n_views)
        for j, mid in enumerate(ids):
            k = column.get(mid)
            if k is None:
                continue
            seen = measured.mask[:views, k]
            xy[:views][seen, j] = measured.xy[:views][seen, k]
            mask[:views, j] |= seen
    size = tuple(int(round(s)) for s in geometry.image_size)
    return MarkerSet(
        xy=xy, mask=mask, marker_ids=tuple(ids), image_size=size, pixel_size=pixel_size_angst, source="filled"
    )


def write_filled_model(path: str | os.PathLike, filled: MarkerSet) -> None:
    """Write :func:`filled_marker_set` as an IMOD fiducial model (``<prefix>_nogaps.fid``)."""
    from ..io.imod_model import write_imod_model  # imodmodel (pandas, pydantic): on use

    write_imod_model(path, filled)


def write_erase_model(
    path: str | os.PathLike,
    geometry: ViewGeometry,
    markers_xyz: Float[np.ndarray, "m 3"],
    marker_ids,
    fitted_views: Bool[np.ndarray, " n_views"],
    *,
    pixel_size_angst: float | None = None,
    projected: Float[np.ndarray, "n_views m 2"] | None = None,
) -> None:
    """Write the erase model (``<prefix>_erase.fid``): every marker at its
    :func:`aligned_positions` on every fitted view (or its ``projected`` raw positions, IMOD image
    coordinates, mapped by ``geometry.xf``), one contour per marker, z = view, for ``ccderaser`` on
    the aligned stack (unbinned pixels: scale x, y for a binned stack)."""
    from ..io.imod_model import write_imod_model

    fitted = np.asarray(fitted_views, dtype=bool)
    if projected is None:
        aligned = aligned_positions(geometry, markers_xyz)
    else:
        centre = _centre(geometry)
        raw = np.asarray(projected, float) - centre
        aligned = np.einsum("nij,nmj->nmi", geometry.xf[:, :, :2], raw) + geometry.xf[:, None, :, 2] + centre
    xy = np.where(fitted[:, None, None], aligned, np.nan)
    mask = np.broadcast_to(fitted[:, None], xy.shape[:2]).copy()
    size = tuple(int(round(s)) for s in geometry.image_size)
    ids = tuple(int(i) for i in marker_ids)
    write_imod_model(
        path,
        MarkerSet(
            xy=xy, mask=mask, marker_ids=ids, image_size=size, pixel_size=pixel_size_angst, source="erase"
        ),
    )
