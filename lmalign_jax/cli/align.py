"""``lmalign align``: its options, and the run that reads, fits, reports and writes one series."""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from ..analysis.robust import LOSSES
from ..core.settings import is_fixed
from ..io.outputs import OutputSet
from ..models import MODELS, get_model
from ..report import format_summary, prefetch_matplotlib
from ..solve import Status
from ..workflow import (
    ALIGN_OUTPUTS,
    STAGES,
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
from ..workflow.exporting import check_export, parse_export_targets
from ..workflow.initial import read_initial_alignment
from ..workflow.local import (
    LOCAL_SUFFIX,
    LocalOptions,
    check_local_model,
    format_local_report,
    solve_local_alignment,
)
from ..workflow.tracking import is_stack_path
from .common import EXIT_OK, HelpFormatter, Progress, UsageError, file_stem, note, warn
from .export import export_after_align
from .track import (
    add_stack_options,
    check_reconstruct_option,
    check_reconstruct_stack,
    reconstruct_after_align,
    track_for_align,
)

MODE_RE = re.compile(r"free|fixed|shared|group:[1-9][0-9]*")


def parse_modes(args, model_name: str) -> dict:
    """Parameter modes from --rotation-mode/--tilt-mode/--scale-mode and --mode NAME=MODE."""
    model = get_model(model_name)
    given: dict[str, tuple[str, str]] = {}

    def add(name, mode, option):
        if name not in model.parameters:
            raise UsageError(
                f"{option}: model {model.name!r} has no parameter {name!r}; its parameters are "
                f"{', '.join(model.parameters)}"
            )
        if not MODE_RE.fullmatch(mode):
            raise UsageError(
                f"{option}: unknown mode {mode!r} for {name}; use free, fixed, shared or group:N"
            )
        if name in given and given[name][0] != mode:
            raise UsageError(
                f"{option}: {name} is given two modes ({given[name][0]} by {given[name][1]}, {mode})"
            )
        given[name] = (mode, option)

    for name in ("rotation", "tilt", "scale"):
        mode = getattr(args, f"{name}_mode")
        if mode is not None:
            add(name, mode, f"--{name}-mode")
    for item in args.mode or []:
        name, sep, mode = item.partition("=")
        if not sep:
            raise UsageError(f"--mode: expected NAME=MODE, got {item!r}")
        add(name.strip(), mode.strip(), "--mode")
    return {name: mode for name, (mode, _) in given.items()}


def print_stage_line(st) -> None:
    """One line per finished stage, on stderr while the alignment runs."""
    if sys.stderr.isatty():
        sys.stderr.write("\r")  # over the running elapsed-time line
    note(
        f"  stage {st.name:<8} {st.iterations:4d} iterations {st.seconds:7.2f} s  rms "
        f"{st.rms_residual_px:.4f} px  {st.status}"
    )


def settings_from_args(args) -> AlignSettings:
    """The AlignSettings of ``align``/``batch`` options (model, modes, stages, precision, robust)."""
    model = get_model(args.model)
    if args.max_iterations < 1:
        raise UsageError(f"--max-iterations must be at least 1, got {args.max_iterations}")
    if args.robust_group_size < 1:
        raise UsageError(f"--robust-group-size must be at least 1, got {args.robust_group_size}")
    skip = ({"initial"} if args.no_initial_stage else set()) | ({"joint"} if args.no_joint_stage else set())
    return AlignSettings(
        model=model.name,
        modes=parse_modes(args, model.name),
        stages=tuple(s for s in STAGES if s not in skip),
        dtype="float32" if args.float32 else "float64",
        max_iterations=args.max_iterations,
        robust=args.robust,
        robust_group_size=args.robust_group_size,
    )


def run_align(args) -> int:
    """``lmalign align``; a raw stack as MARKERS is tracked first (``lmalign track``). The options
    are checked before anything is tracked or solved."""
    settings, local = settings_from_args(args), local_options_from_args(args)
    markers, prefix, stack, rotation = args.markers, args.prefix, args.stack, args.rotation
    out_prefix = prefix or os.path.splitext(os.path.basename(args.markers))[0]
    # what --export needs is checked before tracking and solving; the pixel size once it is read
    targets = parse_export_targets(args.export, "--export") if args.export else ()
    check_export(targets, out_prefix, args.pixel_size, None)

    def ready_to_solve(inputs) -> None:  # the markers read: what the export and tomogram need
        pixel = args.pixel_size if args.pixel_size is not None else inputs.pixel_size
        check_export(targets, out_prefix, pixel, "no input gives one (marker file, stack header or .mdoc)")
        if args.reconstruct is not None:
            check_reconstruct_stack(recon_stack, inputs.image_size)

    # the stack a tomogram is made from: MARKERS when it is one, else --stack (a marker file's stack)
    recon_stack = args.markers if is_stack_path(args.markers) else args.stack
    if args.reconstruct is not None:
        rec = OutputSet(args.out_dir, out_prefix).path(".rec.mrc")
        check_reconstruct_option(recon_stack, rec, args.reconstruct)
    if is_stack_path(args.markers):
        tracked = track_for_align(args)
        markers, stack, rotation = tracked.fid_path, args.markers, tracked.rotation_deg
        prefix = out_prefix
    code = align_and_report(
        markers,
        args.tilts,
        settings,
        out_dir=args.out_dir,
        prefix=prefix,
        stack=stack,
        image_size=args.image_size,
        rotation_deg=rotation,
        exclude=args.exclude,
        command=["lmalign", *getattr(args, "argv", [])],
        quiet=args.quiet,
        figure=not args.no_figure,
        errors=not args.no_errors,
        worst=args.worst,
        surfaces=args.surfaces,
        flatten=args.flatten,
        local=local,
        initial=args.initial,
        check_inputs=ready_to_solve,
    )
    if code == EXIT_OK and args.reconstruct is not None:
        out = OutputSet(args.out_dir, out_prefix)
        reconstruct_after_align(
            recon_stack,
            out.path(".json"),
            out.path(".rec.mrc"),
            args.reconstruct,
            args.quiet,
            local=bool(args.local),
        )
    return export_after_align(args, code, markers, prefix)


def print_surfaces(analysis, flatten: bool, prefix: str) -> None:
    """The surface-analysis block in IMOD's layout, and what --flatten did."""
    print("\n".join(analysis.imod_log_lines()))
    if flatten:
        x_tilt = analysis.x_axis_tilt_deg
        xtilt = f"X-axis tilt {x_tilt:.2f} deg" if x_tilt is not None else "zeros (too few beads)"
        print(
            f" Flattened: {analysis.tilt_angle_change_deg:+.2f} deg added to every tilt in {prefix}.tlt; "
            f"{xtilt} in {prefix}.xtilt (IMOD tilt's XTILTFILE; lmalign reconstruct reads the .tlt only)"
        )
        print(
            f" Suggested reconstruction thickness: {analysis.suggested_thickness_px} unbinned px (bead "
            f"centres span {analysis.thickness_px:.0f} px, centred {analysis.z_center_px:+.1f} px from the "
            "tilt axis)"
        )


def local_options_from_args(args) -> LocalOptions | None:
    """LocalOptions of --local, --patch-size, --patch-overlap, --min-fids, --local-markers."""
    if not args.local:
        return None
    try:
        total, _, each = args.min_fids.partition(",")
        min_fids = (int(total), int(each or 0))
    except ValueError:
        raise UsageError(f"--min-fids: expected TOTAL,EACH_SURFACE integers, got {args.min_fids!r}") from None
    if get_model(args.model).name == "warp":
        raise UsageError(
            "--local does not combine with --model warp: the warp model's per-view warp already corrects "
            "positions across each view, and its local alignment could be applied with neither that warp "
            "('lmalign reconstruct' applies one or the other) nor without it (IMOD's tilt); use --model "
            "warp alone, or --local with a rigid model (jou, imod, luther)"
        )
    try:
        check_local_model(get_model(args.model))
        return LocalOptions(
            patch_size=tuple(args.patch_size),
            overlap=(args.patch_overlap, args.patch_overlap),
            min_fids=min_fids,
            fix_markers=args.local_markers == "fixed",
            significance=None if args.local_keep_all else 3.0,
        )
    except ValueError as e:
        raise UsageError(f"--local: {e}") from None


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
    initial: str | None = None,
    check_inputs=None,
) -> int:
    """Read, select, align, write and print the summary of one series; returns the exit status.
    ``exclude``: IMOD's 1-based view list; ``truth``: the SyntheticSeries behind it (demo);
    ``surfaces``, ``flatten``: IMOD's surface analysis, and levelling the .tlt/.xtilt by it;
    ``initial``: an AreTomo .aln or IMOD .xf to start from; ``check_inputs(inputs)``: called
    with the series read, before anything is solved or written (it raises to refuse)."""
    prefix = prefix or os.path.splitext(os.path.basename(markers))[0]
    out = OutputSet(out_dir, prefix)
    check_output_folder(out, ALIGN_OUTPUTS + (".xtilt", LOCAL_SUFFIX), (markers, tilts, stack))
    if figure:
        prefetch_matplotlib()  # imported while the series is read and solved

    inputs = read_series(
        markers, tilts, stack_path=stack, image_size=image_size, rotation_deg=rotation_deg, warn=warn
    )
    if check_inputs is not None:
        check_inputs(inputs)
    sel = select_views(inputs, parse_view_list(exclude, inputs.tilts_deg.size) if exclude else [], settings)
    report_selection(inputs, sel, warn)
    obs, marker_ids = observations_for_fit(inputs, sel, warn)
    start = read_initial_alignment(initial, inputs, sel, obs, settings.model) if initial else None

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
    if robust is not None:
        for st in result.stages:
            print_stage_line(st)

    comparison = compare_with_truth(result, truth, sel, marker_ids) if truth is not None else None
    solved_local = None
    if local is not None and result.converged:
        try:
            solved_local = solve_local_alignment(result, sel.view_index, inputs.tilts_deg.size, local)
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
        )
    if written.surfaces is not None:
        print_surfaces(written.surfaces, flatten, out.prefix)
    if solved_local is not None:
        print(format_local_report(solved_local.solution), end="")
    print(" Wrote " + ", ".join(written.written))
    suffixes = ALIGN_OUTPUTS + (".xtilt", LOCAL_SUFFIX)
    not_updated = [s for s in suffixes if os.path.basename(out.path(s)) not in record["outputs"]]
    stale = [p for p in out.final_paths(not_updated) if os.path.exists(p)]
    if stale:
        warn(f"{', '.join(stale)} are from an earlier run and were not updated")
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


