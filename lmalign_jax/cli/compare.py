"""``lmalign compare``: fit several projection models to the same markers and tabulate them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from ..analysis.compare import DEFAULT_MODELS, compare_models
from ..analysis.compare_local import takes_local
from ..core.problem import points_needed
from ..io import InputError, atomic_write
from ..models import MODELS, get_model
from ..observations import usable_views_and_markers
from ..workflow import observations_for_fit, parse_view_list, read_series, report_selection, select_views
from ..workflow.local import LocalOptions, check_local_grid
from ..workflow.settings import AlignSettings
from .align_options import (
    add_local_joint_option,
    add_local_mode_option,
    add_local_weighting_option,
    add_patch_size_option,
    check_local_modes,
    parse_local_modes,
)
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    MIN_MARKERS,
    HelpFormatter,
    Progress,
    UsageError,
    check_count,
    check_output_file,
    warn,
)

COMPARE_HELP = """Fit each projection model to the same observations and print one table:
free parameters, RMS and mean residual, a cross-validated leave-out residual (held-out
points predicted by the model fitted without them, 5 folds), BIC, and the largest
differences in rotation and tilt from the first model. A richer model is justified when it
lowers the leave-out residual and the BIC, not merely the RMS. A model with as many
parameters as measured coordinates, or more (for a deformation model, whose coefficients are
tied by smoothness, its effective number, the table's 'eff.' column), can fit them exactly:
it is marked underdetermined and not ranked. A fit that stopped at the iteration limit is
not ranked either. A model that needs more markers in a view than the data have is not
fitted (the table says why); the others still compare. 'local' among the models adds
IMOD-style local alignment (align --local's defaults; --patch-size) over the first rigid
model, judged by the same two criteria."""

COMPARE_EXAMPLE = """example:
  lmalign compare series.fid --tilts series.rawtlt --models jou,imod --json compare.json
  lmalign compare series.fid --tilts series.rawtlt --models jou,warp,local"""


def run_compare(args) -> int:
    entries = [m.strip() for m in args.models.split(",")]
    if len(entries) > 1 and not all(entries):
        raise UsageError(f"--models: an empty entry in {args.models!r}; separate the models by single commas")
    models = tuple(m for m in entries if m)
    unknown = [m for m in models if m not in MODELS and m != "local"]
    if not models or unknown:
        raise UsageError(
            f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(MODELS)}, local"
        )
    rigid = [m for m in MODELS if takes_local(get_model(m))]
    if "local" in models and not any(m in rigid for m in models):
        raise UsageError(
            "--models: local alignment is judged over a model it can refine "
            f"({', '.join(rigid)}), and none is listed; list one too (jou,{','.join(models)})"
        )
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise UsageError(f"--models: {', '.join(twice)} listed twice")
    check_count(args.folds, "--folds", low=2)
    if not 0 <= args.seed < 2**63:  # numpy's generators take no negative seed
        raise UsageError(f"--seed must be an integer from 0 to 2^63 - 1, got {args.seed}")
    local = None
    if "local" in models:
        try:
            local = LocalOptions(
                **({} if args.patch_size is None else {"patch_size": tuple(args.patch_size)}),
                significance=None if args.local_keep_all else 3.0,
                modes=parse_local_modes(args.local_mode),
                **({} if args.local_weighting is None else {"weighting": args.local_weighting}),
                joint=args.local_joint is not False,
            )
        except ValueError as e:
            raise UsageError(f"--patch-size: {e}") from None
        base = next(m for m in models if m in rigid)
        check_local_modes(get_model(base), local.modes, args.local_mode)
    else:
        given = [
            flag
            for flag, value in (
                ("--patch-size", args.patch_size),
                ("--local-keep-all", args.local_keep_all),
                ("--local-weighting", args.local_weighting),
                ("--no-local-joint", args.local_joint is False),
                ("--local-mode", args.local_mode),
            )
            if value
        ]
        if given:
            raise UsageError(f"{given[0]} goes with 'local' in --models (local alignment was not asked for)")
    if args.json:
        check_output_file(args.json, (args.markers, args.tilts, args.stack), "--json", "compare.json")
    inputs = read_series(
        args.markers,
        args.tilts,
        stack_path=args.stack,
        image_size=args.image_size,
        rotation_deg=args.rotation,
        warn=warn,
    )
    if local is not None:  # a grid too large for the markers is refused before any fit, as align does
        check_local_grid(inputs.markers.xy, inputs.markers.mask, local, "--patch-size")
    exclude = parse_view_list(args.exclude, inputs.tilts_deg.size) if args.exclude else []
    sel = _select(inputs, exclude, [m for m in models if m != "local"])
    report_selection(inputs, replace(sel, excluded_few_points=[]), warn)
    if sel.excluded_few_points:
        views = ", ".join(str(v + 1) for v in sel.excluded_few_points)
        warn(
            f"view(s) {views} (1-based) have fewer markers than some model fits parameters of its own "
            "there, and are left out of the comparison"
        )
    obs, _ = observations_for_fit(inputs, sel, warn)
    if not args.no_leave_out and args.folds > obs.n_observed:  # a fold would hold out nothing
        raise UsageError(
            f"--folds {args.folds} is more than the {obs.n_observed} points fitted (each fold holds out at "
            "least one): give fewer folds"
        )
    with Progress(f"lmalign: fitting {', '.join(models)} to {obs.n_observed} points ..."):
        try:
            comparison = compare_models(
                obs,
                models,
                folds=args.folds,
                seed=args.seed,
                leave_out=not args.no_leave_out,
                local=local,
                rotation_deg=inputs.rotation_deg,
                view_names=[f"view {int(v) + 1} (1-based)" for v in sel.view_index],
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
    print(comparison.to_text())
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(comparison.to_dict(), f, indent=1)
        print(f" Wrote {args.json}")
    failed = [row.model for row in comparison.rows if not row.status.startswith("converged")]
    return EXIT_FAILED if len(failed) == len(comparison.rows) else EXIT_OK


def _select(inputs, exclude, models):
    """The views every model can determine (``select_views``); when there are too few of them,
    those the less demanding models can determine: a model that needs more points in a view than
    some view then has is marked "not fitted" by ``compare_models``. An InputError naming the
    models and what they need when even the least demanding one cannot be fitted."""
    select_views(inputs, exclude)  # too few markers or views for any fit: its own message
    fits = [AlignSettings(model=m) for m in models]
    need = {
        f.model: int(
            points_needed(get_model(f.model), f.all_modes(), inputs.tilts_deg.size, inputs.tilts_deg).max()
        )
        for f in fits
    }
    for most in sorted(set(need.values()), reverse=True):
        try:
            return select_views(inputs, exclude, [f for f in fits if need[f.model] <= most])
        except InputError:
            continue
    keep_view = np.ones(inputs.tilts_deg.size, dtype=bool)
    keep_view[exclude] = False
    least = min(need.values())
    views, markers = usable_views_and_markers(inputs.markers.mask, keep_view, min_points=least)
    raise InputError(
        inputs.markers_path,
        None,
        f"none of the models {', '.join(need)} can be fitted: a view needs at least "
        f"{', '.join(f'{n} markers for {m}' for m, n in need.items())}, and only {int(views.sum())} "
        f"view(s) have {least} or more, with {int(markers.sum())} marker(s) seen in 2 or more of them (a "
        f"fit needs {MIN_MARKERS} markers and 3 views)",
    )


def add_compare(sub):
    p = sub.add_parser(
        "compare",
        help="compare projection models on the same markers",
        description=COMPARE_HELP,
        epilog=COMPARE_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument("markers", metavar="MARKERS", help="marker file (.fid, .mod, .csv, .pt, .txt, .resid)")
    p.add_argument("--tilts", metavar="FILE", help="tilt angles: .tlt/.rawtlt or SerialEM .mdoc")
    p.add_argument("--image-size", nargs=2, type=float, metavar=("NX", "NY"), help="image size in pixels")
    p.add_argument("--stack", metavar="STACK.mrc", help="the raw stack; only its header is read")
    p.add_argument(
        "--rotation",
        type=float,
        metavar="DEG",
        help="tilt-axis angle, degrees CCW from the y axis; estimated when omitted",
    )
    p.add_argument("--exclude", metavar="LIST", help="views to leave out, 1-based like IMOD's ExcludeList")
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        metavar="LIST",
        help=f"comma-separated models of {','.join(MODELS)} (default {','.join(DEFAULT_MODELS)}); "
        "with a deformation model (warp, shape) the output says whether the data justify it; 'local' adds "
        "local alignment over the first rigid model",
    )
    add_patch_size_option(
        p, "with 'local': target patch size, pixels (as align --patch-size; default 700 700)"
    )
    p.add_argument(
        "--local-keep-all",
        action="store_true",
        help="with 'local': judge every patch's fit kept, as IMOD keeps them (as align --local-keep-all)",
    )
    add_local_mode_option(p, "with 'local' (as align --local-mode): ")
    add_local_weighting_option(p)
    add_local_joint_option(p)
    p.add_argument(
        "--folds", type=int, default=5, metavar="K", help="cross-validation folds for the leave-out residual"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--no-leave-out", action="store_true", help="skip the cross-validation (faster)")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.set_defaults(run=run_compare)
