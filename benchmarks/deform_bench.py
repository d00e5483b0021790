"""Solve time of the deformation models (warp, shape) against the rigid jou model.

Not a test. Run as::

    python -m benchmarks.deform_bench [--views 61] [--markers 1000] [--repeat 3] [--out r.json]

One synthetic series (``--views`` x ``--markers``, noise 0.5 px) with a known warp
(``warp_px=12``), a known doming and thinning (``bend_px=40, shrink=0.1``), or neither; each
model is aligned on each series with ``lmalign_jax.align`` (all four stages, float64), once to
compile, then ``--repeat`` times, the models taking turns so that a change of load falls on all
of them. Recorded per (series, model): every repeat's seconds, each stage's seconds and
iterations of the last repeat, the RMS residual, and the RMS error of the predicted positions
against the simulator's noise-free ones (px).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import environment, machine_slug

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("jou", "warp", "shape")
SERIES = {"rigid": {}, "warped": {"warp_px": 12.0}, "domed": {"bend_px": 40.0, "shrink": 0.1}}


def prediction_error(result, series) -> float:
    obs = result.observations
    e = (obs.xy + result.residuals - series.clean_xy)[obs.mask]
    return float(np.sqrt(np.mean(e**2)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=61)
    ap.add_argument("--markers", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    import lmalign_jax as lm

    meta = environment(quick=False)
    rows = []
    for label, deformation in SERIES.items():
        series = lm.simulate(n_views=args.views, n_markers=args.markers, seed=1, **deformation)
        compile_s = {}
        for name in MODELS:
            began = time.perf_counter()
            lm.align(series.observations, model=name)
            compile_s[name] = time.perf_counter() - began
        times = {name: [] for name in MODELS}
        last = {}
        for _ in range(args.repeat):
            for name in MODELS:
                began = time.perf_counter()
                last[name] = lm.align(series.observations, model=name)
                times[name].append(time.perf_counter() - began)
        for name in MODELS:
            r = last[name]
            rows.append(
                {
                    "series": label,
                    "deformation": deformation,
                    "model": name,
                    "seconds": times[name],
                    "median_seconds": float(np.median(times[name])),
                    "first_call_seconds": compile_s[name],
                    "stages": [
                        {"stage": s.name, "seconds": s.seconds, "iterations": s.iterations} for s in r.stages
                    ],
                    "status": r.status,
                    "n_free": int(r.n_free),
                    "rms_residual_px": float(r.rms_residual_px),
                    "prediction_error_px": prediction_error(r, series),
                }
            )
            print(
                f"{label:7s} {name:6s} median {rows[-1]['median_seconds']:.2f} s "
                f"(first {compile_s[name]:.1f} s)  rms {r.rms_residual_px:.3f}  "
                f"error {rows[-1]['prediction_error_px']:.3f} px  {r.status}"
            )
    import os

    meta["loadavg_end"] = list(os.getloadavg())
    out = {
        "benchmark": "deform_bench",
        "views": args.views,
        "markers": args.markers,
        "repeat": args.repeat,
        "noise_px": 0.5,
        "meta": meta,
        "rows": rows,
    }
    path = args.out or ROOT / "benchmarks" / "results" / f"{meta['date']}-{machine_slug(meta)}-deform.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
