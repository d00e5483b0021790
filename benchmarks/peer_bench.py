"""Section 2: our joint stage against other solvers on identical data, start, gauge and stopping rule.

For each paper-shaped data set we run ``align(stages=("initial", "main", "tilt"))``; its answer
is the common starting point (the point a full ``align()`` hands to its joint stage, up to the
exact symmetry by which ``align()`` moves every answer to its reporting frame). Every solver
then minimises the same joint cost (``joint_problem.JointProblem``) from there, with the same
gauge and the same variable scaling; see ``peers.py`` for each solver and its tolerances.
"""

from __future__ import annotations

import time

from .common import floor_stats, median, paper_dataset
from .joint_problem import JointProblem
from .peers import PEERS, time_runner

OURS = "lmalign_jax (ours)"


def bench_problem(problem, repeats: int, peers=None, budget_s: float = 10.0, log=print) -> list[dict]:
    rows = []
    for name in peers or PEERS:
        factory, description, max_obs = PEERS[name]
        if max_obs is not None and problem.n_obs > max_obs:
            rows.append({"solver": name, "description": description,
                         "skipped": f"dense Jacobian: run only up to {max_obs:,} observations"})  # fmt: skip
            log(f"    {name:32s} skipped ({problem.n_obs:,} observations > {max_obs:,})")
            continue
        try:
            out, first, steady, times = time_runner(factory, problem, repeats, budget_s)
        except ImportError as e:  # an optional peer (optimistix) that is not installed
            rows.append({"solver": name, "description": description, "skipped": f"not installed ({e.name})"})
            log(f"    {name:32s} skipped: {e.name} is not installed")
            continue
        rms = problem.rms_px(out["x"])
        stats = floor_stats(rms, problem.n_obs, problem.n_free)
        rows.append({
            "solver": name, "description": description, "rms_px": rms, **stats,
            "iterations": out["iterations"], "status": out["status"],
            "first_call_s": first, "steady_s": steady, "steady_runs_s": times,
        })  # fmt: skip
        log(
            f"    {name:32s} RMS {rms:.9f}  {out['iterations']:6d} it  "
            f"first {first:8.3f} s  steady {steady:9.4f} s  {out['status']}"
        )
    ours = next((r for r in rows if r["solver"] == OURS and "skipped" not in r), None)
    for r in rows:
        if ours is not None and "skipped" not in r:
            r["time_ratio_vs_ours"] = r["steady_s"] / ours["steady_s"]
            r["cost_excess_vs_ours"] = (r["rms_px"] ** 2 - ours["rms_px"] ** 2) / ours["rms_px"] ** 2
    return rows


def run(
    datasets=("a", "b"),
    repeats: int = 5,
    align_repeats: int = 5,
    budget_s: float = 10.0,
    peers=None,
    log=print,
) -> dict:
    import lmalign_jax

    out = {"repeats": repeats, "datasets": {}}
    for which in datasets:
        obs = paper_dataset(which).observations
        start = lmalign_jax.core.align(obs, stages=("initial", "main", "tilt"))
        problem = JointProblem(obs, start.views, start.markers)
        log(
            f"  ({which}) {problem.n_obs:,} observations, {problem.n_free:,} free parameters, "
            f"start RMS {problem.rms_px(problem.x0):.6f} px"
        )
        rows = bench_problem(problem, repeats, peers, budget_s, log)
        # our full align() end to end (closed-form start, 4 stages), steady state, for reference
        walls, res = [], None
        for _ in range(1 + align_repeats):
            t0 = time.perf_counter()
            res = lmalign_jax.core.align(obs)
            walls.append(time.perf_counter() - t0)
        joint = next(s for s in res.stages if s.name == "joint")
        out["datasets"][which] = {
            "n_obs": problem.n_obs, "n_free": problem.n_free,
            "n_views": problem.n_views, "n_markers": problem.n_markers,
            "start_rms_px": problem.rms_px(problem.x0),
            **floor_stats(float("nan"), problem.n_obs, problem.n_free),
            "solvers": rows,
            "align_end_to_end": {"steady_s": median(walls[1:]), "first_call_s": walls[0],
                                 "rms_px": res.rms_residual_px,
                                 "joint_stage_s": joint.seconds, "joint_stage_iterations": joint.iterations,
                                 **floor_stats(res.rms_residual_px, obs.n_observed, res.n_free)},
        }  # fmt: skip
        for k in ("ratio_to_floor", "z_score"):
            out["datasets"][which].pop(k)
        log(f"    align() end to end: {median(walls[1:]) * 1e3:.1f} ms steady "
            f"(joint stage {joint.seconds * 1e3:.1f} ms), "
            f"RMS {res.rms_residual_px:.9f}")  # fmt: skip
    return out
