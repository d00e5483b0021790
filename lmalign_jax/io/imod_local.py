"""IMOD's local alignment file (``<name>local.xf``, tiltalign's OutputLocalFile, tilt's LOCALFILE).

Layout, from IMOD's sources (GitHub ``LabShare-Archive/IMOD``): tiltalign.f90
``setupAndDoLocalAlignments`` writes the header with ``(7i6,f12.5,i4)`` and, per patch, the
local branch of ``alignAndOutputResults`` writes the blocks; tilt.f90 reads them free-format
after its REPROJECT entries (each Fortran READ starts on a new line, its values may run over
several lines).

1. Header: ``nX nY Xstart Ystart dX dY ifXtilts pixel ifZfactors``. Patch (i, j) is centred at
   ``(Xstart + i dX, Ystart + j dY)`` pixels of the aligned image (origin at the image corner);
   the patch size is not stored. ``ifXtilts`` = 1: X-axis tilt deltas follow; ``pixel``: pixel
   size (A) of the model tiltalign ran on (tilt rescales the grid and the shifts by
   ``pixel / stack pixel`` unless LOCALSCALE is given, so a writer stores the aligned stack's pixel
   size, or 0 to disable the scaling); ``ifZfactors`` = 1: z factors follow. Older files stop
   after 6 or 8 fields; tilt then takes the missing ones as 0.
2. ``nX * nY`` blocks, X fastest (patch index ``j nX + i``), each:
   delta tilt per view (local - global, degrees, ``(10f7.2)``); if ifXtilts, delta X-axis tilt per
   view (``(10f7.2)``); if ifZfactors, the (xz, yz) z-factor pairs per view (``(6f12.6)``, the
   patch's full values); one 2x3 transform per view and line ``A11 A12 A21 A22 DX DY``
   (``xfwrite``, ``(4f12.7,2f12.3)``), about the image centre, mapping the patch's ideal
   projection to the position in the globally aligned stack. Views left out of the alignment
   have delta 0 and the unit transform.

The number of views is not stored: the reader takes it from the caller (the global alignment's
views) or, when not given, from the line count, which fixes it uniquely.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ._text import parse_float, parse_int, read_lines, split_fields
from .atomic import atomic_write
from .errors import InputError
from .fixed_width import format_records, record_format

__all__ = [
    "ZFAC_NEGLIGIBLE",
    "LocalAlignment",
    "aligned_footprint",
    "check_local_grid",
    "read_local_xf",
    "write_local_xf",
]

#: Z factors below this (a ``.zfac``'s printed precision, ``2f12.7``) are zero: neither a ``.zfac``
#: nor a local file's z factors are written for them.
ZFAC_NEGLIGIBLE = 5e-8

_HEADER_NAMES = ("nX", "nY", "Xstart", "Ystart", "dX", "dY", "ifXtilts", "pixel", "ifZfactors")
_HEADER_RECORDS = {6: record_format("6i6"), 8: record_format("7i6,f12.5"), 9: record_format("7i6,f12.5,i4")}
_ANGLE_RECORD = record_format("10f7.2")
_ZFAC_RECORD = record_format("6f12.6")
_XF_RECORD = record_format("4f12.7,2f12.3")
_XF_WIDTHS = (12, 12, 12, 12, 12, 12)


@dataclasses.dataclass(frozen=True, eq=False)
class LocalAlignment:
    """The contents of an IMOD local alignment file.

    Attributes:
        n_patches: (nX, nY) patches in X and Y (each >= 2).
        start: (Xstart, Ystart) centre of the first patch, pixels (image corner origin).
        spacing: (dX, dY) distance between patch centres, pixels.
        pixel_size: pixel size (A) written in the header; 0 disables tilt's rescaling.
        delta_tilt_deg: (n_patches, n_views) local minus global tilt, degrees.
        transforms: (n_patches, n_views, 2, 3) ``[A | D]`` about the image centre, pixels.
        delta_xtilt_deg: (n_patches, n_views) X-axis tilt deltas, degrees, or None.
        z_factors: (n_patches, n_views, 2) (xz, yz) per view, or None.
        header_fields: 6, 8 or 9, how many header fields the file had (kept for the round trip).
    """

    n_patches: tuple[int, int]
    start: tuple[float, float]
    spacing: tuple[float, float]
    pixel_size: float
    delta_tilt_deg: np.ndarray
    transforms: np.ndarray
    delta_xtilt_deg: np.ndarray | None = None
    z_factors: np.ndarray | None = None
    header_fields: int = 9

    @property
    def n_views(self) -> int:
        return int(self.delta_tilt_deg.shape[1])

    def is_global(self, z_factors: np.ndarray | None = None) -> bool:
        """Whether every patch holds the global alignment as tilt applies the file: unit transforms,
        no tilt or X-axis tilt deltas (to 1e-6), and, given the global alignment's ``z_factors``
        (n_views, 2), the patches' own equal to them (to 1e-6, the file's precision; what align
        --local writes for a patch that keeps the global solution). Without global z factors
        tilt ignores the file's, and so does this."""
        unit = np.allclose(self.transforms, np.eye(2, 3), atol=1e-6)
        no_xtilt = self.delta_xtilt_deg is None or np.allclose(self.delta_xtilt_deg, 0.0, atol=1e-6)
        same_zfac = (
            z_factors is None
            or self.z_factors is not None
            and np.allclose(self.z_factors, np.asarray(z_factors, float)[None], rtol=0, atol=1e-6)
        )
        return bool(unit and no_xtilt and same_zfac and np.allclose(self.delta_tilt_deg, 0.0, atol=1e-6))

    @property
    def centres(self) -> np.ndarray:
        """(n_patches, 2) patch centres (x, y) in pixels, X fastest."""
        nx, ny = self.n_patches
        i, j = np.meshgrid(np.arange(nx), np.arange(ny))
        return np.stack(
            [self.start[0] + i.ravel() * self.spacing[0], self.start[1] + j.ravel() * self.spacing[1]], 1
        )


