"""A tomogram from a raw tilt series and its alignment (weighted FBP), written atomically.

The alignment is IMOD's pair (``.xf`` raw -> aligned transforms, ``.tlt`` tilt angles) or an
``lmalign align`` record read back (``workflow.alignment_inputs``, also what ``batch
--reconstruct`` reads for the series it has just solved). Every input is checked
before anything is computed; the tomogram is written through
:func:`lmalign_jax.io.mrc_volume.stream_volume` slab by slab, so it appears complete or not at all and
never sits in memory whole.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..core.local_apply import column_sampling, local_projection_matrices, uniform_patches, with_x_tilts
from ..core.shape_apply import shape_patches
from ..io.errors import InputError
from ..io.mrc import ViewSubset, first_non_finite_view, read_stack_header, read_stack_streamed
from ..io.mrc_volume import LAYOUTS, check_free_space, format_bytes, stream_volume
from ..recon import default_memory_bytes, filter_response, reconstruct
from ..recon.fbp import non_finite_view_problem, slice_count
from ..recon.local_backprojection import LocalSampling, reconstruct_local
from ..recon.local_sirt import local_sirt_bytes, sirt_local_streamed
from ..recon.sheets import DEFAULT_TOLERANCE_PX, PatchGrid
from ..recon.sirt import SirtOptions
from ..recon.warp_backprojection import reconstruct_warp
from ..recon.xtilt_backprojection import (
    common_x_tilt,
    reads_tilted_cheaply,
    reconstruct_local_x_tilted,
    reconstruct_x_tilted,
)
from .alignment_inputs import Alignment
from .local_file import read_checked_local
from .series import check_tilts_vary
from .status import UsageError, print_note, print_warning

FILTER_CHOICES = ("ramp", "shepp-logan", "hamming", "cosine", "hann", "none")
#: The largest ``local_tolerance_px`` taken: a read farther from its voxel's position blurs sharp
#: detail by more than 10% (bead peaks 0.90 of the exact reads' at 1 px, 0.94 at 0.2 px).
MAX_TOLERANCE_PX = 1.0


def check_stack_pixels(stack_path: str, skip_views=()) -> None:
    """InputError naming ``stack_path`` and the (1-based) view when a view of the stack, other than
    the 0-based ``skip_views`` (left out of the tomogram), holds a non-finite value (NaN or
    infinity), as the reconstruction finds them; reads the stack memory-mapped, one view at a time."""
    stack = read_stack_streamed(stack_path)
    kept = np.setdiff1d(np.arange(len(stack)), np.asarray(list(skip_views), dtype=np.int64))
    bad = first_non_finite_view(ViewSubset(stack, kept))
    if bad is not None:
        raise InputError(stack_path, None, non_finite_view_problem(int(kept[bad])))


def _x_tilt_words(x_tilts_deg: np.ndarray) -> str:
    """One X-axis tilt (``-1.94 deg``) or the range of several (``-2.1 to 0.5 deg``)."""
    low, high = float(np.min(x_tilts_deg)), float(np.max(x_tilts_deg))
    return f"{low:.2f} deg" if low == high else f"{low:.2f} to {high:.2f} deg"


def _progress_bar(total: int, quiet: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(
        total=total,
        desc="lmalign: reconstructing",
        unit="step",
        file=sys.stderr,
        disable=True if quiet else None,
        leave=False,
        dynamic_ncols=True,
    )


def reconstruction_label(
    thickness: float,
    binning: int,
    filter: str,
    radial=None,
    sirtlike=None,
    sirt=None,
    layout="zyx",
    local=None,
) -> str:
    """The MRC header label of a tomogram made with these settings (``lmalign batch --resume``
    compares it to decide whether a tomogram is already made)."""
    label = f"lmalign_jax reconstruct: thickness {thickness:g} bin {binning} filter {filter}"
    label += f" radial {radial[0]:g} {radial[1]:g}" if radial else ""
    label += f" sirtlike {sirtlike}" if sirtlike else ""
    label += f" sirt {sirt.iterations}{' pos' if sirt.positivity else ''}" if sirt else ""
    label += f" layout {layout}" if layout != "zyx" else ""
    return label + (" local" if local else "")


# Thickness beyond this many times the image width is refused as a likely typo.
MAX_THICKNESS_RATIO = 16
#: Fewest pixels along each side of the (binned) images a tomogram is made from.
MIN_IMAGE_PX = 4


@dataclass(frozen=True)
class OptionNames:
    """The command-line options the reconstruction's checks name: ``lmalign reconstruct``'s by
    default; ``lmalign align --reconstruct NZ`` names its own (``bin`` None: it has no binning)."""

    thickness: str = "--thickness"
    bin: str | None = "--bin"
    out: str = "--out"  # the option that chooses the output (and so its folder)


#: ``lmalign align --reconstruct NZ``: the thickness is --reconstruct's value, the folder --out-dir.
ALIGN_OPTIONS = OptionNames(thickness="--reconstruct", bin=None, out="--out-dir")


def volume_shape(
    nx: int,
    ny: int,
    thickness: float,
    binning: int = 1,
    options: OptionNames = OptionNames(),
    stack: str | None = None,
) -> tuple[int, int, int]:
    """(NZ, NY, NX) of the tomogram of ``thickness`` unbinned pixels from ``nx`` x ``ny`` images
    (of the file ``stack``) binned by ``binning``; InputError naming ``stack`` for images too small
    to reconstruct, UsageError naming ``options`` for a bin too large or a thickness out of bounds
    (under one slice, more than MAX_THICKNESS_RATIO times the images)."""
    thick = options.thickness
    if not (math.isfinite(thickness) and thickness > 0):
        raise UsageError(f"{thick} must be a positive number of (unbinned) pixels, got {thickness:g}")
    if min(nx, ny) < MIN_IMAGE_PX:
        raise InputError(
            stack or "the stack",
            None,
            f"its {nx} x {ny} pixel images are too small to reconstruct (a tomogram needs at least "
            f"{MIN_IMAGE_PX} x {MIN_IMAGE_PX})",
        )
    if options.bin is not None and (nx // binning < MIN_IMAGE_PX or ny // binning < MIN_IMAGE_PX):
        raise UsageError(
            f"{options.bin} {binning} leaves {nx // binning} x {ny // binning} pixels of the {nx} x {ny} "
            f"images; use a smaller {options.bin} (at most {min(nx, ny) // MIN_IMAGE_PX})"
        )
    binned = f" with {options.bin} {binning}" if options.bin is not None and binning != 1 else ""
    if thickness / binning < 1:
        raise UsageError(
            f"{thick} {thickness:g}{binned} gives less than one slice; the thickness is in unbinned pixels"
        )
    if thickness > MAX_THICKNESS_RATIO * max(nx, ny):
        raise UsageError(
            f"{thick} {thickness:g} is more than {MAX_THICKNESS_RATIO} times the {nx} x {ny} images; "
            "the thickness is in unbinned pixels"
        )
    return slice_count(thickness, binning), ny // binning, nx // binning


def check_room(out_path: str, shape, options: OptionNames = OptionNames()) -> None:
    """``io.mrc_volume.check_free_space`` (before any work: ``align`` creates its --out-dir
    later), its advice naming ``options``."""
    binning = f", a larger {options.bin}" if options.bin is not None else ""
    check_free_space(
        out_path, shape, f"choose another folder ({options.out}){binning} or a smaller {options.thickness}"
    )


def _check_kept_views(keep: np.ndarray, n_views: int, tilts_deg: np.ndarray, reason: str) -> None:
    """UsageError when leaving views out keeps fewer than two, or only views at one tilt."""
    if keep.size < 2 or np.ptp(tilts_deg[keep]) == 0:
        kept = (
            "no view"
            if keep.size == 0
            else "one view"
            if keep.size == 1
            else f"only views at {tilts_deg[keep][0]:g} degrees"
        )
        raise UsageError(
            f"leaving out {n_views - keep.size} of the {n_views} views ({reason}) keeps {kept}: a "
            "tomogram needs views at two or more tilts"
        )


def view_words(views: np.ndarray) -> str:
    """1-based view numbers as IMOD lists them: ``1-3, 7``."""
    runs, start = [], None
    for k, v in enumerate(views):
        if start is None:
            start = v
        if k + 1 == len(views) or views[k + 1] != v + 1:
            runs.append(f"{start + 1}" if start == v else f"{start + 1}-{v + 1}")
            start = None
    return ", ".join(runs)


def check_view_counts(stack_path: str, n_views: int, alignment: Alignment) -> None:
    """InputError naming the file whose line count differs from the stack's ``n_views`` sections:
    the alignment's transforms, tilt angles, or z factors (one line per view)."""
    counts = [
        ("transforms", alignment.xf_A.shape[0], alignment.xf_source),
        ("tilt angles", alignment.tilts_deg.size, alignment.tilt_source),
    ]
    if alignment.z_factors is not None:
        counts.append(("z factor lines", alignment.z_factors.shape[0], alignment.z_source))
    for name, count, where in counts:
        if count != n_views:
            raise InputError(
                where,
                None,
                f"has {count} {name} but the stack {stack_path} has {n_views} sections (one per view)",
            )


