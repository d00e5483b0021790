"""Whole-process time of ``lmalign align`` re-run after excluding views: what a user waits for
when a look at the residuals sends them back to drop a bad view or two.

    python benchmarks/rerun_bench.py [--repeats 2] [--before /path/to/old/checkout]

Per round, in a fresh compiled-cache folder: a cold ``align`` of IMOD's BBa set (61 views x 23
markers), then the same command with ``--exclude 5`` and with ``--exclude 5,6,7`` (60 and 58
views: the same padded sizes, so every compiled computation can be reused). Each run is a new
``python -m lmalign_jax`` process, timed from start to exit, with the machine's load recorded.
With ``--before``, an older tree runs the same rounds, alternating with this one. The JSON goes
to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, git_state, machine_slug  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "lmalign_jax" / "data" / "imod-bb"
STEPS = (("cold", []), ("exclude 5", ["--exclude", "5"]), ("exclude 5,6,7", ["--exclude", "5,6,7"]))


def one_round(tree: Path, out: Path) -> list[dict]:
    """The three runs of one round from ``tree``, in a fresh cache folder."""
    cache = Path(tempfile.mkdtemp(prefix="lmalign-rerun-cache-"))
    env = {k: v for k, v in os.environ.items() if k != "LMALIGN_NO_COMPILATION_CACHE"}
    env.update(
        XDG_CACHE_HOME=str(cache), LMALIGN_RESIDENT="0", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(tree)
    )
    base = [
        sys.executable,
        "-m",
        "lmalign_jax",
        "align",
        str(DATA / "BBa.resid"),
        "--tilts",
        str(DATA / "BBa.tlt"),
    ]
    base += ["--image-size", "512", "512", "--out-dir", str(out), "--no-figure", "--quiet"]
    rows = []
    try:
        for name, extra in STEPS:
            load = os.getloadavg()[0]
            began = time.perf_counter()
            done = subprocess.run(
                base + extra, cwd=tree, env=env, capture_output=True, text=True, check=False
            )
            seconds = time.perf_counter() - began
            if done.returncode:
                raise SystemExit(f"{tree}: {name} failed:\n{done.stderr[-2000:]}")
            rows.append({"step": name, "seconds": seconds, "load_before": load})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="rounds per tree (default 2)")
    p.add_argument("--before", type=Path, help="an older checkout timed in the same run, alternating")
    p.add_argument(
        "--out", type=Path, help="result JSON (default benchmarks/results/<date>-<host>-rerun.json)"
    )
    args = p.parse_args(argv)
    meta = environment(quick=False)
    meta["git"] = git_state()
    trees = {"this": ROOT}
    if args.before:
        trees["before"] = args.before.resolve()
        meta["before_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=trees["before"], capture_output=True, text=True, check=False
        ).stdout.strip()
    meta["load_start"] = os.getloadavg()
    rounds = {side: [] for side in trees}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for side, tree in trees.items():
                rows = one_round(tree, Path(scratch) / side)
                rounds[side].append(rows)
                print(side, ", ".join(f"{r['step']} {r['seconds']:.2f} s" for r in rows), flush=True)
    meta["load_end"] = os.getloadavg()
    summary = {
        side: {
            name: {
                "median_s": statistics.median(r[i]["seconds"] for r in runs),
                "range_s": [min(r[i]["seconds"] for r in runs), max(r[i]["seconds"] for r in runs)],
            }
            for i, (name, _) in enumerate(STEPS)
        }
        for side, runs in rounds.items()
    }
    report = {"meta": meta, "rounds": rounds, "summary": summary}
    out = args.out or ROOT / "benchmarks" / "results" / f"{meta['date']}-{machine_slug(meta)}-rerun.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
