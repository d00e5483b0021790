"""MRC tilt-series input (numpy + mrcfile only; no JAX here). Tomogram output is
:mod:`lmalign_jax.io.mrc_volume`.

* :func:`read_stack_header` -- ``(n_views, ny, nx, pixel_size_A)`` from the header alone.
* :func:`read_stack` -- the images as a ``(n_views, ny, nx)`` array, memory-mapped by default;
  :func:`read_stack_streamed` the same, each view's mapped pages released once read.
* :func:`read_header_tilts` / :func:`set_header_tilts` -- SerialEM's per-section tilts in the
  extended header; :func:`read_labels` -- the header's labels.
* :func:`mode0_signed` -- whether 8-bit (mode 0) data are signed, by IMOD's rule.

Bad input (missing file, not an MRC file, wrong dimensionality) raises
:class:`lmalign_jax.io.errors.InputError`, a :class:`ValueError` whose message names the file.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator

import mrcfile
import numpy as np

from .errors import InputError

__all__ = [
    "read_stack_header",
    "anisotropic_pixel_note",
    "read_stack",
    "read_stack_streamed",
    "read_header_tilts",
    "read_labels",
    "set_header_tilts",
    "StreamedStack",
    "ViewSubset",
    "first_non_finite_view",
    "mode0_signed",
]


def _bad(path, problem: str) -> InputError:
    return InputError(path=path, line=None, problem=problem)


@contextlib.contextmanager
def _open_header(path) -> Iterator[mrcfile.mrcfile.MrcFile]:
    """Open ``path`` header-only, turning every failure into an InputError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _bad(path, "no such file")
    if os.path.isdir(path):
        raise _bad(path, "is a directory, not an MRC file")
    try:
        mrc = mrcfile.open(path, mode="r", header_only=True, permissive=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _bad(path, f"not a readable MRC file ({exc})") from exc
    try:
        yield mrc
    finally:
        mrc.close()


def _pixel_size(header) -> float | None:
    """Pixel size in Angstrom from the header's cell and grid, or None when it is not set."""
    mx = int(header.mx)
    cella_x = float(header.cella.x)
    if mx <= 0 or not np.isfinite(cella_x) or cella_x <= 0.0:
        return None
    return cella_x / mx


#: Relative difference of the x and y pixel sizes above which a header's pixels are not square.
ANISOTROPY_RTOL = 1e-3


def anisotropic_pixel_note(path) -> str | None:
    """A warning's text when the header of MRC file ``path`` gives pixels of different x and y
    sizes (Angstrom, cell / grid; both set and differing by more than ``ANISOTROPY_RTOL``), else
    None. The package takes the x size (``read_stack_header``) and treats pixels as square."""
    with _open_header(path) as mrc:
        h = mrc.header
        size_x = _pixel_size(h)
        my, cella_y = int(h.my), float(h.cella.y)
    if size_x is None or my <= 0 or not np.isfinite(cella_y) or cella_y <= 0.0:
        return None
    size_y = cella_y / my
    if abs(size_y - size_x) <= ANISOTROPY_RTOL * max(size_x, size_y):
        return None
    return (
        f"{os.fspath(path)}: the header's pixels are {size_x:.4g} x {size_y:.4g} A (x by y); pixels are "
        f"taken as square, {size_x:.4g} A (the x size): check the header"
    )


def read_stack_header(path) -> tuple[int, int, int, float | None]:
    """Return ``(n_views, ny, nx, pixel_size_A)`` of an MRC image stack without reading its data.

    A single 2-D image counts as one view. ``pixel_size_A`` is the x pixel size in Angstrom from
    the header (cell / grid), or ``None`` when the header does not set it.
    """
    with _open_header(path) as mrc:
        h = mrc.header
        nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
        if nx <= 0 or ny <= 0 or nz <= 0:
            raise _bad(path, f"header has non-positive dimensions nx={nx}, ny={ny}, nz={nz}")
        _check_size(path, mrc, nx, ny, nz)
        return nz, ny, nx, _pixel_size(h)


def _check_size(path, mrc, nx: int, ny: int, nz: int) -> None:
    """InputError when the file is shorter than the ``nz`` sections its header announces (a
    truncated file or a wrong header): said here, before a tilt or transform file that has the
    right number of views is blamed for not matching ``nz``. Likewise for a mode that is not an
    image stack's (complex) or that mrcfile does not read."""
    try:
        dtype = mrcfile.utils.data_dtype_from_header(mrc.header)
    except ValueError as exc:  # a mode mrcfile does not map to a dtype
        raise _bad(path, f"not a readable MRC file ({exc})") from None
    if dtype.kind == "c":  # said here, before a command that reads the images later has done any work
        raise _bad(path, f"complex MRC data (mode {int(mrc.header.mode)}) is not an image stack")
    start = mrc.header.nbytes + int(mrc.header.nsymbt)
    section = nx * ny * dtype.itemsize
    size = os.path.getsize(os.fspath(path)) - start
    held = size // section
    if held < nz:
        raise _bad(
            path,
            f"the header says {nz} sections of {nx} x {ny} ({dtype.name}) but the file holds {max(held, 0)} "
            "(a truncated file or a wrong header)",
        )
    extra = size - nz * section
    # bytes that a wrong nx (whole columns of every section), ny (rows) or nz (sections) leave over;
    # others are trailing bytes after the data, which reads as the header says (mrcfile warns)
    wrong = [nx * nz * dtype.itemsize, ny * nz * dtype.itemsize, section]
    if extra > 0 and any(extra % n == 0 for n in wrong):
        raise _bad(
            path,
            f"the file holds {extra} bytes more than the header's {nz} sections of {nx} x {ny} "
            f"({dtype.name}): a wrong header (nx, ny or nz), which would read every image sheared",
        )


#: SerialEM's extended-header flag (``nreal`` bit) for "tilt angle * 100", 2 bytes first in each
#: section's ``nint`` bytes (IMOD's mrc_format.txt, https://bio3d.colorado.edu/imod/doc/mrc_format.txt).
SERIALEM_TILT_FLAG = 1


def read_header_tilts(path) -> np.ndarray | None:
    """Tilt angles (degrees, one per view) stored in the extended header, or None when it has none.

    Read: SerialEM/IMOD extended headers (``exttyp`` "SERI" or unset, ``nint`` bytes per section,
    ``nreal`` flags; with flag 1 each section starts with the tilt angle * 100 as a 16-bit
    integer, in the file's byte order), and FEI extended headers ("FEI1"/"FEI2": "Alpha tilt").
    """
    with _open_header(path) as mrc:
        h = mrc.header
        nz = int(h.nz)
        exttyp = bytes(h.exttyp).strip(b"\0 ")
        ext = mrc.extended_header
        if ext is None or nz <= 0:
            return None
        if exttyp in (b"FEI1", b"FEI2"):
            try:
                tilts = np.asarray(mrc.indexed_extended_header["Alpha tilt"], dtype=np.float64)
            except (KeyError, ValueError, TypeError):
                return None
            return tilts[:nz].copy() if tilts.size >= nz else None
        order = "<" if h.mode.dtype.byteorder in ("<", "=", "|") else ">"
        # nint, nreal: 16-bit integers at bytes 128 and 130 of the header (IMOD's layout; inside
        # MRC2014's "extra" bytes, where mrcfile names no field)
        nint, flags = (int(v) for v in np.frombuffer(h.tobytes()[128:132], dtype=order + "i2"))
        if exttyp not in (b"SERI", b"") or not flags & SERIALEM_TILT_FLAG or nint < 2:
            return None
        raw = np.asarray(ext).tobytes()
        if len(raw) < nz * nint:
            return None
        sections = np.frombuffer(raw[: nz * nint], dtype=np.uint8).reshape(nz, nint)
        return sections[:, :2].copy().view(order + "i2")[:, 0].astype(np.float64) / 100.0


def set_header_tilts(mrc, tilts_deg) -> None:
    """Store one tilt angle per view (degrees, 0.01 deg steps) in the extended header of an open,
    writable ``mrcfile`` object, as SerialEM does (``exttyp`` "SERI", ``nint`` 2, ``nreal`` 1), so
    that IMOD and :func:`read_header_tilts` find them. Call before the data are written when the
    file is memory-mapped (the extended header moves the data)."""
    t = np.round(np.asarray(tilts_deg, dtype=np.float64).reshape(-1) * 100.0)
    if np.any(np.abs(t) > np.iinfo(np.int16).max):
        raise ValueError("tilt angles must be within +-327 degrees")
    order = "<" if mrc.header.mode.dtype.byteorder in ("<", "=", "|") else ">"
    mrc.set_extended_header(t.astype(order + "i2").view(np.uint8).view("V1"))
    mrc.header.exttyp = b"SERI"
    extra = bytearray(mrc.header.extra2.tobytes())
    extra[16:20] = np.array([2, SERIALEM_TILT_FLAG], dtype=order + "i2").tobytes()  # header bytes 128-131
    mrc.header.extra2 = bytes(extra)


#: IMOD's ``imodStamp`` (header bytes 152-155): the file was written by IMOD or a program that
#: follows its conventions (SerialEM), so ``imodFlags`` (bytes 156-159) is meaningful.
IMOD_STAMP = 1146047817
#: ``imodFlags`` bit 0: mode-0 bytes are signed.
IMOD_SIGNED_BYTES_FLAG = 1


def mode0_signed(header) -> bool:
    """Whether the bytes of a mode-0 MRC file with this (``mrcfile``) header are signed, by IMOD's
    rule (``readBytesSigned`` in IMOD's libcfshr ``b3dutil.c``; mrc_format.txt, "mode 0 = unsigned or
    signed bytes depending on flag in imodStamp, only unsigned bytes before IMOD 4.2.23"):

    * with IMOD's stamp (``imodStamp`` == 1146047817), ``imodFlags`` bit 0 decides: set, signed;
      clear, unsigned (SerialEM and IMOD byte stacks, 0-255);
    * without it, the header's min and max decide: signed when min < 0 and max < 128, or when
      min < 0, max >= 128 and -min > max - 128 (MRC2014's signed mode 0, as mrcfile writes it);
      otherwise unsigned.

    IMOD's environment override (READ_MODE0_SIGNED) is not applied. False for any other mode."""
    if int(header.mode) != 0:
        return False
    order = "<" if header.mode.dtype.byteorder in ("<", "=", "|") else ">"
    stamp, flags = (int(v) for v in np.frombuffer(header.tobytes()[152:160], dtype=order + "i4"))
    if stamp == IMOD_STAMP:
        return bool(flags & IMOD_SIGNED_BYTES_FLAG)
    dmin, dmax = float(header.dmin), float(header.dmax)  # NaN: every comparison fails, unsigned
    return dmin < 0.0 and (dmax < 128.0 or -dmin > dmax - 128.0)


def read_labels(path) -> list[str]:
    """The header labels of an MRC file (how it was made), without reading its data."""
    with _open_header(path) as mrc:
        return [str(label).strip() for label in mrc.get_labels()]


def read_stack(path, mmap: bool = True) -> np.ndarray:
    """Read an MRC image stack as ``(n_views, ny, nx)``, ``data[view, row, column]``.

    With ``mmap=True`` (default) the result is a read-only ``numpy.memmap`` onto the file, so a
    large stack is read lazily, view by view, by whoever indexes it; otherwise an in-memory copy.
    The data keep the file's dtype (int16/uint16/float16/float32), except that 8-bit (mode 0) data
    are uint8 or int8 as :func:`mode0_signed` says (mrcfile would read them int8 always, turning
    SerialEM's 128-255 negative). A single 2-D image is returned with a leading axis of length 1.
    """
    path = os.fspath(path)
    with _open_header(path):  # validates existence and header, with a clear message
        pass
    try:
        opener = mrcfile.mmap if mmap else mrcfile.open
        with opener(path, mode="r", permissive=False) as mrc:
            data = mrc.data
            if data is None:
                raise _bad(path, "MRC file holds no data")
            if np.iscomplexobj(data):
                raise _bad(path, f"complex MRC data (mode {int(mrc.header.mode)}) is not an image stack")
            if data.ndim == 2:
                data = data[np.newaxis]
            elif data.ndim != 3:
                raise _bad(path, f"expected a 2-D image or 3-D stack, got {data.ndim}-D data")
            dtype = data.dtype
            if int(mrc.header.mode) == 0 and not mode0_signed(mrc.header):
                dtype = np.dtype(np.uint8)
            if mmap:
                # A fresh read-only memmap owns its own mapping, so it stays valid after close.
                arr = np.memmap(
                    path,
                    dtype=dtype,
                    mode="r",
                    offset=int(mrc.header.nbytes) + int(mrc.header.nsymbt),
                    shape=data.shape,
                    order="C",
                )
            else:
                arr = np.array(data, copy=True).view(dtype)
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise _bad(path, f"could not read MRC data ({exc})") from exc
    return arr


class StreamedStack:
    """A memory-mapped stack whose views leave memory once read.

    Indexing (``stack[v]``, ``stack[v, r0:r1]``) returns an in-memory copy and then tells the
    kernel that this process no longer needs view ``v``'s mapped pages
    (``madvise(MADV_DONTNEED)``; they stay in the page cache, so reading them again is cheap).
    Without this, every page of a memory-mapped stack that was ever read counts in the process's
    resident memory until the mapping is closed: the whole stack, whatever the reconstruction's
    memory budget.
    """

    def __init__(self, data: np.memmap):
        self._data = data
        self.shape, self.dtype = data.shape, data.dtype
        self._view_bytes = int(np.prod(data.shape[1:])) * data.dtype.itemsize
        mm = getattr(data, "_mmap", None)
        self._mmap = mm if mm is not None and hasattr(mm, "madvise") else None
        # where the data start inside the mapping (numpy maps from an allocation-granularity boundary)
        self._start = int(getattr(data, "offset", 0)) % mmap.ALLOCATIONGRANULARITY

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        value = np.array(self._data[key], copy=True)
        view = key[0] if isinstance(key, tuple) else key
        if self._mmap is not None and isinstance(view, (int, np.integer)):
            begin = self._start + int(view) * self._view_bytes
            aligned = begin - begin % mmap.PAGESIZE
            with contextlib.suppress(OSError, ValueError):
                self._mmap.madvise(mmap.MADV_DONTNEED, aligned, begin + self._view_bytes - aligned)
        return value


class ViewSubset:
    """Some views of a stack, in the order given: ``subset[k]`` and ``subset[k, rows]`` (``k`` an
    integer) read view ``views[k]`` of ``stack`` (a numpy array, memmap or :class:`StreamedStack`);
    nothing is copied until read."""

    def __init__(self, stack, views):
        self._stack = stack
        self._views = np.asarray(views, dtype=np.int64).reshape(-1)
        if np.any((self._views < 0) | (self._views >= len(stack))):
            raise ValueError(f"views must lie in 0..{len(stack) - 1}, got {self._views.tolist()}")
        self.shape = (len(self._views), *tuple(stack.shape)[1:])
        self.dtype = stack.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def stack_view(self, k: int) -> int:
        """The (0-based) view of the whole stack that view ``k`` of this subset is."""
        return int(self._views[k])

    def __getitem__(self, key):
        view, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if not isinstance(view, (int, np.integer)):
            raise TypeError(f"a ViewSubset is read one view at a time (an integer), got {view!r}")
        return self._stack[(int(self._views[view]), *rest)]


def read_stack_streamed(path) -> StreamedStack:
    """:func:`read_stack` memory-mapped, wrapped in a :class:`StreamedStack`."""
    return StreamedStack(read_stack(path, mmap=True))


def first_non_finite_view(stack) -> int | None:
    """0-based index of the first view of ``stack`` (n_views, ny, nx) holding a NaN or infinite
    pixel, or None (an integer stack has none); reads one view at a time (a memory-mapped or
    streamed stack stays on disk)."""
    if np.dtype(stack.dtype).kind != "f":
        return None
    for v in range(len(stack)):
        if not np.all(np.isfinite(stack[v])):
            return v
    return None
