"""Time the PNG report figure (``render_figure``) of a solved series, at three sizes.

The real BBa set (61 views x 23 markers) and simulated 61 x 5,000 and 61 x 20,000 series
(1.1 M points), each solved once with ``align`` (not timed); then ``render_figure`` is timed
(median of ``--repeat`` calls after a warm-up call that also pays matplotlib's import).

    OPENBLAS_NUM_THREADS=1 python benchmarks/figure_bench.py [--sizes 23,5000,20000] [--png-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from importlib.resources import files

import numpy as np


def solved_case(n_markers: int):
    """(result, file views, record) of BBa (n_markers == 23) or of a simulated 61-view series."""
    from lmalign_jax import align, simulate
    from lmalign_jax.report import build_record, expand_to_file_views
    from lmalign_jax.workflow.series import (
        observations_for_fit,
        read_series,
        select_views,
    )

    if n_markers == 23:
        folder = files("lmalign_jax") / "data" / "imod-bb"
        inputs = read_series(str(folder / "BBa.resid"), str(folder / "BBa.tlt"), image_size=(512, 512))
        sel = select_views(inputs, [])
        obs, ids = observations_for_fit(inputs, sel)
        view_index = sel.view_index
    else:
        obs = simulate(n_views=61, n_markers=n_markers, missing_fraction=0.1, seed=0).observations
        ids, view_index = list(range(1, n_markers + 1)), np.arange(obs.n_views)
    start = time.perf_counter()
    result = align(obs)
    solve = time.perf_counter() - start
    fv = expand_to_file_views(result, view_index, obs.tilts_deg)
    options = {
        "model": result.model,
        "rotation_deg": result.rotation_estimated_deg,
        "rotation_source": "estimated",
    }
    record = build_record(result, fv, marker_ids=ids, inputs={}, options=options)
    return result, fv, record, solve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes", default="23,5000,20000", help="markers per case, comma-separated (23 = real BBa)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--png-dir", help="also write each figure here, as fig-<markers>.png")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    import matplotlib.figure  # noqa: F401  (the import cost, reported apart)

    print(f"matplotlib import: {time.perf_counter() - t0:.2f} s")
    from lmalign_jax.report import render_figure

    for n in (int(s) for s in args.sizes.split(",")):
        result, fv, record, solve = solved_case(n)
        png = render_figure(result, fv, record, title=f"{n} markers")
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            render_figure(result, fv, record, title=f"{n} markers")
            times.append(time.perf_counter() - start)
        points = int(result.observations.mask.sum())
        print(
            f"61 views x {n:>6} markers ({points:>8} points): figure {statistics.median(times):6.2f} s "
            f"(min {min(times):.2f}), {len(png) / 1e3:.0f} kB; solve {solve:.1f} s",
            flush=True,
        )
        if args.png_dir:
            os.makedirs(args.png_dir, exist_ok=True)
            with open(os.path.join(args.png_dir, f"fig-{n}.png"), "wb") as f:
                f.write(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