def add_solver_options(p) -> None:
    """Stage, parameter-mode and precision options shared by align and batch."""
    p.add_argument(
        "--no-initial-stage",
        action="store_true",
        help="skip the initial stage (markers' x, y held at the 0-degree view)",
    )
    p.add_argument(
        "--no-joint-stage", action="store_true", help="skip the final joint solve of all parameters"
    )
    p.add_argument(
        "--rotation-mode", metavar="MODE", help="free | shared | fixed | group:N (model default when omitted)"
    )
    p.add_argument("--tilt-mode", metavar="MODE", help="free | shared | fixed | group:N")
    p.add_argument("--scale-mode", metavar="MODE", help="free | shared | fixed | group:N")
    p.add_argument(
        "--mode",
        action="append",
        metavar="NAME=MODE",
        help="mode of any view parameter of the model, repeatable (e.g. xstretch=fixed, mag_x=group:4)",
    )
    p.add_argument("--float32", action="store_true", help="solve in single precision (faster on GPUs)")
    p.add_argument(
        "--max-iterations",
        type=int,
        default=200,
        metavar="N",
        help="Levenberg-Marquardt iteration cap per stage",
    )


def add_robust_options(p) -> None:
    """The robust-fitting options shared by align and batch."""
    p.add_argument(
        "--robust",
        nargs="?",
        const="tukey",
        choices=tuple(LOSSES),
        metavar="LOSS",
        help=f"iteratively reweighted fit that down-weights mis-clicked points; LOSS: {', '.join(LOSSES)}, "
        "default tukey (Tukey's bisquare, as IMOD's RobustFitting); after MARKERS, or as --robust=LOSS",
    )
    p.add_argument(
        "--robust-group-size",
        type=int,
        default=10,
        metavar="N",
        help="views per group for the robust residual scale (default 10)",
    )


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
    p.add_argument("--pixel-size", type=float, metavar="A", help="pixel size for --export, Angstrom")
    add_local_options(p)
    add_stack_options(p)
    p.set_defaults(run=run_align)


