"""``lmalign reconstruct``: a tomogram from a raw tilt series and its alignment (weighted FBP).

The alignment is either IMOD's pair (``--xf`` raw -> aligned transforms, ``--tlt`` tilt angles)
or the ``.json`` record written by ``lmalign align`` (``--alignment``: each view's ``xf`` and
``tilt_deg``). Every input is checked before anything is computed; the tomogram is written
through :func:`lmalign_jax.io.mrc_volume.create_volume`, so it appears complete or not at all.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..io.mrc import read_stack_header
from ..io.mrc_volume import LAYOUTS
from ..workflow import parse_view_list
from ..workflow.alignment_inputs import read_alignment_files, read_alignment_json, with_x_axis_tilt
from ..workflow.reconstruction import (
    DEFAULT_TOLERANCE_PX,
    FILTER_CHOICES,
    MAX_TOLERANCE_PX,
    check_view_counts,
    reconstruct_to_file,
    view_words,
)
from ..workflow.series import warn_anisotropic_pixels
from .common import EXIT_OK, HelpFormatter, UsageError, check_count, check_output_file, note, warn
from .tilt_com import apply_tilt_com, check_imod_com_args

#: The FBP filter when --filter is not given (it is None then, so that --sirt can refuse a given one).
DEFAULT_FILTER = "ramp"


def _check_args(args) -> None:
    if not math.isfinite(args.thickness) or args.thickness <= 0:
        raise UsageError(
            f"--thickness must be a positive number of (unbinned) pixels, got {args.thickness:g}"
        )
    if args.bin < 1:
        raise UsageError(f"--bin must be at least 1, got {args.bin}")
    if args.alignment is not None and (args.xf is not None or args.tlt is not None):
        raise UsageError("give either --alignment FILE.json or --xf FILE --tlt FILE, not both")
    if args.zfac is not None and args.alignment is not None:
        raise UsageError("--zfac goes with --xf/--tlt; an --alignment record carries its own z factors")
    if args.xtilt is not None and args.alignment is not None:
        raise UsageError(
            "--xtilt goes with --xf/--tlt; an --alignment record carries its own X-axis tilt (a flattened "
            "record's; add --x-axis-tilt DEG to tilt it further)"
        )
    if args.keep_excluded and args.alignment is None:
        raise UsageError("--keep-excluded goes with --alignment (IMOD's .xf/.tlt name no excluded views)")
    if args.x_axis_tilt is not None and not (abs(args.x_axis_tilt) < 90):
        raise UsageError(f"--x-axis-tilt must be degrees within -90..90, got {args.x_axis_tilt:g}")
    if args.alignment is None and (args.xf is None or args.tlt is None):
        if args.xf is None and args.tlt is None:
            raise UsageError(
                "the alignment is required: --xf FILE --tlt FILE (IMOD), or --alignment FILE.json (from "
                "'lmalign align')"
            )
        raise UsageError("--xf and --tlt go together (or give --alignment FILE.json)")
    if args.local_tolerance is not None:  # given: it must be one the command may use
        if not (math.isfinite(args.local_tolerance) and 0 <= args.local_tolerance <= MAX_TOLERANCE_PX):
            raise UsageError(
                f"--local-tolerance must be 0 (exact reads) or a positive number of pixels up to "
                f"{MAX_TOLERANCE_PX:g}, got {args.local_tolerance:g} (a read farther from its voxel's "
                f"position blurs the tomogram; the default is {DEFAULT_TOLERANCE_PX:g})"
            )
        if all(v is None for v in (args.local, args.zfac, args.xtilt, args.x_axis_tilt, args.alignment)):
            raise UsageError(
                "--local-tolerance goes with a reconstruction read through sheets: --local, --zfac, "
                "--xtilt/--x-axis-tilt or an --alignment record (none was given)"
            )
        if args.sirt is not None:
            raise UsageError(
                "--local-tolerance is for FBP's reads through sheets; --sirt reads every voxel at its own "
                "position (drop --local-tolerance)"
            )
    if args.positivity and args.sirt is None:
        raise UsageError("--positivity goes with --sirt N")
    for option, count in (("--sirt", args.sirt), ("--sirtlike", args.sirtlike)):
        if count is not None:  # iterations past 1e6 are a typing slip (hours per iteration at 1e6)
            check_count(count, option)
    if args.sirt is not None:
        given = [
            o
            for o, v in (("--filter", args.filter), ("--sirtlike", args.sirtlike), ("--radial", args.radial))
            if v is not None
        ]
        if given:
            raise UsageError(
                f"--sirt replaces the FBP filter; it does not combine with {' or '.join(given)} (SIRT has "
                f"no filter: drop {'it' if len(given) == 1 else 'them'}, or drop --sirt)"
            )
    if args.radial is not None:
        cutoff, falloff = args.radial
        if not (0 < cutoff <= 0.5 and 0 <= falloff < math.inf):
            raise UsageError(
                "--radial CUTOFF FALLOFF: need 0 < CUTOFF <= 0.5 and FALLOFF >= 0, in cycles/pixel of the "
                f"binned data, got {cutoff:g} {falloff:g}"
            )


def default_output(stack: str) -> str:
    """``<stack stem>.rec.mrc`` beside the stack."""
    return os.path.splitext(stack)[0] + ".rec.mrc"


#: ``--local`` without a file: the local alignment the ``--alignment`` record names.
FROM_RECORD = "<from the record>"


def _local_file(args, alignment) -> str | None:
    """The local alignment file to apply: ``--local FILE``, or with a bare ``--local`` the one the
    ``--alignment`` record names; a note offers the record's when ``--local`` is not given."""
    if args.local != FROM_RECORD:
        if args.local is None and alignment.local_path is not None and not args.quiet:
            note(
                f"{args.alignment} has a local alignment, {alignment.local_path} "
                f"({alignment.local_summary}); add --local to apply it"
            )
        return args.local
    if args.alignment is None:
        raise UsageError("--local without a file takes it from --alignment FILE.json; give --local FILE")
    if alignment.local_path is None:
        raise UsageError(
            f"--local: {args.alignment} names no local alignment (aligned without --local); give --local FILE"
        )
    if not os.path.isfile(alignment.local_path):
        raise UsageError(
            f"--local: {args.alignment} names the local alignment {alignment.local_path}, which is not there"
        )
    if not args.quiet:
        note(f"applying the local alignment {alignment.local_path} ({alignment.local_summary})")
    return alignment.local_path


