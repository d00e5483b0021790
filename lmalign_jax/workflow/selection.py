"""Which views and markers of a series are fitted, and the fit's observations of them.

:func:`select_views` applies --exclude and drops what cannot be fitted (markers seen in fewer
than 2 views, views without markers or with fewer points than their own free parameters need);
:func:`observations_for_fit` makes the ``Observations`` of what is left, in fitting order. Views
are 0-based in file order (``parse_view_list`` reads IMOD's 1-based lists).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from ..io.errors import InputError
from ..observations import Observations, usable_views_and_markers
from .series import FAR_OUTSIDE, SeriesInputs
from .status import MIN_MARKERS, UsageError, print_warning


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
        if n_v >= 3:  # the markers are short
            problem = (
                f"only {n_m} marker(s) are seen in 2 or more of {n_v} usable view(s); alignment needs at "
                f"least {MIN_MARKERS} markers and 3 views"
            )
        else:  # the views are short (and perhaps the markers too)
            why = _why_views_left(exclude, keep_view, few_points)
            problem = (
                (
                    f"the series has only {tilts.size} view(s)"
                    if n_v == tilts.size
                    else f"only {n_v} of the {tilts.size} views can be fitted ({why})"
                )
                + "; an alignment needs at least 3 views"
                + (
                    f", and at least {MIN_MARKERS} markers seen in 2 or more of them ({n_m} are)"
                    if n_m < MIN_MARKERS
                    else ""
                )
            )
        raise InputError(
            inputs.markers_path,
            None,
            problem
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


def _why_views_left(exclude: list[int], keep_view: np.ndarray, few_points) -> str:
    """Why views are not fitted: those --exclude leaves out, those with too few points for their
    own parameters (``few_points``), those without a marker seen in 2 or more usable views (the
    rest not in ``keep_view``)."""
    excluded, few = set(exclude), set(few_points)
    no_markers = [v for v in np.flatnonzero(~keep_view) if v not in excluded and v not in few]
    parts = []
    if excluded:
        parts.append(f"{len(excluded)} excluded")
    if no_markers:
        parts.append(f"{len(no_markers)} without a marker seen in 2 or more usable views")
    if few:
        parts.append(f"{len(few)} with too few markers for their own parameters")
    return "; ".join(parts)


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


#: More than this share of the fitted points outside the image is an error: points are measured
#: in the image, so most of them outside it means the image size is not theirs (a few outside:
#: a bead at the edge, a size a little off, only warned of).
MOST_OUTSIDE = 0.5


def observations_for_fit(inputs: SeriesInputs, sel: Selection, warn=print_warning):
    """The selected views and markers as ``Observations`` (fitting order), and the markers' ids.
    A point far outside the image (``FAR_OUTSIDE``) is an :class:`InputError`, and more than
    ``MOST_OUTSIDE`` of them outside it a :class:`UsageError` naming the image size's source;
    a few a little outside are a warning (an image size that is off, or a bead at the edge)."""
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
    if outside > MOST_OUTSIDE * pts.shape[0]:
        source = inputs.image_size_source
        given = f"--image-size {nx:g} {ny:g}" if source == "--image-size" else source
        raise UsageError(
            f"{given}: {outside} of {pts.shape[0]} points lie outside the {nx:g} x {ny:g} image it gives "
            f"(the points span x {pts[:, 0].min():.0f} to {pts[:, 0].max():.0f}, y {pts[:, 1].min():.0f} "
            f"to {pts[:, 1].max():.0f} px): the image size is not the one the markers were measured in; "
            "give that size with --image-size NX NY (or the raw stack with --stack)"
        )
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