def _block_lines(n_views: int, xtilts: bool, zfactors: bool) -> int:
    angles = math.ceil(n_views / 10)
    return angles * (1 + xtilts) + (math.ceil(2 * n_views / 6) if zfactors else 0) + n_views


class _Cursor:
    """Reads values from consecutive lines as Fortran list-directed READs do (one READ, new line)."""

    def __init__(self, path, lines: list[str], first: int):
        self.path, self.lines, self.k = path, lines, first

    def values(self, count: int, what: str) -> np.ndarray:
        out: list[float] = []
        while len(out) < count:
            if self.k >= len(self.lines):
                raise InputError(
                    self.path, None, f"file ends in the {what}: expected {count} values, got {len(out)}"
                )
            line_no = self.k + 1
            tokens = self.lines[self.k].split()
            self.k += 1
            if not tokens:
                raise InputError(self.path, line_no, f"blank line in the {what}")
            if len(out) + len(tokens) > count:
                raise InputError(
                    self.path,
                    line_no,
                    f"{len(out) + len(tokens) - count} value(s) too many for the {what} ({count})",
                )
            out.extend(parse_float(t, self.path, line_no, what) for t in tokens)
        return np.array(out)

    def transform(self, what: str) -> np.ndarray:
        if self.k >= len(self.lines):
            raise InputError(self.path, None, f"file ends in the {what}")
        line_no, raw = self.k + 1, self.lines[self.k]
        self.k += 1
        if not raw.strip():
            raise InputError(self.path, line_no, f"blank line in the {what}")
        fields = split_fields(raw, _XF_WIDTHS)
        if len(fields) != 6:
            raise InputError(
                self.path,
                line_no,
                f"{what}: expected 6 values (A11 A12 A21 A22 DX DY), got {len(raw.split())}",
            )
        return np.array([parse_float(t, self.path, line_no, what) for t in fields])