def _left_out(args, alignment) -> tuple[list[int], str]:
    """The 0-based views to leave out (``--exclude``, and a record's unfitted views unless
    ``--keep-excluded``) and why, in words."""
    n_views = alignment.tilts_deg.size
    given = parse_view_list(args.exclude, n_views) if args.exclude is not None else []
    unfitted = (
        [] if args.keep_excluded or alignment.excluded_views is None else list(alignment.excluded_views)
    )
    why = []
    if given:  # --exclude, or the tilt.com lists that gave it
        why.append(getattr(args, "exclude_source", None) or f"--exclude {view_words(np.asarray(given))}")
    only_record = np.setdiff1d(unfitted, given)
    if only_record.size:
        why.append(f"{view_words(only_record)} excluded from the alignment {args.alignment}")
    return sorted(set(given) | set(unfitted)), "; ".join(why)


def run_reconstruct(args) -> int:
    check_imod_com_args(args)
    local_from_com = args.imod_com is not None and args.alignment is None and args.local == FROM_RECORD
    if local_from_com:  # a bare --local with a tilt.com: its LOCALFILE
        args.local = None
    if args.imod_com is not None:
        apply_tilt_com(args)
    if local_from_com and args.local is None:
        raise UsageError(f"--local: {args.imod_com} names no LOCALFILE; give --local FILE")
    if args.thickness is None:
        where = f" ({args.imod_com} has no THICKNESS)" if args.imod_com is not None else ""
        raise UsageError(f"--thickness NZ is required: the tomogram's thickness in unbinned pixels{where}")
    args.bin = 1 if args.bin is None else args.bin
    args.layout = args.layout or "zyx"
    _check_args(args)
    if args.out == "":
        raise UsageError("--out is empty; give a file name such as tomo.rec.mrc (or leave --out out)")
    out = args.out or default_output(args.stack)
    radial = tuple(args.radial) if args.radial else None
    n_views = read_stack_header(args.stack)[0]  # stack errors first: missing, not MRC
    warn_anisotropic_pixels(args.stack, warn)  # the tomogram's voxel size is the x pixel size
    alignment = (
        read_alignment_json(args.alignment)
        if args.alignment
        else read_alignment_files(args.xf, args.tlt, args.zfac)
    )
    check_view_counts(args.stack, n_views, alignment)  # before the .xtilt is matched to the .tlt
    with_x_axis_tilt(alignment, args.xtilt, args.x_axis_tilt)
    left_out, why = _left_out(args, alignment)
    local = _local_file(args, alignment)
    inputs = (args.stack, args.xf, args.tlt, args.zfac, args.xtilt, args.alignment, local, args.imod_com)
    check_output_file(out, inputs, "--out", "tomo.rec.mrc")
    info = reconstruct_to_file(
        args.stack,
        alignment,
        out,
        thickness=args.thickness,
        binning=args.bin,
        filter=args.filter or DEFAULT_FILTER,
        radial=radial,
        sirtlike=args.sirtlike,
        sirt_iterations=args.sirt,
        positivity=args.positivity,
        layout=args.layout,
        memory_gb=args.memory,
        quiet=args.quiet,
        warn=warn,
        note=note,
        local_path=local,
        local_tolerance_px=args.local_tolerance,
        exclude_views=left_out,
        exclusion_reason=why,
    )
    nz, ny, nx = info["shape"]
    dims = (
        f"{nz} x {ny} x {nx} voxels (NZ x NY x NX"
        if args.layout == "zyx"
        else (f"{nx} x {nz} x {ny} voxels (X x Z rows x Y sections, tilt's layout")
    )
    method = (
        f"SIRT {args.sirt} iterations"
        if args.sirt
        else f"filter {args.filter or DEFAULT_FILTER}"
        + (f", SIRT-like {args.sirtlike}" if args.sirtlike else "")
    )
    print(
        f" Wrote {out}: {dims}, float32), voxel size {info['voxel_size_A']:g} A, {info['n_views']} views, "
        f"{method}, bin {args.bin}, in {info['seconds']:.1f} s"
    )
    return EXIT_OK


