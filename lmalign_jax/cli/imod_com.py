"""``align --imod-com align.com``: an Etomo tiltalign command file's options as align's options.

Options given on the command line win; the file fills in the rest. What tiltalign's options mean
(its man page and ``input_vars``): RotOption -1 one rotation for all views, 0 fixed, 1 each view,
3/4 automapped linear/blocks; TiltOption 0 fixed, 2 each view but the one at minimum tilt, 5/6
automapped linear/blocks; MagOption 0/1/3/4 as rotation; XStretchOption 3 blocks and 4 linear,
SkewOption 3 linear and 4 blocks; an absent option is 0 (fixed). The groupings are the options'
``*DefaultGrouping``; the sets they make are tiltalign's (``core.grouping``). Options this
package cannot honour (per-range groupings, separate groups, compression, X-axis tilt or beam
tilt solutions, two fixed tilts) are an InputError naming their line, not ignored.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

from ..analysis.compare_local import takes_local
from ..core.local_options import INCREMENTS, LocalOptions
from ..io.errors import InputError
from ..io.imod_com import ComOption, read_com_options
from ..models import get_model
from ..workflow import parse_view_list
from ..workflow.series import check_rotation, read_tilt_file
from .common import UsageError, note

#: tiltalign option value -> mode kind, per parameter (None: needs the DefaultGrouping's N).
_ROT = {-1: "shared", 0: "fixed", 1: "free", 3: "linear", 4: "group"}
_TILT = {0: "fixed", 1: "free", 2: "free", 5: "linear", 6: "group"}
_MAG = {0: "fixed", 1: "free", 3: "linear", 4: "group"}
_XSTRETCH = {0: "fixed", 1: "free", 3: "group", 4: "linear"}
_SKEW = {0: "fixed", 1: "free", 3: "linear", 4: "group"}
#: (option stem, parameter, table)
PARAMETERS = (
    ("Rot", "rotation", _ROT),
    ("Tilt", "tilt", _TILT),
    ("Mag", "scale", _MAG),
    ("XStretch", "xstretch", _XSTRETCH),
    ("Skew", "skew", _SKEW),
)
#: Options that change the fit in ways this package does not offer, unless 0 (or absent).
_UNSUPPORTED = ("CompOption", "XTiltOption", "LocalXTiltOption", "BeamTiltOption", "ProjectionStretch")
#: Options read elsewhere or with no bearing on the fit's answer (outputs, reports, the metro
#: solver's settings, the reference views this package's gauge replaces).
_NOT_NEEDED = {
    "ModelFile", "ImageFile", "ImagesAreBinned", "UnbinnedPixelSize", "OutputModelFile",
    "OutputResidualFile", "OutputFidXYZFile", "OutputTiltFile", "OutputXAxisTiltFile",
    "OutputTransformFile", "OutputZFactorFile", "OutputLocalFile", "OutputFilledInModel",
    "ResidualReportCriterion", "MetroFactor", "MaximumCycles", "AxisZShift",
    "ShiftZFromOriginal", "LocalOutputOptions", "CreatedDayStamp", "NoSeparateTiltGroups",
    "CrossValidate", "MagReferenceView", "LocalMagReferenceView", "CompReferenceView",
    "RotationFixedView", "LocalRotationFixedView", "TiltFixedView", "XTiltDefaultGrouping",
    "LocalXTiltDefaultGrouping",
}  # fmt: skip


class ComFile:
    """One program's options in an Etomo command file (``program``: "tiltalign" for align.com,
    "tilt" for tilt.com) with the lookups the mappings need; every error names file and line."""

    def __init__(self, path: str, program: str = "tiltalign"):
        self.path = path
        self.options = read_com_options(path, program)
        self.used: set[str] = set()

    def get(self, name: str) -> ComOption | None:
        self.used.add(name)
        entries = self.options.get(name)
        if entries and len(entries) > 1:
            raise self.error(
                entries[1], f"{name} is given twice (lines {entries[0].line} and {entries[1].line}): keep one"
            )
        return entries[0] if entries else None

    def error(self, entry: ComOption | None, problem: str) -> InputError:
        return InputError(self.path, None if entry is None else entry.line, problem)

    def integer(self, name: str, default: int | None = None) -> int | None:
        entry = self.get(name)
        if entry is None:
            return default
        try:
            return int(entry.value)
        except ValueError:
            raise self.error(entry, f"{name}: expected a whole number, got {entry.value!r}") from None

    def numbers(self, name: str, count: int, whole: bool = False) -> tuple[float, ...] | None:
        """``count`` finite numbers (whole numbers with ``whole``), or None when absent."""
        entry = self.get(name)
        if entry is None:
            return None
        parts = entry.value.replace(",", " ").split()
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            values = ()
        kind = "whole number" if whole else "number"
        if len(values) != count or not all(math.isfinite(v) and (not whole or v == int(v)) for v in values):
            raise self.error(entry, f"{name}: expected {count} {kind}(s), got {entry.value!r}")
        return values

    def flag(self, name: str) -> bool | None:
        """A yes/no option: given alone or as 1, yes; as 0, no; None when absent."""
        entry = self.get(name)
        if entry is None:
            return None
        if entry.value not in ("", "0", "1"):
            raise self.error(entry, f"{name}: expected 0 or 1 (or the name alone), got {entry.value!r}")
        return entry.value != "0"

    def fail_on(self, entry: ComOption, call, *args):
        """``call(*args)``; a UsageError or InputError it raises is reported at ``entry``'s line
        (its leading option name, e.g. "--rotation", replaced by the file's option)."""
        try:
            return call(*args)
        except (UsageError, InputError) as e:
            text = getattr(e, "problem", None) or str(e)
            text = re.sub(rf"^(--[a-z-]+|{re.escape(entry.name)}):? ", "", text)
            raise self.error(entry, f"{entry.name} {entry.value}: {text}") from None

    def mode(self, stem: str, table: dict, local: bool) -> tuple[str, ComOption | None] | None:
        """The mode of one parameter's option (``Local`` form when ``local``), and its line."""
        prefix = "Local" if local else ""
        name = f"{prefix}{stem}Option"
        option = self.integer(name, 0)
        entry = self.get(name)
        for extra in (f"{prefix}{stem}NondefaultGroup", f"{prefix}{stem}NondefaultGrouping"):
            if self.get(extra) is not None:
                raise self.error(self.get(extra), f"{extra}: groupings per view range are not supported")
        if option not in table:
            raise self.error(
                entry,
                f"{name} {option}: not supported; use {', '.join(str(k) for k in sorted(table))} "
                "(fixed views and mappings listed by hand have no equivalent here)",
            )
        kind = table[option]
        if kind in ("linear", "group"):
            size = self.integer(f"{prefix}{stem}DefaultGrouping")
            if size is None or size < 1:
                grouping = self.get(f"{prefix}{stem}DefaultGrouping")
                raise self.error(
                    grouping or entry,
                    f"{name} {option} groups views: {prefix}{stem}DefaultGrouping must give a group "
                    "size >= 1",
                )
            kind = f"{kind}:{size}"
        return kind, entry


def add_imod_options(p) -> None:
    """align's --angle-offset and --imod-com."""
    p.add_argument(
        "--angle-offset",
        type=float,
        metavar="DEG",
        help="degrees added to every tilt angle before the fit (IMOD's AngleOffset)",
    )
    p.add_argument(
        "--imod-com",
        metavar="ALIGN.COM",
        help="take the alignment settings from an Etomo tiltalign command file (align.com): tilt file, "
        "rotation, angle offset, excluded views, the Rot/Tilt/Mag/XStretch/SkewOptions and their "
        "groupings, surfaces, robust fitting and the local alignment settings; options given here win",
    )


def check_tilt_offset(tilts_deg, offset_deg: float) -> None:
    """A UsageError unless ``offset_deg`` is finite and keeps every tilt inside -90..90 degrees."""
    shifted = np.asarray(tilts_deg, np.float64) + offset_deg
    if not np.isfinite(offset_deg) or not (np.abs(shifted) < 90).all():
        k = int(np.argmax(np.abs(shifted))) if np.isfinite(offset_deg) else 0
        raise UsageError(
            f"--angle-offset {offset_deg:g}: takes view {k + 1}'s tilt to {shifted[k]:g} degrees, "
            "outside -90..90"
        )


def _given_names(items) -> set[str]:
    return {item.partition("=")[0].strip() for item in items or ()}


def apply_tiltalign_com(args) -> None:
    """Fill ``args`` (align's parsed options) from ``args.imod_com`` where the command line left
    them unset (``args.local_grid_source``: see :func:`local_grid_option`). Raises InputError for
    an unreadable file or an option it cannot honour."""
    com = ComFile(args.imod_com)
    folder = os.path.dirname(os.path.abspath(args.imod_com))
    for name in _UNSUPPORTED:
        entry = com.get(name)
        if entry is not None and entry.value != "0":
            raise com.error(entry, f"{name} {entry.value}: not supported (only 0)")
    beam = com.numbers("FixedOrInitialBeamTilt", 1)
    if beam is not None and beam[0] != 0:
        raise com.error(
            com.get("FixedOrInitialBeamTilt"), "FixedOrInitialBeamTilt: a beam tilt is not supported (only 0)"
        )
    separate = com.get("SeparateGroup")
    if separate is not None:
        raise com.error(separate, "SeparateGroup: separate view groups are not supported")
    tilt_file = com.get("TiltFile")
    if args.tilts is None:
        if tilt_file is None:
            raise com.error(None, "no TiltFile: give the tilt angles with --tilts")
        if not tilt_file.value:
            raise com.error(tilt_file, "TiltFile: no file name")
        args.tilts = os.path.join(folder, tilt_file.value)
    rotation = com.numbers("RotationAngle", 1)
    if args.rotation is None and rotation is not None:
        entry = com.get("RotationAngle")
        args.rotation = com.fail_on(entry, check_rotation, rotation[0], "--rotation")
        args.rotation_source = f"{args.imod_com}:{entry.line} RotationAngle"
    offset = com.numbers("AngleOffset", 1)
    if args.angle_offset is None and offset is not None and offset[0] != 0:
        args.angle_offset = offset[0]
        args.angle_offset_source = f"{args.imod_com}:{com.get('AngleOffset').line} AngleOffset (IMOD's)"
    exclude = [e for e in com.options.get("ExcludeList", []) if e.value]  # tiltalign adds up its lists
    com.used.add("ExcludeList")
    if args.exclude is None and exclude:
        n_views = read_tilt_file(args.tilts)[0].size if os.path.isfile(args.tilts) else None
        for entry in exclude:  # each list checked where it is written
            if n_views is not None:
                com.fail_on(entry, parse_view_list, entry.value, n_views, "ExcludeList")
        args.exclude = ",".join(e.value for e in exclude)
    surfaces = com.integer("SurfacesToAnalyze")
    if surfaces is not None and surfaces not in (0, 1, 2):
        raise com.error(
            com.get("SurfacesToAnalyze"), f"SurfacesToAnalyze: expected 0, 1 or 2, got {surfaces}"
        )
    if args.surfaces is None and surfaces in (1, 2):
        args.surfaces = surfaces
    if com.flag("RobustFitting"):
        factor = com.numbers("KFactorScaling", 1)
        if factor is not None and factor[0] != 1:
            raise com.error(
                com.get("KFactorScaling"), "KFactorScaling: only 1 (tiltalign's own robust scale)"
            )
        for name in ("MinWeightGroupSizes", "WeightWholeTracks"):
            if com.get(name) is not None:
                raise com.error(com.get(name), f"{name}: not supported (the robust fit's groups are its own)")
        args.robust = args.robust or "tukey"
    else:  # the robust fit's settings, without a robust fit
        com.used.update(("KFactorScaling", "MinWeightGroupSizes", "WeightWholeTracks"))
    size = com.numbers("ImageSizeXandY", 2, whole=True)
    if args.image_size is None and size is not None:
        args.image_size = list(size)
        args.image_size_source = _line_text(com.path, com.get("ImageSizeXandY"))
    _apply_modes(com, args)
    if args.local is None and com.flag("LocalAlignments"):
        args.local = True
    com.used.add("LocalAlignments")
    if args.local:
        _apply_local(com, args)
    else:  # the local options of a file that does not ask for local alignment are not needed
        com.used.update(name for name in com.options if name.startswith("Local") or "Patch" in name)
        com.used.update(("MinSizeOrOverlapXandY", "MinFidsTotalAndEachSurface", "FixXYZCoordinates"))
    unused = [
        f"{name} (line {entries[0].line})"
        for name, entries in com.options.items()
        if name not in com.used | _NOT_NEEDED and not name.endswith("DefaultGrouping")
    ]
    if unused:
        note(f"{args.imod_com}: not used: {', '.join(unused)}")


def _modes(com: ComFile, model, local: bool) -> dict[str, str]:
    """The file's mode for each parameter ``model`` has (the Local* options with ``local``); an
    InputError when it solves for one the model has not."""
    modes = {}
    for stem, name, table in PARAMETERS:
        mode, entry = com.mode(stem, table, local=local)
        if name in model.parameters:
            modes[name] = mode
        elif mode != "fixed":
            raise com.error(
                entry, f"{entry.name} asks for {name}, which model {model.name!r} has not: add --model imod"
            )
    return modes


def _apply_modes(com: ComFile, args) -> None:
    given = _given_names(args.mode)
    for name, mode in _modes(com, get_model(args.model), local=False).items():
        if name in ("rotation", "tilt", "scale"):
            attribute = f"{name}_mode"
            if getattr(args, attribute) is None and name not in given:
                setattr(args, attribute, mode)
        elif name not in given:
            args.mode = [*(args.mode or []), f"{name}={mode}"]


def _apply_local(com: ComFile, args) -> None:
    """The file's local settings where the command line left them unset, each checked at its line
    as ``LocalOptions`` and ``check_local_modes`` check the command line's."""
    if com.get("NumberOfLocalPatchesXandY") is not None:
        raise com.error(
            com.get("NumberOfLocalPatchesXandY"),
            "NumberOfLocalPatchesXandY: give the patch size instead (TargetPatchSizeXandY, --patch-size)",
        )
    size = com.numbers("TargetPatchSizeXandY", 2, whole=True)
    if args.patch_size is None and size is not None:
        if min(size) < 1:
            raise com.error(com.get("TargetPatchSizeXandY"), "TargetPatchSizeXandY: sizes must be >= 1 px")
        args.patch_size = [int(v) for v in size]
        args.local_grid_source = (com.path, com.get("TargetPatchSizeXandY"))
        args.patch_size_source = _line_text(com.path, com.get("TargetPatchSizeXandY"))
    overlap = com.numbers("MinSizeOrOverlapXandY", 2)
    if args.patch_overlap is None and overlap is not None:
        entry = com.get("MinSizeOrOverlapXandY")
        if max(overlap) > 1:
            raise com.error(entry, "MinSizeOrOverlapXandY: minimum patch sizes (values > 1) are not read")
        if overlap[0] != overlap[1] or not 0 <= overlap[0] < 1:
            raise com.error(entry, "MinSizeOrOverlapXandY: one overlap for X and Y, in [0, 1), is read")
        args.patch_overlap = overlap[0]
        args.patch_overlap_source = _line_text(com.path, entry)
        if getattr(args, "local_grid_source", None) is None:
            args.local_grid_source = (com.path, entry)
    fids = com.numbers("MinFidsTotalAndEachSurface", 2, whole=True)
    if args.min_fids is None and fids is not None:
        entry = com.get("MinFidsTotalAndEachSurface")
        try:
            LocalOptions(min_fids=(int(fids[0]), int(fids[1])))
        except ValueError as e:
            raise com.error(entry, f"{entry.name} {entry.value}: {e}") from None
        args.min_fids = f"{int(fids[0])},{int(fids[1])}"
        args.min_fids_source = _line_text(com.path, entry)
    fix = com.flag("FixXYZCoordinates")
    if args.local_markers is None and fix is not None:
        args.local_markers = "fixed" if fix else "free"
    model = get_model(args.model)
    given = _given_names(args.local_mode)
    modes = _modes(com, model, local=True)
    for name, mode in modes.items():
        if name not in given:
            args.local_mode = [*(args.local_mode or []), f"{name}={mode}"]
    # every increment fixed by the file alone (the command line's --local-mode is its own to check)
    increments = {name: mode for name, mode in modes.items() if name in INCREMENTS}
    if takes_local(model) and not given & set(increments) and set(increments.values()) <= {"fixed"}:
        raise _all_fixed(com, model)


def _all_fixed(com: ComFile, model) -> InputError:
    """The error of a file whose Local*Options (absent: 0) leave every local increment of ``model``
    fixed, at the line asking for local alignment (else its first Local*Option, 0)."""
    stems = [stem for stem, name, _ in PARAMETERS if name in INCREMENTS and name in model.parameters]
    names = [f"Local{stem}Option" for stem in stems]
    asked = com.get("LocalAlignments")
    entries = [asked if asked is not None and asked.value != "0" else None, *(com.get(n) for n in names)]
    entry = next((e for e in entries if e is not None), None)
    where = f"{entry.name} {entry.value}".strip() + ": " if entry is not None else ""
    return com.error(
        entry,
        f"{where}every local increment of model {model.name!r} is fixed ({', '.join(names)} 0 or absent): "
        "nothing to solve; give one a nonzero option, or use --local-mode",
    )


def local_grid_option(args, default: str = "--local") -> str:
    """What the patch-grid check (``workflow.local.check_local_grid``'s ``option``) names: the
    --imod-com line that set the patch size (or, the size not being the file's, the overlap), as
    ``align.com:LINE: TargetPatchSizeXandY 1,1``; ``default`` when neither came from the file."""
    source = getattr(args, "local_grid_source", None)
    if source is None:
        return default
    return _line_text(*source)


def _line_text(path: str, entry: ComOption) -> str:
    """A command file's line as messages name it: ``align.com:LINE: NAME VALUE``."""
    return f"{path}:{entry.line}: {entry.name} {entry.value}"


def patch_grid_option(args) -> str:
    """What the patch-grid check (``workflow.local.check_local_grid``'s ``option``) names: what
    set the patch size and the overlap, each the command line's option (``--patch-size``,
    ``--patch-overlap``) or the --imod-com line that gave it, joined by "and" when both were
    given; ``--local`` with the defaults named when neither was."""
    named = [
        getattr(args, source, None) or flag
        for value, flag, source in (
            (args.patch_size, "--patch-size", "patch_size_source"),
            (args.patch_overlap, "--patch-overlap", "patch_overlap_source"),
        )
        if value is not None
    ]
    if not named:
        return "--local (the default --patch-size and --patch-overlap)"
    return " and ".join(named)


def min_fids_option(args) -> str:
    """What the check of the markers a patch must hold (``workflow.local.check_min_fids``) names:
    ``--min-fids T,E`` as given, the --imod-com line that gave it, or ``--local`` with the default."""
    if args.min_fids is None:
        total, each = LocalOptions().min_fids
        return f"--local (the default --min-fids {total},{each})"
    return getattr(args, "min_fids_source", None) or f"--min-fids {args.min_fids}"
