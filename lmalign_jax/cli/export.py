"""``lmalign export``: an alignment record as the files IMOD, AreTomo, RELION 5 and the Data
Portal read (the work is :func:`lmalign_jax.workflow.exporting.export_alignment`)."""

from __future__ import annotations

import os

from ..io.outputs import OutputSet
from ..workflow.export_warnings import export_warnings
from ..workflow.exporting import (
    ALIGN_LOG_NAME,
    EXPORT_TARGETS,
    export_alignment,
    export_suffixes,
    local_alignment_for,
    parse_export_targets,
    read_alignment_record,
    unnamed_local_file,
)
from ..workflow.local import LOCAL_SUFFIX
from ..workflow.record_markers import measured_markers
from ..workflow.writing import check_output_folder
from .common import EXIT_OK, HelpFormatter, UsageError, file_stem, note, warn

EXPORT_HELP = f"""\
Write a solved alignment (the <prefix>.json record of 'lmalign align') in the formats the next
program reads. --to takes one or more of {", ".join(EXPORT_TARGETS)} (comma-separated), or all.

  imod     P.xf, P.tlt, P.xtilt (zeros; for an 'align --flatten' record its X-axis tilt, which
           the other targets do not carry: a warning says so), P_nogaps.fid (fiducial model,
           gaps filled by the solved projection), P_erase.fid (beads in the aligned stack, for
           ccderaser) and {ALIGN_LOG_NAME} (tiltalign's layout); P.zfac (tilt's z factors,
           computed with the .xf) when they are not 0; Plocal.xf (tilt's LOCALFILE) with a
           local alignment. One folder per tilt series: WarpTools' ts_import_alignments and
           RELION's IMOD importer read it.
  aretomo  P.aln (AreTomo global rows; views left out of the fit are DarkFrame lines); with a
           local alignment (the one the record names, 'align --local', or --local FILE), its
           local rows: each patch centre's shift (the rest of IMOD's patch transforms, their
           rotation/stretch and the z part of their tilt, is dropped)
  relion   P.star (RELION 5 per-tilt-series STAR, block data_P; needs the pixel size); with
           --relion-tilt-series, the STAR RELION's Import wrote with the alignment filled in
  portal   P_portal.json (CryoET Data Portal alignment JSON)

The pixel size comes from --pixel-size, else from the record (the marker file's or the stack's).
The filled model keeps the measured points of the marker file the record names (or --markers):
they must be the points the record was fitted to (its views, markers, point count and image
size, and within its residuals of its solution), else the export is refused.
All files are written or none. Exit status: 0 success, 2 bad input (nothing written).
"""

EXPORT_EXAMPLE = """\
examples:
  lmalign export align/TS_01.json --to all --pixel-size 2.17 --out-dir export/TS_01
  lmalign export align/TS_01.json --to imod --out-dir warp_alignments/TS_01
  lmalign export align/TS_01.json --to relion,portal --pixel-size 2.17
"""


