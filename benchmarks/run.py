"""The lmalign_jax benchmark runner.

    python -m benchmarks [--quick] [--out benchmarks/results/<date>-<machine>.json]
    python benchmarks/run.py [--quick] [--out ...]

Sections (see README.md): 1 the paper's Tables 1-2 on paper-shaped synthetic data; 2 peers
(scipy, optimistix, optax) on the same joint problem from the same start; 3 scaling with the
number of markers (time and peak memory, one subprocess per measurement); 4 reconstruction
throughput (recon_bench). Writes a JSON report and prints markdown tables (also saved next to
the JSON as .md). Runs on whatever JAX's default device is; the device is recorded.
"""

from __future__ import annotations

import os

# BLAS threads fighting over a small, busy machine once slowed one factorisation 700x; one thread
# per process. Must happen before numpy (or anything importing it) is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.common import environment, fmt, machine_slug, memory_cells, seconds, table  # noqa: E402

SECTIONS = ("paper", "peers", "scaling", "recon")
MODE = {
    "quick": {
        "paper_repeats": 2, "peer_datasets": ("a",), "peer_repeats": 1, "peer_budget_s": 3.0,
        "align_repeats": 2,
        "scaling_sizes": (300,), "trf_max_markers": 300, "scaling_repeats": {300: 2},
    },
    "full": {
        "paper_repeats": 7, "peer_datasets": ("a", "b"), "peer_repeats": 5, "peer_budget_s": 10.0,
        "align_repeats": 7,
        "scaling_sizes": (30, 300, 3000, 30000), "trf_max_markers": 3000,
        "scaling_repeats": {30: 5, 300: 5, 3000: 3, 30000: 1},
    },
}  # fmt: skip
CHECK_Z = 4.0  # |RMS / floor - 1| within 4 of its statistical standard deviations


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- checks
def rms_checks(report: dict) -> list[dict]:
    """Our final RMS against the noise floor, wherever we solved the full model.

    RMS / floor scatters by 1 / sqrt(2 dof) around 1 (common.floor_stats; derivation in
    tests/helpers.FloorFit): 2.6% on data set (a) (642 points), 0.04% at 30,000 markers. Every
    solve is held to |z| < 4, so the tolerance is never tighter or looser than the data allow.
    """
    items = []
    for which, d in report.get("paper", {}).get("datasets", {}).items():
        for name, c in d["configs"].items():
            if "joint" in c["stages"]:
                items.append((f"paper ({which}) {name}", c))
    for which, d in report.get("peers", {}).get("datasets", {}).items():
        items.append((f"peers ({which}) align() end to end", d["align_end_to_end"]))
        for r in d["solvers"]:
            if r["solver"] == "lmalign_jax (ours)" and "skipped" not in r:
                items.append((f"peers ({which}) our joint stage", r))
    for r in report.get("scaling", {}).get("rows", []):
        items.append((f"scaling {r['n_markers']} markers align()", r))
    checks = []
    for where, s in items:
        ratio, sd = s["ratio_to_floor"], s["ratio_sd"]
        ok, rule = abs(ratio - 1) <= CHECK_Z * sd, f"|RMS/floor - 1| < {CHECK_Z:g} sd"
        checks.append({"where": where, "ratio_to_floor": ratio, "ratio_sd": sd, "rule": rule, "ok": bool(ok)})
    return checks


# ----------------------------------------------------------------------------- markdown
def md_header(report: dict) -> str:
    m = report["meta"]
    v = m["versions"]
    vers = ", ".join(
        f"{k} {v[k]}"
        for k in ("python", "jax", "jaxlib", "numpy", "scipy", "optimistix", "optax", "skimage", "astra")
        if v.get(k)
    )
    return (
        f"Run {m['timestamp']} on `{m['machine']}`: {m['cpu_model']}, {m['cpu_count']} logical CPUs; "
        f"JAX backend {m['jax_backend']} ({', '.join(m['device_kind'])}); "
        f"OPENBLAS_NUM_THREADS={m['env']['OPENBLAS_NUM_THREADS']}; "
        f"{'quick' if m['quick'] else 'full'} mode, {report['total_seconds']:.0f} s in all; "
        f"1-minute load average {_load(m.get('loadavg_start'))} at the start, "
        f"{_load(m.get('loadavg_end'))} at the end.\n\n{vers}.\n\n"
        f"lmalign_jax at commit {(m['git']['commit'] or 'unknown')[:10]} ({m['git']['subject']})"
        + (
            f", with uncommitted changes to {', '.join(m['git']['lmalign_jax_modified'])}"
            if m["git"]["lmalign_jax_modified"]
            else ""
        )
        + "."
    )


