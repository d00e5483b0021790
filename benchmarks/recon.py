"""Section 4: reconstruction throughput, by ``recon_bench.run_isolated`` (FBP vs skimage vs ASTRA CPU).

A fresh process pinned to one core runs every side on the same slices with the same repeats.
"""

from __future__ import annotations

FULL = {"size": 512, "rows": 32, "views": 61, "repeat": 3, "threads": 1}
QUICK = {"size": 128, "rows": 8, "views": 31, "repeat": 1, "threads": 1}


def run(quick: bool, log=print) -> dict:
    from . import recon_bench

    settings = QUICK if quick else FULL
    out = recon_bench.run_isolated(**settings)
    out["settings"] = settings
    for r in out["results"]:
        log(
            f"  {r['method']:58s} {r['seconds_per_slice']:9.4f} s/slice "
            f"{r['voxel_updates_per_s'] / 1e9:8.3f} Gvox-upd/s (median of {r['repeats']})"
        )
    return out
