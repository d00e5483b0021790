"""``find-beads``: gold beads in one view of an MRC image or stack, from plain arguments.

:func:`find_beads_in_file` reads one view (memory-mapped: only that view is read), picks the bead
diameter (given in pixels, given in nm with the header's pixel size, or estimated from the view by
:func:`lmalign_jax.track.estimate_bead_diameter`), runs :func:`lmalign_jax.track.find_beads_large`
and returns a :class:`BeadFinding`; :func:`write_beads` writes ``x,y,score`` (IMOD image
coordinates: origin at the image's lower-left corner, pixel (r, c) centred at (c + 0.5, r + 0.5),
MODEL.md) and a PNG overlay, both or neither. Bad input raises :class:`UsageError` or
:class:`lmalign_jax.io.errors.InputError` with a one-line message, before anything is written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..io.mrc import read_header_tilts, read_stack, read_stack_header
from ..io.outputs import OutputSet
from ..report.beads import render_bead_overlay
from ..track import estimate_bead_diameter, find_beads_large
from ..track.tracking import is_blank, seed_view
from .series import read_tilt_file
from .status import UsageError
from .writing import check_output_folder

__all__ = ["BeadFinding", "check_beads_out", "find_beads_in_file", "write_beads", "MIN_DIAMETER_PX"]

#: Smallest bead diameter accepted, pixels (below it a bead is not resolved).
MIN_DIAMETER_PX = 2.0


@dataclass(frozen=True, eq=False)
class BeadFinding:
    """The beads found in one view and how they were looked for.

    positions: (n, 2) x, y in IMOD image coordinates, pixels; scores: (n,) highest first.
    view: 0-based view searched; view_reason: why it (e.g. "nearest 0 deg: -0.5 deg").
    diameter_px: the bead diameter used; diameter_source: "given", "from 10 nm at 2.5 A/px",
    "estimated".
    image: (NY, NX) float32 the view (for the overlay).
    """

    positions: np.ndarray
    scores: np.ndarray
    view: int
    view_reason: str
    diameter_px: float
    diameter_source: str
    image: np.ndarray


def _choose_view(path, stack, n_views, view, tilts_path, warn) -> tuple[int, str]:
    if tilts_path is not None:  # checked against the stack even where --view picks the view
        (tilts, _), source = read_tilt_file(tilts_path, warn=warn), os.path.basename(tilts_path)
        if tilts.size != n_views:
            raise UsageError(f"{tilts_path} has {tilts.size} tilt angles but {path} has {n_views} views")
    if view is not None:
        if not 0 <= view < n_views:
            raise UsageError(f"--view {view}: {path} has views 0 to {n_views - 1}")
        return int(view), "as asked"
    if n_views == 1:
        return 0, "the only view"
    if tilts_path is None:
        tilts, source = read_header_tilts(path), "the header's tilt angles"
        if tilts is None:
            raise UsageError(
                f"{path} has {n_views} views and no tilt angles in its header: give --tilts FILE (to "
                "search the view nearest 0 deg) or --view K"
            )
    k, nearest = seed_view(stack, tilts), int(np.argmin(np.abs(tilts)))
    if k != nearest:  # a blank view (one value in every pixel) has no beads
        return k, f"nearest 0 deg by {source} that is not blank (view {nearest} is): {tilts[k]:+.2f} deg"
    return k, f"nearest 0 deg by {source}: {tilts[k]:+.2f} deg"


def _check_diameter(diameter: float, shape, what: str) -> float:
    limit = 0.1 * min(shape)
    if not (math.isfinite(diameter) and MIN_DIAMETER_PX <= diameter <= limit):
        raise UsageError(
            f"{what} {diameter:g} px: a bead diameter must be between {MIN_DIAMETER_PX:g} px and a "
            f"tenth of the image ({limit:g} px for {shape[1]} x {shape[0]} px)"
        )
    return float(diameter)


def find_beads_in_file(
    path: str,
    *,
    view: int | None = None,
    tilts_path: str | None = None,
    bead_diameter_px: float | None = None,
    bead_nm: float | None = None,
    polarity: str = "auto",
    warn=print,
) -> BeadFinding:
    """Gold beads in one view of the MRC image or stack ``path`` (see the module docstring).

    ``view`` (0-based) wins; otherwise the view nearest 0 deg by the angles of ``tilts_path``
    (.tlt/.rawtlt/.mdoc) or, without it, of the stack's extended header (SerialEM, FEI), passing
    over blank views (one value in every pixel); a single image needs neither. Raises UsageError /
    InputError for bad input, including a blank view or one where no bead-like feature is found.
    """
    n_views, ny, nx, pixel_a = read_stack_header(path)
    stack = read_stack(path)
    k, reason = _choose_view(path, stack, n_views, view, tilts_path, warn)
    image = np.asarray(stack[k], dtype=np.float32)
    if not np.all(np.isfinite(image)):
        raise UsageError(f"{path}: view {k} holds NaN or infinite values")
    if min(ny, nx) < 10 * MIN_DIAMETER_PX:
        raise UsageError(
            f"{path}: {nx} x {ny} px is smaller than the bead search window ({int(10 * MIN_DIAMETER_PX)} px "
            "for the smallest bead)"
        )
    if is_blank(image):
        other = ", as is every view" if view is None and n_views > 1 else ""
        value = float(image.flat[0])
        raise UsageError(
            f"{path}: view {k} is blank (every pixel {value:g}){other}: there are no beads to find"
        )
    if bead_diameter_px is not None and bead_nm is not None:
        raise UsageError("give --bead-diameter or --bead-nm, not both")
    if bead_diameter_px is not None:
        diameter = _check_diameter(float(bead_diameter_px), image.shape, "--bead-diameter")
        source = "given"
    elif bead_nm is not None:
        if pixel_a is None:
            raise UsageError(f"--bead-nm needs the pixel size, but the header of {path} does not set it")
        diameter = _check_diameter(
            10.0 * float(bead_nm) / pixel_a, image.shape, f"--bead-nm {bead_nm:g} nm is"
        )
        source = f"from {bead_nm:g} nm at {pixel_a:.4g} A/px"
    else:
        largest = max(2.0 * MIN_DIAMETER_PX + 1.0, min(32.0, 0.1 * min(image.shape)))
        diameter = estimate_bead_diameter(
            image, min_diameter_px=MIN_DIAMETER_PX + 1.0, max_diameter_px=largest
        )
        if not math.isfinite(diameter):
            raise UsageError(
                f"{path}: view {k}: no bead-like features to estimate the bead diameter from; give "
                "--bead-diameter PX"
            )
        source = "estimated"
    positions, scores = find_beads_large(image, diameter, polarity=polarity)
    if positions.shape[0] == 0:
        raise UsageError(
            f"{path}: view {k}: no bead-like features found with a bead diameter of {diameter:.2f} px "
            f"({source}); check the view"
            + (" or give --bead-diameter PX" if source == "estimated" else " and the bead diameter")
        )
    return BeadFinding(positions, scores, k, reason, diameter, source, image)


def beads_csv(positions, scores) -> str:
    """``x,y,score`` rows (IMOD image coordinates, pixels; score in noise standard deviations)."""
    rows = ["x,y,score"] + [f"{x:.3f},{y:.3f},{s:.2f}" for (x, y), s in zip(positions, scores, strict=True)]
    return "\n".join(rows) + "\n"


def check_beads_out(out_csv: str, input_paths=()) -> tuple[OutputSet, str]:
    """UsageError unless ``out_csv`` names a .csv file that, with its ``.png``, can be written
    without overwriting an input; else its OutputSet and extension. Cheap: called before the search."""
    folder, name = os.path.split(os.fspath(out_csv))
    stem, ext = os.path.splitext(name)
    if ext.lower() != ".csv" or not stem:
        raise UsageError(f"--out {out_csv}: name a .csv file (the overlay goes beside it as .png)")
    out = OutputSet(folder or ".", stem)
    check_output_folder(out, (ext, ".png"), input_paths, option=f"--out {out_csv}")
    return out, ext


def write_beads(finding: BeadFinding, out_csv: str, input_paths=()) -> list[str]:
    """Write ``out_csv`` and the overlay ``<stem>.png`` beside it, both or neither; returns the paths."""
    out, ext = check_beads_out(out_csv, input_paths)
    title = (
        f"view {finding.view} ({finding.view_reason}): {finding.positions.shape[0]} beads, "
        f"diameter {finding.diameter_px:.2f} px ({finding.diameter_source})"
    )
    png = render_bead_overlay(finding.image, finding.positions, finding.diameter_px, title)
    with out:
        out.write_text(ext, beads_csv(finding.positions, finding.scores))
        out.write_bytes(".png", png)
        return out.commit()
