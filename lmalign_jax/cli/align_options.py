"""The options of ``lmalign align`` that other commands share, and their checks: the parameter
modes, the AlignSettings and LocalOptions of the parsed options (a bad value is refused with one
line, exit 2), and the solver, robust-fitting and --local argument groups (``batch`` adds the
first two)."""

from __future__ import annotations

import argparse
import re

from ..analysis.robust_weights import LOSSES
from ..core.local_options import ETOMO_MODES, INCREMENTS, PER_VIEW_MODES, WEIGHTINGS
from ..models import get_model
from ..workflow import STAGES, AlignSettings
from ..workflow.local import LocalOptions, check_local_model
from .common import UsageError, check_count

__all__ = [
    "MODE_RE",
    "add_local_mode_option",
    "add_local_weighting_option",
    "check_local_modes",
    "add_local_joint_option",
    "add_local_options",
    "add_patch_size_option",
    "add_robust_options",
    "add_solver_options",
    "local_options_from_args",
    "parse_local_modes",
    "parse_min_fids",
    "parse_modes",
    "settings_from_args",
]

MODE_RE = re.compile(r"free|fixed|shared|(group|linear):[1-9][0-9]*")


def _check_mode(option: str, name: str, mode: str) -> None:
    """A UsageError naming ``option`` unless ``mode`` (of parameter or increment ``name``) is one
    of :data:`MODE_RE`'s."""
    if not MODE_RE.fullmatch(mode):
        raise UsageError(
            f"{option}: unknown mode {mode!r} for {name}; use free, fixed, shared, group:N or "
            "linear:N (N views per group, a whole number >= 1)"
        )


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
        _check_mode(option, name, mode)
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


def settings_from_args(args) -> AlignSettings:
    """The AlignSettings of ``align``/``batch`` options (model, modes, stages, precision, robust)."""
    model = get_model(args.model)
    check_count(args.max_iterations, "--max-iterations")
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


#: (flag, attribute) of the options that set up local alignment; None or False when not given.
LOCAL_SETTINGS = (
    ("--patch-size", "patch_size"),
    ("--patch-overlap", "patch_overlap"),
    ("--min-fids", "min_fids"),
    ("--local-markers", "local_markers"),
    ("--local-keep-all", "local_keep_all"),
    ("--local-mode", "local_mode"),
    ("--local-weighting", "local_weighting"),
    ("--no-local-joint", "local_joint"),
)


def parse_local_modes(values, option: str = "--local-mode") -> tuple[tuple[str, str], ...]:
    """LocalOptions.modes from repeated ``NAME=MODE`` (a local increment and free, fixed, shared,
    group:N or linear:N); the increments not named keep LocalOptions' defaults. UsageError otherwise."""
    modes = dict(LocalOptions().modes)
    given: dict[str, str] = {}
    for text in values or ():
        name, sep, mode = text.partition("=")
        name, mode = name.strip(), mode.strip()
        if not sep or name not in INCREMENTS:
            raise UsageError(
                f"{option}: expected NAME=MODE with NAME one of {', '.join(INCREMENTS)}, got {text!r}"
            )
        _check_mode(option, name, mode)
        if given.get(name, mode) != mode:
            raise UsageError(f"{option}: {name} is given two modes ({given[name]}, {mode})")
        given[name] = modes[name] = mode
    return tuple(modes.items())


def _modes_text(modes) -> str:
    return " ".join(f"{name}={mode}" for name, mode in modes)


def add_local_mode_option(p, help_prefix: str = "") -> None:
    """--local-mode NAME=MODE (repeatable), shared by align --local and compare's 'local'."""
    p.add_argument(
        "--local-mode",
        action="append",
        metavar="NAME=MODE",
        help=f"{help_prefix}grouping of a local increment (IMOD's Local*Option and Local*DefaultGrouping), "
        f"repeatable: NAME of {', '.join(INCREMENTS)}, MODE free, fixed, shared, group:N or linear:N "
        "(default: "
        f"Etomo's, {_modes_text(ETOMO_MODES)}; free per view, {_modes_text(PER_VIEW_MODES)}, lowers "
        "the residual more and fits more noise)",
    )


def _given(flag: str, value) -> bool:
    """Whether an option of LOCAL_SETTINGS was given: a --no- flag stores False, the others a value."""
    return value is False if flag.startswith("--no-") else value not in (None, False)


def local_options_from_args(args) -> LocalOptions | None:
    """LocalOptions of --local, --patch-size, --patch-overlap, --min-fids, --local-markers; a
    UsageError for those settings without --local (they were ignored)."""
    if not args.local:
        given = [flag for flag, name in LOCAL_SETTINGS if _given(flag, getattr(args, name))]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise UsageError(f"{', '.join(given)} {verb} with --local (local alignment was not asked for)")
        return None
    settings = {}
    if args.min_fids is not None:
        settings["min_fids"] = parse_min_fids(args.min_fids)
    if args.patch_size is not None:
        settings["patch_size"] = tuple(args.patch_size)
    if args.patch_overlap is not None:
        settings["overlap"] = (args.patch_overlap, args.patch_overlap)
    model = get_model(args.model)
    if model.regularization is not None:  # a deformation model (warp, shape)
        raise UsageError(
            f"--local does not combine with --model {model.name}: its per-view deformation already "
            "corrects positions across each view, and a local alignment on top of it could be applied "
            "with neither that deformation ('lmalign reconstruct' applies one or the other) nor without "
            f"it (IMOD's tilt); use --model {model.name} alone, or --local with a rigid model (jou, imod, "
            "luther)"
        )
    try:
        check_local_model(model)
        modes = parse_local_modes(args.local_mode)
        options = LocalOptions(
            **settings,
            fix_markers=args.local_markers in (None, "fixed"),
            significance=None if args.local_keep_all else 3.0,
            modes=modes,
            **({} if args.local_weighting is None else {"weighting": args.local_weighting}),
            joint=args.local_joint is not False,
        )
    except ValueError as e:
        raise UsageError(f"--local: {e}") from None
    check_local_modes(model, modes, args.local_mode)
    return options