#: Largest and smallest magnification of a view's transform taken as an alignment.
MAX_XF_SCALE = 10.0


def check_transforms_reach(alignment: Alignment, nx: int, ny: int, views: np.ndarray) -> None:
    """InputError naming the line (a record's view) of the first of ``views`` whose transform is
    not an alignment of an ``nx`` x ``ny`` stack's image: a magnification beyond
    :data:`MAX_XF_SCALE` either way, or the whole raw image put outside the tomogram's field (the
    view would add nothing: a hand edit, or a file for another stack)."""
    views = np.asarray(views, dtype=np.int64)
    a, d = alignment.xf_A[views], alignment.xf_shift[views]
    scales = np.linalg.svd(a, compute_uv=False)  # (k, 2), largest first
    scaled = (scales[:, 0] > MAX_XF_SCALE) | (scales[:, 1] < 1 / MAX_XF_SCALE)
    corners = np.array([[-nx, -ny], [nx, -ny], [-nx, ny], [nx, ny]], float) / 2
    half = np.array([nx, ny], float) / 2
    placed = np.einsum("kij,cj->kci", a, corners) + d[:, None, :]  # (k, 4, 2)
    outside = np.any(np.all(placed > half, axis=1) | np.all(placed < -half, axis=1), axis=1)
    bad = np.flatnonzero(scaled | outside)
    if not bad.size:
        return
    k = int(bad[0])
    v = int(views[k])
    line, at = (None, f"view {v + 1}: ") if alignment.xf_source.lower().endswith(".json") else (v + 1, "")
    if scaled[k]:
        worst = scales[k, 0] if scales[k, 0] > MAX_XF_SCALE else scales[k, 1]
        problem = (
            f"the transform scales the view by {worst:.3g}: not an alignment (at most {MAX_XF_SCALE:g}x "
            "either way)"
        )
    else:
        problem = (
            f"the shift ({d[k, 0]:g}, {d[k, 1]:g}) px puts the whole view outside the {nx} x {ny} px "
            "field: not an alignment of this stack (a file for another one, or a bad line; --exclude "
            "leaves a bad view out)"
        )
    raise InputError(alignment.xf_source, line, at + problem)


