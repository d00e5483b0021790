"""``lmalign reconstruct``: a tomogram from a raw tilt series and its alignment (weighted FBP).

The alignment is either IMOD's pair (``--xf`` raw -> aligned transforms, ``--tlt`` tilt angles)
or the ``.json`` record written by ``lmalign align`` (``--alignment``: each view's ``xf`` and
``tilt_deg``). Every input is checked before anything is computed; the tomogram is written
through :func:`lmalign_jax.io.mrc.create_volume`, so it appears complete or not at all.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..io import read_xf
from ..io.errors import InputError
from ..io.mrc import create_volume, read_stack, read_stack_header
from ..recon import filter_response, reconstruct
from ..report import read_record
from ._common import EXIT_OK, UsageError, _Formatter, _note, _warn
from .align import _read_tilt_file

FILTER_CHOICES = ("ramp", "shepp-logan", "hamming", "cosine", "hann", "none")


@dataclass
class Alignment:
    """Per-view transforms and tilts for the reconstruction, in the stack's view order."""

    xf_A: np.ndarray  # (n, 2, 2)
    xf_shift: np.ndarray  # (n, 2), unbinned pixels
    tilts_deg: np.ndarray  # (n,)
    source: str  # what to show the user
    xf_source: str  # the file the transforms came from
    tilt_source: str  # the file the tilts came from
    image_size: tuple[float, float] | None = None  # the image size the alignment was made for


def read_alignment_json(path: str) -> Alignment:
    """The per-view transforms and tilts of an ``lmalign align`` record (``--alignment``)."""
    record = read_record(path)
    if not record.converged:
        raise InputError(path, None, f"this alignment did not converge ({record.status}); it has no usable transforms")
    return Alignment(record.xf[:, :, :2], record.xf[:, :, 2], record.tilts_deg, path, path, path, record.image_size)


def read_alignment_files(xf_path: str, tlt_path: str) -> Alignment:
    """An IMOD ``.xf`` and a tilt file (``.tlt``/``.rawtlt``/``.mdoc``)."""
    a, d = read_xf(xf_path)
    tilts, _ = _read_tilt_file(tlt_path)
    return Alignment(a, d, np.asarray(tilts, dtype=np.float64), f"{xf_path} and {tlt_path}", xf_path, tlt_path)


def _check_args(args) -> None:
    if not math.isfinite(args.thickness) or args.thickness <= 0:
        raise UsageError(f"--thickness must be a positive number of (unbinned) pixels, got {args.thickness:g}")
    if args.bin < 1:
        raise UsageError(f"--bin must be at least 1, got {args.bin}")
    if args.alignment is not None and (args.xf is not None or args.tlt is not None):
        raise UsageError("give either --alignment FILE.json or --xf FILE --tlt FILE, not both")
    if args.alignment is None and (args.xf is None or args.tlt is None):
        if args.xf is None and args.tlt is None:
            raise UsageError("the alignment is required: --xf FILE --tlt FILE (IMOD), or --alignment FILE.json (from 'lmalign align')")
        raise UsageError("--xf and --tlt go together (or give --alignment FILE.json)")
    if args.radial is not None:
        cutoff, falloff = args.radial
        if not (0 < cutoff <= 0.5 and 0 <= falloff < math.inf):
            raise UsageError(f"--radial CUTOFF FALLOFF: need 0 < CUTOFF <= 0.5 and FALLOFF >= 0, in cycles/pixel of the binned "
                             f"data, got {cutoff:g} {falloff:g}")


def default_output(stack: str) -> str:
    """``<stack stem>.rec.mrc`` beside the stack."""
    return os.path.splitext(stack)[0] + ".rec.mrc"


