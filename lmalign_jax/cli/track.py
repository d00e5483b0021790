"""``lmalign track``: gold beads found on the view nearest 0 degrees and tracked through a raw stack."""

from __future__ import annotations

import os

from ..io.errors import InputError
from ..io.mrc import read_stack_header
from ..workflow.alignment_inputs import read_alignment_json
from ..workflow.reconstruction import ALIGN_OPTIONS, check_room, reconstruct_to_file, volume_shape
from ..workflow.series import warn_anisotropic_pixels
from ..workflow.tracking import track_stack
from .common import EXIT_OK, HelpFormatter, Progress, UsageError, file_stem, note, warn

TRACK_HELP = """\
Find gold beads on the view nearest 0 degrees of a raw tilt-series stack and track them through
every view: each bead's position in a new view is predicted by the alignment fitted so far (the
package's own solver) and refined by correlation with the averaged bead; beads are left out of a
view where they are weak, leave the image or come within two diameters of another bead.

Writes <prefix>.fid (IMOD fiducial model, one contour per bead, z = 0-based view), <prefix>.csv
(marker,view,x,y), <prefix>_track.json (per bead: views found, mean score, residual; per view:
beads found and why others were left out) and <prefix>_track.png; all or none.
"""

TRACK_EXAMPLE = """\
examples:
  lmalign track TS_01.mrc --tilts TS_01.rawtlt --bead-diameter 8 --out-dir track/
  lmalign align track/TS_01.fid --tilts TS_01.rawtlt --out-dir align/
"""


def add_bead_options(p) -> None:
    """--bead-diameter, --bead-nm and --target-beads (shared by track and align STACK.mrc)."""
    p.add_argument(
        "--bead-diameter",
        type=float,
        metavar="PX",
        help="gold bead diameter in pixels (a real number, e.g. 5.8); estimated from the image when "
        "neither this nor --bead-nm is given",
    )
    p.add_argument(
        "--bead-nm",
        type=float,
        metavar="NM",
        help="gold bead diameter in nm (needs the pixel size in the header)",
    )
    p.add_argument(
        "--target-beads",
        type=int,
        default=40,
        metavar="N",
        help="how many beads to track at most",
    )


def run_track(args) -> int:
    """``lmalign track``."""
    if args.bead_nm is not None and os.path.isfile(args.stack):  # converted by the x pixel size
        warn_anisotropic_pixels(args.stack, warn)
    _track_and_print(args, args.stack)
    return EXIT_OK


def _track_and_print(args, stack: str):
    """Track ``stack`` with the tracking options of ``args`` into ``--out-dir``, print the summary;
    returns the :class:`lmalign_jax.workflow.tracking.TrackedStack`."""
    with Progress(f"lmalign: tracking beads in {stack} ..."):
        done = track_stack(
            stack,
            args.tilts,
            out_dir=args.out_dir,
            prefix=args.prefix,
            bead_diameter_px=args.bead_diameter,
            bead_nm=args.bead_nm,
            rotation_deg=args.rotation,
            target_beads=args.target_beads,
            warn=warn,
            note=note,
        )
    print_tracking(done)
    return done


def print_tracking(done) -> None:
    """The tracking summary: beads, points, views with few beads, files written."""
    t = done.track
    per_view = t.beads_per_view
    print(
        f" Tracked {t.n_tracked} beads"
        + (f" ({t.n_beads - t.n_tracked} more left with no point)" if t.n_tracked < t.n_beads else "")
        + f" (diameter {t.bead_diameter_px:.2f} px, {done.diameter_source}) from "
        f"view {t.seed_view + 1}: {int(t.found.sum())} points in {t.n_views} views, {int(per_view.min())} to "
        f"{int(per_view.max())} beads per view, fit RMS {t.fit_rms_px:.3f} px, {t.seconds:.1f} s"
    )
    for v, why in zip(t.lost_views, t.lost_reasons, strict=True):
        warn(
            f"view {int(v) + 1} (1-based, tilt {t.tilts_deg[v]:g} deg) lost: {why}; it is left out of the fit"
        )
    print(" Wrote " + ", ".join(done.written))


