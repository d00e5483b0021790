"""``lmalign compare``: fit several projection models to the same markers and tabulate them."""

from __future__ import annotations

import json

from ..analysis.compare import DEFAULT_MODELS, compare_models
from ..io import atomic_write
from ..models import MODELS
from ..workflow import observations_for_fit, parse_view_list, read_series, report_selection, select_views
from ..workflow.local import LocalOptions
from ..workflow.settings import AlignSettings
from .common import EXIT_FAILED, EXIT_OK, HelpFormatter, Progress, UsageError, check_output_file, warn

COMPARE_HELP = """Fit each projection model to the same observations and print one table: free
parameters, RMS and mean residual, a cross-validated leave-out residual (held-out points
predicted by the model fitted without them, 5 folds), BIC, and the largest differences in
rotation and tilt from the first model. A richer model is justified when it lowers the
leave-out residual and the BIC, not merely the RMS. A model with as many free parameters as
measured coordinates, or more, fits them exactly: it is marked underdetermined and not ranked.
'local' among the models adds IMOD-style
local alignment (align --local's defaults; --patch-size) over the first rigid model, judged by
the same two criteria."""

COMPARE_EXAMPLE = """example:
  lmalign compare series.fid --tilts series.rawtlt --models jou,imod --json compare.json
  lmalign compare series.fid --tilts series.rawtlt --models jou,warp,local"""


def run_compare(args) -> int:
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODELS and m != "local"]
    if not models or unknown:
        raise UsageError(
            f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(MODELS)}, local"
        )
    if models == ("local",):
        raise UsageError("--models: local alignment is judged over a rigid model; list one too (jou,local)")
    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2, got {args.folds}")
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
    # a view must carry the points the richest model needs, or its fit of that view is undetermined
    fits = [AlignSettings(model=m) for m in models if m != "local"]
    sel = select_views(
        inputs, parse_view_list(args.exclude, inputs.tilts_deg.size) if args.exclude else [], fits
    )
    report_selection(inputs, sel, warn)
    obs, _ = observations_for_fit(inputs, sel, warn)
    with Progress(f"lmalign: fitting {', '.join(models)} to {obs.n_observed} points ..."):
        try:
            comparison = compare_models(
                obs,
                models,
                folds=args.folds,
                seed=args.seed,
                leave_out=not args.no_leave_out,
                local=LocalOptions(
                    patch_size=tuple(args.patch_size), significance=None if args.local_keep_all else 3.0
                )
                if "local" in models
                else None,
                rotation_deg=inputs.rotation_deg,
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
    p.add_argument(
        "--patch-size",
        nargs=2,
        type=int,
        default=(700, 700),
        metavar=("NX", "NY"),
        help="with 'local': target patch size, pixels (as align --patch-size)",
    )
    p.add_argument(
        "--local-keep-all",
        action="store_true",
        help="with 'local': judge every patch's fit kept, as IMOD keeps them (as align --local-keep-all)",
    )
    p.add_argument(
        "--folds", type=int, default=5, metavar="K", help="cross-validation folds for the leave-out residual"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--no-leave-out", action="store_true", help="skip the cross-validation (faster)")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    p.set_defaults(run=run_compare)
