"""Time the misregistration covariance (``alignment_covariance``) beside ``uncertainty`` it runs with.

Simulated 61-view series of 30, 2,000 and 8,000 markers (views eliminated in the Schur
complement for the first, markers for the others), each solved once with ``align`` (not
timed). For each: the first call of ``uncertainty`` and of ``alignment_covariance`` (compile
+ run) and the median of ``--repeat`` later calls, and ``misregistration`` of 100,000 points.
Writes ``benchmarks/results/<date>-<host>-<cpu|gpu>-covariance.json`` (or ``--out``) with the
machine, load, versions and commit (``common.environment``).

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.covariance_bench [--sizes 30,2000,8000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from .common import environment, machine_slug


def _timed(call, repeat: int) -> tuple[float, float]:
    """(first call, median of ``repeat`` later calls), seconds."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    later = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        later.append(time.perf_counter() - start)
    return first, statistics.median(later)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="30,2000,8000", help="markers per 61-view series, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="results JSON (default under benchmarks/results/)")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    from lmalign_jax import align, misregistration, simulate, uncertainty
    from lmalign_jax.analysis import alignment_covariance

    meta = environment(quick=False)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        result = align(simulate(n_views=61, n_markers=n, missing_fraction=0.1, seed=0).observations)
        unc_first, unc_warm = _timed(lambda r=result: uncertainty(r), args.repeat)
        cov_first, cov_warm = _timed(lambda r=result: alignment_covariance(r), args.repeat)
        cov = alignment_covariance(result)
        points = np.random.default_rng(0).uniform(-1000, 1000, (100_000, 3))
        map_first, map_warm = _timed(lambda c=cov, p=points: misregistration(c, p), args.repeat)
        row = {
            "views": 61,
            "markers": n,
            "points": int(result.observations.n_observed),
            "uncertainty_first_s": unc_first,
            "uncertainty_warm_s": unc_warm,
            "covariance_first_s": cov_first,
            "covariance_warm_s": cov_warm,
            "misregistration_100k_points_first_s": map_first,
            "misregistration_100k_points_warm_s": map_warm,
        }
        rows.append(row)
        print(
            f"61 x {n:>5} markers: uncertainty {unc_first:6.1f} s first, {unc_warm:6.2f} s warm; "
            f"covariance {cov_first:6.1f} s first, {cov_warm:6.2f} s warm; "
            f"100k points {map_warm:.2f} s warm",
            flush=True,
        )
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"{meta['date']}-{machine_slug(meta)}-covariance.json"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
