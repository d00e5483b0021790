"""``lmalign simulate``: a seeded synthetic tilt series (markers, tilts, truth; with ``--stack`` the
raw image stack of its gold beads too)."""

from __future__ import annotations

import math
import textwrap

import mrcfile
import numpy as np

from .. import __version__, io
from ..io.outputs import OutputSet
from ..models import get_model
from ..report import record_to_json
from ..simulation.phantom import bead_phantom, project_stack, series_alignment
from ..simulation.synthetic import simulate
from ..workflow import check_output_folder
from .common import EXIT_OK, MIN_MARKERS, HelpFormatter, UsageError

SERIES_OUTPUTS = (".csv", ".rawtlt", "_truth.json")
STACK_OUTPUTS = (".mrc", "_truth.xf", "_truth.tlt")
#: Defaults of the options that depend on --stack: (without, with).
SIZE_DEFAULTS = {
    "views": (61, 41),
    "markers": (30, 12),
    "image_size": ([2048, 2048], [256, 256]),
    "thickness": (300.0, 40.0),
}
BEAD_SIGMA_PX = 1.5
N_BLOBS = 3


def default_shift(image_size) -> float:
    """Per-view shift sd: 15 px for 2048-px images, scaled with the image size, 3 to 15 px."""
    return float(min(15.0, max(3.0, 15.0 * min(image_size) / 2048.0)))


def _resolve_defaults(args) -> None:
    stack = bool(getattr(args, "stack", False))
    for name, (plain, with_stack) in SIZE_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, with_stack if stack else plain)
    if getattr(args, "shift", None) is None:
        args.shift = default_shift(args.image_size)


def simulate_series(options: dict):
    """The SyntheticSeries of simulate's options (``views``, ``markers``, ``tilt_range``, ...,
    ``seed``: the option names, as a dict)."""
    o = options
    return simulate(
        n_views=o["views"],
        n_markers=o["markers"],
        tilt_range=tuple(o["tilt_range"]),
        image_size=tuple(o["image_size"]),
        thickness_px=o["thickness"],
        rotation_deg=o["rotation"],
        shift_px=o["shift"],
        noise_px=o["noise"],
        missing_fraction=o["missing"],
        outlier_fraction=o["outliers"],
        seed=o["seed"],
    )


def _check_simulate_args(args) -> None:
    if args.views < 3 or args.markers < MIN_MARKERS:
        raise UsageError(f"--views must be >= 3 and --markers >= {MIN_MARKERS}")
    if args.noise < 0 or not 0 <= args.missing < 1 or not 0 <= args.outliers < 1:
        raise UsageError("--noise must be >= 0, --missing and --outliers in [0, 1)")
    if min(args.image_size) < 1 or args.thickness < 0 or args.shift < 0:
        raise UsageError("--image-size must be positive, --thickness and --shift >= 0")
    pixel = getattr(args, "pixel_size", None)
    if pixel is not None and not (math.isfinite(pixel) and pixel > 0):
        raise UsageError(f"--pixel-size must be positive, got {pixel:g}")


def write_series(series, out: OutputSet, settings: dict) -> tuple[str, str]:
    """Stage ``<prefix>.csv``, ``<prefix>.rawtlt`` and ``<prefix>_truth.json`` for a synthetic series."""
    obs = series.observations
    ids = tuple(range(1, obs.n_markers + 1))
    ms = io.MarkerSet(
        xy=obs.xy,
        mask=obs.mask,
        marker_ids=ids,
        image_size=tuple(int(s) for s in obs.image_size),
        source="lmalign simulate",
    )
    io.write_markers_csv(out.stage(".csv"), ms)
    io.write_tlt(out.stage(".rawtlt"), obs.tilts_deg)
    model = get_model(series.model)
    truth = {
        "software": {"name": "lmalign_jax", "version": __version__},
        "settings": settings,
        "model": series.model,
        "image_size": list(obs.image_size),
        "noise_px": series.noise_px,
        "views": [
            {
                "view": v,
                "nominal_tilt_deg": float(obs.tilts_deg[v]),
                **{
                    p: float(np.degrees(x) if k == "angle" else x)
                    for p, k, x in zip(model.parameters, model.kinds, series.views[v], strict=True)
                },
            }
            for v in range(obs.n_views)
        ],
        "markers": [
            {"id": ids[i], "x": float(x), "y": float(y), "z": float(z)}
            for i, (x, y, z) in enumerate(series.markers)
        ],
        "outliers": [{"view": int(v), "marker_id": ids[m]} for v, m in np.argwhere(series.outliers)],
        "conventions": "angles in degrees; marker x, y, z in pixels from the specimen centre; views 0-based; "
        "marker ids as in the CSV",
    }
    out.write_text("_truth.json", record_to_json(truth))
    return out.path(".csv"), out.path(".rawtlt")