def parse_min_fids(text: str) -> tuple[int, int]:
    """--min-fids TOTAL,EACH_SURFACE as two whole numbers; a UsageError otherwise (both are needed:
    one number was read as no per-surface minimum)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts):
        total, each = int(parts[0]), int(parts[1])
        if total < 1:
            raise UsageError(f"--min-fids: the total must be at least 1, got {text!r}")
        return total, each
    raise UsageError(
        "--min-fids: expected TOTAL,EACH_SURFACE, two whole numbers, e.g. 8,3 (0 for no per-surface "
        f"minimum), got {text!r}"
    )


def check_local_modes(model, modes: tuple[tuple[str, str], ...], given_texts) -> None:
    """UsageError when ``--local-mode`` (``given_texts``, NAME=MODE) names an increment ``model``
    lacks, or leaves every increment ``model`` has fixed (align --local, compare's 'local')."""
    given = {text.partition("=")[0].strip() for text in given_texts or ()}
    lacking = sorted(n for n in given if n not in model.parameters)
    if lacking:
        raise UsageError(
            f"--local-mode: model {model.name!r} has no {', '.join(lacking)} to refine locally (its local "
            f"increments: {', '.join(n for n in INCREMENTS if n in model.parameters)})"
        )
    if not any(mode != "fixed" and n in model.parameters for n, mode in modes):
        raise UsageError(
            f"--local-mode: every local increment of model {model.name!r} is fixed: nothing to solve"
        )


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
        "--rotation-mode",
        metavar="MODE",
        help="free | shared | fixed | group:N | linear:N (model default when omitted); group:N: one value "
        "per set of about N views (IMOD's block grouping), linear:N: values at each set's first view "
        "and the last view, interpolated between (IMOD's linear grouping, its option 3); the sets are "
        "tiltalign's",
    )
    p.add_argument(
        "--tilt-mode",
        metavar="MODE",
        help="free | shared | fixed | group:N | linear:N; grouped views share a change from their "
        "nominal tilts (linear:N is IMOD's TiltOption 5: its sets smaller at high tilt, as cos(tilt))",
    )
    p.add_argument("--scale-mode", metavar="MODE", help="free | shared | fixed | group:N | linear:N")
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


def add_local_options(p) -> None:
    """--local and its settings (IMOD tiltalign's local alignments; Etomo's defaults)."""
    p.add_argument(
        "--local",
        action=argparse.BooleanOptionalAction,
        help="after the global solve, solve overlapping patches for local corrections and write "
        "<prefix>local.xf (IMOD's local alignment file, for tilt's LOCALFILE); --no-local: none, "
        "whatever --imod-com's file says",
    )
    add_patch_size_option(p, "target patch size in pixels (IMOD's TargetPatchSizeXandY; default 700 700)")
    p.add_argument(
        "--patch-overlap",
        type=float,
        metavar="F",
        help="fractional overlap of neighbouring patches (MinSizeOrOverlapXandY; default 0.5)",
    )
    p.add_argument(
        "--min-fids",
        metavar="TOTAL,EACH_SURFACE",
        help="markers a patch must hold, in all and on each surface, both numbers, e.g. 8,3 (0 for no "
        "per-surface minimum; IMOD's MinFidsTotalAndEachSurface; default 8,3); with one surface "
        "analysed (--surfaces 1, or --flatten alone) only the total counts, as in tiltalign; without "
        "--surfaces the markers are split by their plane, as on two surfaces",
    )
    p.add_argument(
        "--local-keep-all",
        action="store_true",
        help="keep every patch's local solution, as IMOD does; by default a patch keeps the global "
        "solution unless its residual drop exceeds what fitting noise gives (chi-square test, 3 sd)",
    )
    add_local_mode_option(p)
    add_local_weighting_option(p)
    add_local_joint_option(p)
    p.add_argument(
        "--local-markers",
        choices=("fixed", "free"),
        help="hold the markers at the global solution or solve them per patch (FixXYZCoordinates; "
        "default fixed)",
    )


def add_local_weighting_option(p) -> None:
    """--local-weighting blend|even (None when not given), shared by align --local and compare's 'local'."""
    p.add_argument(
        "--local-weighting",
        choices=WEIGHTINGS,
        help="how a patch weighs its markers: 'blend' (default) by the share IMOD's tilt gives the "
        "patch at each marker when it blends the patches around a position, so the local file fits "
        "the positions tilt computes from it; 'even': every marker of the patch fully, as tiltalign does",
    )


def add_local_joint_option(p) -> None:
    """--no-local-joint (``local_joint`` False; None when not given), shared by align --local and
    compare's 'local'."""
    p.add_argument(
        "--no-local-joint",
        dest="local_joint",
        action="store_false",
        default=None,
        help="solve each patch alone, as tiltalign does; by default the kept patches are then refined "
        "together, by least squares on the positions tilt blends from them (a patch alone takes the local "
        "slope of a deformation that curves across the field, and the blend of two slopes doubles the "
        "curvature between patch centres), kept where BIC favours it over the patches alone",
    )


def add_patch_size_option(p, help: str) -> None:
    """--patch-size NX NY (None when not given), shared by align --local and compare's 'local'."""
    p.add_argument("--patch-size", nargs=2, type=int, metavar=("NX", "NY"), help=help)