def _load(avg) -> str:
    return f"{avg[0]:.1f}" if avg else "?"


def md_paper(sec: dict) -> str:
    out = []
    for which, d in sec["datasets"].items():
        p = d["paper"]
        out.append(
            f"#### {p['table']} ({which}): {d['description']} (synthetic, shaped like the paper's data)\n"
        )
        out.append(f"{d['n_views']} views, {d['n_markers']} markers, {d['n_obs']:,} observations "
                   f"(missing {100 * d['missing_fraction']:.1f}%), sigma 0.5 px; "
                   f"full model: {d['n_free_model']:,} free "
                   f"parameters, noise floor {d['noise_floor_px']:.4f} px. "
                   f"Steady-state times (median of {sec['repeats']}); "
                   "each stage cell is time / iterations / RMS after the stage.\n")  # fmt: skip
        rows = []
        for name, c in d["configs"].items():
            cells = {
                s["stage"]: f"{seconds(s['seconds_steady'])} / {s['iterations']} / {s['rms_px']:.4f}"
                for s in c["stage_reports"]
            }
            rows.append([name, *(cells.get(s, "-") for s in ("initial", "main", "tilt", "joint")),
                         seconds(c["solve_seconds_steady"]), seconds(c["align_seconds_steady"]),
                         f"{c['rms_px']:.4f}", f"{c['ratio_to_floor']:.4f}"])  # fmt: skip
        out.append(table(["configuration", "initial", "main", "tilt estimate", "joint", "stages total",
                          "align() wall", "RMS (px)", "RMS / floor"], rows))  # fmt: skip
        first = next(c for c in d["configs"].values() if c["first_call_compiles"])
        paper = f"Paper (real data): {p['rms_px']} px in {p['seconds']} s with the initial stage"
        if "seconds_without_initial" in p:
            paper += f", {p['seconds_without_initial']} s without"
        if "imod_rms_px" in p:
            paper += f" (IMOD: {p['imod_rms_px']} px in {p['imod_seconds']} s)"
        ours_ps = d["configs"]["paper-style, with initial"]
        paper += (f". Ours, paper-style with the initial stage: {ours_ps['rms_px']:.4f} px in "
                  f"{seconds(ours_ps['align_seconds_steady'])} (align() wall, steady), "
                  f"{seconds(first['align_seconds_first_call'])} on the first call of the session "
                  "(JIT compilation of all four stages).")  # fmt: skip
        out.append("\n" + paper + "\n")
    return "\n".join(out)


def md_peers(sec: dict) -> str:
    out = []
    for which, d in sec["datasets"].items():
        out.append(f"#### Joint problem ({which}): {d['n_views']} views, {d['n_markers']} markers, "
                   f"{d['n_obs']:,} observations, "
                   f"{d['n_free']:,} free parameters; start RMS {d['start_rms_px']:.6f} px, "
                   f"noise floor {d['noise_floor_px']:.4f} px\n")  # fmt: skip
        rows = []
        for r in d["solvers"]:
            if "skipped" in r:
                rows.append(
                    [r["solver"], r["description"], "-", "-", "-", "-", "-", "-", f"skipped: {r['skipped']}"]
                )
                continue
            rows.append([r["solver"], r["description"], f"{r['rms_px']:.9f}", f"{r['ratio_to_floor']:.4f}",
                         fmt(r["iterations"]), seconds(r["first_call_s"]), seconds(r["steady_s"]),
                         f"{r['time_ratio_vs_ours']:.3g}x", r["status"]])  # fmt: skip
        a = d["align_end_to_end"]
        rows.append(["lmalign_jax align() end to end", "4 stages from the closed-form start",
                     f"{a['rms_px']:.9f}", f"{a['ratio_to_floor']:.4f}", "-",
                     seconds(a["first_call_s"]), seconds(a["steady_s"]), "-",
                     f"joint stage inside it: {seconds(a['joint_stage_s'])}, "
                     f"{a['joint_stage_iterations']} it"])  # fmt: skip
        out.append(table(["solver", "method", "final RMS (px)", "RMS / floor", "iterations", "first call",
                          "steady", "time / ours", "status"], rows))  # fmt: skip
        out.append("")
    return "\n".join(out)