def read_local_xf(path: str | os.PathLike, n_views: int | None = None) -> LocalAlignment:
    """Read an IMOD local alignment file (layout in the module docstring).

    Args:
        n_views: views of the stack/global alignment it belongs to; a file made for another
            number of views is an :class:`InputError`. None: inferred from the line count.
    Raises:
        InputError: naming the file, the line and the problem.
    """
    lines = read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(path, None, "empty file; expected an IMOD local alignment header")
    tokens = lines[0].split()
    if len(tokens) not in (6, 8, 9):
        raise InputError(
            path, 1, f"header needs 6, 8 or 9 fields ({' '.join(_HEADER_NAMES)}), got {len(tokens)}"
        )
    header = [
        parse_float(t, path, 1, n) if n == "pixel" else parse_int(t, path, 1, n)
        for t, n in zip(tokens, _HEADER_NAMES, strict=False)
    ]
    nx, ny, x0, y0, dx, dy = (int(v) for v in header[:6])
    xtilts = bool(header[6]) if len(header) > 6 else False
    pixel = float(header[7]) if len(header) > 7 else 0.0
    zfactors = bool(header[8]) if len(header) > 8 else False
    if nx < 2 or ny < 2:
        raise InputError(
            path, 1, f"needs at least 2 patches in X and in Y (IMOD's tilt requires it), got {nx} x {ny}"
        )
    if dx <= 0 or dy <= 0:
        raise InputError(path, 1, f"patch spacing must be positive, got dX={dx} dY={dy}")
    if pixel < 0:  # tilt rescales only by a positive one; IMOD gives a negative one no meaning
        raise InputError(path, 1, f"pixel size must be positive (A) or 0 (not recorded), got {pixel:g}")
    for name, flag in zip(("ifXtilts", "ifZfactors"), (header[6:7], header[8:9]), strict=True):
        if flag and flag[0] not in (0, 1):
            raise InputError(path, 1, f"{name} must be 0 or 1, got {flag[0]}")
    n_patches = nx * ny
    body = len(lines) - 1
    blank = next((k for k in range(1, len(lines)) if not lines[k].strip()), None)
    if blank is not None:  # named where it is, before the line count it also throws off
        if n_views is not None:  # the block it falls in, as the layout places it (raises there)
            _read_blocks(path, lines, (nx, ny), n_views, xtilts, zfactors)
        raise InputError(path, blank + 1, "blank line inside the patch blocks (a local file has none)")
    fits = 1  # the number of views the file's lines make nX x nY blocks of, if any
    while n_patches * _block_lines(fits, xtilts, zfactors) < body:
        fits += 1
    if n_patches * _block_lines(fits, xtilts, zfactors) != body:
        if n_views is None:
            below = [
                f"{n} view{'s' * (n != 1)} need {n_patches * _block_lines(n, xtilts, zfactors)}"
                for n in (fits - 1, fits)
            ]
            raise InputError(
                path,
                None,
                f"{body} lines after the header do not make {nx} x {ny} patch blocks of a whole number of "
                f"views ({', '.join(below[fits == 1 :])}): the file is truncated or has lines too many",
            )
        fits = None
    if n_views is None:
        n_views = fits
    elif fits != n_views:
        raise InputError(
            path,
            None,
            "grid does not match the alignment: "
            + _count_problem(body, (nx, ny), n_views, fits, _block_lines(n_views, xtilts, zfactors)),
        )
    xf, dt, dxt, zf = _read_blocks(path, lines, (nx, ny), n_views, xtilts, zfactors)
    return LocalAlignment((nx, ny), (x0, y0), (dx, dy), pixel, dt, xf, dxt, zf, len(tokens))


