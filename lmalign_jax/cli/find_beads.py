"""``lmalign find-beads``: gold beads in one view of an MRC image or stack -> ``x,y,score`` CSV and a PNG."""

from __future__ import annotations

import textwrap

from ..workflow.beads import check_beads_out, find_beads_in_file, write_beads
from ..workflow.series import warn_anisotropic_pixels
from .common import EXIT_OK, HelpFormatter, warn


def run_find_beads(args) -> int:
    check_beads_out(args.out, (args.image, args.tilts))  # a bad --out is refused before the search
    if args.bead_nm is not None:  # --bead-nm is converted by the x pixel size
        warn_anisotropic_pixels(args.image, warn)
    finding = find_beads_in_file(
        args.image,
        view=args.view,
        tilts_path=args.tilts,
        bead_diameter_px=args.bead_diameter,
        bead_nm=args.bead_nm,
        polarity=args.polarity,
        warn=warn,
    )
    print(f" View {finding.view} ({finding.view_reason})")
    print(f" Bead diameter {finding.diameter_px:.2f} px ({finding.diameter_source})")
    written = write_beads(finding, args.out, (args.image, args.tilts))
    print(f" {finding.positions.shape[0]} beads; wrote " + ", ".join(written))
    return EXIT_OK


def add_find_beads(sub):
    p = sub.add_parser(
        "find-beads",
        help="find the gold beads in one view of an MRC image or stack",
        formatter_class=HelpFormatter,
        description=textwrap.fill(
            "Find gold beads in one image (for a stack: the view nearest 0 deg by --tilts or the tilt "
            "angles in its extended header, or --view K) by "
            "a matched Laplacian-of-Gaussian filter, non-maximum suppression and sub-pixel peak fits, "
            "rejecting features whose profile is not a bead's (ice, carbon edges, clusters). Writes "
            "x,y,score rows (IMOD image coordinates: origin at the lower-left corner, pixel centres at "
            "+0.5; score in noise standard deviations) and a PNG overlay beside the CSV. Without "
            "--bead-diameter or --bead-nm the diameter is estimated from the view. Images larger than "
            "2048 px are searched binned and centred at full resolution.",
            95,
        ),
        epilog="example:\n  lmalign find-beads TS_01.mrc --tilts TS_01.mrc.mdoc --bead-diameter 6.5"
        " --out beads.csv",
    )
    p.add_argument("image", metavar="IMAGE_OR_STACK", help="MRC image or tilt-series stack (.mrc, .st)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="output CSV (the overlay: FILE.png)")
    p.add_argument(
        "--view",
        type=int,
        metavar="K",
        help="0-based view to search (default: nearest 0 deg; needs --tilts or tilts in the header)",
    )
    p.add_argument(
        "--tilts", metavar="FILE", help="tilt angles (.tlt, .rawtlt, .mdoc) to find the 0-deg view"
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--bead-diameter", type=float, metavar="PX", help="bead diameter, pixels")
    size.add_argument(
        "--bead-nm", type=float, metavar="NM", help="bead diameter, nm (with the header's pixel size)"
    )
    p.add_argument(
        "--polarity",
        choices=("auto", "dark", "bright"),
        default="auto",
        help="bead contrast: dark (bright-field cryo-EM), bright, or auto (decided from the image)",
    )
    p.set_defaults(run=run_find_beads)
