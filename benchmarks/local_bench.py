"""Local alignment: every patch of a 4k field solved in one batched call.

    python -m benchmarks.local_bench [--repeats 5] [--out results.json]

A simulated series (``lmalign_jax.simulate``: 4096 x 4096 px, 150 markers over the central 70%,
81 views -60..60 degrees, 0.5 px noise) is aligned globally, then ``align_local`` solves IMOD's
default grid (700 px target patches, overlap 0.5, at least 8 markers, 3 per surface) with markers
held (Etomo's FixXYZCoordinates 1) and, separately, free, with the increments grouped as Etomo
does (linearly, the default) and in blocks of the same sizes, the two taking turns. Timed: the
batched solve of all patches (``LocalSolution.seconds``), first call (compilation included) and
the best of ``--repeats`` warm calls, and the whole ``align_local`` call (grid, problem assembly,
transforms, the marker refit).
IMOD's tiltalign solves the patches one after another; it cannot run here, so no ratio is measured.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import environment, machine_slug


def _plain(value):
    """numpy scalars as Python numbers, for json."""
    return value.item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from lmalign_jax import align, simulate
    from lmalign_jax.core.local import ETOMO_MODES, LocalOptions, align_local

    groupings = {
        "linear": ETOMO_MODES,
        "blocks": tuple((name, mode.replace("linear:", "group:")) for name, mode in ETOMO_MODES),
    }

    meta = environment(quick=False)
    series = simulate(n_views=81, n_markers=150, image_size=(4096, 4096), noise_px=0.5, seed=0)
    began = time.perf_counter()
    result = align(series.observations)
    rows = {"global_align_s": time.perf_counter() - began, "global_mean_px": result.mean_residual_px}
    for label, fixed in (("markers_fixed", True), ("markers_free", False)):
        options = {g: LocalOptions(fix_markers=fixed, modes=modes) for g, modes in groupings.items()}
        first, first_total, solves, totals, last = {}, {}, {}, {}, {}
        for g in groupings:
            began = time.perf_counter()
            first[g] = align_local(result, options[g])
            first_total[g] = time.perf_counter() - began
            solves[g], totals[g] = [], []
        for _ in range(args.repeats):  # the groupings take turns
            for g in groupings:
                began = time.perf_counter()
                last[g] = align_local(result, options[g])
                totals[g].append(time.perf_counter() - began)
                solves[g].append(last[g].seconds)
        for g, sol in last.items():
            key = label if g == "linear" else f"{label}_{g}"
            rows[key] = {
                "modes": dict(groupings[g]),
                "patches": list(sol.file.n_patches),
                "markers_per_patch": [p.n_markers for p in sol.patches],
                "first_solve_s": first[g].seconds,
                "first_total_s": first_total[g],
                "solve_s_best": min(solves[g]),
                "solve_s_all": solves[g],
                "total_s_best": min(totals[g]),
                "global_mean_px": sol.global_mean_px,
                "local_mean_px": sol.local_mean_px,
                "patches_kept_local": sum(p.kept_local for p in sol.patches),
            }
            print(key, json.dumps(rows[key], default=_plain))
    meta["loadavg_end"] = list(os.getloadavg())
    record = {
        "benchmark": "local_bench",
        "environment": meta,
        "series": {"views": 81, "markers": 150, "image": 4096},
        "results": rows,
    }
    out = args.out or Path(__file__).parent / "results" / f"{meta['date']}-{machine_slug(meta)}-local.json"
    out.write_text(json.dumps(record, indent=1, default=_plain) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