def _count_problem(body: int, grid: tuple[int, int], n_views: int, fits: int | None, block: int) -> str:
    """Why ``body`` lines after the header are not ``grid`` patch blocks of ``n_views`` views (of
    ``block`` lines each); ``fits``: the number of views they make whole blocks of, if any."""
    nx, ny = grid
    need = nx * ny * block
    counts = f"{body} lines after the header, but {nx} x {ny} patches of {n_views} views need {need}"
    if body < need:
        other = f", or holds {nx} x {ny} patches of {fits} views (made for another alignment)" if fits else ""
        return f"{counts}: the file is {need - body} lines short (truncated?){other}"
    if fits is not None:
        return (
            f"the file holds {nx} x {ny} patches of {fits} views, the alignment has {n_views} views "
            f"({body} lines after the header; {n_views} views need {need})"
        )
    return f"{counts}: {body - need} lines too many"


def _read_blocks(path, lines: list[str], grid: tuple[int, int], n_views: int, xtilts: bool, zfactors: bool):
    """The patch blocks after the header: (transforms, delta tilts, delta X-axis tilts or None, z
    factors or None); InputError at the line of the first problem."""
    nx, ny = grid
    n_patches = nx * ny
    cursor = _Cursor(path, lines, 1)
    dt = np.zeros((n_patches, n_views))
    dxt = np.zeros((n_patches, n_views)) if xtilts else None
    zf = np.zeros((n_patches, n_views, 2)) if zfactors else None
    xf = np.zeros((n_patches, n_views, 2, 3))
    for p in range(n_patches):
        where = f"patch {p} (x {p % nx}, y {p // nx})"
        dt[p] = cursor.values(n_views, f"delta tilts of {where}")
        if dxt is not None:
            dxt[p] = cursor.values(n_views, f"delta X-axis tilts of {where}")
        if zf is not None:
            zf[p] = cursor.values(2 * n_views, f"z factors of {where}").reshape(n_views, 2)
        for v in range(n_views):  # views 1-based, as the .tlt's lines
            row = cursor.transform(f"transform of view {v + 1} in {where}")
            xf[p, v] = [[row[0], row[1], row[4]], [row[2], row[3], row[5]]]
    return xf, dt, dxt, zf


#: How far outside the image (a fraction of its size) a patch centre may lie. tiltalign lays its
#: grid over the markers' solved positions, and a bead that enters the field only at high tilt lies
#: outside the image at zero tilt; tilt holds the outer patches' weights beyond the grid's edge.
GRID_MARGIN = 0.5
#: The least spread of the patch centres (a fraction of the image's size) in x or in y of a grid
#: that the pixel rescaling shrinks. tiltalign spreads its grid over the markers: IMOD's shipped
#: files span 25-53% of their images (BBb's x 25%); a grid rescaled by a wrong pixel size (a header
#: of 1 A on a stack of 10 A) covers a few percent of it. Not asked of an unscaled grid: markers
#: clustered in a small field make a small grid of the right pixels.
MIN_GRID_SPREAD = 0.1


def pixel_scale(local: LocalAlignment, pixel_size: float) -> float:
    """The factor IMOD's tilt applies to the grid and the shifts of ``local`` (LOCALSCALE not given):
    header pixel / ``pixel_size`` (the stack's, A) when both are > 0, else 1 (nothing to scale by:
    the file is applied as written, also for a stack without a pixel size); 1 also when the two
    agree to the header's precision (``f12.5``, and a float32 stack header's rounding: 2.17000
    against 2.1700000763 is the same pixel)."""
    if not (local.pixel_size > 0 and pixel_size > 0):
        return 1.0
    if abs(local.pixel_size - pixel_size) <= 5e-6 + 1e-7 * pixel_size:
        return 1.0
    return local.pixel_size / pixel_size


