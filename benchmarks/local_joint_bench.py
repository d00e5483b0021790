"""Local alignment's kept patches refined together through tilt's blend, against each solved alone.

    python -m benchmarks.local_joint_bench [--seeds 11,23,42,7,101] [--no-real] [--no-large]
        [--before /path/to/old/checkout --speed-repeats 3] [--out results.json]

Issue #15 judges local alignment by the error of the aligned positions against the simulator's
noise-free ones (``simulation.local_truth.aligned_position_error``: every marker fitted through
the local file as IMOD's tilt applies it), relative to what the global model reaches on the same
series without its deformation (the rigid level). Per seed, 41 views x 60 markers, 0.3 px noise,
2048 px: a specimen that domes by up to 40 px and thins by 10% (``simulate(bend_px=40,
shrink=0.1)``), a 12 px per-view quadratic in-plane warp (``simulate(warp_px=12)``), the 3 px
conformal warp the tests use (``local_truth.warped_observations``), and the rigid series; each
through ``align_local`` with ``LocalOptions(joint=False)`` (every patch solved alone, as
tiltalign) and the default (kept patches refined together). Real data (unless ``--no-real``):
``compare_models(obs, "jou,local")`` on IMOD's four BB and midzone2 axes with each setting, with
the keeping test and with every patch kept: the leave-out gain (5 folds) and BIC. Time (unless
``--no-large``): ``align_local`` of a 4096 px field, 150 markers, 81 views, domed by 80 px,
both settings, the second call of each (compiled). With ``--before TREE``: the same 4096 px
series aligned locally with the default options by this tree and by ``TREE`` (an older checkout),
each in a fresh process, taking turns ``--speed-repeats`` times: the first call after the
patches' solve is compiled (the refinement's compilation included) and the second.
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

DATA = Path(__file__).resolve().parents[1] / "lmalign_jax" / "data"
REAL = {
    "BBa": ("imod-bb/BBa", (512, 512)),
    "BBb": ("imod-bb/BBb", (512, 512)),
    "midzone2a": ("imod-midzone2/midzone2a", (1950, 1024)),
    "midzone2b": ("imod-midzone2/midzone2b", (1950, 1024)),
}


def _series(kind: str, seed: int):
    """(observations, noise-free centred positions) of one simulated series."""
    from lmalign_jax import simulate
    from lmalign_jax.simulation.local_truth import warped_observations

    if kind == "conformal":
        return warped_observations(3.0, seed)
    deformation = {"domed": dict(bend_px=40.0, shrink=0.1), "warped": dict(warp_px=12.0), "rigid": {}}[kind]
    s = simulate(n_views=41, n_markers=60, noise_px=0.3, seed=seed, **deformation)
    return s.observations, s.clean_xy - s.observations.center


def simulated(seeds) -> list[dict]:
    from lmalign_jax import align
    from lmalign_jax.core.local import LocalOptions, align_local
    from lmalign_jax.simulation.local_truth import aligned_position_error

    rows = []
    for seed in seeds:
        obs, clean = _series("rigid", seed)
        rigid = align(obs)
        level = aligned_position_error(rigid, None, clean)
        for kind in ("domed", "warped", "conformal", "rigid"):
            obs, clean = _series(kind, seed)
            result = align(obs)
            row = {"seed": seed, "series": kind, "rigid_level_px": level}
            row["global_px"] = aligned_position_error(result, None, clean)
            for name, joint in (("alone", False), ("joint", True)):
                local = align_local(result, LocalOptions(joint=joint))
                row[f"{name}_px"] = aligned_position_error(result, local.file, clean)
                row[f"{name}_kept"] = int(sum(p.kept_local for p in local.patches))
            row["joint_free"] = int(local.joint_free)
            print(
                f"{kind:9s} seed {seed:3d}: global {row['global_px'] / level:5.2f}x, alone "
                f"{row['alone_px'] / level:5.2f}x, joint {row['joint_px'] / level:5.2f}x of the rigid level "
                f"({level:.4f} px), {row['joint_kept']} of {len(local.patches)} patches kept",
                flush=True,
            )
            rows.append(row)
    return rows


def real() -> list[dict]:
    from lmalign_jax import io
    from lmalign_jax.analysis.compare import compare_models
    from lmalign_jax.core.local_options import LocalOptions
    from lmalign_jax.observations import Observations

    rows = []
    for name, (stem, size) in REAL.items():
        tilts = io.read_tilts(DATA / f"{stem}.tlt")
        markers = io.resid_to_markers(io.read_resid(DATA / f"{stem}.resid"), None, path=f"{stem}.resid")
        xy = np.full((tilts.size, markers.xy.shape[1], 2), np.nan)
        n = min(tilts.size, markers.xy.shape[0])
        xy[:n] = markers.xy[:n]
        mask = np.isfinite(xy[..., 0])
        obs = Observations(np.nan_to_num(xy), mask, tilts, size)
        for keep in ("test", "every patch"):
            for joint in (False, True):
                options = LocalOptions(joint=joint, significance=3.0 if keep == "test" else None)
                local = compare_models(obs, "jou,local", local=options, folds=5).local
                row = {
                    "set": name,
                    "keep": keep,
                    "joint": joint,
                    "kept": local.n_kept,
                    "extra_parameters": local.extra_parameters,
                    "delta_bic": local.delta_bic,
                    "leave_out_gain_px2": local.leave_out_gain_px2,
                    "leave_out_gain_se_px2": local.leave_out_gain_se_px2,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def large() -> dict:
    from lmalign_jax import align, simulate
    from lmalign_jax.core.local import LocalOptions, align_local

    s = simulate(
        n_views=81, n_markers=150, image_size=(4096, 4096), noise_px=0.5, seed=0, bend_px=80.0, shrink=0.1
    )
    result = align(s.observations)
    out = {}
    for name, joint in (("alone", False), ("joint", True)):
        options = LocalOptions(joint=joint)
        align_local(result, options)  # compiled
        began = time.perf_counter()
        local = align_local(result, options)
        out[name] = {
            "total_s": time.perf_counter() - began,
            "patch_solve_s": local.seconds,
            "kept": int(sum(p.kept_local for p in local.patches)),
            "patches": len(local.patches),
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


#: Run in a fresh process from a tree's root: the 4096 px domed field's local alignment, first
#: (the patches' solve compiled beforehand) and second call with the default options.
SPEED_RUN = """
import json, os, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from lmalign_jax import align, simulate
from lmalign_jax.core.local import LocalOptions, align_local
s = simulate(n_views=81, n_markers=150, image_size=(4096, 4096), noise_px=0.5, seed=0,
             bend_px=80.0, shrink=0.1)