def _check_output(path: str, inputs) -> None:
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a folder; give a file name such as {os.path.join(path, 'tomo.rec.mrc')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: folder {folder} is not writable")
    real = os.path.realpath(path)
    for p in inputs:
        if p and os.path.realpath(p) == real:
            raise UsageError(f"--out {path} would overwrite the input {p}")


class _CountingStack:
    """The stack as ``reconstruct`` sees it, ticking a progress bar as each view is read."""

    def __init__(self, data, tick):
        self._data, self._tick = data, tick
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        value = self._data[key]
        self._tick()
        return value


def _progress_bar(total: int, quiet: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc="lmalign: reconstructing", unit="step", file=sys.stderr, disable=True if quiet else None,
                leave=False, dynamic_ncols=True)


def reconstruction_label(thickness: float, binning: int, filter: str, radial=None) -> str:
    """The MRC header label of a tomogram made with these settings (``lmalign batch --resume``
    compares it to decide whether a tomogram is already made)."""
    label = f"lmalign_jax reconstruct: thickness {thickness:g} bin {binning} filter {filter}"
    return label + (f" radial {radial[0]:g} {radial[1]:g}" if radial else "")


def reconstruct_to_file(stack_path: str, alignment: Alignment, out_path: str, *, thickness: float, binning: int = 1,
                        filter: str = "ramp", radial=None, quiet: bool = False) -> dict:
    """Check ``alignment`` against the stack, reconstruct, write ``out_path`` atomically.

    Returns a summary dict (shape, voxel size, seconds). Raises ``InputError``/``UsageError`` for
    bad input before anything is written.
    """
    n_views, ny, nx, pixel = read_stack_header(stack_path)
    for name, count, where in (("transforms", alignment.xf_A.shape[0], alignment.xf_source),
                               ("tilt angles", alignment.tilts_deg.size, alignment.tilt_source)):
        if count != n_views:
            raise InputError(where, None, f"has {count} {name} but the stack {stack_path} has {n_views} sections (one per view)")
    if alignment.image_size is not None and (abs(alignment.image_size[0] - nx) > 0.5 or abs(alignment.image_size[1] - ny) > 0.5):
        ax, ay = alignment.image_size
        raise InputError(stack_path, None, f"images are {nx} x {ny} pixels but the alignment {alignment.source} was made for "
                                           f"{ax:g} x {ay:g}; reconstruct the stack the markers were picked on (use --bin to bin it)")
    if nx // binning < 1 or ny // binning < 1:
        raise UsageError(f"--bin {binning} is larger than the {nx} x {ny} images")
    try:
        filter_response(nx // binning, filter, radial)
    except ValueError as e:
        raise UsageError(f"--filter/--radial: {e}") from None
    nz = max(1, int(round(thickness / binning)))
    shape = (nz, ny // binning, nx // binning)
    if pixel is None:
        _warn(f"{stack_path}: the header has no pixel size; the tomogram's voxel size is written as {binning:g} A (1 A per pixel)")
        pixel = 1.0
    voxel = pixel * binning
    stack = read_stack(stack_path)
    if not quiet:
        _note(f"reconstructing {n_views} views of {nx} x {ny} px (bin {binning}, filter {filter}"
              + (f", radial {radial[0]:g} {radial[1]:g}" if radial else "") + f") into {shape[0]} x {shape[1]} x {shape[2]} voxels (NZ x NY x NX) ...")
    bar = _progress_bar(n_views + shape[1], quiet)
    tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)

    def progress(done, total):
        if bar is not None:
            bar.update(n_views + done - bar.n)

    start = time.perf_counter()
    try:
        with create_volume(out_path, shape, voxel, label=reconstruction_label(thickness, binning, filter, radial)[:80]) as vol:
            try:
                reconstruct(_CountingStack(stack, tick), alignment.xf_A, alignment.xf_shift, alignment.tilts_deg, thickness,
                            binning=binning, filter=filter, radial=None if radial is None else tuple(radial), out=vol,
                            progress=progress)
            except InputError:
                raise
            except ValueError as e:  # the reconstructor's checks (singular transforms, non-finite data)
                raise UsageError(f"cannot reconstruct {stack_path} with {alignment.source}: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    return {"shape": shape, "voxel_size_A": voxel, "seconds": time.perf_counter() - start, "n_views": n_views}


def run_reconstruct(args) -> int:
    _check_args(args)
    out = args.out or default_output(args.stack)
    radial = tuple(args.radial) if args.radial else None
    read_stack_header(args.stack)  # stack errors first: missing, not MRC
    alignment = read_alignment_json(args.alignment) if args.alignment else read_alignment_files(args.xf, args.tlt)
    _check_output(out, (args.stack, args.xf, args.tlt, args.alignment))
    info = reconstruct_to_file(args.stack, alignment, out, thickness=args.thickness, binning=args.bin, filter=args.filter,
                               radial=radial, quiet=args.quiet)
    nz, ny, nx = info["shape"]
    print(f" Wrote {out}: {nz} x {ny} x {nx} voxels (NZ x NY x NX, float32), voxel size {info['voxel_size_A']:g} A, "
          f"{info['n_views']} views, filter {args.filter}, bin {args.bin}, in {info['seconds']:.1f} s")
    return EXIT_OK


RECON_HELP = """\
Reconstruct a tomogram from a raw tilt-series stack and its alignment by weighted filtered
back-projection (JAX; CPU or GPU). Each raw view is resampled once into the aligned frame through
its .xf transform, filtered along x (perpendicular to the tilt axis) and back-projected.

The alignment is either IMOD's .xf (raw -> aligned, one line per view) with a tilt file
(.tlt/.rawtlt/.mdoc, line k = view k), or the .json record written by 'lmalign align'
(--alignment), which holds both. The stack must be the one the markers were picked on (same size
and view order); --bin averages it in B x B blocks first.

Writes an MRC file of float32 voxels (NZ, NY, NX), NZ = round(thickness / bin), voxel size = the
stack's pixel size x bin, complete or not at all. Voxel (k, j, i) is centred at
(i + 0.5 - NX/2, j + 0.5 - NY/2, k + 0.5 - NZ/2) x bin pixels from the specimen centre, so a
marker solved at (x, y, z) appears at that voxel. Densities are back-projected as they are (no
log, no contrast inversion).

Exit status: 0 success, 2 bad input (no output written).
"""

RECON_EXAMPLE = """\
examples:
  lmalign reconstruct TS_01.mrc --xf TS_01.xf --tlt TS_01.tlt --thickness 300 --bin 4 --out TS_01.rec.mrc
  lmalign reconstruct sim/synthetic.mrc --alignment sim/synthetic.json --thickness 64
  lmalign reconstruct BBa.st --xf BBa.xf --tlt BBa.tlt --thickness 200 --radial 0.35 0.05
"""


def _add_reconstruct(sub):
    p = sub.add_parser("reconstruct", help="reconstruct a tomogram from a raw stack and its alignment (FBP)",
                       description=RECON_HELP, epilog=RECON_EXAMPLE, formatter_class=_Formatter)
    p.add_argument("stack", metavar="STACK.mrc", help="the raw (unaligned) tilt-series stack, MRC")
    p.add_argument("--xf", metavar="FILE", help="IMOD .xf transforms, raw -> aligned, one line per view")
    p.add_argument("--tlt", metavar="FILE", help="tilt angles, degrees: .tlt/.rawtlt (line k = view k) or .mdoc")
    p.add_argument("--alignment", metavar="FILE.json", help="the .json record of 'lmalign align' instead of --xf/--tlt")
    p.add_argument("--thickness", type=float, required=True, metavar="NZ", help="tomogram thickness in unbinned pixels")
    p.add_argument("--bin", type=int, default=1, metavar="B", help="bin the stack B x B first (voxel = B pixels)")
    p.add_argument("--filter", choices=FILTER_CHOICES, default="ramp", help="ramp filter, optionally apodised")
    p.add_argument("--radial", nargs=2, type=float, metavar=("CUTOFF", "FALLOFF"),
                   help="IMOD's radial filter, cycles/pixel of the binned data (0-0.5): unchanged up to CUTOFF, then a Gaussian fall-off of sigma FALLOFF")
    p.add_argument("--out", metavar="TOMO.mrc", help="output tomogram; default: <stack stem>.rec.mrc beside the stack")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run_reconstruct)