def scaled_to_stack(local: LocalAlignment, pixel_size: float) -> LocalAlignment:
    """``local`` as IMOD's tilt applies it to a stack of ``pixel_size`` (A): patch start, spacing and
    every transform's shift multiplied by :func:`pixel_scale`, the header's pixel size made the
    stack's (a file made for a stack of another binning, or for a model without a pixel size)."""
    factor = pixel_scale(local, pixel_size)
    if factor == 1.0:
        return local
    transforms = local.transforms.copy()
    transforms[..., 2] *= factor
    return dataclasses.replace(
        local,
        start=tuple(factor * v for v in local.start),
        spacing=tuple(factor * v for v in local.spacing),
        pixel_size=float(pixel_size),
        transforms=transforms,
    )


def aligned_footprint(
    xf: np.ndarray, tilts_deg: np.ndarray, image_size: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Where the raw image lands in the aligned frame at the view nearest 0 degrees: the box
    (lo (2,), hi (2,), image pixels from the corner) of its corners mapped by that view's .xf
    ``xf`` (n, 2, 3), raw -> aligned about the image centre. tiltalign lays its patch grid over the
    markers' solved (X, Y), which at zero tilt are their aligned positions: a tilt axis far from
    the image's axes on a non-square image turns them past the image's own box."""
    size = np.asarray(image_size, float)
    view = int(np.argmin(np.abs(np.asarray(tilts_deg, float))))
    half = size / 2
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * half
    mapped = corners @ np.asarray(xf[view][:, :2], float).T + np.asarray(xf[view][:, 2], float) + half
    return np.minimum(mapped.min(axis=0), 0.0), np.maximum(mapped.max(axis=0), size)


def check_local_grid(
    path: str | os.PathLike,
    local: LocalAlignment,
    image_size: tuple[float, float],
    pixel_size: float = 0.0,
    footprint: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """InputError unless the file's patch grid fits an image of ``image_size`` (nx, ny) pixels after
    the rescaling IMOD's tilt applies (:func:`pixel_scale`: the "pixel-size trap" of a file made for
    a stack of another binning or a model without a pixel size): at least half the patch centres
    inside the image, none farther outside than :data:`GRID_MARGIN` of its size, and, where the
    rescaling shrinks a grid that fits the image as written, its centres spread over at least
    :data:`MIN_GRID_SPREAD` of the image in x or in y (a grid rescaled into a corner, as a header
    pixel of 1, IMOD's for a model without a pixel size, makes it on a stack of 10 A pixels, covers
    almost none of the image; a file made for a larger stack, binned since, does not fit as
    written, and its grid may be small where its markers are).
    ``footprint``: the box the raw image covers in the aligned frame (:func:`aligned_footprint`),
    taken for the image's own box in the first two tests when given (it holds that box)."""
    factor = pixel_scale(local, pixel_size)
    centres = local.centres * factor
    size = np.asarray(image_size, float)
    low, high = (
        (np.zeros(2), size) if footprint is None else (np.asarray(footprint[0]), np.asarray(footprint[1]))
    )
    extent = high - low
    inside = np.all((centres >= low) & (centres <= high), axis=1)
    far = np.any((centres < low - GRID_MARGIN * extent) | (centres > high + GRID_MARGIN * extent))
    lo, hi = centres.min(axis=0), centres.max(axis=0)
    rescaled = (
        f" (rescaled by header pixel {local.pixel_size:g} / stack pixel {pixel_size:g})"
        if factor != 1
        else ""
    )
    span = f"patch centres span x {lo[0]:g}..{hi[0]:g}, y {lo[1]:g}..{hi[1]:g}{rescaled}"
    turned = (
        ""
        if footprint is None or (np.allclose(low, 0) and np.allclose(high, size))
        else f" (as the alignment turns it, x {low[0]:.0f}..{high[0]:.0f}, y {low[1]:.0f}..{high[1]:.0f})"
    )
    if far or 2 * inside.sum() < len(centres):
        raise InputError(
            path,
            1,
            f"grid does not match the stack: {span}, "
            + (
                f"{len(centres) - int(inside.sum())} of {len(centres)} outside"
                if not far
                else f"farther than {GRID_MARGIN:g} of its size outside"
            )
            + f" the {image_size[0]:g} x {image_size[1]:g} image{turned}",
        )
    unscaled = local.centres
    unscaled_fits = 2 * np.all((unscaled >= 0) & (unscaled <= size), axis=1).sum() >= len(unscaled)
    # a file made for a larger stack (binned since) spreads past this image unscaled: its grid is
    # small because its markers are, not because of the header
    if factor < 1 and unscaled_fits and np.all(hi - lo < MIN_GRID_SPREAD * size):
        raise InputError(
            path,
            1,
            f"grid does not match the stack: {span}, under {MIN_GRID_SPREAD:.0%} of the "
            f"{image_size[0]:g} x {image_size[1]:g} image in x and in y: the file was made for "
            f"{local.pixel_size:g} A pixels, not this stack's {pixel_size:g} A (IMOD writes 1 for a model "
            "without a pixel size; tilt then needs LOCALSCALE, which is not read here): write this "
            "stack's pixel size (or 0) into the header's pixel field, or give the --local file written "
            "for this stack",
        )