def run_export(args) -> int:
    targets = parse_export_targets(args.to)
    record = read_alignment_record(args.alignment)
    prefix = args.prefix or os.path.splitext(os.path.basename(args.alignment))[0]
    out_dir = args.out_dir if args.out_dir is not None else os.path.dirname(args.alignment) or "."
    out = OutputSet(out_dir, prefix)
    check_output_folder(
        out, export_suffixes(targets), (args.alignment, args.markers, args.relion_tilt_series, args.local)
    )
    local = None
    if args.local is not None and not {"aretomo", "imod"} & set(targets):
        raise UsageError(
            "--local gives the .aln its local rows and is written as Plocal.xf: it needs --to aretomo "
            "or imod (or all)"
        )
    if args.relion_tilt_series is not None and "relion" not in targets:
        raise UsageError(
            "--relion-tilt-series is the STAR file the RELION export fills: it needs --to relion (or all)"
        )
    if {"aretomo", "imod"} & set(targets):
        local, local_path = local_alignment_for(record, args.local, warn, args.pixel_size)
        if local is not None:
            uses = [f"{prefix}{LOCAL_SUFFIX}"] * ("imod" in targets) + [f"local rows of {prefix}.aln"] * (
                "aretomo" in targets
            )
            note(f"{' and '.join(uses)} from {local_path}")
        elif (stale := unnamed_local_file(record)) is not None:
            warn(
                f"{stale} is not used: {args.alignment} names no local alignment, so that file is from "
                "another run (solved against another global alignment); give --local FILE to export it"
            )
    measured = None
    if "imod" in targets:
        measured = measured_markers(record, args.markers)
        if measured is None:
            missing = (
                f"marker file {record.markers_path} not found"
                if record.markers_path
                else f"{args.alignment} names no marker file"
            )
            warn(
                f"{missing}: every point of {prefix}_nogaps.fid is the solved projection (give --markers "
                "FILE to keep the measured points)"
            )
    written = export_alignment(
        record,
        targets,
        out_dir=out_dir,
        prefix=prefix,
        pixel_size_angst=args.pixel_size,
        measured=measured,
        relion_tilt_series=args.relion_tilt_series,
        local=local,
    )
    print(" Wrote " + ", ".join(written))
    for message in export_warnings(record, targets, prefix, local, out_dir, written):
        warn(message)
    return EXIT_OK


def export_after_align(args, exit_code: int, markers: str, prefix: str | None) -> int:
    """``align --export``: the targets of the record just written (``.xf``/``.tlt`` are there
    already) from the marker file it aligned (the tracked ``.fid`` for a stack); returns the
    exit status (the alignment's, or 2 when the export is refused)."""
    if not args.export or exit_code != EXIT_OK:
        return exit_code
    targets = parse_export_targets(args.export, "--export")
    prefix = prefix or os.path.splitext(os.path.basename(markers))[0]
    record = read_alignment_record(OutputSet(args.out_dir, prefix).path(".json"))
    local = (
        local_alignment_for(record, None, warn, args.pixel_size)[0]
        if {"aretomo", "imod"} & set(targets)
        else None
    )
    written = export_alignment(
        record,
        targets,
        out_dir=args.out_dir,
        prefix=prefix,
        pixel_size_angst=args.pixel_size,
        measured=measured_markers(record, markers, "marker file"),
        with_xf_tlt=False,
        local=local,
    )
    print(" Exported " + ", ".join(written))
    for message in export_warnings(record, targets, prefix, local, args.out_dir, written):
        warn(message)
    return exit_code


def add_export(sub):
    p = sub.add_parser(
        "export",
        help="write an alignment for IMOD, AreTomo, RELION 5 or the CryoET Data Portal",
        description=EXPORT_HELP,
        epilog=EXPORT_EXAMPLE,
        formatter_class=HelpFormatter,
    )
    p.add_argument("alignment", metavar="ALIGNMENT.json", help="the .json record written by 'lmalign align'")
    p.add_argument(
        "--to", required=True, metavar="TARGETS", help=f"{', '.join(EXPORT_TARGETS)} (comma-separated) or all"
    )
    p.add_argument(
        "--pixel-size", type=float, metavar="A", help="pixel size, Angstrom (default: the record's)"
    )
    p.add_argument("--out-dir", metavar="DIR", help="output folder (default: the record's folder)")
    p.add_argument(
        "--prefix", type=file_stem, metavar="NAME", help="output file stem (default: the record's stem)"
    )
    p.add_argument(
        "--markers",
        metavar="FILE",
        help="the measured markers the record was fitted to (default: the marker file the record names)",
    )
    p.add_argument(
        "--relion-tilt-series",
        metavar="STAR",
        help="the tilt-series STAR RELION 5's Import wrote: P.star is that file with the alignment filled in",
    )
    p.add_argument(
        "--local",
        metavar="LOCAL.xf",
        help="IMOD local alignment of this alignment, for Plocal.xf and the .aln's local rows, checked and "
        "scaled to the record's pixel size as reconstruct --local does (default: the one the record names)",
    )
    p.set_defaults(run=run_export)