RECON_HELP = """\
Reconstruct a tomogram from a raw tilt-series stack and its alignment by weighted filtered
back-projection (JAX; CPU or GPU). Each raw view is resampled once into the aligned frame through
its .xf transform, filtered along x (perpendicular to the tilt axis) and back-projected.

The alignment is either IMOD's .xf (raw -> aligned, one line per view) with a tilt file
(.tlt/.rawtlt/.mdoc, line k = view k), or the .json record written by 'lmalign align'
(--alignment), which holds both. The stack must be the one the markers were picked on (same size
and view order); --bin averages it in B x B blocks first.

Writes an MRC file of float32 voxels (NZ, NY, NX), NZ = thickness / bin rounded down (as tilt
divides THICKNESS by IMAGEBINNED), voxel size = the stack's pixel size x bin, complete or not at
all. Voxel (k, j, i) is centred at
(i + 0.5 - NX/2, j + 0.5 - NY/2, k + 0.5 - NZ/2) x bin pixels from the specimen centre, so a
marker solved at (x, y, z) appears at that voxel. Densities are back-projected as they are (no
log, no contrast inversion). --layout imod-tilt writes IMOD tilt's layout instead (X, depth as
rows, Y as sections; rows run against our z). The tomogram is streamed to disk slab by slab
within --memory GB; the free disk space is checked first. --local applies an IMOD local
alignment position by position (as tilt's LOCALFILE); a record of --model warp has its per-view
warp applied the same way. --xtilt and --x-axis-tilt tilt the specimen about X as tilt's
XTILTFILE and XAXISTILT do (view angle = .xtilt value - XAXISTILT); a record of 'align --flatten'
has its X-axis tilt applied so, as tilt applies the .xtilt written beside it. --exclude leaves
views out, as tilt's EXCLUDELIST (a record's views its alignment did not fit are left out too).
--imod-com tilt.com takes these settings from an Etomo project's tilt command file.

Exit status: 0 success, 2 bad input (no output written), 3 internal error (a bug).
"""

RECON_EXAMPLE = """\
examples:
  lmalign reconstruct TS_01.mrc --xf TS_01.xf --tlt TS_01.tlt --thickness 300 --bin 4 --out TS_01.rec.mrc
  lmalign reconstruct sim/synthetic.mrc --alignment sim/synthetic.json --thickness 64
  lmalign reconstruct BBa.st --xf BBa.xf --tlt BBa.tlt --thickness 200 --radial 0.35 0.05
"""


