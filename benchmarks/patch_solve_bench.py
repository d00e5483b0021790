"""A local alignment's patch problems solved one at a time (``lax.map``, the CPU's path since
the commit after 0389d0b) against vmapped in memory-bounded chunks (the path before, and an
accelerator's), same problems, same process, taking turns.

    python -m benchmarks.patch_solve_bench [--repeats 3] [--markers 150,2000] [--out results.json]

Per case, a 4096 px field domed by 80 px (``simulate(bend_px=80, shrink=0.1)``), 0.5 px noise:
150 markers x 81 views (issue 15's speed case) and 2000 markers x 121 views. The problems are
those ``align_local`` (default options) hands ``core.local_solve.solve_patches``, captured once;
each side is called once to compile, then ``--repeats`` times, the sides taking turns, in float64
as ``align_local`` calls it (results at 95ffee1 timed these calls in float32). Also the
whole ``align_local`` call each way (the joint refinement included), warm, taking turns. The
solutions of the two sides are compared (largest difference of any solved value).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import environment, machine_slug

#: markers -> views
VIEWS = {150: 81, 2000: 121, 10000: 121}


def _spread(x) -> dict:
    return {"min": float(min(x)), "median": float(np.median(x)), "max": float(max(x)), "all": list(x)}


def case(n_markers: int, repeats: int) -> dict:
    import jax

    from lmalign_jax import align, simulate
    from lmalign_jax.core import local as local_module
    from lmalign_jax.core import local_solve
    from lmalign_jax.core.local import LocalOptions, align_local

    s = simulate(
        n_views=VIEWS[n_markers],
        n_markers=n_markers,
        image_size=(4096, 4096),
        noise_px=0.5,
        seed=0,
        bend_px=80.0,
        shrink=0.1,
    )
    result = align(s.observations)
    captured = {}
    original = local_solve.solve_patches

    def capture(*args):
        captured["args"] = args
        return original(*args)

    local_module.solve_patches = capture
    try:
        align_local(result, LocalOptions())
    finally:
        local_module.solve_patches = original
    fn, eliminate, config, x0, structure, capacity = captured["args"]
    sides = {"one_at_a_time": True, "vmapped_chunks": False}
    real = local_solve.one_at_a_time

    def solve(sequential):
        local_solve.one_at_a_time = lambda: sequential
        try:
            with jax.enable_x64(True):  # as align_local calls it: float64
                return local_solve.solve_patches(fn, eliminate, config, x0, structure, capacity)
        finally:
            local_solve.one_at_a_time = real

    def whole(sequential):
        local_solve.one_at_a_time = lambda: sequential
        try:
            return align_local(result, LocalOptions())
        finally:
            local_solve.one_at_a_time = real

    answers, first = {}, {}
    for name, sequential in sides.items():
        began = time.perf_counter()
        answers[name] = solve(sequential)
        first[name] = time.perf_counter() - began
        whole(sequential)  # compiled
    leaves = [jax.tree_util.tree_leaves(answers[name]) for name in sides]
    difference = max(
        float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
        for a, b in zip(*leaves, strict=True)
        if np.asarray(a).dtype.kind == "f"
    )
    solve_times = {name: [] for name in sides}
    whole_times = {name: [] for name in sides}
    for turn in range(repeats):
        order = list(sides) if turn % 2 == 0 else list(sides)[::-1]
        for name in order:
            began = time.perf_counter()
            solve(sides[name])
            solve_times[name].append(time.perf_counter() - began)
        for name in order:
            began = time.perf_counter()
            whole(sides[name])
            whole_times[name].append(time.perf_counter() - began)
    ratio = [a / b for a, b in zip(solve_times["vmapped_chunks"], solve_times["one_at_a_time"], strict=True)]
    whole_ratio = [
        a / b for a, b in zip(whole_times["vmapped_chunks"], whole_times["one_at_a_time"], strict=True)
    ]
    row = {
        "markers": n_markers,
        "views": VIEWS[n_markers],
        "problems": int(x0.a.shape[0]),
        "problem_shape": {"a": list(x0.a.shape[1:]), "b": list(x0.b.shape[1:]), "g": list(x0.g.shape[1:])},
        "max_solution_difference": difference,
        "first_call_s": first,
        "solve_s": {k: _spread(v) for k, v in solve_times.items()},
        "vmapped_over_one_at_a_time": _spread(ratio),
        "align_local_s": {k: _spread(v) for k, v in whole_times.items()},
        "align_local_vmapped_over_one_at_a_time": _spread(whole_ratio),
        "loadavg": os.getloadavg()[0],
    }
    print(json.dumps({k: row[k] for k in ("markers", "problems", "max_solution_difference")}), flush=True)
    print(" solve", {k: round(v["median"], 3) for k, v in row["solve_s"].items()}, "ratio", ratio, flush=True)
    print(" align_local", {k: round(v["median"], 3) for k, v in row["align_local_s"].items()}, flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markers", default="150,2000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    meta = environment(quick=False)
    rows = [case(int(m), args.repeats) for m in args.markers.split(",")]
    meta["loadavg_end"] = list(os.getloadavg())
    out = args.out or Path(__file__).parent / "results" / (
        f"{meta['date']}-{machine_slug(meta)}-patch-solve-{(meta['git']['commit'] or 'nogit')[:7]}.json"
    )
    out.write_text(
        json.dumps({"benchmark": "patch_solve_bench", "environment": meta, "cases": rows}, indent=1) + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
