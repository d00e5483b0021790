"""AreTomo ``.aln`` alignment files: write our alignment (global and local rows), read one as a start.

Layout (as AreTomo 1-3 write it; the ``alnfile`` package and ``cryoet-alignment`` parse it):

    # AreTomo Alignment / Priims bprmMn
    # RawSize = NX NY NSECTIONS
    # NumPatches = N
    # DarkFrame =  SECTION  0  TILT          one per excluded section, 0-based raw index
    # AlphaOffset =  DEG
    # BetaOffset =  DEG
    # SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
    SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT  as  i5,f11.4,f11.5,2f11.3,4f9.2,f10.2
    # Local Alignment
    SEC PATCH CX CY SX SY RELIABLE  as  2i4,f9.2,3f10.2,f6.1, N rows per SEC (when N > 0)

SEC is the 0-based index in the stack left after removing the dark frames. ROT, TX, TY and
TILT follow :mod:`.conventions`: ``p - c = R(ROT) P Ry(TILT) X + (TX, TY)``, pixels of the raw
images. TILT has two decimals in this layout (0.005 degree). Fields are written with
:mod:`lmalign_jax.io.fixed_width` (a number too wide for its column widens it by one
blank-separated field; AreTomo, ``alnfile`` and ``cryoet-alignment`` read the rows
blank-separated).

Local rows (``cryoet-alignment`` documents them): per SEC and patch, CX, CY are where the centre
of the patch is expected in the globally aligned image (tilt axis along y, origin at the image
centre: ``P Ry(TILT) X`` of the patch's 3-D centre) and SX, SY the measured deviation from it,
so the patch centre lies at ``(CX + SX, CY + SY)`` in that frame; RELIABLE is 1.0 or 0.0.

From IMOD's local alignment (``<prefix>local.xf``, :mod:`lmalign_jax.io.imod_local`, as
``align --local`` writes it) to these rows, :func:`aretomo_local_rows`: patch ``p``'s centre
``(x, y)`` (its grid centre, relative to the image centre) is taken at height ``z = 0`` (the
tilt axis: the grid has no height). Its expected position in view ``v`` is the global
projection ``(x cos t_v, y)``; IMOD's tilt puts it at ``Q = A_pv P_pv + D_pv``, with ``P_pv``
the projection at the patch's own angles (``t_v + dt_pv``, X-axis tilt ``dxt_pv``) and
``[A_pv | D_pv]`` the patch's transform into the globally aligned image (the frame of our
``.xf``, which is AreTomo's aligned frame). Written: ``CX, CY = (x cos t_v, y)`` and
``SX, SY = Q - (CX, CY)``, exact at each patch centre at z = 0. Dropped, because an AreTomo
local row is a shift only: the linear part of ``A_pv`` (rotation, stretch across the patch),
the z-dependence of the patch's delta tilt (a point at height z moves by a further
``z (sin(t + dt) - sin t)``), and the patch's z factors; AreTomo interpolates its shifts
between patch centres its own way, not as IMOD's tilt blends the four nearest transforms.
Every row is RELIABLE 1.0 (a patch whose local fit was no better than the global one carries
the global solution, a zero shift).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ..io import InputError, atomic_write, read_lines
from ..io.fixed_width import format_records, record_format
from ..io.imod_local import LocalAlignment
from .conventions import ViewGeometry, aretomo_parameters, xf_from_rotation_shift

__all__ = ["ALN_COLUMNS", "LOCAL_COLUMNS", "AretomoAlignment", "aretomo_local_rows", "read_aln", "write_aln"]

ALN_COLUMNS = ("SEC", "ROT", "GMAG", "TX", "TY", "SMEAN", "SFIT", "SCALE", "BASE", "TILT")
_HEADER = "# AreTomo Alignment / Priims bprmMn"
_COLUMN_LINE = (
    "# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT"
)
_ROW_RECORD = record_format("i5,f11.4,f11.5,2f11.3,4f9.2,f10.2")
#: The local rows' columns (``alnfile``'s names) and layout.
LOCAL_COLUMNS = ("SEC", "PATCH", "CX", "CY", "SX", "SY", "RELIABLE")
_LOCAL_RECORD = record_format("2i4,f9.2,3f10.2,f6.1")


def aretomo_local_rows(geometry: ViewGeometry, local: LocalAlignment) -> tuple[np.ndarray, np.ndarray]:
    """(centres, shifts), each (n_views, n_patches, 2) pixels: AreTomo's expected patch centres
    in the globally aligned image and the local shifts from them, converted from IMOD's local
    alignment ``local`` (one entry per view of ``geometry``) as the module docstring states."""
    if local.n_views != geometry.n_views:
        raise ValueError(
            f"the local alignment has {local.n_views} views but the alignment has {geometry.n_views}"
        )
    nx, ny = geometry.image_size
    centre = local.centres - np.array([nx / 2.0, ny / 2.0])  # (P, 2)
    x, y = centre[:, :1], centre[:, 1:]
    tilt = np.radians(np.asarray(geometry.tilts_deg, dtype=np.float64))[None, :]  # (1, V)
    own = tilt + np.radians(local.delta_tilt_deg)  # (P, V)
    x_tilt = np.radians(local.delta_xtilt_deg) if local.delta_xtilt_deg is not None else np.zeros_like(own)
    ideal = np.stack(
        [x * np.cos(own) + y * np.sin(x_tilt) * np.sin(own), y * np.cos(x_tilt)], axis=-1
    )  # (P, V, 2): the projection at the patch's angles, z = 0
    xf = local.transforms
    placed = np.einsum("pvij,pvj->pvi", xf[..., :2], ideal) + xf[..., 2]
    expected = np.stack([x * np.cos(tilt), np.broadcast_to(y, own.shape)], axis=-1)
    return expected.transpose(1, 0, 2), (placed - expected).transpose(1, 0, 2)


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(values.reshape(values.shape[0], -1)), axis=1))[0])
        raise ValueError(f"view {bad}: {name} is not finite")


def write_aln(
    path: str | os.PathLike, geometry: ViewGeometry, excluded_views=(), local: LocalAlignment | None = None
) -> None:
    """Write ``geometry`` as an AreTomo ``.aln``: global rows, and local rows from ``local``.

    excluded_views: 0-based views to list as ``DarkFrame`` lines (with their tilt) instead of
    rows; the other views get rows numbered 0, 1, ... in view order. RawSize is the image size
    and the number of views. X-axis tilts must be 0 (the layout has no per-view column).
    local: IMOD's local alignment of the same views (:func:`aretomo_local_rows`), or None for
    ``NumPatches = 0``. ValueError for what the layout cannot hold.
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
    for name in ALN_COLUMNS[1:]:
        _check_finite(name, np.asarray(columns[name], dtype=np.float64))
    kept = np.array([v for v in range(n) if v not in set(excluded)], dtype=np.int64)
    n_patches = 0 if local is None else int(np.prod(local.n_patches))
    lines = [
        _HEADER,
        f"# RawSize = {round(geometry.image_size[0])} {round(geometry.image_size[1])} {n}",
        f"# NumPatches = {n_patches}",
    ]
    lines += [f"# DarkFrame ={v:6d}{0:5d}{geometry.tilts_deg[v]:9.2f}" for v in excluded]
    lines += ["# AlphaOffset =     0.00", "# BetaOffset =     0.00", _COLUMN_LINE]
    rows = [np.arange(kept.size)] + [
        np.asarray(columns[name], dtype=np.float64)[kept] for name in ALN_COLUMNS[1:]
    ]
    text = "\n".join(lines) + "\n" + format_records(_ROW_RECORD, rows)
    if local is not None:
        centres, shifts = aretomo_local_rows(geometry, local)
        _check_finite("a local shift", shifts)
        sec, patch = np.meshgrid(np.arange(kept.size), np.arange(n_patches), indexing="ij")
        c, d = centres[kept].reshape(-1, 2), shifts[kept].reshape(-1, 2)
        local_rows = [sec.ravel(), patch.ravel(), c[:, 0], c[:, 1], d[:, 0], d[:, 1], np.ones(sec.size)]
        text += "# Local Alignment\n" + format_records(_LOCAL_RECORD, local_rows)
    with atomic_write(path) as f:
        f.write(text)


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
        n_patches: NumPatches.
        local_rows: (k, 7) the local rows (LOCAL_COLUMNS: SEC, PATCH, CX, CY, SX, SY, RELIABLE),
            (0, 7) when the file has none.
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
    local_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 7)))

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
    malformed line is an :class:`lmalign_jax.io.InputError` naming the file and line; a missing
    file, a folder or one that is not UTF-8 text is worded as the other text readers word it
    (:func:`lmalign_jax.io.read_lines`).
    """
    lines = read_lines(path)
    raw_size = None
    n_patches = 0
    alpha = beta = 0.0
    dark, rows, local = [], [], []
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
            tokens = text.split()
            if len(tokens) != len(LOCAL_COLUMNS):
                raise InputError(
                    path,
                    k,
                    f"expected {len(LOCAL_COLUMNS)} values ({' '.join(LOCAL_COLUMNS)}), got {len(tokens)}",
                )
            local.append([_number(path, k, t, name) for t, name in zip(tokens, LOCAL_COLUMNS, strict=True)])
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
        values = [_number(path, k, t, name) for t, name in pairs]
        gmag = values[ALN_COLUMNS.index("GMAG") - 1]  # a magnification; AreTomo writes ~1
        if not gmag > 0:
            raise InputError(path, k, f"GMAG {gmag:g} is not positive")
        rows.append((k, sec, values))
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
        local_rows=np.array(local, dtype=np.float64).reshape(-1, len(LOCAL_COLUMNS)),
    )
