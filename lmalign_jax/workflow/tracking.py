"""``lmalign track`` (and the first half of ``lmalign align STACK.mrc``): a raw stack and its tilts
in, tracked beads out as ``<prefix>.fid``, ``.csv``, ``_track.json`` and ``_track.png``.

Everything the user gave is checked before the stack is read: the stack is an MRC file, the tilt
file has one angle per section, the bead diameter is between 2 px and a tenth of the image
(``--bead-nm`` needs the pixel size in the MRC header; with neither option the diameter is
estimated from the view nearest 0 degrees and reported), and the images are larger than the
bead search window; a view with a NaN or infinite pixel is refused (it would spoil the averaged
bead every later view is matched with). The four files are written as one set
(:class:`lmalign_jax.io.outputs.OutputSet`). A blank view (one value in every pixel: dark,
missing) has no beads: the beads are looked for on the non-blank view nearest 0 degrees, and a
blank view is lost like any view without beads (``TrackResult.lost_reasons`` says it is blank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .. import __version__, io
from ..io.errors import InputError
from ..io.mrc import first_non_finite_view, read_stack, read_stack_header
from ..io.outputs import OutputSet
from ..report import record_to_json
from ..report.record import read_track_settings
from ..report.track_figure import render_track_figure
from ..track import estimate_bead_diameter
from ..track.centring import window_size
from ..track.tracking import REASONS, TrackingError, TrackResult, seed_view, track_beads
from .series import check_rotation, check_tilts_vary, read_tilt_file
from .status import UsageError, print_note, print_warning
from .writing import check_output_folder

__all__ = ["TRACK_OUTPUTS", "STACK_EXTENSIONS", "TrackedStack", "is_stack_path", "track_stack"]

TRACK_OUTPUTS = (".fid", ".csv", "_track.json", "_track.png")
#: File extensions taken for raw tilt-series stacks (MRC).
STACK_EXTENSIONS = (".mrc", ".st", ".ali", ".mrcs")
ADVICE = "give the bead diameter in pixels with --bead-diameter PX (or --bead-nm NM)"


def is_stack_path(path: str) -> bool:
    """Whether ``path`` names a raw MRC stack (by its extension)."""
    return os.path.splitext(path)[1].lower() in STACK_EXTENSIONS


@dataclass
class TrackedStack:
    """What :func:`track_stack` did: the tracking, the files written, the settings used."""

    track: TrackResult
    written: list[str]
    fid_path: str
    rotation_deg: float | None
    diameter_source: str
    image_size: tuple[int, int]


def _bead_diameter(
    stack_path, bead_diameter_px, bead_nm, pixel_A, seed_image, note, where="the view nearest 0 deg"
) -> tuple[float, str]:
    if bead_diameter_px is not None and bead_nm is not None:
        raise UsageError("give --bead-diameter or --bead-nm, not both")
    if bead_nm is not None:
        if pixel_A is None:
            raise InputError(
                stack_path, None, f"the header has no pixel size, so --bead-nm cannot be converted; {ADVICE}"
            )
        return float(bead_nm) * 10.0 / pixel_A, f"--bead-nm {bead_nm:g} at {pixel_A:g} A/px"
    if bead_diameter_px is not None:
        return float(bead_diameter_px), "--bead-diameter"
    estimate = estimate_bead_diameter(seed_image)
    if not np.isfinite(estimate):
        raise InputError(
            stack_path, None, f"no bead-like features found to estimate the bead diameter from; {ADVICE}"
        )
    note(f"bead diameter estimated from {where}: {estimate:.1f} px (set it with --bead-diameter)")
    return float(estimate), f"estimated from {where}"


def track_record(track: TrackResult, tilts_deg, settings: dict) -> dict:
    """The ``<prefix>_track.json`` record: per bead (views found, mean score, residual), per view."""
    beads = []
    for b in range(track.n_beads):
        views = np.flatnonzero(track.found[:, b])
        beads.append(
            {
                "id": b + 1,
                "seed_x": float(track.xy[track.seed_view, b, 0]),
                "seed_y": float(track.xy[track.seed_view, b, 1]),
                "n_views": int(views.size),
                "views": [int(v) + 1 for v in views],
                "mean_score": float(np.nanmean(track.amplitude[views, b])) if views.size else None,
                "residual_px": float(track.residual_px[b]),
            }
        )
    per_view = []
    lost = dict(zip((int(v) for v in track.lost_views), track.lost_reasons, strict=True))
    for v in range(track.n_views):
        left_out = {REASONS[k]: int(np.sum(track.reasons[v] == k)) for k in range(1, len(REASONS))}
        per_view.append(
            {
                "view": v + 1,
                "tilt_deg": float(tilts_deg[v]),
                "beads_found": int(track.found[v].sum()),
                "left_out": {k: n for k, n in left_out.items() if n},
                **({"lost": lost[v]} if v in lost else {}),
            }
        )
    return {
        "software": {"name": "lmalign_jax", "version": __version__},
        "settings": settings,
        "seed_view": track.seed_view + 1,
        "bead_diameter_px": track.bead_diameter_px,
        "beads_found_on_seed": int(track.candidates.shape[0]),
        "beads_tracked": track.n_tracked,  # with a point; "beads" lists every one chosen
        "beads_without_points": track.n_beads - track.n_tracked,
        "points": int(track.found.sum()),
        "lost_views": [int(v) + 1 for v in track.lost_views],
        "rounds": track.rounds,
        "fit_rms_px": track.fit_rms_px,
        "seconds": track.seconds,
        "timings_s": track.timings,
        "conventions": "views and bead ids 1-based; x, y IMOD image coordinates in pixels (origin at the "
        "lower-left corner, pixel centres at +0.5); mean_score: correlation peak over the average bead's",
        "beads": beads,
        "views": per_view,
    }


def tracked_earlier(
    stack_path: str,
    tilts_path: str,
    *,
    out_dir: str,
    prefix: str,
    bead_diameter_px: float | None = None,
    bead_nm: float | None = None,
    rotation_deg: float | None = None,
    target_beads: int = 40,
) -> str | None:
    """The ``.fid`` an earlier :func:`track_stack` of the same stack and tilts with the same
    options wrote in ``out_dir`` (``batch --resume``: not tracked again), or None: its ``.fid``,
    ``.csv`` and ``_track.json`` are there, newer than the stack and the tilt file, and the
    record's settings match those given (a bead size given in pixels or nm, or estimated when
    neither is; the rotation when one is given; the target number of beads)."""
    fid, csv, record_path = OutputSet(out_dir, prefix).final_paths((".fid", ".csv", "_track.json"))
    try:
        s = read_track_settings(record_path)
        source = str(s["bead_diameter_source"])
        if bead_diameter_px is not None:
            size_same = source == "--bead-diameter" and s["bead_diameter_px"] == bead_diameter_px
        elif bead_nm is not None:
            size_same = source.startswith(f"--bead-nm {bead_nm:g} ")
        else:
            size_same = source.startswith("estimated")
        made = min(os.path.getmtime(q) for q in (fid, csv, record_path))
        same = (
            size_same
            and os.path.realpath(s["stack"]) == os.path.realpath(stack_path)
            and os.path.realpath(s["tilts"]) == os.path.realpath(tilts_path)
            and s["target_beads"] == target_beads
            and (rotation_deg is None or s["rotation_deg"] == rotation_deg)
            and all(os.path.getmtime(q) <= made for q in (stack_path, tilts_path))
        )
    except (OSError, ValueError, KeyError, TypeError):  # none, or not one this version wrote
        return None
    return fid if same else None


def track_stack(
    stack_path: str,
    tilts_path: str,
    *,
    out_dir: str,
    prefix: str | None = None,
    bead_diameter_px: float | None = None,
    bead_nm: float | None = None,
    rotation_deg: float | None = None,
    target_beads: int = 40,
    figure: bool = True,
    warn=print_warning,
    note=print_note,
) -> TrackedStack:
    """Track the beads of ``stack_path`` and write ``<prefix>`` + :data:`TRACK_OUTPUTS` in ``out_dir``.

    Raises ``InputError``/``UsageError`` (one line naming the file and the problem) for bad input,
    before anything is written.
    """
    prefix = prefix or os.path.splitext(os.path.basename(stack_path))[0]
    out = OutputSet(out_dir, prefix)
    check_output_folder(out, TRACK_OUTPUTS, (stack_path, tilts_path))
    if target_beads < 4:
        raise UsageError(f"--target-beads must be at least 4, got {target_beads}")
    n_views, ny, nx, pixel = read_stack_header(stack_path)
    if not os.path.isfile(tilts_path):
        raise InputError(tilts_path, None, "file not found")
    tilts, mdoc = read_tilt_file(tilts_path, warn)
    check_tilts_vary(tilts, tilts_path)
    if tilts.size != n_views:
        raise InputError(
            tilts_path, None, f"has {tilts.size} tilt angles but the stack {stack_path} has {n_views} views"
        )
    if rotation_deg is not None:
        rotation_deg = check_rotation(rotation_deg)
    elif mdoc is not None and mdoc.tilt_axis_angle_deg is not None:
        rotation_deg = check_rotation(mdoc.tilt_axis_angle_deg, tilts_path)
    smallest = window_size(2.0, 5.0)  # the search window for the smallest bead (2 px)
    if min(nx, ny) < smallest:
        raise InputError(
            stack_path,
            None,
            f"images of {nx} x {ny} px are smaller than the bead search window ({smallest} px)",
        )
    stack = read_stack(stack_path)
    bad = first_non_finite_view(
        stack
    )  # a NaN or infinite pixel spoils the averaged bead for every later view
    if bad is not None:
        raise InputError(stack_path, None, f"view {bad + 1} holds NaN or infinite values")
    seed, nearest = seed_view(stack, tilts), int(np.argmin(np.abs(tilts)))
    if seed != nearest:
        note(
            f"view {nearest + 1} (tilt {tilts[nearest]:g} deg, the nearest 0) is blank (one value in every "
            f"pixel); the beads are looked for on view {seed + 1} (tilt {tilts[seed]:g} deg)"
        )
    seed_image = np.asarray(stack[seed], dtype=np.float32)
    if not np.all(np.isfinite(seed_image)):
        raise InputError(stack_path, None, f"view {seed + 1} holds NaN or infinite values")
    where = "the view nearest 0 deg" if seed == nearest else f"view {seed + 1}"
    diameter, source = _bead_diameter(stack_path, bead_diameter_px, bead_nm, pixel, seed_image, note, where)
    if not (2.0 <= diameter <= min(nx, ny) / 10.0):
        raise UsageError(
            f"bead diameter {diameter:.3g} px ({source}) is outside 2 px .. a tenth of the {nx} x {ny} image "
            f"({min(nx, ny) / 10.0:g} px)"
        )
    need = window_size(diameter, max(diameter, 5.0))
    if min(nx, ny) < need:
        raise InputError(
            stack_path, None, f"images of {nx} x {ny} px are smaller than the bead search window ({need} px)"
        )
    try:
        track = track_beads(
            stack, tilts, diameter, rotation_deg=rotation_deg, target_beads=target_beads, progress=None
        )
    except TrackingError as e:
        # advice on the diameter only where it was estimated: a given one is the user's to check
        advice = ADVICE if source.startswith("estimated") else f"check the stack and {source}"
        raise InputError(
            stack_path, None, f"{e}; {advice}" if "bead diameter" in str(e) else str(e)
        ) from None
    ids = tuple(range(1, track.n_beads + 1))
    keep = track.found.sum(axis=0) >= 1
    markers = io.MarkerSet(
        xy=track.xy[:, keep],
        mask=track.found[:, keep],
        marker_ids=tuple(i for i, k in zip(ids, keep, strict=True) if k),
        image_size=(nx, ny),
        pixel_size=pixel,
        source=stack_path,
    )
    settings = {
        "stack": stack_path,
        "tilts": tilts_path,
        "bead_diameter_px": diameter,
        "bead_diameter_source": source,
        "rotation_deg": rotation_deg,
        "target_beads": target_beads,
    }
    with out:
        io.write_imod_model(out.stage(".fid"), markers)
        io.write_markers_csv(out.stage(".csv"), markers)
        out.write_text("_track.json", record_to_json(track_record(track, tilts, settings)))
        if figure:
            out.write_bytes(
                "_track.png", render_track_figure(track, seed_image, tilts, os.path.basename(stack_path))
            )
        written = out.commit()
    return TrackedStack(track, written, out.path(".fid"), rotation_deg, source, (nx, ny))
