"""AreTomo ``.aln`` alignment files: write our alignment's global rows, read one as a start.

Layout (as AreTomo 1-3 write it; the ``alnfile`` package and ``cryoet-alignment`` parse it):

    # AreTomo Alignment / Priims bprmMn
    # RawSize = NX NY NSECTIONS
    # NumPatches = N
    # DarkFrame =  SECTION  0  TILT          one per excluded section, 0-based raw index
    # AlphaOffset =  DEG
    # BetaOffset =  DEG
    # SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
    SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT  as  i5,f11.4,f11.5,2f11.3,4f9.2,f10.2
    # Local Alignment                          then per-patch rows (only when N > 0)

SEC is the 0-based index in the stack left after removing the dark frames. ROT, TX, TY and
TILT follow :mod:`.conventions`: ``p - c = R(ROT) P Ry(TILT) X + (TX, TY)``, pixels of the raw
images. TILT has two decimals in this layout (0.005 degree).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ..io import InputError, atomic_write
from .conventions import ViewGeometry, aretomo_parameters, xf_from_rotation_shift

__all__ = ["ALN_COLUMNS", "AretomoAlignment", "read_aln", "write_aln"]

ALN_COLUMNS = ("SEC", "ROT", "GMAG", "TX", "TY", "SMEAN", "SFIT", "SCALE", "BASE", "TILT")
_HEADER = "# AreTomo Alignment / Priims bprmMn"
_COLUMN_LINE = (
    "# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT"
)
_ROW_FORMATS = (
    "{:5d}",
    "{:11.4f}",
    "{:11.5f}",
    "{:11.3f}",
    "{:11.3f}",
    "{:9.2f}",
    "{:9.2f}",
    "{:9.2f}",
    "{:9.2f}",
    "{:10.2f}",
)
_ROW_WIDTHS = (5, 11, 11, 11, 11, 9, 9, 9, 9, 10)


def write_aln(path: str | os.PathLike, geometry: ViewGeometry, excluded_views=()) -> None:
    """Write ``geometry`` as an AreTomo ``.aln`` with global rows only.

    excluded_views: 0-based views to list as ``DarkFrame`` lines (with their tilt) instead of
    rows; the other views get rows numbered 0, 1, ... in view order. RawSize is the image size
    and the number of views. X-axis tilts must be 0 (the layout has no per-view column).
    """
    if np.any(geometry.x_tilt_deg != 0.0):
        raise ValueError("AreTomo .aln has no per-view X-axis tilt; x_tilt_deg must be 0")
    n = geometry.n_views
    excluded = sorted({int(v) for v in excluded_views})
    if any(v < 0 or v >= n for v in excluded):
        raise ValueError(f"excluded_views must lie in 0..{n - 1}, got {excluded}")
    if len(excluded) == n:
        raise ValueError("every view is excluded: nothing to write")
    columns = aretomo_parameters(geometry)
    lines = [
        _HEADER,
        f"# RawSize = {round(geometry.image_size[0])} {round(geometry.image_size[1])} {n}",
        "# NumPatches = 0",
    ]
    lines += [f"# DarkFrame ={v:6d}{0:5d}{geometry.tilts_deg[v]:9.2f}" for v in excluded]
    lines += ["# AlphaOffset =     0.00", "# BetaOffset =     0.00", _COLUMN_LINE]
    kept = [v for v in range(n) if v not in set(excluded)]
    for sec, v in enumerate(kept):
        values = [sec] + [columns[name][v] for name in ALN_COLUMNS[1:]]
        fields = [fmt.format(x) for fmt, x in zip(_ROW_FORMATS, values, strict=True)]
        for name, field, width in zip(ALN_COLUMNS, fields, _ROW_WIDTHS, strict=True):
            if len(field) != width or not field.startswith(" "):
                raise ValueError(
                    f"view {v}: {name} = {field.strip()} does not fit its .aln column ({width} characters)"
                )
        lines.append("".join(fields))
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")


@dataclasses.dataclass(frozen=True, eq=False)
class AretomoAlignment:
    """The global alignment of an AreTomo ``.aln`` file.

    Attributes:
        raw_size: (nx, ny, n_sections) of the raw stack, pixels and sections.
        sections: (n,) 0-based raw-stack section of each global row.
        rotation_deg: (n,) ROT, tilt-axis angle, degrees counter-clockwise from the y axis.
        magnification: (n,) GMAG.
        shift_px: (n, 2) TX, TY, pixels.
        tilts_deg: (n,) TILT, degrees.
        dark_sections: (k,) 0-based raw sections AreTomo excluded (DarkFrame lines).
        dark_tilts_deg: (k,) their tilt angles, degrees.
        alpha_offset_deg, beta_offset_deg: AlphaOffset and BetaOffset, degrees.
        n_patches: NumPatches (local-alignment rows are not read).
    """

    raw_size: tuple[int, int, int]
    sections: np.ndarray
    rotation_deg: np.ndarray
    magnification: np.ndarray
    shift_px: np.ndarray
    tilts_deg: np.ndarray
    dark_sections: np.ndarray
    dark_tilts_deg: np.ndarray
    alpha_offset_deg: float
    beta_offset_deg: float
    n_patches: int

    @property
    def xf(self) -> np.ndarray:
        """(n, 2, 3) IMOD transforms raw -> aligned of the rows, ``A = R(-ROT)``, ``D = -A T``
        (GMAG not applied, as ``alnfile.df_to_xf`` and ``cryoet-alignment`` do)."""
        return xf_from_rotation_shift(self.rotation_deg, self.shift_px)

    def by_section(self) -> dict[str, np.ndarray]:
        """The rows spread over the raw stack, for starting an alignment of that stack: arrays of
        length n_sections (``rotation_deg``, ``tilts_deg``, ``magnification``; ``shift_px``
        (n_sections, 2)), NaN for sections without a row (dark frames; rows cut from the file),
        whose tilt is the DarkFrame angle when the file lists one."""
        n = self.raw_size[2]
        out = {
            "rotation_deg": np.full(n, np.nan),
            "tilts_deg": np.full(n, np.nan),
            "magnification": np.full(n, np.nan),
            "shift_px": np.full((n, 2), np.nan),
        }
        out["tilts_deg"][self.dark_sections] = self.dark_tilts_deg
        for name, values in (
            ("rotation_deg", self.rotation_deg),
            ("tilts_deg", self.tilts_deg),
            ("magnification", self.magnification),
            ("shift_px", self.shift_px),
        ):
            out[name][self.sections] = values
        return out

    def geometry(self) -> ViewGeometry:
        """The rows as a :class:`ViewGeometry` (views = rows, in row order)."""
        return ViewGeometry(self.xf, self.tilts_deg, None, self.raw_size[:2])


def _header_value(path, k: int, line: str, n_values: int, kind):
    """The ``n_values`` numbers after '=' on header line ``k``."""
    tokens = line.split("=", 1)[1].split() if "=" in line else []
    if len(tokens) != n_values:
        raise InputError(path, k, f"expected {n_values} value(s) after '=', got {len(tokens)}")
    return [_number(path, k, t, "header value", kind) for t in tokens]


def _number(path, k: int, token: str, what: str, kind=float):
    try:
        value = kind(token)
    except ValueError:
        raise InputError(path, k, f"{what} {token[:40]!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(path, k, f"{what} {token[:40]!r} is not finite")
    return value


def read_aln(path: str | os.PathLike) -> AretomoAlignment:
    """Read the header and global rows of an AreTomo ``.aln`` file.

    Rows are mapped to raw sections by SEC over the sections that are not dark frames. Any
    malformed line is an :class:`lmalign_jax.io.InputError` naming the file and line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            path, None, f"cannot read the AreTomo alignment ({exc.__class__.__name__}: {exc})"
        ) from None
    raw_size = None
    n_patches = 0
    alpha = beta = 0.0
    dark, rows = [], []
    section = None
    for k, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            key = text[1:].split("=", 1)[0].strip()
            if key == "RawSize":
                raw_size = tuple(_header_value(path, k, text, 3, int))
            elif key == "NumPatches":
                n_patches = _header_value(path, k, text, 1, int)[0]
            elif key == "DarkFrame":
                sec, _, tilt = _header_value(path, k, text, 3, float)
                if sec != int(sec):
                    raise InputError(path, k, f"dark-frame section {sec} is not an integer")
                dark.append((int(sec), tilt))
            elif key == "AlphaOffset":
                alpha = _header_value(path, k, text, 1, float)[0]
            elif key == "BetaOffset":
                beta = _header_value(path, k, text, 1, float)[0]
            elif key.startswith("SEC"):
                section = "global"
            elif key.startswith("Local Alignment"):
                section = "local"
            continue
        if section == "local":
            continue
        if section != "global":
            raise InputError(path, k, "data line before the '# SEC ...' column line")
        tokens = text.split()
        if len(tokens) != len(ALN_COLUMNS):
            raise InputError(
                path, k, f"expected {len(ALN_COLUMNS)} values ({' '.join(ALN_COLUMNS)}), got {len(tokens)}"
            )
        sec = _number(path, k, tokens[0], "SEC", int)
        pairs = zip(tokens[1:], ALN_COLUMNS[1:], strict=True)
        rows.append((k, sec, [_number(path, k, t, name) for t, name in pairs]))
    if raw_size is None:
        raise InputError(path, None, "no '# RawSize = NX NY NSECTIONS' line: not an AreTomo .aln file")
    if not rows:
        raise InputError(path, None, "no global alignment rows")
    if min(raw_size) <= 0:
        raise InputError(path, None, f"RawSize {raw_size} must be positive")
    dark_sections = {s for s, _ in dark}
    if any(s < 0 or s >= raw_size[2] for s in dark_sections):
        raise InputError(path, None, f"a DarkFrame section lies outside 0..{raw_size[2] - 1}")
    kept = [s for s in range(raw_size[2]) if s not in dark_sections]
    sections = []
    for k, sec, _ in rows:
        if sec < 0 or sec >= len(kept):
            raise InputError(path, k, f"SEC {sec} outside 0..{len(kept) - 1} (RawSize minus dark frames)")
        sections.append(kept[sec])
    if len(set(sections)) != len(sections):
        raise InputError(path, None, "two global rows have the same SEC")
    values = np.array([v for _, _, v in rows], dtype=np.float64)
    return AretomoAlignment(
        raw_size=raw_size,
        sections=np.array(sections, dtype=np.int64),
        rotation_deg=values[:, 0],
        magnification=values[:, 1],
        shift_px=values[:, 2:4].copy(),
        tilts_deg=values[:, 8],
        dark_sections=np.array([s for s, _ in dark], dtype=np.int64),
        dark_tilts_deg=np.array([t for _, t in dark], dtype=np.float64),
        alpha_offset_deg=float(alpha),
        beta_offset_deg=float(beta),
        n_patches=int(n_patches),
    )