def _lines_of(record: str, values: np.ndarray, per_line: int) -> str:
    """``values`` written ``per_line`` to a line (the last line shorter), as Fortran's repeat count."""
    values = np.asarray(values, dtype=np.float64).ravel()
    full = values.size // per_line * per_line
    text = format_records(record, list(values[:full].reshape(-1, per_line).T)) if full else ""
    rest = values[full:]
    if rest.size:
        text += format_records(_record_prefix(record, rest.size), [rest[i : i + 1] for i in range(rest.size)])
    return text


def _record_prefix(record: str, n: int) -> str:
    """The first ``n`` fields of a ``%``-record from :func:`record_format`."""
    first, *later = record.split(" %")
    return " %".join([first, *later[: n - 1]])


def write_local_xf(path: str | os.PathLike, local: LocalAlignment) -> None:
    """Write ``local`` in IMOD's layout (module docstring), atomically; reading it back returns it."""
    nx, ny = local.n_patches
    n_patches, n_views = local.delta_tilt_deg.shape
    if nx < 2 or ny < 2 or n_patches != nx * ny:
        raise ValueError(f"need nX, nY >= 2 and {nx} x {ny} patch blocks, got {n_patches}")
    if local.transforms.shape != (n_patches, n_views, 2, 3):
        raise ValueError(f"transforms must be {(n_patches, n_views, 2, 3)}, got {local.transforms.shape}")
    arrays = [local.delta_tilt_deg, local.transforms]
    arrays += [a for a in (local.delta_xtilt_deg, local.z_factors) if a is not None]
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("local alignment values must be finite")
    header = [
        nx,
        ny,
        *local.start,
        *local.spacing,
        int(local.delta_xtilt_deg is not None),
        float(local.pixel_size),
    ]
    header.append(int(local.z_factors is not None))
    fields = local.header_fields if local.header_fields in _HEADER_RECORDS else 9
    if fields < 9 and local.z_factors is not None or fields < 8 and local.delta_xtilt_deg is not None:
        fields = 9
    parts = [_HEADER_RECORDS[fields] % tuple(header[:fields]) + "\n"]
    for p in range(n_patches):
        parts.append(_lines_of(_ANGLE_RECORD, local.delta_tilt_deg[p], 10))
        if local.delta_xtilt_deg is not None:
            parts.append(_lines_of(_ANGLE_RECORD, local.delta_xtilt_deg[p], 10))
        if local.z_factors is not None:
            parts.append(_lines_of(_ZFAC_RECORD, local.z_factors[p], 6))
        t = local.transforms[p]
        parts.append(
            format_records(
                _XF_RECORD, [t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1], t[:, 0, 2], t[:, 1, 2]]
            )
        )
    with atomic_write(path) as f:
        f.write("".join(parts))