result = align(s.observations)
align_local(result, LocalOptions(joint=False))
began = time.perf_counter()
align_local(result, LocalOptions())
first = time.perf_counter() - began
began = time.perf_counter()
local = align_local(result, LocalOptions())
second = time.perf_counter() - began
kept = int(sum(p.kept_local for p in local.patches))
print(json.dumps({"first_s": first, "second_s": second, "patch_solve_s": local.seconds,
                  "joint_free": int(local.joint_free), "kept": kept}))
"""


def speed_against(before: Path, repeats: int) -> dict:
    """:data:`SPEED_RUN` from this tree and ``before``, taking turns, ``repeats`` times each."""
    import subprocess
    import sys

    trees = {"this": Path(__file__).resolve().parents[1], "before": before.resolve()}
    runs = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1")
            done = subprocess.run(
                [sys.executable, "-c", SPEED_RUN],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name].append(
                json.loads(done.stdout.strip().splitlines()[-1]) | {"loadavg": os.getloadavg()[0]}
            )
            print(name, json.dumps(runs[name][-1]), flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=before, capture_output=True, text=True
    ).stdout.strip()
    return {"before_commit": commit, "runs": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="11,23,42,7,101")
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-large", action="store_true")
    parser.add_argument("--before", type=Path, help="an older checkout to time the 4096 px case against")
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    meta = environment(quick=False)
    record = {"benchmark": "local_joint_bench", "environment": meta}
    record["simulated"] = simulated([int(s) for s in args.seeds.split(",")])
    if not args.no_real:
        record["real"] = real()
    if not args.no_large:
        record["large"] = large()
    if args.before is not None:
        record["speed_against_before"] = speed_against(args.before, args.speed_repeats)
    meta["loadavg_end"] = list(os.getloadavg())
    out = (
        args.out
        or Path(__file__).parent / "results" / f"{meta['date']}-{machine_slug(meta)}-local-joint.json"
    )
    out.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
