"""Reading a tilt series: its marker, tilt and stack files, checked.

Every command that aligns reads its series here (:func:`read_series`), from plain arguments: file
paths, an image size, a rotation; :mod:`.selection` then chooses the views and markers to fit.
Views are 0-based in file order.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np

from .. import io
from ..io.errors import InputError
from ..io.markerset import IMAGE_SIZE_RULE, image_size_ok
from ..io.mrc import anisotropic_pixel_note, read_stack_header
from ..io.pytom import is_pytom_header
from .status import UsageError, print_warning

TILT_EXTENSIONS = (".tlt", ".rawtlt", ".mdoc")
MARKER_EXTENSIONS = (*io.MARKER_EXTENSIONS, ".resid")
#: How ``lmalign align`` users give an image size the marker file lacks (end of that message).
SIZE_ADVICE = "give --image-size NX NY or --stack STACK.mrc"


@dataclass
class SeriesInputs:
    """What the input files say, before any view or marker is dropped (views in file order)."""

    markers: io.MarkerSet
    markers_path: str
    markers_format: str
    tilts_deg: np.ndarray
    tilts_path: str
    image_size: tuple[float, float]
    image_size_source: str
    rotation_deg: float | None
    rotation_source: str
    pixel_size: float | None
    stack_path: str | None = None
    #: Degrees added to every tilt of the file (``batch --share tilt-offset``), and why.
    tilt_offset_deg: float = 0.0
    tilt_offset_source: str | None = None

    def with_tilt_offset(self, offset_deg: float, source: str) -> SeriesInputs:
        """These inputs with ``offset_deg`` added to every tilt (IMOD's AngleOffset, a batch's
        shared offset), and where it came from."""
        tilts = np.asarray(self.tilts_deg) + offset_deg
        return dataclasses.replace(
            self, tilts_deg=tilts, tilt_offset_deg=float(offset_deg), tilt_offset_source=source
        )


def read_tilt_file(path: str, warn=print_warning):
    """(tilts (n,), mdoc or None) from a .tlt/.rawtlt or SerialEM .mdoc file; angles outside
    -90..90 degrees are an InputError (``io.check_tilt_range``)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".mdoc":
        mdoc = io.read_mdoc(path)
        if mdoc.z_values.size and not np.array_equal(mdoc.z_values, np.arange(mdoc.z_values.size)):
            warn(f"{path}: ZValues are not 0..{mdoc.z_values.size - 1}; views are taken in ZValue order")
        io.check_tilt_range(mdoc.tilts_deg, path, what="ZValue")
        return mdoc.tilts_deg, mdoc
    if ext in (".tlt", ".rawtlt"):
        tilts = io.read_tilts(path)
        io.check_tilt_range(tilts, path, lines=True)
        return tilts, None
    got = f"extension {ext!r}" if ext else "no extension"
    raise InputError(
        path, None, f"unsupported tilt-angle file ({got}); supported: {', '.join(TILT_EXTENSIONS)}"
    )


#: Why views all at one tilt cannot be aligned (a fit would end with NaN standard errors).
ONE_TILT_ALIGN = "the markers' heights (z) cannot be determined from views at one tilt"


def warn_anisotropic_pixels(stack_path: str, warn) -> None:
    """``warn`` when the stack's header gives pixels that are not square (its x size is used)."""
    text = anisotropic_pixel_note(stack_path)
    if text is not None:
        warn(text)


def check_tilts_vary(tilts, path: str, why: str = ONE_TILT_ALIGN) -> None:
    """InputError naming ``path`` when all of more than one tilt angle (degrees) are equal, saying
    ``why`` that cannot be used."""
    tilts = np.asarray(tilts, dtype=np.float64)
    if tilts.size > 1 and np.all(tilts == tilts[0]):
        raise InputError(path, None, f"all {tilts.size} views are at tilt {tilts[0] + 0.0:g} degrees: {why}")


def check_image_size(size, option: str = "--image-size") -> tuple[float, float]:
    """``(nx, ny)`` as floats, or a UsageError naming ``option`` unless :func:`image_size_ok`."""
    nx, ny = (float(v) for v in size)
    if not image_size_ok((nx, ny)):
        raise UsageError(f"{option} must be {IMAGE_SIZE_RULE}, got {nx:g} {ny:g}")
    return nx, ny


