"""``reconstruct --imod-com tilt.com``: an Etomo tilt command file's options as reconstruct's.

Options given on the command line win; the file fills in the rest, its file names taken relative
to its folder (where Etomo runs tilt). What tilt's options mean (its man page and tilt.f90):
TILTFILE, XTILTFILE, XAXISTILT, ZFACTORFILE, LOCALFILE, EXCLUDELIST and EXCLUDELIST2 (added up),
THICKNESS (unbinned pixels, an integer as tilt reads it), IMAGEBINNED (the aligned stack's
binning: ``--bin``), RADIAL (cycles per pixel at IMAGEBINNED: rescaled when ``--bin`` differs;
its fall-off F is tilt's ``exp(-(df / F)^2)``, a sigma of F / sqrt(2), unless FalloffIsTrueSigma
1 makes it the sigma, as tilt.f90's RADWT has it), FakeSIRTiterations (``--sirtlike``) and
PERPENDICULAR (tilt's own layout, ``--layout imod-tilt``) are applied. tilt reads the aligned
stack (InputProjections, the raw stack through its ``.xf``): here the raw stack and ``--xf`` are
given, so the names of tilt's input and output, GPU and interpolation settings have no bearing;
FULLIMAGE is checked against the stack, and a SUBSETSTART other than 0 (tilt's aligned stack
larger or smaller than the raw image) is noted: the tomogram covers the raw stack's field.
Options that would change the tomogram in a way not done here (an OFFSET or SHIFT other than 0,
subsets, reprojection, compression, other weightings and filters, tilt's own SIRT, LOCALSCALE,
PARALLEL) are refused at their line, and so is a name tilt does not have (tilt refuses it too: a
misspelt option would change the tomogram); SCALE and MODE, which change only the output's
values, are named in a warning (the tomogram is float32 densities as back-projected), and LOG (the
logarithm of the projections, which changes the tomogram beyond a scale) in another.
"""

from __future__ import annotations

import math
import os
import re

from ..io.errors import InputError
from ..io.mrc import read_stack_header
from ..workflow import parse_view_list
from .common import UsageError, note, warn
from .imod_com import ComFile

__all__ = ["apply_tilt_com", "check_imod_com_args"]