def md_scaling(sec: dict) -> str:
    rows = []
    prev = None
    for r in sec["rows"]:
        growth = (
            "-"
            if prev is None
            else f"{r['align_steady_s'] / prev['align_steady_s']:.1f}x for {r['n_obs'] / prev['n_obs']:.0f}x"
        )
        prev = r
        st = " / ".join(seconds(s["seconds_steady"]) for s in r["stages"])
        t = r.get("scipy_trf", {})
        if "skipped" in t:
            trf = ["skipped", "-", "-"]
        else:
            tt = t["steady_s"] or t["first_call_s"]
            trf = [
                f"{seconds(tt)} ({t['iterations']} ev)",
                f"{t['time_ratio_vs_ours_joint']:.3g}x",
                " / ".join(memory_cells(t)),
            ]
        rows.append([fmt(r["n_markers"]), fmt(r["n_obs"]), seconds(r["align_steady_s"]),
                     seconds(r["align_first_call_s"]),
                     f"{r['us_per_obs_steady']:.2f}", growth, st, *memory_cells(r),
                     f"{r['ratio_to_floor']:.4f}",
                     f"{seconds(r['ours_joint']['steady_s'])} ({r['ours_joint']['iterations']} it)",
                     *trf])  # fmt: skip
    return table(["markers", "observations", "align() steady", "align() first call", "us / obs",
                  "time growth", "initial / main / tilt / joint",
                  "peak RSS MB, steady (growth)", "peak RSS MB, first call (growth)", "RMS / floor",
                  "our joint stage", "scipy trf joint",
                  "trf / ours", "trf peak RSS MB, steady / first call"], rows)  # fmt: skip


def md_recon(sec: dict) -> str:
    from benchmarks.recon_bench import markdown as recon_markdown

    return recon_markdown(sec)


def markdown(report: dict) -> str:
    parts = [md_header(report)]
    if "paper" in report:
        parts += [
            "### 1. The paper's Tables 1 and 2 (synthetic data shaped like the paper's)",
            md_paper(report["paper"]),
        ]
    if "peers" in report:
        parts += [
            "### 2. Peers on the joint problem (same data, start, gauge, stopping rule)",
            md_peers(report["peers"]),
        ]
    if "scaling" in report:
        parts += [
            f"### 3. Scaling: {report['scaling']['n_views']} views, every marker in every view",
            md_scaling(report["scaling"]),
        ]
    if "recon" in report:
        parts += ["### 4. Reconstruction (recon_bench)", md_recon(report["recon"])]
    if report.get("checks"):
        bad = [c for c in report["checks"] if not c["ok"]]
        parts.append(f"RMS checks: {len(report['checks']) - len(bad)} of {len(report['checks'])} pass" +
                     "".join(f"\n- FAIL {c['where']}: RMS/floor {c['ratio_to_floor']:.4f} ({c['rule']})"
                             for c in bad))  # fmt: skip
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="lmalign_jax benchmarks (see benchmarks/README.md)")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (~1-2 min)")
    ap.add_argument(
        "--out", default=None, help="JSON report path (default benchmarks/results/<date>-<machine>.json)"
    )
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}")
    mode = MODE["quick" if args.quick else "full"]

    import jax

    jax.config.update("jax_enable_x64", True)  # the peers work in float64, like align()'s default
    t_start = time.perf_counter()
    report: dict = {
        "meta": environment(args.quick),
        "mode": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in mode.items() if k != "scaling_repeats"
        },
    }
    log(f"lmalign_jax benchmarks ({'quick' if args.quick else 'full'}) on {report['meta']['cpu_model']}, "
        f"JAX devices {report['meta']['jax_devices']}")  # fmt: skip

    if "paper" in sections:
        from benchmarks import paper_tables

        log("1. paper-shaped data sets, staged align()")
        report["paper"] = paper_tables.run(repeats=mode["paper_repeats"], log=log)
    if "peers" in sections:
        from benchmarks import peer_bench

        log("2. peers on the joint problem")
        report["peers"] = peer_bench.run(mode["peer_datasets"], mode["peer_repeats"], mode["align_repeats"],
                                         mode["peer_budget_s"], log=log)  # fmt: skip
    if "scaling" in sections:
        from benchmarks import scaling

        log("3. scaling with the number of markers (subprocess per measurement)")
        reps = mode["scaling_repeats"]
        report["scaling"] = scaling.run(
            mode["scaling_sizes"], mode["trf_max_markers"], lambda n: reps.get(n, 1), log=log
        )
    if "recon" in sections:
        from benchmarks import recon

        log("4. reconstruction")
        report["recon"] = recon.run(args.quick, log=log)

    report["checks"] = rms_checks(report)
    report["meta"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["total_seconds"] = time.perf_counter() - t_start
    out = (
        Path(args.out)
        if args.out
        else ROOT
        / "benchmarks"
        / "results"
        / f"{report['meta']['date']}-{machine_slug(report['meta'])}{'-quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    log(f"wrote {out} and {out.with_suffix('.md')} ({report['total_seconds']:.0f} s)")
    return report


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


if __name__ == "__main__":
    main()
