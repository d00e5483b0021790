"""The series of a batch: a list file (one series a line) or a folder of marker and tilt files."""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass

from ..io.errors import InputError
from ..io.markerset import IMAGE_SIZE_RULE, image_size_ok
from .series import MAX_ROTATION_DEG
from .status import UsageError

#: Marker files a folder scan picks up (.txt and .resid series go in a list file).
SCAN_MARKERS = (".fid", ".mod", ".csv", ".pt")
#: Tilt files looked for next to ``NAME.<marker extension>``, in order of preference.
SCAN_TILTS = (".rawtlt", ".tlt", ".mdoc", ".mrc.mdoc", ".st.mdoc")
#: Raw stacks looked for next to ``NAME.<marker extension>`` (IMOD's NAME.st, or NAME.mrc).
SCAN_STACKS = (".st", ".mrc")


@dataclass
class SeriesSpec:
    """One series named by the list file or found in the folder."""

    name: str
    markers: str | None
    tilts: str | None
    image_size: tuple[float, float] | None = None
    problem: str | None = None  # why it cannot be read (a bad list line, a missing tilt file)
    stack: str | None = None  # the raw stack named by the list file (else looked for beside the markers)
    exclude: str | None = None  # views to leave out, 1-based (the line's exclude=LIST)
    rotation: float | None = None  # tilt-axis rotation, degrees (the line's rotation=DEG)
    where: str | None = None  # "LIST:LINE" of a series named by a list file


#: The batch summary's name in the output folder (batch_summary.txt, .tsv, .json): no series
#: takes it (with --layout prefix its .json would be overwritten by the summary's).
SUMMARY_NAME = "batch_summary"