#: Options that change the tomogram in a way reconstruct does not: name -> why, for the message.
_REFUSED = {
    "SLICE": "a range of slices is not reconstructed here (the whole volume is)",
    "WIDTH": "a narrower width is not reconstructed here (the whole image width is)",
    "TOTALSLICES": "a range of slices is not reconstructed here (the whole volume is)",
    "PARALLEL": "slices parallel to the specimen are not written here (--layout zyx or imod-tilt)",
    "COMPRESS": "compression of the views is not supported",
    "COMPFRACTION": "compression of the views is not supported",
    "DENSWEIGHT": "density weighting other than the angular increments is not supported",
    "INCLUDE": "view ranges to include are not read: give EXCLUDELIST (or --exclude)",
    "EXCLUDE": "view ranges to exclude are not read: give EXCLUDELIST (or --exclude)",
    "LOCALSCALE": "the local file's scale comes from the pixel sizes (its header and the stack's)",
    "REPROJECT": "reprojection is not done by reconstruct",
    "RecFileToReproject": "reprojection is not done by reconstruct",
    "ViewsToReproject": "reprojection is not done by reconstruct",
    "XMinAndMaxReproj": "reprojection is not done by reconstruct",
    "YMinAndMaxReproj": "reprojection is not done by reconstruct",
    "ZMinAndMaxReproj": "reprojection is not done by reconstruct",
    "MASK": "a mask of the slices is not applied here",
    "REPLICATE": "replicated views are not supported",
    "ANGLES": "angles are read from the tilt file (TILTFILE, --tlt)",
    "FlatFilterFraction": "a flat filter is not applied here (--radial, --sirtlike)",
    "WeightAngleFile": "the views are weighted by their own angular increments here",
    "WeightFile": "the views are weighted by their own angular increments here",
    "SIRTIterations": "tilt's SIRT is not read from the file: give --sirt N",
    "SIRTSubtraction": "tilt's SIRT is not read from the file: give --sirt N",
    "StartingIteration": "tilt's SIRT is not read from the file: give --sirt N",
    "ConstrainSign": "a sign constraint is not applied here (--sirt N --positivity clips at zero)",
    "BaseRecFile": "a base reconstruction is not subtracted here",
    "SubtractFromBase": "a base reconstruction is not subtracted here",
    "BaseNumViews": "a base reconstruction is not subtracted here",
    "ProjectModel": "reprojection is not done by reconstruct",
    "ParameterFile": "options from another file are not read: put them in this one",
}
#: tilt's options that reconstruct maps (the others a tilt.com may hold are in the tables here).
_MAPPED = (
    "TILTFILE",
    "XTILTFILE",
    "XAXISTILT",
    "ZFACTORFILE",
    "LOCALFILE",
    "EXCLUDELIST",
    "EXCLUDELIST2",
    "THICKNESS",
    "IMAGEBINNED",
    "RADIAL",
    "FalloffIsTrueSigma",
    "FakeSIRTiterations",
    "OFFSET",
    "SHIFT",
)
#: Options that change only the output's densities: named in one warning.
_DENSITIES = ("SCALE", "MODE")
#: The logarithm of the projections before back-projecting: not applied, named in its own warning.
_LOG = "LOG"
#: Options not named in the "not used" note: those with no bearing on a reconstruction from the
#: raw stack and its .xf, and FULLIMAGE (checked), SUBSETSTART (noted), PERPENDICULAR (the layout).
_NOT_NEEDED = {
    "InputProjections",
    "OutputFile",
    "SUBSETSTART",
    "AdjustOrigin",
    "ActionIfGPUFails",
    "UseGPU",
    "COSINTERP",
    "FBPINTERP",
    "XTILTINTERP",
    "DONE",
    "FULLIMAGE",
    "PERPENDICULAR",
    "TITLE",
    "DebugOutput",
    "InternalSIRTSlices",
    "VertBoundaryFile",
    "VertSliceOutputFile",
    "VertForSIRTInput",
    "BoundaryInfoFile",
    "MinMaxMean",
}


_KNOWN = set(_REFUSED) | set(_DENSITIES) | {_LOG} | _NOT_NEEDED | set(_MAPPED)


