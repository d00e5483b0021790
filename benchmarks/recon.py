"""Section 4: reconstruction throughput, by calling ``recon_bench.run`` (FBP vs skimage vs ASTRA CPU)."""

from __future__ import annotations

FULL = {"size": 512, "rows": 64, "views": 61, "skimage_slices": 2, "astra_slices": 4, "repeat": 3}
QUICK = {"size": 128, "rows": 8, "views": 31, "skimage_slices": 1, "astra_slices": 1, "repeat": 1}


def run(quick: bool, log=print) -> dict:
    from . import recon_bench

    settings = QUICK if quick else FULL
    out = recon_bench.run(**settings)
    out["settings"] = settings
    for r in out["results"]:
        log(f"  {r['method']:58s} {r['seconds_per_slice']:9.4f} s/slice {r['voxel_updates_per_s'] / 1e9:8.3f} Gvox-upd/s")
    return out