def _unique_names(specs: list[SeriesSpec]) -> None:
    """Make series names unique (outputs are named after them): the first series of a name keeps
    it, later ones (and one named ``SUMMARY_NAME``) become NAME_2, NAME_3, ..., skipping every
    name another series has."""
    taken = {s.name for s in specs} | {SUMMARY_NAME}
    kept: set[str] = set()
    for s in specs:
        if s.name not in kept and s.name != SUMMARY_NAME:
            kept.add(s.name)
            continue
        n = 2
        while f"{s.name}_{n}" in taken:
            n += 1
        s.name = f"{s.name}_{n}"
        taken.add(s.name)
        kept.add(s.name)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: Per-series options a list line may end with, as ``name=value`` (``lmalign align``'s
#: --exclude and --rotation for that series).
LINE_OPTIONS = ("exclude", "rotation")
LINE_FORMAT = "MARKERS TILTS [NX NY] [STACK] [exclude=LIST] [rotation=DEG]"


def _line_options(spec: SeriesSpec, options: list[str], where) -> None:
    """Set ``spec``'s exclude/rotation from ``name=value`` tokens (a problem if malformed)."""
    seen = set()
    for token in options:
        name, _, value = token.partition("=")
        if name in seen:
            spec.problem = where(f"{name}= given twice")
            return
        seen.add(name)
        if name == "rotation":
            try:
                spec.rotation = float(value)
                if not math.isfinite(spec.rotation):
                    raise ValueError
            except ValueError:
                spec.problem = where(f"rotation={value} is not an angle in degrees")
                return
            if abs(spec.rotation) > MAX_ROTATION_DEG:
                spec.problem = where(
                    f"rotation={value} is not a tilt-axis angle within -{MAX_ROTATION_DEG:g}.."
                    f"{MAX_ROTATION_DEG:g} degrees"
                )
                return
        elif not value:
            spec.problem = where("exclude= names no views (e.g. exclude=1-3,40; views count from 1)")
            return
        else:
            spec.exclude = value


def read_list(path: str) -> list[SeriesSpec]:
    """Series of a list file: one ``MARKERS TILTS [NX NY] [STACK] [exclude=LIST] [rotation=DEG]``
    per line.

    Blank lines and ``#`` comments are skipped; paths are relative to the list file's folder
    and may be quoted (shell rules); NX NY give the image size when the marker file lacks it;
    STACK names the raw stack (its header gives the image size; ``--reconstruct`` uses it);
    exclude= and rotation= are that series' ``--exclude`` and ``--rotation``.
    A malformed line becomes a series with a ``problem`` (reported, not fatal).
    """
    base = os.path.dirname(os.path.abspath(path))
    specs = []
    with open(path, "rb") as f:
        data = f.read()
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:  # names the line, as the marker and tilt readers do
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(path, line, f"not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not text:
            continue
        try:
            tokens = shlex.split(text)
        except ValueError as e:
            specs.append(
                SeriesSpec(
                    f"line{number}",
                    None,
                    None,
                    problem=str(InputError(path, number, f"cannot split the line: {e}")),
                )
            )
            continue

        def where(problem, n=number):
            return str(InputError(path, n, problem))

        options = [t for t in tokens if t.partition("=")[0] in LINE_OPTIONS and "=" in t]
        tokens = [t for t in tokens if t not in options]
        unknown = [
            t
            for t in tokens
            if "=" in t
            and t.partition("=")[0].isidentifier()
            and not os.path.exists(t if os.path.isabs(t) else os.path.join(base, t))
        ]
        if unknown:
            known = ", ".join(f"{o}=" for o in LINE_OPTIONS)
            name = unknown[0].partition("=")[0]
            specs.append(
                SeriesSpec(
                    f"line{number}",
                    None,
                    None,
                    problem=where(f"unknown option {name}= (a line takes {known})"),
                )
            )
            continue
        if len(tokens) not in (2, 3, 4, 5):
            specs.append(
                SeriesSpec(
                    f"line{number}",
                    None,
                    None,
                    problem=where(f"expected '{LINE_FORMAT}', got {len(tokens)} fields"),
                )
            )
            continue
        markers, tilts = (t if os.path.isabs(t) else os.path.join(base, t) for t in tokens[:2])
        spec = SeriesSpec(_stem(markers), markers, tilts, where=f"{path}:{number}")
        _line_options(spec, options, where)
        missing = [(what, f) for what, f in (("markers", markers), ("tilts", tilts)) if not os.path.exists(f)]
        if missing and spec.problem is None:  # named with the line that names the file
            spec.problem = where(f"{missing[0][0]} file {missing[0][1]} not found")
        if len(tokens) in (3, 5):
            spec.stack = tokens[-1] if os.path.isabs(tokens[-1]) else os.path.join(base, tokens[-1])
            if len(tokens) == 3 and _is_number(tokens[2]):
                spec.problem = where(
                    f"one number after TILTS ({tokens[2]}): give the image size as NX NY, or a STACK file"
                )
        if len(tokens) >= 4:
            try:
                size = (float(tokens[2]), float(tokens[3]))
                if not image_size_ok(size):
                    raise ValueError
                spec.image_size = size
            except ValueError:
                spec.problem = where(f"image size {tokens[2]} {tokens[3]} is not {IMAGE_SIZE_RULE}")
        specs.append(spec)
    if not specs:
        raise UsageError(f"{path}: the list names no series (one '{LINE_FORMAT}' per line)")
    _unique_names(specs)
    return specs


def scan_folder(folder: str) -> list[SeriesSpec]:
    """Series of a folder: every ``NAME.fid/.mod/.csv/.pt`` with ``NAME.rawtlt/.tlt/.mdoc`` beside it,
    and every raw stack ``NAME.st``/``NAME.mrc`` with tilts and no marker file (tracked first)."""
    specs = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in SCAN_MARKERS or not os.path.isfile(path):
            continue
        tilts = next(
            (
                os.path.join(folder, stem + t)
                for t in SCAN_TILTS
                if os.path.isfile(os.path.join(folder, stem + t))
            ),
            None,
        )
        problem = None
        if tilts is None:
            problem = str(
                InputError(
                    path, None, f"no tilt file beside it ({', '.join(stem + t for t in SCAN_TILTS[:3])})"
                )
            )
        specs.append(SeriesSpec(stem, path, tilts, problem=problem))
    specs += _unmarked_stacks(folder, {s.name for s in specs})
    if not specs:
        raise UsageError(
            f"{folder}: no marker files ({', '.join(SCAN_MARKERS)}) in this folder; name .txt and .resid "
            f"marker files in a list file ({LINE_FORMAT} per line)"
        )
    _unique_names(specs)
    return specs


def _unmarked_stacks(folder: str, names: set[str]) -> list[SeriesSpec]:
    """``NAME.st`` or ``NAME.mrc`` with ``NAME.rawtlt/.tlt/.mrc.mdoc/.st.mdoc`` beside it and no marker
    file of that name: a raw series to track (its markers are the stack itself)."""
    specs = []
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in SCAN_STACKS or stem in names or not os.path.isfile(os.path.join(folder, entry)):
            continue
        tilts = [os.path.join(folder, stem + t) for t in (".rawtlt", ".tlt", entry[len(stem) :] + ".mdoc")]
        found = next((t for t in tilts if os.path.isfile(t)), None)
        if found is not None:
            names.add(stem)
            specs.append(SeriesSpec(stem, os.path.join(folder, entry), found))
    return specs


def stack_beside(markers: str) -> str | None:
    """``NAME.st`` or ``NAME.mrc`` next to the marker file ``NAME.<ext>``, if there is one."""
    stem = os.path.splitext(markers)[0]
    return next((stem + e for e in SCAN_STACKS if os.path.isfile(stem + e)), None)
