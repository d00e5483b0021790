"""A local file with one X-axis tilt for every view: sheets read in the sheared frame against the
unsheared sheets, the exact reads and the global reconstruction, in the same run.

    python -m benchmarks.xtilt_local_bench [--repeats 5] [--angles -1.94 7] [--memory-gb 0]
        [--out results.json]

Aligned views (unit ``.xf``) of Gaussian beads drawn where IMOD's own BBa local alignment
(``tests/data/imod-local/BBalocal.xf``, 2 x 2 patches, BBa's 61 tilts) puts 60 beads with one
X-axis tilt ``a`` for every view (``core.local_apply.project_through_local(...,
xtilts_deg=a)``, tilt's formulas), 512 x 512 px; ``a`` -1.94 deg (BB's tilt.com, XAXISTILT 1.94
with an all-zero .xtilt) and 7 deg. Per angle, beads of sigma 1 px in a 128-slice volume (timed)
and of sigma 2 px in a 64-slice one (peaks only). Volumes, all FBP (ramp) with the same memory
budget into preallocated arrays (``--memory-gb``; unless given, ``recon.fbp.default_memory_bytes()``
as the command takes it, half the memory available at the start, at most 4 GB, resolved once):

* ``unsheared``: ``recon.local_backprojection.reconstruct_local`` at ``tolerance_px`` 0.1 (the
  sheets of ``recon.sheets`` in the volume's own frame: what the workflow ran before b5afa25,
  and still runs for X-axis tilts that differ by view; called directly, it takes no shear);
* ``sheared``: ``recon.xtilt_backprojection.reconstruct_local_x_tilted`` at 0.1 px (the sheets
  read in the frame ``(x, y, z + y tan a)``, what ``reconstruct_to_file`` runs since b5afa25);
* ``exact``: ``reconstruct_local`` at ``tolerance_px`` 0 (every voxel at its own position,
  tilt's reads; the peaks' reference);
* ``global`` (time only): ``recon.reconstruct`` of the same stack without the local file or the
  X-axis tilt, and ``global_x_tilted``: ``recon.xtilt_backprojection.reconstruct_x_tilted`` at
  ``a`` (what ``reconstruct`` runs for one X-axis tilt without a local file).

Peaks: each bead's value at the voxel nearest its true position, over the exact volume's at the
same voxel; median and interquartile range over the 60 beads (``peak_ratio``), and the located
peaks' distance from the truth (``simulation.phantom.locate_peaks``, voxels). Times: one warm-up
call per side (compilation), then ``--repeats`` calls each, the sides taking turns
(``benchmarks.recon_bench.interleaved_times``) so a change of the shared machine's load falls on
every side alike; min / median / max per side and the sheared / unsheared ratio per turn. The
load average is recorded at the start and the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import bead_views, environment, machine_slug
from benchmarks.local_recon_bench import BBA_LOCAL, BBA_TILTS
from benchmarks.recon_bench import interleaved_times

ROOT = Path(__file__).resolve().parents[1]
SIZE, N_BEADS, TOLERANCE_PX = 512, 60, 0.1
#: (bead sigma px, slices, timed) per angle
CASES = ((1.0, 128, True), (2.0, 64, False))


def draw(local, tilts, x_tilt, sigma, thickness, seed=0):
    """(stack (V, N, N) float32, beads (60, 3) centred px): Gaussian beads through ``local`` and
    one X-axis tilt ``x_tilt`` for every view; x, y within 200 px of the centre (inside BBa's
    patches), z within 0.3 of the thickness of the middle."""
    from lmalign_jax.core.local_apply import project_through_local

    rng = np.random.default_rng(seed)
    half_z = 0.3 * thickness
    beads = np.column_stack([rng.uniform(-200, 200, (N_BEADS, 2)), rng.uniform(-half_z, half_z, N_BEADS)])
    x_tilts = np.full(tilts.size, float(x_tilt))
    pos = project_through_local(local, beads, tilts, (SIZE, SIZE), xtilts_deg=x_tilts)  # (V, beads, 2)
    stack = bead_views(pos, SIZE, sigma)
    return stack, beads


def peak_values(volume: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """A (NZ, NY, NX) volume's values at the voxels nearest centred positions ``xyz`` (n, 3)."""
    nz, ny, nx = volume.shape
    index = np.round(xyz[:, ::-1] + [nz / 2, ny / 2, nx / 2] - 0.5).astype(int)
    return volume[index[:, 0], index[:, 1], index[:, 2]]


