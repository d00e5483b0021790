"""Benchmark of bead detection per view (``find_beads_large``) at 1k and 4k, on realistic simulated views.

Not a test. Run as::

    python -m benchmarks.find_beads_bench [--sizes 1024 4096] [--tilts 0 60] [--seeds 0]
        [--repeat 3] [--out r.json]

For each size, tilt (the view's tilt, no misalignment) and specimen seed one view is rendered by
:mod:`lmalign_jax.simulation.cryo` (8-px beads, one per ~100 x 100 px, ice, carbon edge,
textured specimen) at good dose (200 e/px) and at cryo dose (30 e/px). Timed (wall clock,
``repeat`` calls after one warm-up call, JIT compilation
excluded): :func:`lmalign_jax.track.find_beads_large` (binned detection above 2048 px, centring at
full resolution), and at 4k also unbinned :func:`find_beads` for comparison, and the simulator's
rendering of the view. Each row also records the detection's accuracy against the truth: the
fraction of clean beads found (inside, no bead within 1.5 diameters, not near ice or the edge),
the false detections, and the RMS centring error per axis. Writes
``benchmarks/results/<date>-<machine>-find-beads.json`` (or ``--out``) with the date, machine,
load, versions and commit (:func:`benchmarks.common.environment`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIAMETER = 8.0


def _times(fn, repeat: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _accuracy(pos, truth) -> dict:
    xy = truth.xy[0]
    clean = truth.visible[0] & (truth.nearest_px[0] > 1.5 * DIAMETER) & ~truth.near_feature[0]
    dist = np.linalg.norm(pos[:, None, :] - xy[None, :, :], axis=2)
    hit = dist.min(axis=0) < 2.0
    err = (pos[np.argmin(dist, axis=0)] - xy)[hit & clean]
    return {
        "clean_beads": int(clean.sum()),
        "found_fraction": float(np.mean(hit[clean])),
        "detections": int(pos.shape[0]),
        "false_fraction": float(np.mean(dist.min(axis=1) >= 2.0)),
        "rms_px": math.sqrt(float(np.mean(err**2))),
    }


def run(sizes, repeat: int, tilts=(0.0,), seeds=(0,)) -> list[dict]:
    from lmalign_jax.simulation.cryo import Imaging, cryo_specimen, render_stack
    from lmalign_jax.track import find_beads, find_beads_large

    rows = []
    for size in sizes:
        n_beads = int(size * size / 100.0**2)
        for seed in seeds:
            specimen = cryo_specimen(
                (size, size), n_beads=n_beads, bead_diameter_px=DIAMETER, thickness_px=100, seed=seed
            )
            a, d = np.eye(2)[None], np.zeros((1, 2))
            for tilt in tilts:
                for dose in (200.0, 30.0):
                    imaging = Imaging(dose=dose)
                    args = (specimen, imaging, a, d, [tilt], (size, size))
                    render = _times(partial(render_stack, *args, seed=seed), 1)
                    stack, truth = render_stack(*args, seed=seed)
                    view = stack[0]
                    sides = {"find_beads_large": partial(find_beads_large, view, DIAMETER)}
                    if size > 2048:
                        sides["find_beads (unbinned)"] = partial(find_beads, view, DIAMETER)
                    for name, fn in sides.items():
                        seconds = _times(fn, repeat)
                        pos, _ = fn()
                        row = {"size": size, "tilt_deg": float(tilt), "seed": seed, "dose_e_per_px": dose}
                        row |= {"method": name, "seconds": seconds, "median_s": float(np.median(seconds))}
                        row |= {"render_s": render[0], **_accuracy(pos, truth)}
                        print(
                            f"{size:5d} px, tilt {tilt:3.0f}, seed {seed}, dose {dose:5.0f}: {name:22s} "
                            f"{row['median_s']:.2f} s/view, {row['found_fraction']:.1%} of "
                            f"{row['clean_beads']} found, {row['false_fraction']:.1%} false, "
                            f"{row['rms_px']:.3f} px RMS"
                        )
                        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--tilts", type=float, nargs="+", default=[0.0, 60.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--out", help="results JSON (default benchmarks/results/<date>-<machine>-find-beads.json)"
    )
    args = parser.parse_args(argv)
    from benchmarks.common import environment, machine_slug

    meta = environment(quick=False)
    rows = run(args.sizes, args.repeat, args.tilts, args.seeds)
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / (f"{meta['date']}-{machine_slug(meta)}-find-beads.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "bead_diameter_px": DIAMETER, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