def series_phantom(series, thickness: float, seed: int):
    """The specimen of a synthetic series: a gold bead at every marker plus a few weak blobs."""
    nx, ny = series.observations.image_size
    return bead_phantom(
        series.markers,
        box=(0.7 * nx, 0.7 * ny, max(thickness, 1.0)),
        bead_sigma=BEAD_SIGMA_PX,
        n_blobs=N_BLOBS,
        seed=seed,
    )


def write_stack(series, out: OutputSet, *, pixel_size: float, thickness: float, seed: int) -> str:
    """Stage ``<prefix>.mrc`` (the raw stack: the beads projected through the series' true
    alignment) and that alignment as ``<prefix>_truth.xf`` / ``<prefix>_truth.tlt``."""
    a, d, tilts = series_alignment(series)
    nx, ny = (int(round(s)) for s in series.observations.image_size)
    phantom = series_phantom(series, thickness, seed)
    with mrcfile.new_mmap(out.stage(".mrc"), shape=(tilts.size, ny, nx), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        project_stack(phantom, a, d, tilts, (nx, ny), out=mrc.data)
        mrc.voxel_size = float(pixel_size)
        mrc.update_header_stats()
    io.write_xf(out.stage("_truth.xf"), a, d)
    io.write_tlt(out.stage("_truth.tlt"), tilts)
    return out.path(".mrc")


def suggested_thickness(specimen_thickness: float) -> int:
    """A tomogram thickness (pixels, multiple of 16) with room around the markers' z spread."""
    return int(16 * math.ceil((1.2 * specimen_thickness + 16) / 16))


def settings_record(options: dict) -> dict:
    """The ``settings`` section of ``<prefix>_truth.json`` (``options`` as for simulate_series)."""
    keys = (
        "views",
        "markers",
        "tilt_range",
        "image_size",
        "thickness",
        "rotation",
        "shift",
        "noise",
        "missing",
        "outliers",
        "seed",
    )
    settings = {k: options[k] for k in keys}
    if options.get("stack", False):
        settings |= {
            "stack": True,
            "pixel_size_A": options["pixel_size"],
            "bead_sigma_px": BEAD_SIGMA_PX,
            "blobs": N_BLOBS,
        }
    return settings


def run_simulate(args) -> int:
    _resolve_defaults(args)
    _check_simulate_args(args)
    out = OutputSet(args.out_dir, args.prefix)
    check_output_folder(out, SERIES_OUTPUTS + (STACK_OUTPUTS if args.stack else ()), ())
    series = simulate_series(vars(args))
    with out:
        csv, tlt = write_series(series, out, settings_record(vars(args)))
        if args.stack:
            stack = write_stack(
                series, out, pixel_size=args.pixel_size, thickness=args.thickness, seed=args.seed
            )
        written = out.commit()
    print(" Wrote " + ", ".join(written))
    nx, ny = args.image_size
    if args.stack:
        print(
            f" Align it with:        lmalign align {csv} --tilts {tlt} --stack {stack} --out-dir "
            f"{args.out_dir}"
        )
        print(
            f" Then reconstruct it:  lmalign reconstruct {stack} --alignment {out.path('.json')} "
            f"--thickness {suggested_thickness(args.thickness)} --out {out.path('.rec.mrc')}"
        )
    else:
        print(
            f" Align it with:  lmalign align {csv} --tilts {tlt} --image-size {nx} {ny} --out-dir "
            f"{args.out_dir}"
        )
    return EXIT_OK


SIM_OPTIONS = (
    ("--views", dict(type=int, metavar="N", help="number of views (default: 61; 41 with --stack)")),
    ("--markers", dict(type=int, metavar="N", help="number of markers (default: 30; 12 with --stack)")),
    ("--noise", dict(type=float, default=0.5, metavar="PX", help="Gaussian noise per coordinate, pixels")),
    (
        "--missing",
        dict(
            type=float, default=0.1, metavar="FRAC", help="fraction of points missing, in runs at high tilt"
        ),
    ),
    (
        "--outliers",
        dict(
            type=float, default=0.0, metavar="FRAC", help="fraction of points displaced 5-20 px (mis-clicks)"
        ),
    ),
    (
        "--tilt-range",
        dict(
            type=float,
            nargs=2,
            default=[-60.0, 60.0],
            metavar=("MIN", "MAX"),
            help="nominal tilt range, degrees",
        ),
    ),
    ("--rotation", dict(type=float, default=-12.0, metavar="DEG", help="true tilt-axis angle, degrees")),
    (
        "--shift",
        dict(
            type=float,
            metavar="PX",
            help="standard deviation of the per-view image shifts, pixels (default: 15 for "
            "2048-px images, scaled with the image size, 3 to 15)",
        ),
    ),
    (
        "--image-size",
        dict(
            type=int,
            nargs=2,
            metavar=("NX", "NY"),
            help="image size, pixels (default: 2048 2048; 256 256 with --stack)",
        ),
    ),
    (
        "--thickness",
        dict(
            type=float,
            metavar="PX",
            help="specimen thickness the markers spread over, pixels (default: 300; 40 with --stack)",
        ),
    ),
)


def add_simulate(sub):
    p = sub.add_parser(
        "simulate",
        help="write a synthetic marker file, tilt file and truth (and a raw stack)",
        formatter_class=HelpFormatter,
        description=textwrap.fill(
            "Write a seeded synthetic tilt series: <prefix>.csv (marker,view,x,y; view 0-based), "
            "<prefix>.rawtlt (nominal tilts) and <prefix>_truth.json (the true parameters), to try the tool "
            "and to file reproducible bug reports. The CSV does not record the image size: pass --image-size "
            "(or --stack) to 'lmalign align'.",
            95,
        )
        + "\n\n"
        + textwrap.fill(
            "With --stack, also <prefix>.mrc: the raw (unaligned) image stack, float32, of a gold bead (a "
            f"Gaussian of sigma {BEAD_SIGMA_PX} px) at every marker plus {N_BLOBS} weak blobs, projected "
            "exactly through the series' true alignment (pixel values are line integrals of density: beads "
            "are bright, no image noise), with that alignment as <prefix>_truth.xf and <prefix>_truth.tlt. "
            "Smaller defaults then keep it quick (41 views of 256 x 256 px, 12 markers, 40 px thick).",
            95,
        ),
        epilog="example:\n  lmalign simulate --out-dir sim --views 41 --markers 20 --noise 0.3 --seed 7\n"
        "  lmalign align sim/synthetic.csv --tilts sim/synthetic.rawtlt --image-size 2048 2048"
        " --out-dir sim\n\n"
        "example with a stack, aligned and reconstructed:\n"
        "  lmalign simulate --out-dir simst --stack\n"
        "  lmalign align simst/synthetic.csv --tilts simst/synthetic.rawtlt --stack simst/synthetic.mrc"
        " --out-dir simst\n"
        "  lmalign reconstruct simst/synthetic.mrc --alignment simst/synthetic.json --thickness 64",
    )
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--prefix", default="synthetic", metavar="NAME", help="output file stem")
    for flag, kw in SIM_OPTIONS:
        p.add_argument(flag, **kw)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--stack",
        action="store_true",
        help="also write the raw image stack <prefix>.mrc and its true .xf/.tlt",
    )
    p.add_argument(
        "--pixel-size",
        type=float,
        default=10.0,
        metavar="A",
        help="pixel size written in the stack's header, Angstrom",
    )
    p.set_defaults(run=run_simulate)