#: Largest tilt-axis angle (degrees, either sign) taken from --rotation or an .mdoc.
MAX_ROTATION_DEG = 360.0


def _header_image_size(size, path: str):
    """``size`` (nx, ny) from the header of ``path``, or an InputError naming it unless
    :func:`io.markerset.image_size_ok` (as --image-size; an mdoc's is checked as it is read)."""
    if not image_size_ok(size):
        raise InputError(
            path,
            None,
            f"the header gives an image size of {size[0]:.10g} x {size[1]:.10g} px; it must be "
            f"{IMAGE_SIZE_RULE} (give the right one with --image-size NX NY)",
        )
    return size


def check_rotation(rotation_deg: float, source: str = "--rotation") -> float:
    """``rotation_deg`` as a float, or a UsageError (an InputError naming an ``.mdoc`` ``source``)
    when it is not a finite angle within +-MAX_ROTATION_DEG degrees."""
    value = float(rotation_deg)
    if math.isfinite(value) and abs(value) <= MAX_ROTATION_DEG:
        return value
    limit = f"{MAX_ROTATION_DEG:g}"
    what = f"must be a tilt-axis angle within -{limit}..{limit} degrees, got {value:g}"
    if source.startswith("--"):
        raise UsageError(f"{source} {what}")
    raise InputError(source, None, f"the tilt axis angle {what}")


