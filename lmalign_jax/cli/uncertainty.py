"""``lmalign uncertainty``: the predicted misregistration of particle positions under an alignment."""

from __future__ import annotations

import numpy as np

from ..workflow.exporting import MAX_PIXEL_ANGST, MIN_PIXEL_ANGST
from ..workflow.misregistration import points_misregistration, write_points_csv
from .common import EXIT_OK, HelpFormatter, UsageError, check_output_file

UNCERTAINTY_HELP = """For each point of a particle list, the predicted misregistration under an
alignment: the standard error (1 sigma, as a 2-D length) of the point's projected position,
root mean square over the fitted views, in pixels, from the covariance of the alignment's
parameters (recorded by 'lmalign align' unless --no-errors). Where it is large, subtomograms
average blurred.

Points: a CSV of x, y, z in pixels of the tilt series (unbinned) from the tomogram centre
(x across the tilt axis, y along it, z along the beam at zero tilt), or a RELION particles
STAR file: RELION 5's rlnCenteredCoordinate{X,Y,Z}Angst (Angstrom from the centre; pixel
size from rlnTomoTiltSeriesPixelSize or --pixel-size) or rlnCoordinate{X,Y,Z} (unbinned
pixels from the tomogram's corner; give --tomogram-size)."""

UNCERTAINTY_EXAMPLE = """example:
  lmalign uncertainty align/BBa.json --points particles.star --out BBa_misregistration.csv"""


def run_uncertainty(args) -> int:
    if args.pixel_size is not None and not MIN_PIXEL_ANGST <= args.pixel_size <= MAX_PIXEL_ANGST:
        raise UsageError(
            f"--pixel-size must be a tilt series' pixel size, {MIN_PIXEL_ANGST:g} to {MAX_PIXEL_ANGST:g} A "
            f"(as export takes), got {args.pixel_size:g}"
        )
    if args.tomogram_size is not None and not all(0 < s < np.inf for s in args.tomogram_size):
        size = " ".join(f"{s:g}" for s in args.tomogram_size)
        raise UsageError(f"--tomogram-size must be three positive finite numbers, got {size}")
    given = {"--pixel-size": args.pixel_size, "--tomogram-size": args.tomogram_size, "--tomo": args.tomo}
    star_options = [option for option, value in given.items() if value is not None]
    if star_options and not str(args.points).lower().endswith(".star"):
        verb = "applies" if len(star_options) == 1 else "apply"
        raise UsageError(
            f"{', '.join(star_options)} only {verb} to a RELION .star file of points; {args.points} is read "
            "as a CSV of x, y, z px from the centre"
        )
    if args.out:
        check_output_file(args.out, (args.alignment, args.points), "--out", "misregistration.csv")
    result = points_misregistration(
        args.alignment,
        args.points,
        pixel_size=args.pixel_size,
        tomogram_size=tuple(args.tomogram_size) if args.tomogram_size else None,
        tomo_name=args.tomo,
    )
    values = result.misregistration_px
    print(
        f" {values.size} points of {args.points}: predicted misregistration mean {values.mean():.3f} px,"
        f" median {np.median(values):.3f}, max {values.max():.3f} px (1 sigma, RMS over views)"
    )
    for i in np.argsort(values)[::-1][:5]:
        x, y, z = result.points[i]
        print(f"   point {i:>6d} at ({x:9.1f}, {y:9.1f}, {z:8.1f}) px: {values[i]:.3f} px")
    if args.out:
        write_points_csv(args.out, result)
        print(f" Wrote {args.out}")
    return EXIT_OK


def add_uncertainty(sub):
    p = sub.add_parser(
        "uncertainty",
        help="predicted misregistration of particle positions under an alignment",
        description=UNCERTAINTY_HELP,
        epilog=UNCERTAINTY_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument("alignment", metavar="ALIGNMENT.json", help="the record written by 'lmalign align'")
    p.add_argument(
        "--points", required=True, metavar="FILE", help="particle list: .csv (x,y,z px) or RELION .star"
    )
    p.add_argument(
        "--out", metavar="FILE", help="write index,x_px,y_px,z_px,misregistration_px per point (CSV)"
    )
    p.add_argument(
        "--pixel-size", type=float, metavar="A", help="tilt-series pixel size for Angstrom coordinates"
    )
    p.add_argument(
        "--tomogram-size",
        nargs=3,
        type=float,
        metavar=("NX", "NY", "NZ"),
        help="tomogram size in unbinned px, for RELION's corner-based rlnCoordinateX/Y/Z",
    )
    p.add_argument(
        "--tomo", metavar="NAME", help="the tomogram (rlnTomoName) when the STAR file holds several"
    )
    p.set_defaults(run=run_uncertainty)
