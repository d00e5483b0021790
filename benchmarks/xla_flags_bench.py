"""XNNPACK fusion on (jaxlib's default) against off (``--xla_cpu_experimental_ynn_fusion_type=``).

    python -m benchmarks.xla_flags_bench [--repeats 3] [--out results.json]

From 96ebd89 to the commit after 0d2a945 the command line, tests and benchmarks turned XLA's
``__ynn_fusion`` off on jaxlib 0.10.2 to 0.11 (an upstream crash on rank-7 shapes). This measures
what that cost. It is no longer done: with the fusion off, test_cli_large's uncertainty hung in
XLA's CPU runtime (deterministically, 2026-12-06 11:20; with the fusion on it passed).

Each turn runs :data:`CHILD` in a fresh process per side, the sides taking turns (the
first side alternating), with ``XLA_FLAGS`` empty (fusion on) or ``--xla_cpu_experimental_ynn_
fusion_type=`` (off); the child imports no benchmark module (which would apply the flag). In each
child, per workload: the first call (tracing and compilation included) and the median of two more
calls:

* ``align``: ``lm.align`` of a simulated series, 61 views x 100 markers, 10% missing;
* ``uncertainty``: ``lm.uncertainty`` of that result (standard errors, leave-one-out);
* ``local``: ``align_local`` (default options) of a 4096 px field, 150 markers, 81 views, domed
  by 80 px (the issue-15 speed case);
* ``reconstruct``: ``recon.reconstruct`` (FBP) of a 61-view 512 x 512 float32 stack, 128 slices.

Answers are compared between the sides (align's RMS residual, the volume's largest difference).
Reported: min / median / max per side of the warm and first times, and off / on per turn.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLAG = "--xla_cpu_experimental_ynn_fusion_type="

#: One side's run, in a fresh process: JSON of each workload's first and warm seconds.
CHILD = """
import json, os, statistics, sys, time
import numpy as np
import lmalign_jax as lm
from lmalign_jax.core.local import LocalOptions, align_local
from lmalign_jax.recon import reconstruct

def timed(call):
    began = time.perf_counter(); out = call(); first = time.perf_counter() - began
    warm = []
    for _ in range(2):
        began = time.perf_counter(); out = call(); warm.append(time.perf_counter() - began)
    return out, {"first_s": first, "warm_s": statistics.median(warm)}

report = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
obs = lm.simulate(n_views=61, n_markers=100, missing_fraction=0.1, seed=0).observations
result, report["align"] = timed(lambda: lm.align(obs))
report["align"]["rms_px"] = float(result.rms_residual_px)
_, report["uncertainty"] = timed(lambda: lm.uncertainty(result))
s = lm.simulate(n_views=81, n_markers=150, image_size=(4096, 4096), noise_px=0.5, seed=0,
                bend_px=80.0, shrink=0.1)
field = lm.align(s.observations)
local, report["local"] = timed(lambda: align_local(field, LocalOptions()))
report["local"]["kept"] = int(sum(p.kept_local for p in local.patches))
rng = np.random.default_rng(0)
stack = rng.standard_normal((61, 512, 512)).astype(np.float32)
tilts = np.linspace(-60.0, 60.0, 61)
a, d = np.tile(np.eye(2), (61, 1, 1)), np.zeros((61, 2))
volume, report["reconstruct"] = timed(lambda: np.asarray(reconstruct(stack, a, d, tilts, 128)))
np.save(sys.argv[1], volume[::8])
print(json.dumps(report))
"""

WORKLOADS = ("align", "uncertainty", "local", "reconstruct")


def run_side(flags: str, volume_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if flags:
        env["XLA_FLAGS"] = flags
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(volume_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"loadavg": os.getloadavg()[0]}


def _spread(x) -> dict:
    return {"min": float(min(x)), "median": float(np.median(x)), "max": float(max(x)), "all": list(x)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from benchmarks.common import environment, machine_slug

    meta = environment(quick=False)
    sides = {"on": "", "off": FLAG}
    runs = {name: [] for name in sides}
    scratch = ROOT / "benchmarks" / "results" / ".xla_flags_volumes"
    scratch.mkdir(exist_ok=True)
    for turn in range(args.repeats):
        order = list(sides) if turn % 2 == 0 else list(sides)[::-1]
        for name in order:
            runs[name].append(run_side(sides[name], scratch / f"{name}.npy"))
            print(name, json.dumps(runs[name][-1]), flush=True)
        volumes = [np.load(scratch / f"{name}.npy") for name in sides]
        runs["off"][-1]["volume_max_difference"] = float(np.abs(volumes[0] - volumes[1]).max())
        runs["off"][-1]["volume_max_abs"] = float(np.abs(volumes[0]).max())
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    summary = {}
    for work in WORKLOADS:
        row = {}
        for key in ("warm_s", "first_s"):
            on = [r[work][key] for r in runs["on"]]
            off = [r[work][key] for r in runs["off"]]
            row[key] = {
                "on": _spread(on),
                "off": _spread(off),
                "off_over_on": _spread([b / a for a, b in zip(on, off, strict=True)]),
            }
        summary[work] = row
        print(work, {k: round(v["off_over_on"]["median"], 3) for k, v in row.items()}, flush=True)
    summary["align_rms_difference_px"] = max(
        abs(a["align"]["rms_px"] - b["align"]["rms_px"]) for a, b in zip(runs["on"], runs["off"], strict=True)
    )
    meta["loadavg_end"] = list(os.getloadavg())
    report = {"meta": meta, "repeats": args.repeats, "summary": summary, "runs": runs}
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"{meta['date']}-{machine_slug(meta)}-xla-flags-{(meta['git']['commit'] or 'nogit')[:7]}.json"
    )
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
