"""``lmalign align --local``: the local alignment of a solved series, written for IMOD's tilt."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core.local import LocalOptions, LocalSolution, align_local, check_local_model
from ..core.local_grid import MAX_PATCHES, patch_grid
from ..core.local_maps import patch_file_maps
from ..io.imod_local import LocalAlignment
from .record_markers import interpolated_z_factors
from .selection import mean_marker_positions
from .status import UsageError

__all__ = [
    "LocalOptions",
    "check_local_model",
    "check_local_grid",
    "check_min_fids",
    "LOCAL_SUFFIX",
    "file_view_local",
    "in_flattened_frame",
    "solve_local_alignment",
    "format_local_report",
]

#: IMOD's name for the local alignment file: ``<prefix>local.xf`` (Etomo's ``<set>local.xf``).
LOCAL_SUFFIX = "local.xf"


def file_view_local(
    local: LocalAlignment, view_index: np.ndarray, file_tilts_deg: np.ndarray
) -> LocalAlignment:
    """The local alignment with one entry per file view (``file_tilts_deg`` (n,), their nominal
    tilts): fitted views (``view_index``, fitting order -> file view) take theirs; views left out
    get delta 0 and the unit transform, as tiltalign writes for excluded views, and each patch's
    z factors interpolated in tilt, as the ``.zfac`` (``record_markers.interpolated_z_factors``)."""
    n_patches = local.delta_tilt_deg.shape[0]
    n_file_views = len(file_tilts_deg)
    dt = np.zeros((n_patches, n_file_views))
    xf = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (n_patches, n_file_views, 1, 1))
    dt[:, view_index] = local.delta_tilt_deg
    xf[:, view_index] = local.transforms
    zf = None
    if local.z_factors is not None:
        zf = np.zeros((n_patches, n_file_views, 2))
        zf[:, view_index] = local.z_factors
        solved = np.zeros(n_file_views, bool)
        solved[view_index] = True
        zf = np.stack([interpolated_z_factors(z, solved, file_tilts_deg) for z in zf])
    return dataclasses.replace(local, delta_tilt_deg=dt, transforms=xf, z_factors=zf)


@dataclasses.dataclass(frozen=True, eq=False)
class SolvedLocal:
    """A local alignment ready to write: the solution (fitting order), the file's contents (one
    entry per file view) and its options (for the record)."""

    solution: LocalSolution
    file: LocalAlignment
    options: LocalOptions


def in_flattened_frame(
    local: SolvedLocal,
    result,
    view_index,
    file_tilts_deg: np.ndarray,
    tilt_change_deg: float,
    global_xf: np.ndarray | None = None,
    x_tilt_deg: float = 0.0,
) -> SolvedLocal:
    """``local`` for a flattened series (``align --flatten``: its .tlt adds ``tilt_change_deg`` c
    and its volume is the solved one turned by c): where the file carries z factors, each patch's
    transforms and z factors fitted again with heights in that frame, as the global ``.zfac`` is
    (left in the solved frame they miss by 0.04-0.18 px for tilt changes of 1-4 deg); else
    unchanged (the transforms map tilt's projection, the same in either frame). ``global_xf``
    (k, 2, 3), fitting order: the flattened series' own ``.xf`` (``core.local_maps.flattened_pair``),
    into whose aligned stack the patches then map; ``x_tilt_deg``: its ``.xtilt`` value, which
    changes the height the z factors multiply (``core.local_maps.patch_file_maps``)."""
    if local.file.z_factors is None or (tilt_change_deg == 0.0 and x_tilt_deg == 0.0):
        return local
    solution = local.solution
    transforms, zfac = patch_file_maps(
        result, solution.views, solution.patches, True, tilt_change_deg, global_xf, x_tilt_deg
    )
    fitted = dataclasses.replace(solution.file, transforms=transforms, z_factors=zfac)
    file = file_view_local(fitted, np.asarray(view_index), file_tilts_deg)
    return dataclasses.replace(local, file=dataclasses.replace(file, pixel_size=local.file.pixel_size))


def solve_local_alignment(
    result, view_index, file_tilts_deg: np.ndarray, options: LocalOptions, pixel_size: float = 0.0
) -> SolvedLocal:
    """Solve the local alignment of ``result`` (ValueError when its model cannot take one), written
    for every file view (``file_tilts_deg`` (n,), their nominal tilts; ``view_index`` the fitted ones).

    ``pixel_size``: the aligned stack's pixel size (A) for the header, 0 (default) to keep IMOD's
    tilt from rescaling the grid (the "pixel-size trap": tilt multiplies the grid and shifts by
    header pixel / stack pixel unless LOCALSCALE is given).
    """
    solution = align_local(result, options)
    local = dataclasses.replace(
        file_view_local(solution.file, np.asarray(view_index), file_tilts_deg), pixel_size=float(pixel_size)
    )
    return SolvedLocal(solution, local, options)


#: Turns of the measured marker positions tried by :func:`check_local_grid`, degrees.
_GRID_TURNS_DEG = np.arange(0.0, 180.0, 2.0)


def check_local_grid(
    xy: np.ndarray, mask: np.ndarray, options: LocalOptions, option: str = "--local"
) -> None:
    """UsageError (its message starting with ``option``), before anything is solved, when the patch
    grid over the solved markers will be too large, as
    :func:`lmalign_jax.core.local_grid.checked_patch_grid` would refuse it after the solve. The
    solved (X, Y) are the measured positions (``xy`` (V, M, 2) image pixels, ``mask`` (V, M); each
    marker at its mean position over its views) turned by the tilt axis's angle, not known
    before the solve, and stretched across the axis by about 1 / mean |cos tilt|: every turn is
    tried (2 degree steps) without the stretch, and only a grid too large at every turn is refused
    here (the solve's own check takes the rest; a grid refused for the
    largest turn and stretch was often a valid one)."""
    means = mean_marker_positions(xy, mask)
    if not len(means):
        return
    centred = means - means.mean(axis=0)
    least, least_grid = None, None
    for turn in np.radians(_GRID_TURNS_DEG):
        c, s = np.cos(turn), np.sin(turn)
        grid = patch_grid(centred @ np.array([[c, s], [-s, c]]), options.patch_size, options.overlap)[0]
        if least is None or grid[0] * grid[1] < least:
            least, least_grid = grid[0] * grid[1], grid
    if least > MAX_PATCHES:
        (px, py), (fx, fy) = options.patch_size, options.overlap
        raise UsageError(
            f"{option}: a patch size of {px} x {py} px with overlap {fx:g}, {fy:g} makes a grid of at least "
            f"{least_grid[0]} x {least_grid[1]} = {least} patches over the markers (measured extent "
            f"{np.ptp(means[:, 0]):.0f} x {np.ptp(means[:, 1]):.0f} px, whatever the tilt axis's angle), "
            f"more than {MAX_PATCHES}; use larger patches or less overlap"
        )


def check_min_fids(options: LocalOptions, n_markers: int, option: str = "--min-fids") -> None:
    """UsageError (its message starting with ``option``: what set ``options.min_fids``), before
    anything is solved, when no patch can hold the markers ``options.min_fids`` asks for from the
    ``n_markers`` markers fitted: a patch's box grows until it holds them or spans the image
    twice over (``core.local_grid.select_patch_markers``), so a total above ``n_markers`` is never
    reached; the markers' surfaces are the two sides of their least-squares plane, known only once
    they are solved, and the smaller side holds at most half of them, so a per-surface minimum
    above ``n_markers / 2`` is never reached either. Anything else may be (the solve decides,
    patch by patch). Every patch would keep the global solution, after a solve that may take
    minutes growing boxes on a large field."""
    total, each = options.min_fids
    if total > n_markers:
        raise UsageError(
            f"{option}: a patch must hold at least {total} markers, but the series has only {n_markers} "
            f"markers to fit, so no patch can (each would keep the global solution); give a total of at "
            f"most {n_markers}"
        )
    if 2 * each > n_markers:
        raise UsageError(
            f"{option}: {each} markers on each of the two surfaces need at least 2 x {each} = {2 * each} "
            f"markers, but the series has only {n_markers} markers to fit, so no patch can hold them (each "
            f"would keep the global solution); give at most {n_markers // 2} per surface, 0 for no "
            "per-surface minimum, or analyse one surface (--surfaces 1)"
        )


def _what_the_file_holds(f: LocalAlignment, z_factors: np.ndarray | None = None) -> str:
    """What a local file of global solutions only holds: nothing beyond the global alignment (with
    its ``z_factors`` (V, 2), if any) for a rigid model; a deformation model's (shape) own
    variation across the field, patch by patch."""
    if f.is_global(z_factors):
        return "the local file equals the global alignment"
    return "the local file holds the global model's own variation across the field, patch by patch"


def format_local_report(solution: LocalSolution) -> str:
    """Per-patch residuals and the overall improvement, as text lines."""
    f = solution.file
    lines = [
        f" Local alignment: {f.n_patches[0]} x {f.n_patches[1]} patches, centres from ({f.start[0]}, "
        f"{f.start[1]}) every ({f.spacing[0]}, {f.spacing[1]}) px, solved in {solution.seconds:.2f} s",
        "  patch     centre     box         markers  rms global  rms local  drop/sigma^2  free  status",
    ]
    for p in solution.patches:
        lines.append(
            f"  ({p.index[0]:2d},{p.index[1]:2d}) ({p.centre[0]:5d},{p.centre[1]:5d}) "
            f"{p.box[0]:5d} x {p.box[1]:<5d} {p.n_markers:7d} "
            f"{p.global_rms_px:11.4f} {p.local_rms_px:10.4f} {p.chi2_drop:13.1f} {p.n_free:5d}  {p.status}"
        )
    lines.extend(f"  note: {n}" for n in solution.notes)
    n_kept = sum(p.kept_local for p in solution.patches)
    n_all = len(solution.patches)
    if not solution.keep_test:
        which = "every patch's own fit" + ("" if n_kept == n_all else " that could be solved (see above)")
        lines.append(f" Kept {n_kept} of {n_all} patches: {which} (--local-keep-all, as IMOD)")
    else:
        lines.append(
            f" Kept {n_kept} of {n_all} patches"
            + (f" ({_what_the_file_holds(f, solution.z_factors)})" if n_kept == 0 else "")
            + ": a patch keeps its own fit only when its fit with every marker weighted fully\n"
            "  lowers its sum of squares by more than fitting noise would (drop/sigma^2 > p + 3 sqrt(2p),\n"
            "  p that fit's free parameters, the record's test_n_free; robust weights scale it); the others\n"
            "  hold the global solution.\n"
            "  --local-keep-all keeps every patch's fit, as IMOD does"
        )
    if f.z_factors is not None:
        lines.append(
            " Each patch's z factors are in the file (the model's height term beyond tilt's formula): "
            "IMOD's tilt\n  applies them in place of the global ones when it is also given the .zfac "
            "written beside it\n  (ZFACTORFILE; without it, none); lmalign reconstruct applies them"
        )
    lines.append(
        f" Mean residual, markers fitted through the transforms as IMOD's tilt applies them: global "
        f"{solution.global_mean_px:.4f} px, local {solution.local_mean_px:.4f} px"
        + _change_text(solution.global_mean_px, solution.local_mean_px)
    )
    return "\n".join(lines) + "\n"


def _change_text(global_px: float, local_px: float) -> str:
    """`` (5.2% lower)``, `` (0.9% higher)``, `` (unchanged)``; nothing where there is no residual to
    compare with (noise-free points)."""
    if not global_px > 0:
        return ""
    change = 100.0 * (global_px - local_px) / global_px
    if round(change, 1) == 0:
        return " (unchanged)"
    return f" ({abs(change):.1f}% {'lower' if change > 0 else 'higher'})"
