"""MRC tomogram output that appears complete or not at all (numpy + mrcfile only; no JAX here).

* :func:`stream_volume` -- a volume written y slab by y slab from a background thread, in our
  (z, y, x) layout or IMOD ``tilt``'s (y, z, x), after checking that the disk has room for it;
  what ``lmalign reconstruct`` uses.
* :func:`create_volume` -- a context manager yielding a writable, memory-mapped float32 volume
  ``(nz, ny, nx)``: the data go to a temporary file beside ``path``, header statistics and voxel
  size are set on success, and the file is then renamed over ``path``; if the ``with`` block
  raises, the temporary file is removed.

A missing output folder, or a disk without room, raises
:class:`lmalign_jax.io.errors.InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import mrcfile
import numpy as np

from .atomic import replace_with, temporary_prefix
from .errors import InputError

__all__ = [
    "create_volume",
    "stream_volume",
    "VolumeWriter",
    "check_free_space",
    "format_bytes",
    "volume_bytes",
    "LAYOUTS",
]

#: The header's rms is float32: a deviation beyond this (values near float32's limits) is clipped to it.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _bad(path, problem: str) -> InputError:
    return InputError(path=path, line=None, problem=problem)


def _volume_stats(data: np.ndarray, chunk_elems: int = 1 << 24) -> tuple[float, float, float, float]:
    """min, max, mean, rms deviation from the mean, in float64, reading ``data`` in z chunks."""
    nz = data.shape[0]
    per_z = max(1, int(np.prod(data.shape[1:])))
    step = max(1, chunk_elems // per_z)
    dmin, dmax, s1, s2, n = np.inf, -np.inf, 0.0, 0.0, 0
    for z0 in range(0, nz, step):
        block = np.asarray(data[z0 : z0 + step], dtype=np.float64)
        dmin = min(dmin, float(block.min()))
        dmax = max(dmax, float(block.max()))
        s1 += float(block.sum())
        n += block.size
    mean = s1 / n
    for z0 in range(0, nz, step):
        block = np.asarray(data[z0 : z0 + step], dtype=np.float64) - mean
        flat = block.ravel()
        s2 += float(np.dot(flat, flat))
    return dmin, dmax, mean, float(np.sqrt(s2 / n))


@contextlib.contextmanager
def create_volume(path, shape, voxel_size, label: str | None = None) -> Iterator[np.ndarray]:
    """Create an MRC volume at ``path`` that appears complete or not at all.

    Parameters
    ----------
    path : str or os.PathLike
        The output file. An existing file is replaced only when the ``with`` block succeeds.
    shape : (nz, ny, nx)
        Volume shape in numpy order.
    voxel_size : float or (x, y, z)
        Voxel size in Angstrom (the pixel size times any binning).
    label : str, optional
        A header label saying how the volume was made (printable ASCII, at most 80 characters,
        as IMOD's ``header`` shows them).

    Yields
    ------
    numpy.memmap
        A writable float32 ``(nz, ny, nx)`` array onto a temporary file in the same directory,
        initialised to zero. On a clean exit the header statistics (min, max, mean, rms) are
        computed from the data in chunks, the voxel size is set, the file is flushed and renamed
        atomically onto ``path``. If the block raises, the temporary file is removed and ``path``
        is left untouched.
    """
    path, shape, vs, directory = _checked_volume_args(path, shape, voxel_size, label)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=directory)
    os.close(fd)
    mrc = None
    try:
        mrc = mrcfile.new_mmap(tmp, shape=shape, mrc_mode=2, overwrite=True)
        mrc.set_volume()
        if label is not None:
            mrc.add_label(label)
        yield mrc.data
        dmin, dmax, mean, rms = _volume_stats(mrc.data)
        mrc.header.dmin = np.float32(dmin)
        mrc.header.dmax = np.float32(dmax)
        mrc.header.dmean = np.float32(mean)
        mrc.header.rms = np.float32(min(rms, _FLOAT32_MAX))
        mrc.voxel_size = (float(vs[0]), float(vs[1]), float(vs[2]))
        mrc.flush()
        mrc.close()
        mrc = None
        replace_with(tmp, path)
    except BaseException:
        if mrc is not None:
            with contextlib.suppress(Exception):
                mrc.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


LAYOUTS = ("zyx", "imod-tilt")


def volume_bytes(shape) -> int:
    """Bytes of a float32 MRC volume of ``shape`` (nz, ny, nx), header included."""
    nz, ny, nx = (int(s) for s in shape)
    return 1024 + 4 * nz * ny * nx


def format_bytes(n: float) -> str:
    """``n`` bytes in a unit that shows it: GB, MB, kB, or bytes."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} bytes"


def check_free_space(
    path,
    shape,
    advice: str = "choose another --out folder, a larger --bin or a smaller --thickness",
    what: str = "the tomogram",
    axes: str = "voxels, NZ x NY x NX",
    copies: int = 1,
) -> None:
    """Raise :class:`InputError` naming ``path`` when the file system of its folder (or of the
    nearest folder above it that exists, for a folder made later) has less free space than
    ``copies`` float32 volumes of ``shape`` (NZ, NY, NX) need (the file is written sparse, so a
    full disk would otherwise show up only part-way through); ``what`` the file(s), ``advice``
    ends the message."""
    need = copies * volume_bytes(shape)
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    free = shutil.disk_usage(directory).free
    if need > free:
        raise _bad(
            path,
            f"{what} ({shape[0]} x {shape[1]} x {shape[2]} {axes}) needs "
            f"{format_bytes(need)} but {directory} has only {format_bytes(free)} free; {advice}",
        )


class _RunningStats:
    """min, max, mean and rms deviation over blocks, combined exactly (Chan et al. 1979)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = np.inf, -np.inf

    def add(self, block: np.ndarray) -> None:
        n = block.size
        if n == 0:
            return
        mean = float(block.sum(dtype=np.float64)) / n
        low, high = float(block.min()), float(block.max())
        planes = block.reshape(block.shape[0], -1)
        # one dot per z slice (no volume-sized temporaries): float32, 2.5x faster, unless a
        # slice's sum of squared deviations could overflow it (values beyond ~1e16 px), then float64
        wide = (high - low) ** 2 * planes.shape[1] > 1e37
        dtype = np.float64 if wide else np.float32
        m2 = 0.0
        for plane in planes:
            dev = plane.astype(dtype, copy=False) - dtype(mean)
            m2 += float(np.dot(dev, dev))
        self.min = min(self.min, low)
        self.max = max(self.max, high)
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.m2 / max(self.n, 1)))


def _pwrite_all(fd: int, array: np.ndarray, pos: int) -> None:
    """Write a C-contiguous array's bytes at ``pos`` without copying them (``os.pwrite`` may
    write less than asked for, e.g. above 2 GB on Linux)."""
    view = memoryview(array).cast("B")
    while len(view):
        done = os.pwrite(fd, view, pos)
        view, pos = view[done:], pos + done


class VolumeWriter:
    """Writes y slabs of a ``(nz, ny, nx)`` volume into an MRC file in a background thread.

    ``layout="zyx"``: the file holds ``nz`` sections of ``ny`` rows x ``nx`` columns (section k
    is the volume's z slice k, the default of ``lmalign reconstruct``). ``layout="imod-tilt"``:
    the layout IMOD's ``tilt`` writes, ``ny`` sections of ``nz`` rows x ``nx`` columns, file
    section j, row r being volume row j, slice ``nz - 1 - r`` (tilt's rows run against our z).
    """

    def __init__(self, fd: int, shape, layout: str, offset: int):
        self.shape = tuple(int(s) for s in shape)
        self.layout = layout
        self._fd, self._offset = fd, offset
        self._stats = _RunningStats()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = []
        self.rows_written = 0

    def _write(self, j0: int, block: np.ndarray) -> None:
        nz, ny, nx = self.shape
        rows = block.shape[1]
        block = np.ascontiguousarray(block, dtype="<f4")
        if self.layout == "zyx":
            for k in range(nz):
                pos = self._offset + 4 * (k * ny + j0) * nx
                _pwrite_all(self._fd, block[k], pos)
        else:
            tilt = np.ascontiguousarray(block[::-1].transpose(1, 0, 2))
            _pwrite_all(self._fd, tilt, self._offset + 4 * j0 * nz * nx)
            del tilt
        self._stats.add(block)
        self.rows_written += rows

    def write_rows(self, j0: int, block) -> None:
        """Queue rows ``j0 .. j0 + block.shape[1]`` of the volume (``block (nz, rows, nx)``);
        returns at once unless two earlier blocks are still being written."""
        if tuple(block.shape[::2]) != (self.shape[0], self.shape[2]) or not 0 <= j0 < self.shape[1]:
            raise ValueError(f"block of shape {block.shape} at row {j0} does not fit a volume {self.shape}")
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, int(j0), np.asarray(block)))

    def finish(self):
        """Wait for every queued block; return ``(min, max, mean, rms)``."""
        for fut in self._pending:
            fut.result()
        self._pending = []
        self._pool.shutdown(wait=True)
        s = self._stats
        return s.min, s.max, s.mean, s.rms

    def abort(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def stream_volume(
    path, shape, voxel_size, label: str | None = None, layout: str = "zyx"
) -> Iterator[VolumeWriter]:
    """Create an MRC volume at ``path``, written slab by slab, that appears complete or not at all.

    Like :func:`create_volume`, but the data never sit in memory (or in mapped pages) as a
    whole: the caller hands y slabs ``(nz, rows, nx)`` to :meth:`VolumeWriter.write_rows`, which
    writes them in a background thread (so disk writes overlap the next slab's computation)
    while keeping running statistics for the header. The file is created sparse under a
    temporary name beside ``path``, after checking the disk has room for it
    (:func:`check_free_space`), and renamed onto ``path`` only when the ``with`` block ends
    without an exception *and* every row was written; otherwise it is removed.

    ``shape`` is the volume's ``(nz, ny, nx)``; ``layout`` one of :data:`LAYOUTS` (see
    :class:`VolumeWriter`). The voxel size is given in the volume's (x, y, z) order and written
    in the file's axis order.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path, shape, vs, directory = _checked_volume_args(path, shape, voxel_size, label)
    check_free_space(path, shape)
    nz, ny, nx = shape
    file_shape = (nz, ny, nx) if layout == "zyx" else (ny, nz, nx)
    file_voxel = (vs[0], vs[1], vs[2]) if layout == "zyx" else (vs[0], vs[2], vs[1])
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=directory)
    writer = None
    try:
        closing, fd = fd, -1
        os.close(closing)
        with mrcfile.new_mmap(tmp, shape=file_shape, mrc_mode=2, overwrite=True) as mrc:
            mrc.set_volume()
            if label is not None:
                mrc.add_label(label)
            mrc.voxel_size = tuple(float(v) for v in file_voxel)
            header = mrc.header.copy()
            offset = int(mrc.header.nbytes) + int(mrc.header.nsymbt)
        fd = os.open(tmp, os.O_WRONLY)
        writer = VolumeWriter(fd, shape, layout, offset)
        yield writer
        dmin, dmax, mean, rms = writer.finish()
        if writer.rows_written != ny:
            raise RuntimeError(f"{path}: {writer.rows_written} of {ny} rows were written")
        # the statistics go into the header with one write at offset 0 (re-opening the file
        # memory-mapped to set them made closing it msync every data page: 0.5 s at 256 MB)
        header.dmin, header.dmax = np.float32(dmin), np.float32(dmax)
        header.dmean, header.rms = np.float32(mean), np.float32(min(rms, _FLOAT32_MAX))
        _pwrite_all(fd, np.ascontiguousarray(header).view(np.uint8), 0)
        closing, fd = fd, -1  # closed even if a signal interrupts the close: never closed twice
        os.close(closing)
        replace_with(tmp, path)
    except BaseException as exc:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abort()
        if fd >= 0:
            with contextlib.suppress(OSError):  # the interrupt, not a second close's EBADF, goes on
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise _bad(path, "the disk filled up while writing the tomogram; nothing was written") from None
        raise


def _checked_volume_args(path, shape, voxel_size, label):
    """(path str, shape (nz, ny, nx) ints, voxel size (3,) A, output directory) of a volume to
    write; ValueError for a bad shape, voxel size or label, InputError for a missing directory."""
    path = os.fspath(path)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"{path}: volume shape must be three positive sizes (nz, ny, nx), got {shape}")
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise ValueError(f"{path}: voxel size must be positive and finite, got {voxel_size!r}")
    if label is not None and (len(label) > 80 or not label.isascii() or not label.isprintable()):
        raise ValueError(f"{path}: an MRC label is at most 80 printable ASCII characters, got {label!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _bad(path, f"output directory {directory} does not exist")
    return path, shape, vs, directory
