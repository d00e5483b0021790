"""Section 3: how time and memory grow with the number of markers (61 views, all markers in all views).

Every measurement runs in a fresh subprocess (``python -m benchmarks.scaling --worker ...``), so
its peak resident memory (VmHWM, the kernel's high-water mark of the process image; not
``ru_maxrss``, which Linux carries over from the parent across fork + exec) belongs to that
solve alone; tracemalloc cannot see XLA's buffers. Memory is reported as the peak RSS and as
its growth over the RSS just before the solve (imports, JAX runtime, data already resident),
separately for the first call (which includes XLA compilation, itself a few hundred MB) and for
the steady calls after it (the mark is reset in between by writing 5 to /proc/self/clear_refs).

Workers:
  align  -- our full ``align()`` (4 stages from the closed-form start): first call, then the
            median of steady runs; then (not counted in its memory) our joint stage alone from
            the 3-stage start, which it saves for the scipy worker.
  trf    -- ``scipy.optimize.least_squares(method="trf")`` with the exact sparse Jacobian on the
            joint problem from that saved start: the scipy route most favourable to scipy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .common import memory_cells  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _rss_peak_mb() -> float:
    """Peak RSS of this process image (VmHWM). Not ``ru_maxrss``: Linux carries that across
    fork + exec, so a worker would report its parent's peak whenever the parent was bigger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory(run_first, run_steady) -> dict:
    """Peak RSS of the first call (JIT compilation included) and, separately, of the steady calls."""
    before = _rss_now_mb()
    run_first()
    mem = {"rss_before_mb": before, "first_call_peak_rss_mb": _rss_peak_mb()}
    mem["first_call_rss_growth_mb"] = mem["first_call_peak_rss_mb"] - before
    if run_steady is not None and _reset_peak():
        before = _rss_now_mb()
        run_steady()
        mem.update(steady_rss_before_mb=before, steady_peak_rss_mb=_rss_peak_mb())
        mem["steady_rss_growth_mb"] = mem["steady_peak_rss_mb"] - before
    else:
        mem.update(steady_rss_before_mb=None, steady_peak_rss_mb=None, steady_rss_growth_mb=None)
    return mem


def worker_align(n_markers: int, repeats: int, start_path: str | None, joint_repeats: int) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import lmalign_jax

    from .common import floor_stats, median, scaling_dataset

    obs = scaling_dataset(n_markers).observations
    walls, results = [], []

    def once():
        t0 = time.perf_counter()
        results.append(lmalign_jax.core.align(obs))
        walls.append(time.perf_counter() - t0)

    def steady_runs():
        for _ in range(repeats):
            once()

    mem = _memory(once, steady_runs if repeats else None)
    res = results[-1]
    steady = results[1:] or results
    out = {
        "n_markers": n_markers, "n_views": obs.n_views, "n_obs": obs.n_observed, "n_free": res.n_free,
        "align_first_call_s": walls[0], "align_steady_s": median(walls[1:]) if repeats else None,
        "align_steady_runs_s": walls[1:], "status": res.status, "rms_px": res.rms_residual_px,
        **floor_stats(res.rms_residual_px, obs.n_observed, res.n_free),
        "stages": [{"stage": s.name, "iterations": s.iterations,
                    "seconds_steady": median([r.stages[k].seconds for r in steady])}
                   for k, s in enumerate(res.stages)],
        **mem,
    }  # fmt: skip
    if start_path:
        from .joint_problem import JointProblem
        from .peers import solve_ours, time_runner

        start = lmalign_jax.core.align(obs, stages=("initial", "main", "tilt"))
        np.savez(start_path, views=start.views, markers=start.markers)
        problem = JointProblem(obs, start.views, start.markers)
        sol, first, steady_s, _ = time_runner(solve_ours, problem, joint_repeats, budget_s=30.0)
        out["ours_joint"] = {"first_call_s": first, "steady_s": steady_s, "iterations": sol["iterations"],
                             "rms_px": problem.rms_px(sol["x"]), "status": sol["status"]}  # fmt: skip
    return out


