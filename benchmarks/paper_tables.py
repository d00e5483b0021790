"""Section 1: the paper's Tables 1 and 2, on synthetic data shaped like its experiment.

Jou et al. aligned a real series (107 views, -55..+53 degrees, 2,048 px images): (a) 6 markers
present in every view, 0.653 px in 9.18 s; (b) all 30 markers with gaps (~2,900 points),
0.895 px in 30.50 s with the initial stage and 78.57 s without. Their three stages are
initial / main / tilt estimate; lmalign_jax adds a joint stage that reaches the least-squares
optimum. We run every combination (with / without the initial stage, with / without the joint
stage) through the public ``align()`` and report the time and RMS after each stage.

Our data are synthetic with 0.5 px Gaussian noise, so the paper's residuals (real clicks) are
not a target: the yardstick for ours is the noise floor sigma sqrt(1 - n_free / (2 N_obs)),
with n_free the free parameters of the full (joint) model. Times are comparable in kind.
"""

from __future__ import annotations

import time

import jax

from .common import PAPER, SIGMA_PX, floor_stats, median, paper_dataset

CONFIGS = {
    "paper-style, with initial": ("initial", "main", "tilt"),
    "paper-style, without initial": ("main", "tilt"),
    "full, with initial": ("initial", "main", "tilt", "joint"),
    "full, without initial": ("main", "tilt", "joint"),
}
FIRST = "full, with initial"  # run first, after clearing JAX's caches: its first call compiles every stage


def run_config(obs, stages, repeats: int):
    import lmalign_jax

    walls, results = [], []
    for _ in range(1 + repeats):
        t0 = time.perf_counter()
        res = lmalign_jax.core.align(obs, stages=stages)
        walls.append(time.perf_counter() - t0)
        results.append(res)
    return walls, results


def run(repeats: int = 5, log=print) -> dict:
    import lmalign_jax

    out = {"sigma_px": SIGMA_PX, "repeats": repeats, "datasets": {}}
    for which in ("a", "b"):
        series = paper_dataset(which)
        obs = series.observations
        n_views, n_markers = obs.mask.shape
        n_free_model = None
        entry = {
            "description": PAPER[which]["note"],
            "n_views": n_views, "n_markers": n_markers, "n_obs": obs.n_observed,
            "missing_fraction": float(1 - obs.mask.mean()), "paper": PAPER[which], "configs": {},
        }  # fmt: skip
        jax.clear_caches()
        for name in [FIRST] + [c for c in CONFIGS if c != FIRST]:
            stages = CONFIGS[name]
            walls, results = run_config(obs, stages, repeats)
            res = results[-1]
            if not all(r.status == "converged" for r in results):
                log(f"  warning: {which} {name}: status {res.status}")
            if n_free_model is None:  # the full model's free parameters (joint stage)
                n_free_model = res.n_free
            steady = results[1:]
            stage_rows = []
            for k, rep in enumerate(res.stages):
                stage_rows.append({
                    "stage": rep.name, "iterations": rep.iterations, "accepted": rep.accepted,
                    "seconds_steady": median([r.stages[k].seconds for r in steady]),
                    "seconds_first_call": results[0].stages[k].seconds, "rms_px": rep.rms_residual_px,
                    "status": rep.status,
                })  # fmt: skip
            stats = floor_stats(res.rms_residual_px, obs.n_observed, n_free_model)
            entry["configs"][name] = {
                "stages": list(stages), "stage_reports": stage_rows,
                "solve_seconds_steady": float(sum(s["seconds_steady"] for s in stage_rows)),
                "align_seconds_steady": median(walls[1:]), "align_seconds_first_call": walls[0],
                "first_call_compiles": name == FIRST, "rms_px": res.rms_residual_px,
                "mean_residual_px": res.mean_residual_px, "status": res.status, **stats,
            }  # fmt: skip
            log(f"  ({which}) {name:30s} RMS {res.rms_residual_px:.4f} px "
                f"({stats['ratio_to_floor']:.4f} x floor), "
                f"align() {median(walls[1:]) * 1e3:.1f} ms steady, {walls[0]:.2f} s first call")  # fmt: skip
        entry["n_free_model"] = n_free_model
        entry["noise_floor_px"] = floor_stats(0.0, obs.n_observed, n_free_model)["noise_floor_px"]
        out["datasets"][which] = entry
    out["lmalign_jax_version"] = lmalign_jax.__version__
    return out
