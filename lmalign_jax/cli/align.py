"""``lmalign align``: its subcommand, and the run that reads, fits, reports and writes one series
(the option checks and the option groups other commands share are in :mod:`.align_options`)."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

from ..core.settings import is_fixed
from ..export.imod import xtilt_file_value_deg
from ..io.errors import InputError
from ..io.mrc import read_stack_header
from ..io.outputs import OutputSet
from ..models import MODELS
from ..report import format_summary, prefetch_matplotlib
from ..report.record import mark_record_failed
from ..solve import Status
from ..workflow import (
    ALIGN_OUTPUTS,
    AlignSettings,
    check_output_folder,
    compare_with_truth,
    fit_series,
    observations_for_fit,
    parse_view_list,
    read_series,
    report_selection,
    select_views,
    write_alignment,
)
from ..workflow.exporting import check_export, check_export_folder, parse_export_targets
from ..workflow.fitting import check_deformation_determined
from ..workflow.initial import read_initial_alignment
from ..workflow.local import (
    LOCAL_SUFFIX,
    LocalOptions,
    check_local_grid,
    check_min_fids,
    format_local_report,
    solve_local_alignment,
)
from ..workflow.reconstruction import check_stack_pixels
from ..workflow.series import read_tilt_file
from ..workflow.tracking import is_stack_path
from .align_options import (
    add_local_options,
    add_robust_options,
    add_solver_options,
    local_options_from_args,
    settings_from_args,
)
from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    HelpFormatter,
    Progress,
    UsageError,
    check_count,
    file_stem,
    note,
    warn,
)
from .export import export_after_align
from .imod_com import (
    add_imod_options,
    apply_tiltalign_com,
    check_tilt_offset,
    min_fids_option,
    patch_grid_option,
)
from .track import (
    add_stack_options,
    check_reconstruct_option,
    check_reconstruct_stack,
    reconstruct_after_align,
    track_for_align,
)

#: Every file align may write: the outputs, a flattened series' .xtilt, a local file and its .zfac.
EVERY_ALIGN_OUTPUT = ALIGN_OUTPUTS + (".xtilt", ".zfac", LOCAL_SUFFIX)


def print_stage_line(st) -> None:
    """One line per finished stage, on stderr while the alignment runs."""
    if sys.stderr.isatty():
        sys.stderr.write("\r")  # over the running elapsed-time line
    note(
        f"  stage {st.name:<8} {st.iterations:4d} iterations {st.seconds:7.2f} s  rms "
        f"{st.rms_residual_px:.4f} px  {st.status}"
    )


def run_align(args) -> int:
    """``lmalign align``; a raw stack as MARKERS is tracked first (``lmalign track``). The options
    are checked before anything is tracked or solved."""
    if args.imod_com is not None:  # the command line's own options win
        apply_tiltalign_com(args)
    settings, local = settings_from_args(args), local_options_from_args(args)
    check_count(args.worst, "--worst", low=0)
    if args.angle_offset is not None and is_stack_path(args.markers) and args.tilts is not None:
        check_tilt_offset(read_tilt_file(args.tilts)[0], args.angle_offset)  # before the tracking
    markers, prefix, stack, rotation = args.markers, args.prefix, args.stack, args.rotation
    out_prefix = prefix or os.path.splitext(os.path.basename(args.markers))[0]
    # what --export needs is checked before tracking and solving; the pixel size once it is read
    targets = parse_export_targets(args.export, "--export") if args.export else ()
    check_export(targets, out_prefix, args.pixel_size, None)
    check_export_folder(targets, args.out_dir, out_prefix)

    def ready_to_solve(inputs) -> None:  # the markers read: what the export and tomogram need
        pixel = args.pixel_size if args.pixel_size is not None else inputs.pixel_size
        check_export(targets, out_prefix, pixel, "no input gives one (marker file, stack header or .mdoc)")
        if args.reconstruct is not None:
            check_reconstruct_stack(recon_stack, inputs.image_size)
            # a NaN pixel, found while reconstructing, came after the alignment's files were
            # written; a tracked stack's pixels were checked by the tracking
            if not is_stack_path(args.markers):  # views --exclude leaves out of the tomogram may hold any
                n_views = read_stack_header(recon_stack)[0]
                check_stack_pixels(recon_stack, excluded_views(args.exclude, n_views) if args.exclude else ())
        if local is not None:  # a grid too large for the markers is refused before the solve
            # named: --patch-size, --patch-overlap (as given), the --imod-com lines that set them
            check_local_grid(inputs.markers.xy, inputs.markers.mask, local, patch_grid_option(args))

    # the stack a tomogram is made from: MARKERS when it is one, else --stack (a marker file's stack)
    recon_stack = args.markers if is_stack_path(args.markers) else args.stack
    if args.reconstruct is not None:
        rec = OutputSet(args.out_dir, out_prefix).path(".rec.mrc")
        check_reconstruct_option(recon_stack, rec, args.reconstruct)
    finished = []  # the steps whose files stay if a later one is interrupted
    if is_stack_path(args.markers):
        # what the alignment would refuse once the stack is tracked is refused before: outputs
        # that would overwrite an input, and --exclude against the stack's views
        out = OutputSet(args.out_dir, out_prefix)
        check_output_folder(out, EVERY_ALIGN_OUTPUT, (args.markers, args.tilts))
        if args.exclude:
            excluded_views(args.exclude, read_stack_header(args.markers)[0])
        tracked = track_for_align(args)
        finished.append(f"the tracking's files ({', '.join(tracked.written)})")
        # the rotation as given (None: the .mdoc's, which the alignment reads and names, or estimated)
        markers, stack = tracked.fid_path, args.markers
        prefix = out_prefix
    try:
        code = align_and_report(
            markers,
            args.tilts,
            settings,
            out_dir=args.out_dir,
            prefix=prefix,
            stack=stack,
            image_size=args.image_size,
            rotation_deg=rotation,
            rotation_source=getattr(args, "rotation_source", None),
            image_size_source=getattr(args, "image_size_source", None),  # --imod-com's line
            angle_offset_deg=args.angle_offset or 0.0,
            angle_offset_source=getattr(args, "angle_offset_source", None),
            exclude=args.exclude,
            command=["lmalign", *getattr(args, "argv", [])],
            quiet=args.quiet,
            figure=not args.no_figure,
            errors=not args.no_errors,
            worst=args.worst,
            surfaces=args.surfaces,
            flatten=args.flatten,
            local=local,
            min_fids_option=min_fids_option(args) if local is not None else None,
            initial=args.initial,
            check_inputs=ready_to_solve,
            # --export imod writes these next (not stale then)
            exported=(".xtilt", ".zfac") if args.export and "imod" in args.export else (),
            pixel_size=args.pixel_size,
        )
        if code == EXIT_OK and args.reconstruct is not None:
            finished.append(f"the alignment's files in {args.out_dir}")
            out = OutputSet(args.out_dir, out_prefix)
            try:
                reconstruct_after_align(
                    recon_stack,
                    out.path(".json"),
                    out.path(".rec.mrc"),
                    args.reconstruct,
                    args.quiet,
                    local=bool(args.local),
                )
            except Exception as exc:  # the record says the command failed, and why; the error goes on
                bad_input = isinstance(exc, InputError | UsageError | OSError)
                reason = f"reconstruction: {exc}".splitlines()[0]
                mark_record_failed(out.path(".json"), EXIT_BAD_INPUT if bad_input else EXIT_INTERNAL, reason)
                raise
    except KeyboardInterrupt as e:  # what earlier steps wrote stays, and the message says so
        if finished:
            e.add_note(f"kept what was finished before it: {'; '.join(finished)}")
        raise
    return export_after_align(args, code, markers, prefix)


def excluded_views(exclude: str, n_views: int) -> list[int]:
    """``--exclude`` (IMOD's 1-based list) as 0-based views of ``n_views``; a UsageError when it
    is malformed, out of range or leaves no view."""
    views = parse_view_list(exclude, n_views)
    if len(set(views)) >= n_views:
        raise UsageError(f"--exclude {exclude}: leaves none of the {n_views} views")
    return views


def print_surfaces(analysis, flatten: bool, prefix: str) -> None:
    """The surface-analysis block in IMOD's layout, and what --flatten did."""
    print("\n".join(analysis.imod_log_lines()))
    if flatten:
        x_tilt = analysis.x_axis_tilt_deg
        xtilt = (
            f"X-axis tilt {x_tilt:.2f} deg (tilt's XAXISTILT; written as {xtilt_file_value_deg(x_tilt):.2f}, "
            "as tilt subtracts it from each view's)"
            if x_tilt is not None
            else "zeros (too few beads)"
        )
        print(
            f" Flattened: {analysis.tilt_angle_change_deg:+.2f} deg added to every tilt in {prefix}.tlt; "
            f"{xtilt} in {prefix}.xtilt (IMOD tilt's XTILTFILE; 'lmalign reconstruct --alignment' applies it)"
        )
        print(
            f" Suggested reconstruction thickness: {analysis.suggested_thickness_px} unbinned px (bead "
            f"centres span {analysis.thickness_px:.0f} px, centred {analysis.z_center_px:+.1f} px from the "
            "tilt axis)"
        )


def align_and_report(
    markers: str,
    tilts: str | None,
    settings: AlignSettings,
    *,
    out_dir: str,
    prefix: str | None = None,
    stack: str | None = None,
    image_size=None,
    rotation_deg: float | None = None,
    rotation_source: str | None = None,
    image_size_source: str | None = None,
    angle_offset_deg: float = 0.0,
    angle_offset_source: str | None = None,
    exclude: str | None = None,
    command=("lmalign",),
    quiet: bool = False,
    figure: bool = True,
    errors: bool = True,
    worst: int = 10,
    truth=None,
    surfaces: int | None = None,
    flatten: bool = False,
    local: LocalOptions | None = None,
    min_fids_option: str | None = None,
    initial: str | None = None,
    check_inputs=None,
    exported: tuple[str, ...] = (),
    pixel_size: float | None = None,
) -> int:
    """Read, select, align, write and print the summary of one series; returns the exit status.
    ``exclude``: IMOD's 1-based view list; ``truth``: the SyntheticSeries behind it (demo);
    ``surfaces``, ``flatten``: IMOD's surface analysis, and levelling the .tlt/.xtilt by it;
    ``initial``: an AreTomo .aln or IMOD .xf to start from; ``check_inputs(inputs)``: called
    with the series read, before anything is solved or written (it raises to refuse);
    ``min_fids_option``: what set ``local.min_fids``, for its error (default ``--min-fids T,E``);
    ``rotation_source``, ``image_size_source``: where ``rotation_deg`` and ``image_size`` came
    from when not the command line (an --imod-com line); ``pixel_size``: A per pixel, recorded in
    place of the inputs' (--pixel-size)."""
    prefix = prefix or os.path.splitext(os.path.basename(markers))[0]
    out = OutputSet(out_dir, prefix)
    check_output_folder(out, EVERY_ALIGN_OUTPUT, (markers, tilts, stack))
    if figure:
        prefetch_matplotlib()  # imported while the series is read and solved

    inputs = read_series(
        markers, tilts, stack_path=stack, image_size=image_size, rotation_deg=rotation_deg, warn=warn
    )
    if rotation_source is not None and inputs.rotation_source == "--rotation":
        inputs = dataclasses.replace(inputs, rotation_source=rotation_source)
    if image_size_source is not None and inputs.image_size_source == "--image-size":
        inputs = dataclasses.replace(inputs, image_size_source=image_size_source)
    if angle_offset_deg:
        check_tilt_offset(inputs.tilts_deg, angle_offset_deg)
        inputs = inputs.with_tilt_offset(
            angle_offset_deg, angle_offset_source or "--angle-offset (IMOD's AngleOffset)"
        )
    if pixel_size is not None:
        given = inputs.pixel_size
        if given and abs(given - pixel_size) > 1e-4 * pixel_size:
            warn(f"--pixel-size {pixel_size:g} A replaces the inputs' {given:g} A in the record")
        inputs = dataclasses.replace(inputs, pixel_size=float(pixel_size))
    if check_inputs is not None:
        check_inputs(inputs)
    sel = select_views(inputs, excluded_views(exclude, inputs.tilts_deg.size) if exclude else [], settings)
    report_selection(inputs, sel, warn)
    obs, marker_ids = observations_for_fit(inputs, sel, warn)
    one_surface = surfaces == 1 or (surfaces is None and flatten)  # --flatten alone analyses one
    per_surface_dropped = local is not None and one_surface and local.min_fids[1] > 0
    if per_surface_dropped:
        # tiltalign applies MinFidsTotalAndEachSurface's second number only with two surfaces
        # analysed: on one surface the least-squares plane splits the markers by noise
        local = dataclasses.replace(local, min_fids=(local.min_fids[0], 0))
    check_deformation_determined(obs, settings)  # a warp or shape the data cannot determine
    if local is not None:  # a minimum no patch can hold is refused before the solve
        option = min_fids_option or f"--min-fids {local.min_fids[0]},{local.min_fids[1]}"
        check_min_fids(local, obs.n_markers, option)
    start = read_initial_alignment(initial, inputs, sel, obs, settings.model, warn) if initial else None

    text = (
        f"lmalign: aligning {obs.n_views} views x {obs.n_markers} markers ({obs.n_observed} points), model "
        f"{settings.model}, stages {', '.join(settings.stages)} ..."
    )
    with Progress(text):
        fit = fit_series(
            obs,
            settings,
            rotation_deg=inputs.rotation_deg,
            with_errors=errors,
            progress=print_stage_line,
            start=start,
        )
    result, robust = fit.result, fit.robust
    if start is not None:  # the rotation the solve started from (the record's and the summary's)
        mean = np.degrees(np.angle(np.mean(np.exp(1j * np.radians(start.rotation_deg)))))
        inputs = dataclasses.replace(inputs, rotation_deg=float(mean), rotation_source=f"--initial {initial}")
    if robust is not None:
        for st in result.stages:
            print_stage_line(st)

    comparison = compare_with_truth(result, truth, sel, marker_ids) if truth is not None else None
    solved_local = None
    if per_surface_dropped and not quiet:
        print(" Local alignment: one surface analysed: no minimum of markers per surface")
    if local is not None and result.converged:
        try:
            solved_local = solve_local_alignment(result, sel.view_index, inputs.tilts_deg, local)
        except ValueError as e:
            raise UsageError(f"--local: {e}") from None
    written = write_alignment(
        out,
        inputs,
        sel,
        result,
        marker_ids,
        settings,
        command=command,
        errors=fit.errors,
        robust=robust,
        figure=figure,
        n_worst=worst,
        truth=comparison,
        surfaces=surfaces,
        flatten=flatten,
        warn=warn,
        local=solved_local,
    )
    record = written.record

    print(format_summary(record, per_view=not quiet), end="")
    if robust is not None:
        print(robust.to_text())
    if fit.errors is not None:
        se = fit.errors
        tilt_se = se.parameter_se("tilt")
        print(
            f" Standard errors (1 sigma): tilt median {np.median(tilt_se):.3f} deg, rotation median "
            f"{np.median(se.parameter_se('rotation')):.3f} deg, marker z median "
            f"{np.median(se.markers_se[:, 2]):.2f} px; leave-one-out RMS {se.loo_rms_px:.3f} px"
            + (
                f" ({se.loo_undetermined} point(s) have none: the fit without one of them is undetermined, "
                "as in a view with no more points than its own parameters need)"
                if se.loo_undetermined
                else ""
            )
        )
    if written.surfaces is not None:
        print_surfaces(written.surfaces, flatten, out.prefix)
    if solved_local is not None:
        print(format_local_report(solved_local.solution), end="")
    print(" Wrote " + ", ".join(written.written))
    suffixes = [s for s in EVERY_ALIGN_OUTPUT if s not in exported]
    not_updated = [s for s in suffixes if os.path.basename(out.path(s)) not in record["outputs"]]
    stale = [p for p in out.final_paths(not_updated) if os.path.exists(p)]
    if stale:
        warn(f"{', '.join(stale)} are from an earlier run and were not updated")
    if result.rotation_estimated_deg is not None and result.converged:
        rot = float(result.rotation_estimated_deg)
        other = rot - 180.0 if rot > 0 else rot + 180.0
        warn(
            f"the tilt axis was estimated from the tracks ({rot:.1f} deg): {other:.1f} deg fits the points "
            "as well and gives the tomogram of the other hand (mirrored); give the microscope's angle with "
            "--rotation (or an .mdoc) to be sure of the hand"
        )
    if not result.converged:
        report = out.path(".json") + (f" and {out.path('.png')}" if figure else "")
        print(
            f"lmalign: error: alignment did not converge ({result.status}); the report is in {report}, no "
            ".xf/.tlt written" + _unconverged_hint(result),
            file=sys.stderr,
        )
    elif written.exit_code != EXIT_OK:
        print("lmalign: error: the alignment does not match the known truth (see above)", file=sys.stderr)
    return written.exit_code


def _unconverged_hint(result) -> str:
    """What to try when the last stage ran out of iterations with the tilts free: markers that lie
    (nearly) in one plane leave the tilt angles' spread undetermined, so the solve crawls along
    that direction (a simulated series of thickness 0 does this)."""
    if result.stages[-1].status != Status.MAX_ITERATIONS.message:
        return ""
    if is_fixed(result.settings.modes.get("tilt", "free")):
        return "; try a larger --max-iterations"
    return (
        "; if the markers lie nearly in one plane the tilt angles are barely determined by them: fix "
        "them (--tilt-mode fixed), or allow more steps (e.g. --max-iterations 1000) and check the tilts' "
        "standard errors"
    )


ALIGN_HELP = """\
Align a tilt series on its fiducial markers and write IMOD-compatible files.

Markers: IMOD model (.fid/.mod), model2point text (.pt/.txt: 'contour x y z' or
'object contour x y z', z = 0-based view), CSV (.csv: header marker,view,x,y; view 0-based),
PyTom marker file (.txt), or the measured points of an IMOD residual file (.resid).
Tilts: .tlt/.rawtlt (line k = view k) or SerialEM .mdoc (TiltAngle per ZValue; its tilt axis
angle is used as the starting --rotation). Image size: --image-size, else the .fid header,
else the --stack MRC header, else the .mdoc ImageSize.

Writes <prefix>.xf (raw -> aligned, 4f12.7,2f12.3), <prefix>.tlt (solved tilts), <prefix>.resid
(X Y view dx dy, dx,dy = projected - measured), <prefix>.xyz (IMOD fid.xyz), <prefix>.json (full
record) and <prefix>.png (report figure, unless --no-figure); all or none. The .xf/.tlt have
one line per view of the input, excluded views included: an excluded view gets its nominal tilt
and a transform interpolated (rotation, stretch, shift, linearly in tilt) from its nearest
fitted neighbours.
If the solve does not converge, only the .json and .png are written and the exit status is 1.

Exit status: 0 success, 1 alignment did not converge, 2 bad input, 3 internal error (a bug;
LMALIGN_DEBUG=1 shows the traceback).
"""

ALIGN_EXAMPLE = """\
examples:
  lmalign align BBa.fid --tilts BBa.rawtlt --rotation -12.5 --exclude 1,61 --out-dir align/
  lmalign align beads.csv --tilts TS_01.mdoc --stack TS_01.mrc --tilt-mode group:5
  lmalign align BBa.resid --tilts BBa.tlt --image-size 512 512 --model imod --mode xstretch=fixed
  lmalign align TS_01.mrc --tilts TS_01.rawtlt --bead-diameter 8 --reconstruct 300 --out-dir TS_01/
"""


def add_align(sub):
    p = sub.add_parser(
        "align",
        help="align a tilt series on its fiducial markers",
        description=ALIGN_HELP,
        epilog=ALIGN_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "markers",
        metavar="MARKERS",
        help="marker file (.fid, .mod, .csv, .pt, .txt, .resid), or a raw stack (.mrc, .st) to track first",
    )
    p.add_argument(
        "--tilts",
        metavar="FILE",
        help="tilt angles: .tlt/.rawtlt or SerialEM .mdoc (required unless MARKERS is a PyTom file)",
    )
    p.add_argument(
        "--image-size",
        nargs=2,
        type=float,
        metavar=("NX", "NY"),
        help="image size in pixels (overrides the .fid header and the stack)",
    )
    p.add_argument(
        "--stack",
        metavar="STACK.mrc",
        help="the raw tilt-series stack; only its header is read (image size, number of views), and with "
        "--reconstruct its views (the tomogram is made from it)",
    )
    p.add_argument(
        "--rotation",
        type=float,
        metavar="DEG",
        help="tilt-axis angle in the raw images, degrees counter-clockwise from the y axis (IMOD's "
        "RotationAngle); estimated from the tracks (or the .mdoc) when omitted",
    )
    add_imod_options(p)
    p.add_argument("--model", choices=sorted(MODELS), default="jou", help="projection model")
    p.add_argument("--out-dir", default=".", metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--prefix", type=file_stem, metavar="NAME", help="output file stem; default: the marker file's stem"
    )
    p.add_argument(
        "--exclude", metavar="LIST", help="views to leave out, 1-based like IMOD's ExcludeList, e.g. 1-3,40"
    )
    p.add_argument(
        "--initial",
        metavar="ALIGNMENT",
        help="start from this alignment instead of the built-in estimate: an AreTomo .aln (ROT, TILT, "
        "TX, TY, GMAG per view; its dark frames start from the nominal start) or an IMOD .xf with the "
        "--tilts angles. Fixes the axis hand (the estimate is only known up to 180 deg) and large shifts",
    )
    add_solver_options(p)
    p.add_argument(
        "--worst", type=int, default=10, metavar="N", help="number of largest-residual points to list"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no per-view table in the summary")
    add_robust_options(p)
    p.add_argument(
        "--surfaces",
        type=int,
        choices=(1, 2),
        help="IMOD's surface analysis of the solved markers (SurfacesToAnalyze): fit 1 plane, or sort "
        "the beads onto 2 surfaces; prints the tilt change and X-axis tilt that level the specimen, its "
        "thickness and Z centre, and stores them in the .json",
    )
    p.add_argument(
        "--flatten",
        action="store_true",
        help="level the specimen: add the surface analysis' tilt change to the written .tlt, write its "
        "X-axis tilt to <prefix>.xtilt, and print the suggested reconstruction thickness (--surfaces 1 "
        "unless given)",
    )
    p.add_argument(
        "--no-figure", action="store_true", help="do not render the .png report (the slowest output)"
    )
    p.add_argument(
        "--no-errors", action="store_true", help="skip the standard errors and leave-one-out residuals"
    )
    p.add_argument(
        "--export",
        metavar="TARGETS",
        help="also write imod, aretomo, relion, portal (comma-separated) or all, as 'lmalign export' does",
    )
    p.add_argument(
        "--pixel-size",
        type=float,
        metavar="A",
        help="pixel size, Angstrom, recorded in place of the marker file's or stack's (for --export and a "
        "later export)",
    )
    add_local_options(p)
    add_stack_options(p)
    p.set_defaults(run=run_align)