def _read_marker_file(path: str, tilts_path: str | None, n_views: int | None):
    """(MarkerSet, format name, tilts from the marker file or None)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in MARKER_EXTENSIONS:
        got = f"extension {ext!r}" if ext else "no extension"
        raise InputError(
            path, None, f"unsupported marker file ({got}); supported: {', '.join(MARKER_EXTENSIONS)}"
        )
    if ext == ".resid":
        markers = io.resid_to_markers(io.read_resid(path), None, path=path)
        return (
            _on_tilt_file_views(markers, path, tilts_path, n_views),
            "IMOD residual file (measured points)",
            None,
        )
    if ext == ".txt" and _is_pytom(path):
        markers, tilts = io.read_pytom_markers(path)
        return _on_tilt_file_views(markers, path, tilts_path, n_views), "PyTom marker file", tilts
    fmt = {".csv": "CSV marker,view,x,y", ".fid": "IMOD model", ".mod": "IMOD model"}.get(
        ext, "IMOD model2point text"
    )
    return _on_tilt_file_views(io.read_markers(path), path, tilts_path, n_views), fmt, None


def _on_tilt_file_views(
    markers: io.MarkerSet, path: str, tilts_path: str | None, n_views: int | None
) -> io.MarkerSet:
    """``markers`` on the tilt file's ``n_views`` views (None: as read). A marker on a view the
    tilt file has no angle for is the tilt file's fault (most often another series' file), so
    the message names it; views past the last observed one are dropped or added empty."""
    if n_views is None or markers.xy.shape[0] == n_views:
        return markers
    observed = np.flatnonzero(markers.mask.any(axis=1))
    needed = int(observed[-1]) + 1 if observed.size else 0
    if needed > n_views:
        raise InputError(
            tilts_path,
            None,
            f"has {n_views} tilt angles but the markers in {path} need {needed} "
            f"(a marker is on view {needed}, counting from 1); is it this series' tilt file?",
        )
    xy = np.full((n_views, markers.n_markers, 2), np.nan)
    mask = np.zeros((n_views, markers.n_markers), dtype=bool)
    k = min(n_views, markers.xy.shape[0])
    xy[:k], mask[:k] = markers.xy[:k], markers.mask[:k]
    return dataclasses.replace(markers, xy=xy, mask=mask)


def _is_pytom(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [f.readline() for _ in range(5)]
    except OSError:
        return False  # the reader reports it
    return is_pytom_header(head)


def read_series(
    markers_path: str,
    tilts_path: str | None,
    *,
    stack_path: str | None = None,
    image_size=None,
    rotation_deg: float | None = None,
    size_advice: str = SIZE_ADVICE,
    warn=print_warning,
) -> SeriesInputs:
    """Read a series' marker, tilt and (optional) stack files and check them together.

    ``image_size`` (nx, ny) pixels and ``rotation_deg`` override what the files say;
    ``size_advice`` ends the message when the image size is unknown; ``warn(message)`` hears
    about oddities that do not stop the alignment.
    """
    if rotation_deg is not None:  # a usage error before any file is read
        rotation_deg = check_rotation(rotation_deg)
    for path in (markers_path, tilts_path):
        if path is not None and not os.path.isfile(path):
            raise InputError(
                path, None, "is a directory, not a file" if os.path.isdir(path) else "file not found"
            )
    mdoc = None
    if tilts_path is None:
        if os.path.splitext(markers_path)[1].lower() != ".txt" or not _is_pytom(markers_path):
            raise UsageError(
                "--tilts FILE is required (.tlt, .rawtlt or .mdoc); only PyTom marker files carry their tilt "
                "angles"
            )
        markers, fmt, tilts = _read_marker_file(markers_path, None, None)
        tilts_file = markers_path
    else:
        tilts, mdoc = read_tilt_file(tilts_path, warn)
        tilts_file = tilts_path
        markers, fmt, file_tilts = _read_marker_file(markers_path, tilts_path, tilts.size)
        k = min(tilts.size, 0 if file_tilts is None else file_tilts.size)
        if file_tilts is not None and not np.allclose(file_tilts[:k], tilts[:k], atol=0.05):
            raise InputError(
                tilts_path,
                None,
                f"tilt angles differ from those in the PyTom marker file {markers_path} (PyTom orders views "
                "by increasing tilt)",
            )
    tilts = np.asarray(tilts, dtype=np.float64)
    check_tilts_vary(tilts, tilts_file)

    stack_size, stack_pix = None, None
    if stack_path is not None:
        n_sections, ny, nx, stack_pix = read_stack_header(stack_path)
        warn_anisotropic_pixels(stack_path, warn)
        if n_sections != tilts.size:
            raise InputError(
                stack_path,
                None,
                f"the stack has {n_sections} sections but {tilts_file} has {tilts.size} tilt angles",
            )
        stack_size = (nx, ny)
    if image_size is not None:
        size, source = check_image_size(image_size), "--image-size"
    elif markers.image_size is not None:
        size, source = _header_image_size(markers.image_size, markers_path), f"{markers_path} header"
    elif stack_size is not None:
        size, source = _header_image_size(stack_size, stack_path), f"{stack_path} header"
    elif mdoc is not None and mdoc.image_size is not None:
        size, source = mdoc.image_size, f"{tilts_path} ImageSize"
    else:
        raise InputError(
            markers_path, None, f"image size unknown (the marker file does not record it): {size_advice}"
        )
    if stack_size is not None and tuple(float(n) for n in size) != tuple(float(n) for n in stack_size):
        said = (
            f"the stack is {stack_size[0]} x {stack_size[1]} px but {source} says {size[0]:g} x {size[1]:g}"
        )
        if image_size is not None:  # the transforms are for the stack: a contradiction to settle first
            raise UsageError(f"--image-size: {said} (--stack {stack_path}); leave --image-size out or fix it")
        warn(f"{said}: the marker coordinates are taken in the marker file's frame; check the pair")

    if rotation_deg is not None:
        rotation, rot_source = rotation_deg, "--rotation"
    elif mdoc is not None and mdoc.tilt_axis_angle_deg is not None:
        rotation = check_rotation(mdoc.tilt_axis_angle_deg, tilts_path)
        rot_source = f"{tilts_path} tilt axis angle"
    else:
        rotation, rot_source = None, "estimated from the marker tracks"
    pixel = markers.pixel_size or stack_pix or (mdoc.pixel_size if mdoc else None)
    return SeriesInputs(
        markers,
        markers_path,
        fmt,
        np.asarray(tilts, dtype=np.float64),
        tilts_file,
        (float(size[0]), float(size[1])),
        source,
        rotation,
        rot_source,
        pixel,
        stack_path,
    )


#: A point farther than this many image sizes from the image's centre is an error in the file.
FAR_OUTSIDE = 10