def add_local_options(p) -> None:
    """--local and its settings (IMOD tiltalign's local alignments; Etomo's defaults)."""
    p.add_argument(
        "--local",
        action="store_true",
        help="after the global solve, solve overlapping patches for local corrections and write "
        "<prefix>local.xf (IMOD's local alignment file, for tilt's LOCALFILE)",
    )
    p.add_argument(
        "--patch-size",
        nargs=2,
        type=int,
        default=(700, 700),
        metavar=("NX", "NY"),
        help="target patch size in pixels (IMOD's TargetPatchSizeXandY)",
    )
    p.add_argument(
        "--patch-overlap",
        type=float,
        default=0.5,
        metavar="F",
        help="fractional overlap of neighbouring patches (MinSizeOrOverlapXandY)",
    )
    p.add_argument(
        "--min-fids",
        default="8,3",
        metavar="TOTAL,EACH_SURFACE",
        help="markers a patch must hold, in all and on each surface (MinFidsTotalAndEachSurface)",
    )
    p.add_argument(
        "--local-keep-all",
        action="store_true",
        help="keep every patch's local solution, as IMOD does; by default a patch keeps the global "
        "solution unless its residual drop exceeds what fitting noise gives (chi-square test, 3 sd)",
    )
    p.add_argument(
        "--local-markers",
        choices=("fixed", "free"),
        default="fixed",
        help="hold the markers at the global solution or solve them per patch (FixXYZCoordinates)",
    )