def apply_tilt_com(args) -> None:
    """Fill ``args`` (reconstruct's parsed options) from ``args.imod_com`` where the command line
    left them unset. InputError names the file and line of an option it cannot honour."""
    com = ComFile(args.imod_com, "tilt")
    notices = []  # said once every option is checked (an error names one line alone)
    folder = os.path.dirname(os.path.abspath(args.imod_com))

    def file_named(name: str) -> str | None:
        entry = com.get(name)
        if entry is None:
            return None
        if not entry.value:
            raise com.error(entry, f"{name}: no file name")
        path = os.path.join(folder, entry.value)
        if os.path.isdir(path):
            raise com.error(entry, f"{name} {entry.value}: a folder, not a file ({path})")
        if not os.path.isfile(path):
            raise com.error(entry, f"{name} {entry.value}: no such file ({path})")
        return path

    unknown = [e for name, entries in com.options.items() if name not in _KNOWN for e in entries]
    if unknown:  # tilt refuses an unknown name too; a misspelt option would change the tomogram
        raise com.error(
            unknown[0], f"{unknown[0].name}: not one of tilt's options that reconstruct knows (misspelt?)"
        )
    for name, why in _REFUSED.items():
        entry = com.get(name)
        if entry is not None:
            raise com.error(entry, f"{name}{' ' + entry.value if entry.value else ''}: {why}")
    # OFFSET: the tilt-angle offset, then optionally a tilt-axis offset (px); SHIFT: x, then optionally z
    for name, what in (
        ("OFFSET", "a tilt-angle or tilt-axis offset is not applied here; add it to the tilt file"),
        ("SHIFT", "a shifted volume is not reconstructed here"),
    ):
        values = _one_or_two_numbers(com, name)
        if values is not None and any(values):
            raise com.error(com.get(name), f"{name} {com.get(name).value}: {what} (only 0)")
    n_views, ny, nx, _ = read_stack_header(args.stack)
    size = com.numbers("FULLIMAGE", 2, whole=True)
    if size is not None and (int(size[0]), int(size[1])) != (nx, ny):
        raise com.error(
            com.get("FULLIMAGE"),
            f"FULLIMAGE {size[0]:g} {size[1]:g}: the stack {args.stack} is {nx} x {ny} pixels (give the "
            "raw stack the alignment was made for)",
        )
    if args.tlt is None:
        args.tlt = file_named("TILTFILE")
        if args.tlt is None:
            raise com.error(None, "no TILTFILE: give the tilt angles with --tlt")
    if args.xtilt is None:
        args.xtilt = file_named("XTILTFILE")
    x_axis_tilt = com.numbers("XAXISTILT", 1)
    if args.x_axis_tilt is None and x_axis_tilt is not None:
        if not abs(x_axis_tilt[0]) < 90:
            raise com.error(com.get("XAXISTILT"), f"XAXISTILT {x_axis_tilt[0]:g}: not within -90..90 degrees")
        args.x_axis_tilt = x_axis_tilt[0]
    if args.zfac is None:
        args.zfac = file_named("ZFACTORFILE")
    if args.local is None:
        args.local = file_named("LOCALFILE")
    thickness = _thickness(com)
    if args.thickness is None and thickness is not None:
        if not thickness[0] > 0:
            raise com.error(
                com.get("THICKNESS"), f"THICKNESS {thickness[0]:g}: not a positive number of pixels"
            )
        args.thickness = thickness[0]
    binning = com.numbers("IMAGEBINNED", 1, whole=True)
    if args.bin is None and binning is not None:
        if binning[0] < 1:
            raise com.error(com.get("IMAGEBINNED"), f"IMAGEBINNED {binning[0]:g}: not a binning (1 or more)")
        args.bin = int(binning[0])
    radial = com.numbers("RADIAL", 2)
    if args.radial is None and radial is not None and args.sirt is None:
        if not (0 < radial[0] <= 0.5 and radial[1] >= 0):
            raise com.error(
                com.get("RADIAL"),
                f"RADIAL {radial[0]:g} {radial[1]:g}: need 0 < cutoff <= 0.5 and falloff >= 0 (cycles/pixel)",
            )
        # tilt's fall-off is exp(-(df / F)^2) unless FalloffIsTrueSigma 1 (then --radial's sigma F)
        true_sigma = com.flag("FalloffIsTrueSigma")
        sigma = radial[1] if true_sigma else radial[1] / math.sqrt(2.0)
        # cycles per pixel of tilt's input binned by IMAGEBINNED; --radial's of the stack binned by --bin
        factor = (args.bin or 1) / (int(binning[0]) if binning is not None else 1)
        args.radial = [min(0.5, radial[0] * factor), sigma * factor]
        if factor != 1 or not true_sigma:
            com_bin = binning[0] if binning else 1
            why = "" if true_sigma else ", its fall-off exp(-(df/F)^2) without FalloffIsTrueSigma 1"
            notices.append(
                f"{args.imod_com}: RADIAL {radial[0]:g} {radial[1]:g} (cycles/pixel at IMAGEBINNED "
                f"{com_bin:g}{why}) is --radial {args.radial[0]:.6g} {args.radial[1]:.6g} at --bin "
                f"{args.bin or 1}"
            )
    if args.sirt is not None:
        filters = [name for name in ("RADIAL", "FakeSIRTiterations") if com.get(name) is not None]
        if filters:
            notices.append(f"{args.imod_com}: {' and '.join(filters)} not applied: --sirt has no filter")
    iterations = com.integer("FakeSIRTiterations")
    if iterations is not None and not 0 <= iterations <= 1_000_000:
        raise com.error(
            com.get("FakeSIRTiterations"),
            f"FakeSIRTiterations {iterations}: expected 0 to 1000000 iterations",
        )
    if args.sirtlike is None and iterations and args.sirt is None:
        args.sirtlike = iterations
    excluded = [e for name in ("EXCLUDELIST", "EXCLUDELIST2") for e in com.options.get(name, []) if e.value]
    com.used.update(("EXCLUDELIST", "EXCLUDELIST2"))
    if args.exclude is None and excluded:
        for entry in excluded:  # each list checked where it is written
            com.fail_on(entry, parse_view_list, entry.value, n_views, entry.name)
        args.exclude = ",".join(e.value for e in excluded)
        args.exclude_source = f"{args.imod_com} " + ", ".join(f"{e.name} {e.value}" for e in excluded)
    if args.layout is None and com.flag("PERPENDICULAR"):
        args.layout = "imod-tilt"
    subset = com.numbers("SUBSETSTART", 2, whole=True)
    if subset is not None and any(subset):
        notices.append(
            f"{args.imod_com}: SUBSETSTART {subset[0]:g} {subset[1]:g}: tilt's aligned stack was not the raw "
            f"image's {nx} x {ny} px; the tomogram here covers the raw stack's field, centred as tilt's"
        )
    densities = [f"{name} {com.get(name).value}".strip() for name in _DENSITIES if com.get(name) is not None]
    if densities:
        warn(
            f"{args.imod_com}: {', '.join(densities)} not applied: the tomogram holds the densities as "
            "back-projected, float32 (tilt's SCALE and MODE change only the output's values)"
        )
    log = com.get(_LOG)
    if log is not None:
        warn(
            f"{args.imod_com}: LOG {log.value.strip()} (line {log.line}) not applied: tilt takes the "
            "logarithm of the projections (after adding that value) before back-projecting, so this "
            "tomogram differs from tilt's by more than a scale; for tilt's, give a stack whose densities "
            "are already logarithms"
        )
    unused = [
        f"{name} (line {entries[0].line})"
        for name, entries in com.options.items()
        if name not in com.used | _NOT_NEEDED
    ]
    if unused:
        notices.append(f"{args.imod_com}: not used: {', '.join(unused)}")
    for notice in notices if not args.quiet else ():
        note(notice)


