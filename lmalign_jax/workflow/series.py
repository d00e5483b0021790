"""Reading a tilt series: its marker, tilt and stack files, the views and markers to fit.

Every command that aligns reads its series here (:func:`read_series`, :func:`select_views`,
:func:`observations_for_fit`), from plain arguments: file paths, an image size, a rotation.
Views are 0-based in file order unless a name says otherwise (``parse_view_list`` reads IMOD's
1-based lists).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from .. import io
from ..io.errors import InputError
from ..io.markerset import IMAGE_SIZE_RULE, image_size_ok
from ..io.mrc import anisotropic_pixel_note, read_stack_header
from ..io.pytom import is_pytom_header
from ..observations import Observations, usable_views_and_markers
from .status import MIN_MARKERS, UsageError, print_warning

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


def parse_view_list(text: str, n_views: int, where: str = "--exclude") -> list[int]:
    """IMOD-style 1-based list ``"1-3,40"`` -> sorted 0-based view indices; ``where`` starts
    an error message (the option, or the list line that gave it)."""
    views = set()
    # commas or spaces between entries, as in IMOD's lists ("1-3,5 7"); none inside a range
    for part in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", text.strip())):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m:
            raise UsageError(
                f"{where}: {part!r} is not a view number or range (use e.g. 1-3,40; views count from 1)"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise UsageError(f"{where}: range {part!r} runs backwards")
        if lo < 1 or hi > n_views:
            raise UsageError(
                f"{where}: view {lo if lo < 1 else hi} is outside 1..{n_views} (views count from 1, as in "
                "IMOD)"
            )
        views.update(range(lo - 1, hi))
    return sorted(views)


@dataclass
class Selection:
    """Which file views and markers are fitted, in fitting order."""

    view_index: np.ndarray  # (n_fit,) file view of each fitted view, fitting order
    marker_index: np.ndarray  # (m_fit,) column of each fitted marker in the MarkerSet
    excluded_by_user: list[int]
    excluded_no_markers: list[int]
    dropped_markers: list[int]  # marker ids
    sorted_by_tilt: bool
    #: views left out because they have fewer points than their own free parameters need
    excluded_few_points: list[int] = dataclasses.field(default_factory=list)
    #: per view of the file, the points it needs (``core.problem.points_needed``); None: one
    points_needed: np.ndarray | None = None


def _fit_order(keep_view: np.ndarray, tilts: np.ndarray, by_tilt: bool) -> np.ndarray:
    """The kept views in the order the fit takes them: file order, or by tilt (``by_tilt``:
    when the file's tilts are not monotonic)."""
    views = np.flatnonzero(keep_view)
    return views[np.argsort(tilts[views], kind="stable")] if by_tilt else views


def select_views(inputs: SeriesInputs, exclude: list[int], settings=None) -> Selection:
    """Apply --exclude, drop markers seen in < 2 views and views left without markers, order views.
    With ``settings`` (an ``AlignSettings``, or several: the fits that will share the selection), a
    view also needs as many points as its own free parameters need (``core.problem.points_needed``,
    the most of any of them): with fewer, the fit would give it arbitrary values along a direction
    its data do not constrain, so it is left out (and its transform interpolated, as for a view
    without markers)."""
    tilts = inputs.tilts_deg
    mask = inputs.markers.mask
    keep_view = np.ones(tilts.size, dtype=bool)
    keep_view[exclude] = False
    keep_view, keep_marker = usable_views_and_markers(mask, keep_view)
    no_markers = [int(v) for v in np.flatnonzero(~keep_view) if v not in set(exclude)]
    ids = inputs.markers.marker_ids

    def enough(keep_view, keep_marker, few_points=(), needed=None):
        """The dropped marker ids; InputError when too few markers or views are left."""
        dropped = [ids[i] for i in np.flatnonzero(~keep_marker)]
        if keep_marker.sum() >= MIN_MARKERS and keep_view.sum() >= 3:
            return dropped
        n_m, n_v = int(keep_marker.sum()), int(keep_view.sum())
        raise InputError(
            inputs.markers_path,
            None,
            f"only {n_m} marker(s) are seen in 2 or more of {n_v} usable view(s); alignment needs at least "
            f"{MIN_MARKERS} markers and 3 views"
            + (f" (dropped marker ids {', '.join(map(str, dropped))})" if dropped else "")
            + (
                f"; {len(few_points)} view(s) have fewer markers than the {int(np.max(needed[few_points]))} "
                "that determine a view's own free parameters (group or fix parameters to need fewer)"
                if few_points
                else ""
            ),
        )

    dropped = enough(keep_view, keep_marker)
    needed = None
    few_points: list[int] = []
    sorted_by_tilt = not (np.all(np.diff(tilts) >= 0) or np.all(np.diff(tilts) <= 0))
    if settings is not None:
        from ..core.problem import points_needed  # imports JAX: only where a fit follows
        from ..models import get_model

        fits = settings if isinstance(settings, list | tuple) else [settings]
        fits = [(get_model(f.model), f.all_modes()) for f in fits]
        with_markers = keep_view
        needed = np.ones(tilts.size, int)
        # the points a view needs depend on the fit's views (grouped modes divide them into
        # tiltalign's sets, which leaving a view out can change): worked out on the views kept
        # so far, until leaving out the views short of them changes nothing
        while keep_view.sum() >= 3:
            views = _fit_order(keep_view, tilts, sorted_by_tilt)
            counts = mask[np.ix_(views, keep_marker)].sum(axis=1)
            needed[views] = np.max(
                [points_needed(model, modes, views.size, tilts[views], counts) for model, modes in fits]
                or [np.ones(views.size, int)],
                axis=0,
            )
            view_ok, marker_ok = usable_views_and_markers(mask, keep_view, min_points=needed)
            if np.array_equal(view_ok, keep_view) and np.array_equal(marker_ok, keep_marker):
                break
            keep_view, keep_marker = view_ok, marker_ok
        few_points = [int(v) for v in np.flatnonzero(with_markers & ~keep_view)]
        dropped = enough(keep_view, keep_marker, few_points, needed)
    views = _fit_order(keep_view, tilts, sorted_by_tilt)
    return Selection(
        views,
        np.flatnonzero(keep_marker),
        list(exclude),
        sorted(int(v) for v in no_markers),
        dropped,
        bool(sorted_by_tilt),
        few_points,
        needed,
    )


def report_selection(inputs: SeriesInputs, sel: Selection, warn=print_warning) -> None:
    """Warnings about what ``select_views`` dropped or re-ordered."""
    if sel.dropped_markers:
        warn(
            f"{inputs.markers_path}: dropped {len(sel.dropped_markers)} marker(s) seen in fewer than 2 "
            f"fitted views (ids {', '.join(map(str, sel.dropped_markers))})"
        )
    if sel.excluded_no_markers:
        nums = ", ".join(str(v + 1) for v in sel.excluded_no_markers)
        warn(
            f"view(s) {nums} (1-based) have no markers and are excluded; their transforms are interpolated "
            "from neighbouring views"
        )
    if sel.excluded_few_points:
        needed = sel.points_needed[sel.excluded_few_points]
        for n in np.unique(needed):
            views = [v for v, k in zip(sel.excluded_few_points, needed, strict=True) if k == n]
            warn(
                f"view(s) {', '.join(str(v + 1) for v in views)} (1-based) have fewer than the {n} markers "
                f"needed to determine a view's own free parameters, and are left out of the fit (align "
                "interpolates their transforms from neighbouring views; grouping parameters, e.g. --mode "
                "rotation=group:5, lets them be fitted)"
            )
    if sel.sorted_by_tilt:
        step = np.diff(inputs.tilts_deg)
        k = int(np.argmax(step < 0 if inputs.tilts_deg[-1] >= inputs.tilts_deg[0] else step > 0))
        where = (
            f"{inputs.tilts_path}:{k + 2}"
            if inputs.tilts_path.lower().endswith(("tlt", "rawtlt"))
            else inputs.tilts_path
        )
        warn(
            f"{where}: tilt angles are not in order; views are fitted in order of tilt and written back in "
            "file order"
        )


#: A point farther than this many image sizes from the image's centre is an error in the file.
FAR_OUTSIDE = 10


def observations_for_fit(inputs: SeriesInputs, sel: Selection, warn=print_warning):
    """The selected views and markers as ``Observations`` (fitting order), and the markers' ids.
    A point far outside the image (``FAR_OUTSIDE``) is an :class:`InputError`; one a little
    outside is a warning (an image size that is off, or a bead at the edge)."""
    ms = inputs.markers
    xy = ms.xy[sel.view_index][:, sel.marker_index]
    mask = ms.mask[sel.view_index][:, sel.marker_index]
    nx, ny = inputs.image_size
    far = mask & np.any(np.abs(xy - np.array([nx, ny]) / 2) > FAR_OUTSIDE * max(nx, ny), axis=-1)
    if far.any():
        v, m = (int(i) for i in np.argwhere(far)[0])
        raise InputError(
            inputs.markers_path,
            None,
            f"marker {ms.marker_ids[sel.marker_index[m]]} in view {sel.view_index[v] + 1} (1-based) is at "
            f"({xy[v, m, 0]:.6g}, {xy[v, m, 1]:.6g}), more than {FAR_OUTSIDE} image sizes from the "
            f"{nx:g} x {ny:g} image ({int(far.sum())} such point(s)); check the file and the image size "
            f"({inputs.image_size_source})",
        )
    pts = xy[mask]
    outside = int(np.sum((pts[:, 0] < 0) | (pts[:, 0] > nx) | (pts[:, 1] < 0) | (pts[:, 1] > ny)))
    if outside:
        warn(
            f"{outside} of {pts.shape[0]} points lie outside the {nx:g} x {ny:g} image; check the image size "
            f"({inputs.image_size_source})"
        )
    _check_spread(inputs.markers_path, xy, mask)
    try:
        obs = Observations(xy, mask, inputs.tilts_deg[sel.view_index], inputs.image_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return obs, [ms.marker_ids[i] for i in sel.marker_index]


def mean_marker_positions(xy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each observed marker's mean position over the views it is seen in, (M', 2) pixels, from
    ``xy`` (V, M, 2) and ``mask`` (V, M); markers seen in no view are left out."""
    seen = mask.sum(axis=0)
    return np.where(mask[..., None], xy, 0.0).sum(axis=0)[seen > 0] / seen[seen > 0, None]


#: Markers whose mean positions lie within this RMS distance (px) of one line are in a row.
IN_A_ROW_PX = 1.0


def _check_spread(path: str, xy: np.ndarray, mask: np.ndarray) -> None:
    """InputError when the markers (each at its mean position over its views; ``xy`` (V, M, 2),
    ``mask`` (V, M)) lie on one line: neither the markers' heights nor every view's rotation can
    be found from them, and the solve ended in a singular transform (exit 3)."""
    means = mean_marker_positions(xy, mask)
    if len(means) < 2:
        return
    spread = np.linalg.svd(means - means.mean(axis=0), compute_uv=False)
    off_line = float(spread[-1] / np.sqrt(len(means)))  # RMS distance from the best line
    if off_line < IN_A_ROW_PX:
        raise InputError(
            path,
            None,
            f"the {len(means)} markers lie on one line (within {off_line:.2g} px RMS of it): their "
            "heights and the views' rotations cannot be found from markers in a row; an alignment "
            "needs markers spread across the image",
        )
