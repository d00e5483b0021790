"""Beads reconstructed through a local alignment: sheet reads (``recon.sheets``) against every
voxel at its own position.

    python -m benchmarks.local_recon_beads [--sigma 1 2] [--out results.json]

Aligned views of Gaussian beads (``--sigma`` px) drawn where IMOD's own BBa local alignment
(``tests/data/imod-local/BBalocal.xf``, 2 x 2 patches, 61 tilts) puts 60 beads (tilt's formulas,
``core.local_apply.project_through_local``) in a 512 x 512 x 84 volume; reconstructed with
``reconstruct_local`` at ``tolerance_px`` 0 (exact), 0.05 and 0.1 (the default). Per tolerance:
the beads' median peak value, and their located positions (``simulation.phantom.locate_peaks``)
against the truth and against the exact volume's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
from pathlib import Path

from benchmarks.common import bead_views, environment, machine_slug
from benchmarks.local_recon_bench import BBA_LOCAL, BBA_TILTS

SIZE, THICKNESS, N_BEADS = 512, 84, 60
TOLERANCES = (0.0, 0.05, 0.1)


def run(sigma: float) -> dict:
    import numpy as np

    from lmalign_jax.core.local_apply import local_sampling, project_through_local
    from lmalign_jax.io.imod_local import read_local_xf
    from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local
    from lmalign_jax.recon.sheets import PatchGrid
    from lmalign_jax.simulation.phantom import locate_peaks

    tilts = np.loadtxt(BBA_TILTS)
    local = read_local_xf(BBA_LOCAL, tilts.size)
    rng = np.random.default_rng(0)
    beads = np.column_stack([rng.uniform(-200, 200, (N_BEADS, 2)), rng.uniform(-30, 30, N_BEADS)])
    pos = project_through_local(local, beads, tilts, (SIZE, SIZE))  # (V, beads, 2) centred
    stack = bead_views(pos, SIZE, sigma)
    grid = PatchGrid(local.n_patches, local.start, local.spacing, 1, (SIZE, SIZE))
    sampling = LocalSampling(*local_sampling(local, tilts, (SIZE, SIZE)), grid=grid)
    eye, zero = np.tile(np.eye(2), (tilts.size, 1, 1)), np.zeros((tilts.size, 2))
    out, exact_found = {}, None
    for tol in TOLERANCES:
        vol = reconstruct_local(stack, eye, zero, tilts, sampling, THICKNESS, tolerance_px=tol)
        found, dist = locate_peaks(vol, beads)
        idx = np.round(found + np.array([SIZE / 2, SIZE / 2, THICKNESS / 2]) - 0.5).astype(int)
        peak = vol[idx[:, 2], idx[:, 1], idx[:, 0]]
        if exact_found is None:
            exact_found = found
        out[str(tol)] = {
            "median_peak": float(np.median(peak)),
            "distance_to_truth_voxels": {"median": float(np.median(dist)), "max": float(dist.max())},
            "largest_shift_from_exact_xyz": np.abs(found - exact_found).max(axis=0).tolist(),
        }
    base = out[str(TOLERANCES[0])]["median_peak"]
    for v in out.values():
        v["peak_vs_exact"] = v["median_peak"] / base
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    meta = environment(quick=True)
    result = {f"sigma_{s:g}": run(s) for s in args.sigma}
    print(json.dumps(result, indent=1))
    record = {"benchmark": "local_recon_beads", "environment": meta, **result}
    out = (
        args.out
        or Path(__file__).parent / "results" / f"{meta['date']}-{machine_slug(meta)}-local-recon-beads.json"
    )
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