def add_reconstruct(sub):
    p = sub.add_parser(
        "reconstruct",
        help="reconstruct a tomogram from a raw stack and its alignment (FBP)",
        description=RECON_HELP,
        epilog=RECON_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument("stack", metavar="STACK.mrc", help="the raw (unaligned) tilt-series stack, MRC")
    p.add_argument("--xf", metavar="FILE", help="IMOD .xf transforms, raw -> aligned, one line per view")
    p.add_argument(
        "--tlt", metavar="FILE", help="tilt angles, degrees: .tlt/.rawtlt (line k = view k) or .mdoc"
    )
    p.add_argument(
        "--alignment", metavar="FILE.json", help="the .json record of 'lmalign align' instead of --xf/--tlt"
    )
    p.add_argument(
        "--zfac",
        metavar="FILE",
        help="with --xf/--tlt: IMOD z factors (tiltalign's OutputZFactorFile, 'lmalign export --to imod' "
        "P.zfac), one 'xzfac yzfac' line per view, applied as tilt's ZFACTORFILE (an --alignment "
        "record carries its own)",
    )
    p.add_argument(
        "--xtilt",
        metavar="FILE",
        help="with --xf/--tlt: IMOD's X-axis tilt of each view, degrees (tiltalign's OutputXAxisTiltFile, "
        "'lmalign export --to imod' P.xtilt), one per line, applied as tilt's XTILTFILE (an --alignment "
        "record of 'align --flatten' carries its own)",
    )
    p.add_argument(
        "--x-axis-tilt",
        type=float,
        metavar="DEG",
        help="tilt's XAXISTILT: degrees subtracted from every view's X-axis tilt, to level a specimen tilted "
        "about X (tiltalign's 'X axis tilt needed', as Etomo's tilt.com takes it)",
    )
    p.add_argument(
        "--exclude",
        metavar="LIST",
        help="views to leave out of the tomogram, 1-based, IMOD's list syntax (1-3,40), as tilt's "
        "EXCLUDELIST; an --alignment record's views that the alignment did not fit are left out too",
    )
    p.add_argument(
        "--keep-excluded",
        action="store_true",
        help="with --alignment: back-project the record's unfitted views too (their transforms "
        "interpolated from their neighbours in tilt)",
    )
    p.add_argument(
        "--thickness",
        type=float,
        metavar="NZ",
        help="tomogram thickness in unbinned pixels (required unless --imod-com gives THICKNESS)",
    )
    p.add_argument(
        "--bin", type=int, metavar="B", help="bin the stack B x B first (voxel = B pixels) (default: 1)"
    )
    p.add_argument(
        "--filter",
        choices=FILTER_CHOICES,
        help=f"ramp filter, optionally apodised (default: {DEFAULT_FILTER}; FBP only, not with --sirt)",
    )
    p.add_argument(
        "--radial",
        nargs=2,
        type=float,
        metavar=("CUTOFF", "FALLOFF"),
        help="IMOD's radial filter, cycles/pixel of the binned data (0-0.5): unchanged up to CUTOFF, then a "
        "Gaussian fall-off of sigma FALLOFF (tilt's RADIAL with FalloffIsTrueSigma 1; without it tilt's "
        "fall-off F is a sigma of F/sqrt(2))",
    )
    p.add_argument(
        "--sirtlike",
        type=int,
        metavar="N",
        help="IMOD's SIRT-like filter (tilt -FakeSIRTiterations): FBP that looks like N SIRT iterations",
    )
    p.add_argument(
        "--sirt", type=int, metavar="N", help="reconstruct by N iterations of SIRT instead of FBP (slower)"
    )
    p.add_argument("--positivity", action="store_true", help="with --sirt: clip negative densities to zero")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="zyx: sections are z slices (as after IMOD trimvol -rx, depth reversed); imod-tilt: tilt's own "
        "volume (X, depth as rows, Y as sections) (default: zyx; with --imod-com, imod-tilt where it says "
        "PERPENDICULAR)",
    )
    p.add_argument(
        "--imod-com",
        metavar="TILT.COM",
        help="with --xf: take the reconstruction settings from an Etomo tilt command file (tilt.com): tilt "
        "file, X-axis tilt (XTILTFILE, XAXISTILT), z factors, local file, excluded views, thickness, "
        "binning, radial filter, SIRT-like filter and layout; options given here win",
    )
    p.add_argument(
        "--memory",
        type=float,
        metavar="GB",
        help="memory for views and slabs held at once (default: half the available memory, at most 4 GB)",
    )
    p.add_argument(
        "--out", metavar="TOMO.mrc", help="output tomogram; default: <stack stem>.rec.mrc beside the stack"
    )
    p.add_argument(
        "--local",
        metavar="FILE",
        nargs="?",
        const=FROM_RECORD,
        help="IMOD local alignment file (<prefix>local.xf of 'lmalign align --local' or tiltalign), "
        "applied position by position after the global transforms, as IMOD's tilt LOCALFILE; where "
        "the alignment has z factors (a luther or diez record, --zfac) the file's own replace them "
        "and a file without any drops them, as tilt does (with a warning); without FILE, the one "
        "the --alignment record names (or --imod-com's LOCALFILE)",
    )
    p.add_argument(
        "--local-tolerance",
        metavar="PX",
        type=float,
        help="FBP through a local file, z factors, X-axis tilts that differ by view, or a shape "
        "record: the largest error (aligned pixels) of the position a voxel is read at, in exchange "
        "for speed (voxels read through per-view sheets); 0 samples every voxel at its own position, as "
        "tilt does (several times slower). At the default, sharp bead peaks stay within 2%% of the exact "
        "reads' with IMOD's local files; with one X-axis tilt for every view the sheets are read in the "
        "frame sheared by it, 2-6%% below (one interpolation in depth); X-axis tilts that differ by view "
        "move a row's reads across columns with its height, which costs them 3-12%% (0.5-20 deg), and "
        f"larger tolerances blur more (6-10%% at 0.2-1 px); at most {MAX_TOLERANCE_PX:g} (default: "
        f"{DEFAULT_TOLERANCE_PX:g})",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run_reconstruct)