def reconstruct_to_file(
    stack_path: str,
    alignment: Alignment,
    out_path: str,
    *,
    thickness: float,
    binning: int = 1,
    filter: str = "ramp",
    radial=None,
    sirtlike: int | None = None,
    sirt_iterations: int | None = None,
    positivity: bool = False,
    layout: str = "zyx",
    memory_gb: float | None = None,
    quiet: bool = False,
    warn=print_warning,
    note=print_note,
    local_path: str | None = None,
    local_tolerance_px: float | None = None,
    exclude_views=None,
    exclusion_reason: str | None = None,
    options: OptionNames = OptionNames(),
) -> dict:
    """Check ``alignment`` against the stack, reconstruct, write ``out_path`` atomically.

    The tomogram streams to disk slab by slab (:func:`lmalign_jax.io.mrc_volume.stream_volume`) in
    ``layout`` (``"zyx"`` or ``"imod-tilt"``), holding at most about ``memory_gb`` of views and
    slabs at once (default: half the available memory, at most 4 GB). Returns a summary dict
    (shape, voxel size, seconds, slab plan). Raises ``InputError``/``UsageError`` for bad input
    (including a disk without room for the output) before anything is written.

    ``local_path``: an IMOD local alignment file applied position by position after the global
    transforms (``recon.reconstruct_local``, as IMOD's tilt with LOCALFILE), streamed the same
    way (FBP, any filter, ``--sirtlike``), voxels read within ``local_tolerance_px`` of their
    own position (``recon.sheets``; 0: each at its own; None: ``DEFAULT_TOLERANCE_PX``; it applies
    to every reconstruction read through patches: a local file, z factors, X-axis tilts that
    differ by view, a shape record); with ``alignment.z_factors`` its own
    per-patch z factors replace them, as tilt takes them (a file without z factors gives none:
    the alignment's are then dropped, with a warning), and without, a file's are unused; a local
    tilt or X-axis tilt outside -90..90 degrees is an InputError; SIRT through it
    (``recon.local_sirt``, exact) holds the aligned views whole, refused when ``memory_gb`` is
    too small for them.
    ``alignment.z_factors`` (a luther or diez record's height-dependent part beyond tilt's
    formula, what the IMOD export writes as ``.zfac``) are applied as tilt's ZFACTORFILE, through
    one patch per view (the local back-projector with one affine map: no sheet drifts).
    ``alignment.x_tilts_deg`` (tilt's XTILTFILE minus XAXISTILT, a flattened record's .xtilt) tilt
    every view's projection about X the same way, and add to a local file's X-axis tilt deltas
    (a warp model's sampling tilts each voxel about X before its warp); one X-axis tilt for every
    kept view, alone, is reconstructed by FBP as tilt does it, the untilted back-projection read
    tilted (``recon.xtilt_backprojection``), where that costs at most
    ``MAX_LAB_VOXELS_PER_VOXEL`` of its voxels per output voxel (``reads_tilted_cheaply``), else
    through sheets; with a local file, z factors or a shape too (or in that small memory), FBP
    through sheets reads in the frame sheared by that one tilt, where a row's reads keep their
    detector columns (``reconstruct_local_x_tilted``: one interpolation in depth instead of a
    second one across columns).
    ``exclude_views``: 0-based views left out of the tomogram (tilt's EXCLUDELIST; their transforms,
    tilts and patch maps too); None: the alignment's ``excluded_views`` (a record's unfitted views,
    as Etomo copies the alignment's ExcludeList into tilt.com's EXCLUDELIST);
    ``exclusion_reason``: why, for the note naming them.
    ``options``: the command-line options the messages name (``reconstruct``'s by default).
    """
    n_views, ny, nx, pixel = read_stack_header(stack_path)
    check_view_counts(stack_path, n_views, alignment)
    if n_views == 1:
        raise InputError(
            stack_path, None, "has 1 view: a tomogram needs views at two or more different tilts"
        )
    check_tilts_vary(alignment.tilts_deg, alignment.tilt_source, "a tomogram needs views at different tilts")
    left_out = alignment.excluded_views if exclude_views is None else exclude_views
    keep = np.setdiff1d(np.arange(n_views), np.asarray([] if left_out is None else left_out, dtype=np.int64))
    if exclusion_reason is None:
        exclusion_reason = (
            f"excluded from the alignment {alignment.source}" if exclude_views is None else "exclude_views"
        )
    if keep.size < n_views:
        _check_kept_views(keep, n_views, alignment.tilts_deg, exclusion_reason)
    if alignment.image_size is not None and (
        abs(alignment.image_size[0] - nx) > 0.5 or abs(alignment.image_size[1] - ny) > 0.5
    ):
        ax, ay = alignment.image_size
        raise InputError(
            stack_path,
            None,
            f"images are {nx} x {ny} pixels but the alignment {alignment.source} was made for "
            f"{ax:g} x {ay:g}; reconstruct the stack the markers were picked on (use --bin to bin it)",
        )
    if min(nx, ny) >= MIN_IMAGE_PX and (nx // binning < 1 or ny // binning < 1):
        raise UsageError(f"{options.bin} {binning} is larger than the {nx} x {ny} images")
    shape = volume_shape(nx, ny, thickness, binning, options, stack_path)  # before the filter
    check_transforms_reach(alignment, nx, ny, keep)
    try:
        filter_response(nx // binning, filter, radial)
    except ValueError as e:
        raise UsageError(f"--filter/--radial: {e}") from None
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    sirt = None
    if sirt_iterations is not None:
        try:
            sirt = SirtOptions(iterations=sirt_iterations, positivity=positivity)
        except ValueError as e:
            raise UsageError(f"--sirt: {e}") from None
    if sirtlike is not None and sirtlike < 1:
        raise UsageError(f"--sirtlike must be at least 1 iteration, got {sirtlike}")
    if memory_gb is not None and not (0 < memory_gb < 1e6):
        raise UsageError(f"--memory must be a positive number of GB (below 1e6), got {memory_gb:g}")
    memory_bytes = None if memory_gb is None else int(memory_gb * 1e9)
    header_pixel = pixel  # None: the stack records no pixel size
    if os.path.exists(out_path) and not os.path.isfile(out_path):
        raise UsageError(
            f"{out_path} exists and is not a regular file (a device, pipe or socket, which writing the "
            f"tomogram would replace); choose another {options.out}"
        )
    check_room(out_path, shape, options)
    if pixel is None:
        warn(
            f"{stack_path}: the header has no pixel size; the tomogram's voxel size is written as "
            f"{binning:g} A (1 A per pixel)"
        )
        pixel = 1.0
    voxel = pixel * binning
    warp = alignment.warp
    for model, given in (("warp", warp), ("shape", alignment.shape)):
        if given is not None and local_path is not None:
            raise UsageError(
                f"{alignment.source} is a {model} model's alignment, applied position by position; it does "
                "not combine with --local (align the series with a rigid model for a local alignment)"
            )
    if warp is not None and sirt is not None:
        warn(f"{alignment.source}: --sirt uses the warp model's rigid part only (its warp is applied by FBP)")
        warp = None
    x_tilts = alignment.x_tilts_deg
    if warp is not None and x_tilts is not None:  # its sampling tilts each voxel about X first
        warp = warp._replace(x_tilts_deg=x_tilts)
    local = None
    if local_path is not None:
        local = read_checked_local(local_path, alignment, (nx, ny), header_pixel, warn)
    zfac = alignment.z_factors  # None for a warp or shape model (their sampling carries the height)
    if local is not None and zfac is None and local.z_factors is not None:
        # a record's factors too small to apply alone (its export's .zfac, with which tilt uses the
        # file's own): the patches' own are applied
        zfac = alignment.small_z_factors
        if zfac is None and np.any(local.z_factors != 0):
            warn(
                f"{local_path} carries z factors, which (as IMOD's tilt does without a ZFACTORFILE) are "
                "not applied: give --zfac with the .zfac written beside it (or --alignment, the record)"
            )
    if local is not None and zfac is not None and local.z_factors is None:
        # tilt.f90: with a local file, each patch's own z factors replace the global ones, and a
        # file without them gives its patches none
        warn(
            f"{local_path} has no z factors: as IMOD's tilt does with a local file, the alignment's "
            "z factors are not applied (its patches were fitted without them)"
        )
        zfac = None
    # no patch kept: the same volume (tested), faster without the local reads
    if local is not None and local.is_global(zfac):
        if not quiet:
            note(f"{local_path}: every patch holds the global alignment; reconstructing with it alone")
        local = local_path = None
    tolerance = DEFAULT_TOLERANCE_PX if local_tolerance_px is None else float(local_tolerance_px)
    # X-axis tilts that differ by so little that no voxel moves more than the tolerance are read as one
    common = None if x_tilts is None or sirt is not None else common_x_tilt(x_tilts[keep], shape, tolerance)
    read_as_one = common is not None and np.ptp(x_tilts[keep]) > 0
    if read_as_one:
        if not quiet:
            note(
                f"the X-axis tilts of {alignment.x_tilt_source} ({np.min(x_tilts[keep]):.3f} to "
                f"{np.max(x_tilts[keep]):.3f} deg) are read as one, {common[0]:.3f} deg: no voxel moves more "
                f"than {common[1]:.2g} px (--local-tolerance {tolerance:g})"
            )
        x_tilts = x_tilts.copy()
        x_tilts[keep] = common[0]
    # per-patch maps the local back-projector applies: (grid, mats, shifts), unbinned pixels
    patch_maps = one_x_tilt = None
    if local is not None:  # with z factors, the file's own per patch
        patch_maps = (
            local,
            *local_projection_matrices(local, alignment.tilts_deg, xtilts_deg=x_tilts, z_factors=zfac),
        )
    elif alignment.shape is not None:
        xf = np.concatenate([alignment.xf_A, alignment.xf_shift[:, :, None]], -1)
        grid, mats, shifts = shape_patches(*alignment.shape, alignment.tilts_deg, xf, (nx, ny))
        patch_maps = (grid, mats if x_tilts is None else with_x_tilts(mats, x_tilts), shifts)
    elif (
        warp is None
        and zfac is None
        and x_tilts is not None
        and sirt is None
        and np.ptp(x_tilts[keep]) == 0
        and reads_tilted_cheaply(float(x_tilts[keep][0]), keep.size, shape, memory_bytes)
    ):  # the untilted back-projection, read tilted (recon.xtilt_backprojection)
        one_x_tilt = float(x_tilts[keep][0])
    elif warp is None and (zfac is not None or x_tilts is not None):
        whole = 4 * (keep.size + 2) * int(np.prod(shape))  # any slab height: the choice is memory's
        if (
            not quiet
            and zfac is None
            and sirt is None
            and np.ptp(x_tilts[keep]) == 0
            and reads_tilted_cheaply(float(x_tilts[keep][0]), keep.size, shape, whole)
        ):
            note(
                "the X-axis tilt is read through sheets, not as the untilted volume read tilted, which in "
                f"slabs as thin as --memory {format_bytes(memory_bytes or default_memory_bytes())} allows "
                "costs more: the tomogram differs slightly (bead peaks about 1% lower); more --memory "
                "reads it tilted"
            )
        patch_maps = uniform_patches(
            *local_projection_matrices(None, alignment.tilts_deg, xtilts_deg=x_tilts, z_factors=zfac),
            (nx, ny),
        )
    if patch_maps is not None:
        need, budget = local_sirt_bytes(keep.size, shape), memory_bytes or default_memory_bytes()
        if (
            sirt is not None
            and need > budget
            and local is None
            and alignment.shape is None
            and x_tilts is None
        ):
            warn(
                f"{alignment.source}: its z factors are not applied with --sirt within --memory "
                f"(they need about {format_bytes(need)} for the aligned views held whole; raise "
                "--memory or --bin more to apply them)"
            )
            patch_maps = zfac = None
        elif sirt is not None and need > budget:
            given = (
                "--local"
                if local is not None
                else "a shape model's alignment"
                if alignment.shape is not None
                else f"an X-axis tilt ({alignment.x_tilt_source})"
            )
            raise UsageError(
                f"{given} with --sirt holds the aligned views whole (a voxel's rays reach other slabs' "
                f"rows): it needs about {format_bytes(need)} and --memory allows {format_bytes(budget)}; "
                "raise --memory, --bin more, or use FBP (--sirtlike N)"
            )
    through_sheets = patch_maps is not None and sirt is None and tolerance > 0
    if (
        not quiet
        and local_tolerance_px is not None
        and (patch_maps is None or sirt is not None)
        and not read_as_one
    ):
        note(
            f"--local-tolerance {local_tolerance_px:g} is not used: this reconstruction reads no sheets (FBP "
            "through a local file, z factors, X-axis tilts that differ by view or a shape model does)"
        )
    # one X-axis tilt for every kept view: the sheets read in the frame sheared by it, where a
    # row's reads stay on their detector columns (recon.xtilt_backprojection.reconstruct_local_x_tilted)
    sheared_x_tilt = None
    if through_sheets and x_tilts is not None and np.ptp(x_tilts[keep]) == 0 and x_tilts[keep][0] != 0:
        sheared_x_tilt = float(x_tilts[keep][0])
    if (
        not quiet
        and through_sheets
        and sheared_x_tilt is None
        and x_tilts is not None
        and np.any(x_tilts[keep] != 0)
    ):
        note(
            "X-axis tilts that differ by view are read through sheets, which blurs sharp detail a little (a "
            "row's reads move across detector columns with its height: bead peaks 3-12% below exact reads at "
            "0.5-20 deg); --local-tolerance 0 reads every voxel at its own position (slower)"
        )
    if patch_maps is not None and sirt is not None:  # sirt_local_streamed's two scratch volumes too
        check_free_space(
            out_path,
            shape,
            f"choose another folder ({options.out}) or use FBP (--sirtlike N)",
            what="the tomogram and --sirt's two scratch volumes of its size beside it",
            copies=3,
        )
    stack = read_stack_streamed(stack_path)
    if keep.size < n_views:  # tilt's EXCLUDELIST: the views, their alignment and patch maps
        if not quiet:
            note(
                f"leaving out view{'s' * (n_views - keep.size > 1)} "
                f"{view_words(np.setdiff1d(np.arange(n_views), keep))} ({exclusion_reason})"
            )
        stack = ViewSubset(stack, keep)
        if warp is not None:
            warp = type(warp)(*(None if part is None else np.asarray(part)[keep] for part in warp))
        if patch_maps is not None:
            patch_maps = (patch_maps[0], patch_maps[1][:, keep], patch_maps[2][:, keep])
    if not quiet:
        note(
            f"reconstructing {keep.size} views of {nx} x {ny} px (bin {binning}"
            + (f", filter {filter}" if sirt is None else "")
            + (f", radial {radial[0]:g} {radial[1]:g}" if radial else "")
            + (f", SIRT-like {sirtlike}" if sirtlike else "")
            + (f", SIRT {sirt.iterations} iterations" if sirt else "")
            + (f", local alignment {local_path}" if local is not None else "")
            + (", the warp model's per-view warp" if warp is not None else "")
            + (", the shape model's per-view shape" if alignment.shape is not None else "")
            + (", the alignment's z factors" if zfac is not None else "")
            + (
                f", X-axis tilt {_x_tilt_words(x_tilts[keep])} from {alignment.x_tilt_source}"
                if x_tilts is not None
                else ""
            )
            + f") into {shape[0]} x {shape[1]} x {shape[2]} voxels (NZ x NY x NX) ..."
        )
    bar = _progress_bar(shape[1], quiet)

    def progress(done, total):
        if bar is not None:
            bar.update(done - bar.n)

    start = time.perf_counter()
    try:
        label = reconstruction_label(thickness, binning, filter, radial, sirtlike, sirt, layout, local_path)[
            :80
        ]
        with stream_volume(out_path, shape, voxel, label=label, layout=layout) as vol:
            try:
                views = (stack, alignment.xf_A[keep], alignment.xf_shift[keep], alignment.tilts_deg[keep])
                streamed = dict(binning=binning, out=vol, progress=progress)
                fbp = dict(
                    streamed,
                    filter=filter,
                    radial=None if radial is None else tuple(radial),
                    sirtlike=sirtlike,
                    memory_bytes=memory_bytes,
                )
                if patch_maps is not None:
                    of, mats, shifts = patch_maps
                    grid = PatchGrid(of.n_patches, of.start, of.spacing, binning, shape[1:])
                    columns = column_sampling(of, mats, shifts, shape[1:], binning)
                    sampling = LocalSampling(*columns, grid=grid)
                if warp is not None:
                    reconstruct_warp(*views, warp, thickness, **fbp)
                elif one_x_tilt is not None:
                    reconstruct_x_tilted(*views, one_x_tilt, thickness, **fbp)
                elif patch_maps is None:
                    reconstruct(*views, thickness, sirt=sirt, **fbp)
                elif sirt is not None:
                    scratch = os.path.dirname(os.path.abspath(out_path))
                    sirt_local_streamed(*views, sampling, thickness, sirt, scratch_dir=scratch, **streamed)
                elif sheared_x_tilt is not None:
                    reconstruct_local_x_tilted(
                        *views, sampling, sheared_x_tilt, thickness, tolerance_px=tolerance, **fbp
                    )
                else:
                    reconstruct_local(*views, sampling, thickness, tolerance_px=tolerance, **fbp)
            except InputError:
                raise
            except ValueError as e:  # the reconstructor's checks (singular transforms, non-finite data)
                with_local = f" and {local_path}" if local is not None else ""
                raise UsageError(
                    f"cannot reconstruct {stack_path} with {alignment.source}{with_local}: {e}"
                ) from None
    finally:
        if bar is not None:
            bar.close()
    return {
        "shape": shape,
        "voxel_size_A": voxel,
        "seconds": time.perf_counter() - start,
        "n_views": int(keep.size),
    }
