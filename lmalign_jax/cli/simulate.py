"""``lmalign simulate``: a seeded synthetic tilt series (markers, tilts, truth; with ``--stack`` the
raw image stack of its gold beads too)."""

from __future__ import annotations

import dataclasses
import math
import textwrap

import mrcfile
import numpy as np

from .. import __version__, io
from ..io.mrc import set_header_tilts
from ..io.mrc_volume import check_free_space
from ..io.outputs import OutputSet
from ..models import get_model
from ..report import record_to_json
from ..simulation.cryo import Imaging, cryo_specimen, render_stack
from ..simulation.phantom import bead_phantom, project_stack, series_alignment
from ..simulation.synthetic import simulate
from ..workflow import check_output_folder
from .common import EXIT_OK, MIN_MARKERS, HelpFormatter, UsageError, file_stem, seed_number
from .simulate_options import check_in_view, check_simulate_args, resolve_defaults

SERIES_OUTPUTS = (".csv", ".rawtlt", "_truth.json")
STACK_OUTPUTS = (".mrc", "_truth.xf", "_truth.tlt")
REALISTIC_OUTPUTS = ("_truth_beads.csv",)
BEAD_SIGMA_PX = 1.5
N_BLOBS = 3


def simulate_series(options: dict, markers=None):
    """The SyntheticSeries of simulate's options (``views``, ``markers``, ``tilt_range``, ...,
    ``seed``: the option names, as a dict); ``markers`` (n, 3) replaces the random markers."""
    o = options
    return simulate(
        markers=markers,
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


def realistic_specimen(options: dict):
    """The :class:`~lmalign_jax.simulation.cryo.CryoSpecimen` of simulate's --realistic options."""
    o = options
    return cryo_specimen(
        tuple(o["image_size"]),
        n_beads=o["markers"],
        bead_diameter_px=o["bead_diameter"],
        thickness_px=o["thickness"],
        close_pairs=o["close_pairs"],
        n_ice=o["ice"],
        tilt_range=tuple(o["tilt_range"]),
        seed=o["seed"],
    )


def write_series(series, out: OutputSet, settings: dict, marker_ids=None) -> tuple[str, str]:
    """Stage ``<prefix>.csv``, ``<prefix>.rawtlt`` and ``<prefix>_truth.json`` for a synthetic series
    (markers numbered ``marker_ids``, default 1 to n)."""
    obs = series.observations
    ids = tuple(range(1, obs.n_markers + 1)) if marker_ids is None else tuple(marker_ids)
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


def write_stack(
    series, out: OutputSet, *, pixel_size: float, thickness: float, seed: int, specimen=None, imaging=None
) -> str:
    """Stage ``<prefix>.mrc`` (the raw stack: the beads projected through the series' true
    alignment) and that alignment as ``<prefix>_truth.xf`` / ``<prefix>_truth.tlt``. With a
    ``specimen`` (:func:`realistic_specimen`) and ``imaging``, the stack is the realistic one of
    :func:`lmalign_jax.simulation.cryo.render_stack`, written view by view, and every bead's true
    position in every view goes to ``<prefix>_truth_beads.csv``."""
    a, d, tilts = series_alignment(series)
    nx, ny = (int(round(s)) for s in series.observations.image_size)
    with mrcfile.new_mmap(out.stage(".mrc"), shape=(tilts.size, ny, nx), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        if specimen is None:
            project_stack(series_phantom(series, thickness, seed), a, d, tilts, (nx, ny), out=mrc.data)
        else:
            set_header_tilts(mrc, series.observations.tilts_deg)  # nominal tilts, as SerialEM writes
            _, truth = render_stack(specimen, imaging, a, d, tilts, (nx, ny), seed=seed, out=mrc.data)
            out.write_text("_truth_beads.csv", bead_truth_csv(truth))
        mrc.voxel_size = float(pixel_size)
        mrc.update_header_stats()
    io.write_xf(out.stage("_truth.xf"), a, d)
    io.write_tlt(out.stage("_truth.tlt"), tilts)
    return out.path(".mrc")


def bead_truth_csv(truth) -> str:
    """``<prefix>_truth_beads.csv``: one row per bead and view, ``marker,view,x,y,visible,
    nearest_px,near_feature`` (marker ids 1-based as in ``<prefix>.csv``, views 0-based, x, y in
    IMOD image coordinates of the raw view; visible: the whole bead inside the image; nearest_px:
    distance to the nearest other bead; near_feature: within a bead diameter of ice or the carbon
    edge)."""
    n_views, n_beads = truth.visible.shape
    view, bead = np.meshgrid(np.arange(n_views), np.arange(n_beads), indexing="ij")
    rows = ["marker,view,x,y,visible,nearest_px,near_feature"]
    nearest = np.where(np.isfinite(truth.nearest_px), truth.nearest_px, -1.0)
    for b, v, (x, y), vis, near, feat in zip(
        bead.ravel() + 1,
        view.ravel(),
        truth.xy.reshape(-1, 2),
        truth.visible.ravel(),
        nearest.ravel(),
        truth.near_feature.ravel(),
        strict=True,
    ):
        rows.append(f"{b},{v},{x:.4f},{y:.4f},{int(vis)},{near:.3f},{int(feat)}")
    return "\n".join(rows) + "\n"


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
    if options.get("realistic", False):
        settings |= {
            "stack": True,
            "realistic": True,
            "pixel_size_A": options["pixel_size"],
            "dose_e_per_px": options["dose"],
            "bead_diameter_px": options["bead_diameter"],
            "close_pairs": options["close_pairs"],
            "background": options["background"],
            "ice": options["ice"],
        }
    elif options.get("stack", False):
        settings |= {
            "stack": True,
            "pixel_size_A": options["pixel_size"],
            "bead_sigma_px": BEAD_SIGMA_PX,
            "blobs": N_BLOBS,
        }
    return settings


def visible_only(series, bead_diameter: float):
    """(series, marker ids): ``series`` with only the points of beads wholly inside the image (what a
    tracker can find), without the beads seen in fewer than 2 views; ids 1-based as in
    ``<prefix>_truth_beads.csv``, which keeps every bead."""
    obs = series.observations
    nx, ny = obs.image_size
    r = 0.5 * float(bead_diameter)
    x, y = obs.xy[..., 0], obs.xy[..., 1]
    inside = obs.mask & (x >= r) & (x <= nx - r) & (y >= r) & (y <= ny - r)
    kept = np.flatnonzero(inside.sum(axis=0) >= 2)
    empty = np.flatnonzero(~inside[:, kept].any(axis=1))
    if kept.size < MIN_MARKERS or empty.size:
        problem = (
            f"view {int(empty[0])} shows no whole bead"
            if empty.size
            else f"only {kept.size} beads are seen whole in 2 or more views (need {MIN_MARKERS})"
        )
        raise UsageError(
            f"{problem} ({obs.n_markers} beads over {nx:g} x {ny:g} px); use more --markers or a larger "
            "--image-size"
        )
    xy = np.where(inside[..., None], obs.xy, np.nan)[:, kept]
    observations = dataclasses.replace(obs, xy=xy, mask=inside[:, kept])
    return (
        dataclasses.replace(
            series, observations=observations, markers=series.markers[kept], outliers=series.outliers[:, kept]
        ),
        tuple(int(k) + 1 for k in kept),
    )


def run_simulate(args) -> int:
    resolve_defaults(args)
    check_simulate_args(args)
    out = OutputSet(args.out_dir, args.prefix)
    realistic = bool(getattr(args, "realistic", False))
    outputs = (
        SERIES_OUTPUTS + (STACK_OUTPUTS if args.stack else ()) + (REALISTIC_OUTPUTS if realistic else ())
    )
    check_output_folder(out, outputs, ())
    if args.stack:  # the stack is written sparse: a full disk would show only part-way through
        nx, ny = args.image_size
        check_free_space(
            out.path(".mrc"),
            (args.views, ny, nx),
            "choose another --out-dir, a smaller --image-size or fewer --views",
            what="the stack",
            axes="pixels, views x NY x NX",
        )
    specimen = imaging = None
    if realistic:
        try:
            specimen = realistic_specimen(vars(args))
        except ValueError as e:
            raise UsageError(str(e)) from e
        imaging = Imaging(dose=args.dose or None, background=args.background)
        series, ids = visible_only(simulate_series(vars(args), specimen.beads), args.bead_diameter)
    else:
        series, ids = simulate_series(vars(args)), None
    check_in_view(series.observations, args)
    with out:
        csv, tlt = write_series(series, out, settings_record(vars(args)), ids)
        if args.stack:
            stack = write_stack(
                series,
                out,
                pixel_size=args.pixel_size,
                thickness=args.thickness,
                seed=args.seed,
                specimen=specimen,
                imaging=imaging,
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
            type=float,
            metavar="FRAC",
            help="fraction of points missing, in runs at high tilt (default 0.1; 0 with --realistic, "
            "whose CSV holds the beads wholly inside each view)",
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
        "  lmalign reconstruct simst/synthetic.mrc --alignment simst/synthetic.json --thickness 64\n\n"
        "example of a realistic raw stack at cryo dose, and its beads at 0 deg:\n"
        "  lmalign simulate --out-dir simr --stack --realistic --image-size 1024 1024 --markers 40"
        " --dose 30\n"
        "  lmalign find-beads simr/synthetic.mrc --bead-diameter 8 --out simr/beads.csv",
    )
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--prefix", type=file_stem, default="synthetic", metavar="NAME", help="output file stem")
    for flag, kw in SIM_OPTIONS:
        p.add_argument(flag, **kw)
    p.add_argument("--seed", type=seed_number, default=0, help="random seed")
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
    p.add_argument(
        "--realistic",
        action="store_true",
        help="with --stack: a realistic raw stack (dose-limited Poisson counts, dark gold spheres on both "
        "surfaces of a slab, textured specimen, ice, a carbon edge, close pairs) and every bead's true "
        "position per view in <prefix>_truth_beads.csv; per-view shifts default to 20 px",
    )
    p.add_argument(
        "--dose",
        type=float,
        metavar="E",
        help="--realistic: electrons per pixel per view (default 30; 0: no noise)",
    )
    p.add_argument("--bead-diameter", type=float, metavar="PX", help="--realistic: bead diameter (default 8)")
    p.add_argument(
        "--close-pairs",
        type=float,
        metavar="FRAC",
        help="--realistic: fraction of beads in pairs that overlap at some tilt (default 0.2)",
    )
    p.add_argument(
        "--background",
        type=float,
        metavar="SCALE",
        help="--realistic: scale of the specimen texture (default 1; 0: flat)",
    )
    p.add_argument(
        "--ice", type=int, metavar="N", help="--realistic: ice blobs (default one per 256 x 256 px)"
    )
    p.set_defaults(run=run_simulate)