def worker_trf(n_markers: int, repeats: int, start_path: str) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from .common import floor_stats, scaling_dataset
    from .joint_problem import JointProblem
    from .peers import solve_scipy_trf

    obs = scaling_dataset(n_markers).observations
    start = np.load(start_path)
    problem = JointProblem(obs, start["views"], start["markers"])
    runner = solve_scipy_trf(problem, "exact")
    times, sols = [], []

    def once():
        t0 = time.perf_counter()
        sols.append(runner())
        times.append(time.perf_counter() - t0)

    def steady_runs():
        for _ in range(repeats):
            once()

    mem = _memory(once, steady_runs if repeats else None)
    sol = sols[-1]
    rms = problem.rms_px(sol["x"])
    return {
        "first_call_s": times[0], "steady_s": float(np.median(times[1:])) if repeats else None,
        "iterations": sol["iterations"], "status": sol["status"], "rms_px": rms,
        **floor_stats(rms, problem.n_obs, problem.n_free),
        **mem,
    }  # fmt: skip


def _spawn(args: list[str], timeout: float) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--worker", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"scaling worker {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(sizes, trf_max_markers: int, repeats_for=None, log=print, timeout: float = 900.0) -> dict:
    """Run the workers for each marker count; ``repeats_for(n_markers)`` -> steady repeats."""
    repeats_for = repeats_for or (lambda n: 3 if n <= 3000 else 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            start = str(Path(tmp) / f"start-{n}.npz")
            reps = repeats_for(n)
            row = _spawn(
                [
                    "align",
                    "--markers",
                    str(n),
                    "--repeats",
                    str(reps),
                    "--start",
                    start,
                    "--joint-repeats",
                    str(reps),
                ],
                timeout,
            )
            row["us_per_obs_steady"] = (
                1e6 * (row["align_steady_s"] or row["align_first_call_s"]) / row["n_obs"]
            )
            log(f"  {n:6d} markers ({row['n_obs']:,} obs): align() {row['align_steady_s']:.3f} s steady "
                f"({row['us_per_obs_steady']:.2f} us/obs), first call {row['align_first_call_s']:.2f} s, "
                f"peak RSS steady / first call {' / '.join(memory_cells(row))} MB; "
                f"joint stage alone {row['ours_joint']['steady_s']:.3f} s; "
                f"RMS/floor {row['ratio_to_floor']:.4f}")  # fmt: skip
            if n <= trf_max_markers:
                trf_reps = 1 if n < 3000 else 0  # one ~minute-long run is enough past 1,000 markers
                row["scipy_trf"] = _spawn(
                    ["trf", "--markers", str(n), "--repeats", str(trf_reps), "--start", start], timeout
                )
                t = row["scipy_trf"]["steady_s"] or row["scipy_trf"]["first_call_s"]
                row["scipy_trf"]["time_ratio_vs_ours_joint"] = t / row["ours_joint"]["steady_s"]
                log(f"         scipy trf (exact sparse J): {t:.3f} s, "
                    f"{row['scipy_trf']['iterations']} evaluations, "
                    f"peak RSS steady / first call {' / '.join(memory_cells(row['scipy_trf']))} MB; "
                    f"RMS {row['scipy_trf']['rms_px']:.9f} "
                    f"vs ours {row['ours_joint']['rms_px']:.9f}")  # fmt: skip
            else:
                row["scipy_trf"] = {"skipped": f"not run above {trf_max_markers:,} markers "
                                               "(too slow: ~1 min at 3,000 markers, "
                                               "growing faster than linearly)"}  # fmt: skip
                log(f"         scipy trf skipped above {trf_max_markers:,} markers")
            rows.append(row)
    return {"n_views": 61, "sizes": list(sizes), "rows": rows}


def _worker_main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=("align", "trf"), required=True)
    ap.add_argument("--markers", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--joint-repeats", type=int, default=3)
    ap.add_argument("--start", default=None)
    a = ap.parse_args(argv)
    if a.worker == "align":
        out = worker_align(a.markers, a.repeats, a.start, a.joint_repeats)
    else:
        out = worker_trf(a.markers, a.repeats, a.start)
    print(json.dumps(out))


if __name__ == "__main__":
    _worker_main()