def _thickness(com: ComFile) -> tuple[float] | None:
    """THICKNESS as a whole number of pixels, written as one (tilt reads it as an integer: 40.7 or
    1e3 is not one), None when absent."""
    entry = com.get("THICKNESS")
    if entry is None:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", entry.value.strip()):
        raise com.error(
            entry,
            f"THICKNESS {entry.value}: expected a whole number of pixels written as an integer (IMOD's "
            "tilt reads THICKNESS as one)",
        )
    return (float(int(entry.value)),)


def _one_or_two_numbers(com: ComFile, name: str) -> tuple[float, ...] | None:
    """The option's one or two numbers (tilt reads the second as optional), None when absent."""
    entry = com.get(name)
    if entry is None:
        return None
    count = len(entry.value.replace(",", " ").split())
    if count not in (1, 2):
        raise com.error(entry, f"{name}: expected 1 or 2 numbers, got {entry.value!r}")
    return com.numbers(name, count)


def check_imod_com_args(args) -> None:
    """UsageError for --imod-com with an --alignment record (tilt.com's files go with --xf)."""
    if args.imod_com is not None and args.alignment is not None:
        raise UsageError(
            "--imod-com goes with --xf (tilt.com names IMOD's files; an --alignment record has its own)"
        )
    if args.imod_com is not None and args.xf is None:
        raise UsageError(
            "--imod-com needs --xf: the transforms that made tilt's aligned stack from this raw stack"
        )
    if args.imod_com is not None and os.path.isdir(args.imod_com):
        raise InputError(args.imod_com, None, "a folder, not a file")
    if args.imod_com is not None and not os.path.isfile(args.imod_com):
        raise InputError(args.imod_com, None, "no such file")