def _spread(x) -> dict:
    x = np.asarray(x, float)
    return {
        "median": float(np.median(x)),
        "q25": float(np.percentile(x, 25)),
        "q75": float(np.percentile(x, 75)),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def _times(x) -> dict:
    return {"min": float(min(x)), "median": float(np.median(x)), "max": float(max(x)), "all": list(x)}


def case(local, tilts, x_tilt, sigma, thickness, timed, repeats, memory) -> dict:
    from lmalign_jax.core.local_apply import local_sampling
    from lmalign_jax.recon import reconstruct
    from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local
    from lmalign_jax.recon.sheets import PatchGrid
    from lmalign_jax.recon.xtilt_backprojection import reconstruct_local_x_tilted, reconstruct_x_tilted
    from lmalign_jax.simulation.phantom import locate_peaks

    stack, beads = draw(local, tilts, x_tilt, sigma, thickness)
    x_tilts = np.full(tilts.size, float(x_tilt))
    grid = PatchGrid(local.n_patches, local.start, local.spacing, 1, (SIZE, SIZE))
    sampling = LocalSampling(*local_sampling(local, tilts, (SIZE, SIZE), xtilts_deg=x_tilts), grid=grid)
    a, d = np.tile(np.eye(2), (tilts.size, 1, 1)), np.zeros((tilts.size, 2))
    outs = {k: np.empty((thickness, SIZE, SIZE), np.float32) for k in ("unsheared", "sheared", "exact")}
    common = dict(memory_bytes=memory)
    sides = {
        "unsheared": lambda: reconstruct_local(
            stack,
            a,
            d,
            tilts,
            sampling,
            thickness,
            tolerance_px=TOLERANCE_PX,
            out=outs["unsheared"],
            **common,
        ),
        "sheared": lambda: reconstruct_local_x_tilted(
            stack,
            a,
            d,
            tilts,
            sampling,
            x_tilt,
            thickness,
            tolerance_px=TOLERANCE_PX,
            out=outs["sheared"],
            **common,
        ),
        "exact": lambda: reconstruct_local(
            stack, a, d, tilts, sampling, thickness, tolerance_px=0, out=outs["exact"], **common
        ),
    }
    row = {"x_tilt_deg": float(x_tilt), "sigma_px": sigma, "thickness": thickness, "timed": timed}
    if timed:
        out_g, out_x = np.empty_like(outs["exact"]), np.empty_like(outs["exact"])
        sides["global"] = lambda: reconstruct(stack, a, d, tilts, thickness, out=out_g, **common)
        sides["global_x_tilted"] = lambda: reconstruct_x_tilted(
            stack, a, d, tilts, x_tilt, thickness, out=out_x, **common
        )
        times = interleaved_times(sides, repeats)
        row["seconds"] = {k: _times(v) for k, v in times.items()}
        ratio = [s / u for s, u in zip(times["sheared"], times["unsheared"], strict=True)]
        row["sheared_over_unsheared"] = {
            "per_turn": ratio,
            **{k: v for k, v in _times(ratio).items() if k != "all"},
        }
        row["sheared_over_unsheared"]["of_medians"] = (
            row["seconds"]["sheared"]["median"] / row["seconds"]["unsheared"]["median"]
        )
    else:
        for fn in sides.values():
            fn()
    if np.array_equal(outs["sheared"], outs["unsheared"]):
        raise SystemExit(f"a = {x_tilt}: the sheared read fell back to the unsheared sheets")
    exact_peak = peak_values(outs["exact"], beads)
    row["exact_peak_median"] = float(np.median(exact_peak))
    row["peak_ratio"], row["located_distance_voxels"] = {}, {}
    for name in ("unsheared", "sheared"):
        row["peak_ratio"][name] = _spread(peak_values(outs[name], beads) / exact_peak)
    for name in ("unsheared", "sheared", "exact"):
        dist = locate_peaks(outs[name], beads)[1]
        row["located_distance_voxels"][name] = {
            "median": float(np.nanmedian(dist)),
            "max": float(np.nanmax(dist)),
        }
    return row


def _line(row) -> str:
    peaks = ", ".join(
        f"{k} {v['median']:.3f} ({v['q25']:.3f}-{v['q75']:.3f})" for k, v in row["peak_ratio"].items()
    )
    text = f"a {row['x_tilt_deg']:+.2f} deg, sigma {row['sigma_px']:g} px, {row['thickness']} thick: "
    text += f"peaks {peaks}"
    if row["timed"]:
        s = row["seconds"]
        text += "; s " + ", ".join(
            f"{k} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})" for k, v in s.items()
        )
        r = row["sheared_over_unsheared"]
        text += f"; sheared/unsheared {r['of_medians']:.3f} ({r['min']:.3f}-{r['max']:.3f})"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--angles", type=float, nargs="+", default=[-1.94, 7.0], help="X-axis tilts, deg")
    parser.add_argument(
        "--memory-gb", type=float, default=0.0, help="every side's budget (0, the default: the library's)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from lmalign_jax.io.imod_local import read_local_xf

    meta = environment(quick=False)
    tilts = np.loadtxt(BBA_TILTS)
    local = read_local_xf(BBA_LOCAL, tilts.size)
    from lmalign_jax.recon.fbp import default_memory_bytes

    memory = int(args.memory_gb * 1e9) or default_memory_bytes()  # resolved once: the same for every side
    rows = []
    for x_tilt in args.angles:
        for sigma, thickness, timed in CASES:
            rows.append(case(local, tilts, x_tilt, sigma, thickness, timed, args.repeats, memory))
            print(_line(rows[-1]), flush=True)
    meta["loadavg_end"] = list(os.getloadavg())
    record = {
        "benchmark": "xtilt_local_bench",
        "environment": meta,
        "problem": {
            "local_file": str(BBA_LOCAL.resolve().relative_to(ROOT)),
            "tilts": str(BBA_TILTS.resolve().relative_to(ROOT)),
            "image_px": [SIZE, SIZE],
            "views": int(tilts.size),
            "beads": N_BEADS,
            "tolerance_px": TOLERANCE_PX,
            "memory_bytes": memory,
            "memory_from": "--memory-gb" if args.memory_gb else "recon.fbp.default_memory_bytes()",
            "repeats": args.repeats,
            "filter": "ramp",
        },
        "rows": rows,
    }
    commit = (meta["git"]["commit"] or "unknown")[:7]
    out = args.out or (
        Path(__file__).parent / "results" / f"{meta['date']}-{machine_slug(meta)}-xtilt-local-{commit}.json"
    )
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