def add_track(sub):
    p = sub.add_parser(
        "track",
        help="find and track gold beads through a raw tilt-series stack",
        description=TRACK_HELP,
        epilog=TRACK_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument("stack", metavar="STACK", help="raw tilt-series stack (MRC: .mrc, .st)")
    p.add_argument(
        "--tilts", required=True, metavar="FILE", help="tilt angles: .tlt/.rawtlt or SerialEM .mdoc"
    )
    add_bead_options(p)
    p.add_argument(
        "--rotation",
        type=float,
        metavar="DEG",
        help="tilt-axis angle in the raw images, degrees counter-clockwise from the y axis; estimated when "
        "omitted",
    )
    p.add_argument("--out-dir", default=".", metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--prefix", type=file_stem, metavar="NAME", help="output file stem; default: the stack's stem"
    )
    p.set_defaults(run=run_track)


def add_stack_options(p) -> None:
    """The options of ``lmalign align STACK.mrc``: the bead options and --reconstruct."""
    group = p.add_argument_group("when MARKERS is a raw stack (.mrc, .st): track, then align")
    add_bead_options(group)
    group.add_argument(
        "--reconstruct",
        type=float,
        metavar="NZ",
        help="also write the tomogram <prefix>.rec.mrc, NZ unbinned pixels thick, from the stack (MARKERS, "
        "or --stack with a marker file; through the local alignment with --local, through a --model "
        "warp's per-view warp)",
    )


def track_for_align(args):
    """``lmalign align STACK.mrc``: track the stack into ``--out-dir`` and print the summary;
    returns the :class:`lmalign_jax.workflow.tracking.TrackedStack`."""
    if args.tilts is None:
        raise UsageError("--tilts FILE is required with a stack (.tlt, .rawtlt or .mdoc)")
    return _track_and_print(args, args.markers)


def check_reconstruct_option(stack: str | None, out_path: str, thickness: float) -> None:
    """``lmalign align ... --reconstruct NZ``, before any work: a stack to reconstruct from, a
    thickness the tomogram can have and room for it on the disk (``--local`` with ``--model warp``,
    which it cannot apply together, is refused by ``align_options.local_options_from_args``). Raises
    UsageError / InputError naming align's options."""
    if stack is None:
        raise UsageError(
            "--reconstruct needs the raw stack: give it as MARKERS (to track it first) or, with a marker "
            "file, as --stack STACK.mrc (or reconstruct later with 'lmalign reconstruct')"
        )
    _, ny, nx, _ = read_stack_header(stack)
    shape = volume_shape(nx, ny, thickness, 1, ALIGN_OPTIONS, stack)
    if os.path.realpath(out_path) == os.path.realpath(stack):
        raise UsageError(f"--reconstruct: the tomogram {out_path} would overwrite the stack {stack}")
    if os.path.isdir(out_path):
        raise UsageError(
            f"--reconstruct: the tomogram's path {out_path} is a folder; move it or choose another "
            "--prefix or --out-dir"
        )
    check_room(out_path, shape, ALIGN_OPTIONS)


def check_reconstruct_stack(stack: str, image_size) -> None:
    """``align MARKERS --stack STACK --reconstruct NZ``, once the markers are read and before
    they are solved: the stack must have the images the markers were picked on (``image_size``,
    (nx, ny) px); InputError naming the stack otherwise."""
    _, ny, nx, _ = read_stack_header(stack)
    if abs(image_size[0] - nx) > 0.5 or abs(image_size[1] - ny) > 0.5:
        raise InputError(
            stack,
            None,
            f"--reconstruct: images are {nx} x {ny} pixels but the markers are on {image_size[0]:g} x "
            f"{image_size[1]:g} images; give the stack the markers were picked on (reconstruct a binned "
            "one later with 'lmalign reconstruct --bin')",
        )


def reconstruct_after_align(
    stack: str, record: str, out_path: str, thickness: float, quiet: bool, local: bool = False
) -> None:
    """The tomogram of ``lmalign align STACK.mrc --reconstruct NZ`` from the .json record just
    written: its transforms and tilts, a ``--model warp`` record's per-view warp, and with
    ``local`` (``align --local``) the local alignment file it names, position by position."""
    alignment = read_alignment_json(record)
    local_path = alignment.local_path if local else None
    if local_path is not None and not quiet:
        note(f"reconstructing through the local alignment {local_path} ({alignment.local_summary})")
    summary = reconstruct_to_file(
        stack,
        alignment,
        out_path,
        thickness=thickness,
        quiet=quiet,
        warn=warn,
        note=note,
        local_path=local_path,
        options=ALIGN_OPTIONS,
    )
    nz, ny, nx = summary["shape"]
    print(f" Wrote {out_path} ({nz} x {ny} x {nx} voxels, NZ x NY x NX, {summary['seconds']:.1f} s)")
