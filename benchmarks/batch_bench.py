"""Throughput of many tilt series: batched solves vs ``align()`` one at a time vs the CLI per series.

    python -m benchmarks.batch_bench [--n 100] [--cli-n 10] [--mixed] [--out results.json]

Series are paper-sized (107 views x 30 markers, about 10% of the points missing in runs at high
tilt, 0.5 px noise) from ``lmalign_jax.simulate`` with seeds 0..n-1. Rows (series per second,
after compilation unless said otherwise):

- ``align() loop``: ``align()`` on each series in turn, in one warm process.
- ``align_batch``: all series in one ``align_batch`` call (same process, warm kernels); its
  answers are checked against the loop's.
- ``lmalign align per series``: one CLI process per series (what a shell loop does), with a
  warm persistent compilation cache; ``--cli-n`` (at least 10) series are timed.
- ``lmalign batch``: the whole set through the batch command in one process (warm cache).
  Both command-line sides write the same outputs: once with ``--no-figure`` on both, once
  with the .png report on both.
- ``align_batch over N host devices``: a fresh process started with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``, so the batch is sharded over
  one XLA device per core; its baseline is the align() loop in that same process.
- ``--mixed``: series whose shapes vary (101-107 views, 26-30 markers) in fresh processes,
  compilation included: ``align()`` compiles once per distinct shape, ``align_batch`` once per
  bucket.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

import numpy as np

VIEWS, MARKERS, MISSING = 107, 30, 0.1


def make_series(n: int, mixed: bool = False):
    """``n`` synthetic series (seeds 0..n-1); with ``mixed`` their shapes vary."""
    import lmalign_jax as lm

    out = []
    for seed in range(n):
        views, markers = VIEWS, MARKERS
        if mixed:
            rng = np.random.default_rng(1000 + seed)
            views, markers = int(rng.integers(101, VIEWS + 1)), int(rng.integers(26, MARKERS + 1))
        out.append(
            lm.simulate(
                n_views=views,
                n_markers=markers,
                missing_fraction=MISSING,
                tilt_range=(-55.0, 53.0),
                seed=seed,
            ).observations
        )
    return out


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def in_process(n: int) -> dict:
    """align() loop vs align_batch in this process, both warm."""
    import lmalign_jax as lm
    from lmalign_jax.batch import align_batch

    series = make_series(n)
    compile_align, _ = timed(lambda: lm.align(series[0]))
    compile_batch, _ = timed(lambda: align_batch(series[:1]))
    loop_s, singles = timed(lambda: [lm.align(o) for o in series])
    batch_s, batched = timed(lambda: align_batch(series))
    diff = max(
        max(np.abs(b.views - s.views).max(), np.abs(b.markers - s.markers).max())
        for b, s in zip(batched, singles, strict=True)
    )
    return {
        "n": n,
        "align_loop_s": loop_s,
        "align_batch_s": batch_s,
        "first_call_align_s": compile_align,
        "first_call_batch_s": compile_batch,
        "solve_share_loop_s": sum(st.seconds for r in singles for st in r.stages),
        "max_abs_difference": float(diff),
        "converged": [sum(r.converged for r in singles), sum(r.converged for r in batched)],
    }


def write_files(series, folder: Path) -> Path:
    """Each series as NAME.csv + NAME.rawtlt, and a list file naming them all."""
    from lmalign_jax import io

    lines = []
    for i, obs in enumerate(series):
        name = f"ts{i:03d}"
        ids = tuple(range(1, obs.n_markers + 1))
        io.write_markers_csv(
            folder / f"{name}.csv",
            io.MarkerSet(xy=obs.xy, mask=obs.mask, marker_ids=ids, image_size=(2048, 2048), source="bench"),
        )
        io.write_tlt(folder / f"{name}.rawtlt", obs.tilts_deg)
        lines.append(f"{name}.csv {name}.rawtlt 2048 2048")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def cli(args, env) -> float:
    seconds, proc = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "lmalign_jax", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"lmalign {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return seconds


def command_line(n: int, cli_n: int) -> dict:
    """``lmalign align`` per series vs ``lmalign batch``, each with a warm compilation cache.

    Both sides write the same outputs: first without the .png report (``--no-figure`` on
    both), then with it on both. ``cli_n`` series (at least 10) are timed one process each.
    """
    series = make_series(n)
    timed_n = min(max(cli_n, 10), n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        write_files(series, tmp / "in")
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"))
        env.pop("LMALIGN_NO_COMPILATION_CACHE", None)

        def one(i, out, figure):
            return ["align", tmp / "in" / f"ts{i:03d}.csv", "--tilts", tmp / "in" / f"ts{i:03d}.rawtlt",
                    "--image-size", 2048, 2048,
                    "--quiet", "--out-dir", tmp / out, *([] if figure else ["--no-figure"])]  # fmt: skip

        cli(one(0, "warm", True), env)  # fills the persistent cache
        cli(
            ["batch", tmp / "in" / "list.txt", "--out-dir", tmp / "warm-batch", "--no-figure", "--quiet"], env
        )  # the batch kernel's cache
        out = {"n": n, "cli_timed_series": timed_n}
        for figure, tag in ((False, "no_figure"), (True, "figure")):
            out[f"cli_align_per_series_{tag}_s"] = [
                cli(one(i, f"single-{tag}", figure), env) for i in range(timed_n)
            ]
            batch_args = ["batch", tmp / "in" / "list.txt", "--out-dir", tmp / f"batch-{tag}", "--quiet"]
            out[f"cli_batch_{tag}_s"] = cli(batch_args + ([] if figure else ["--no-figure"]), env)
            out[f"outputs_{tag}"] = {
                side: sorted({p.suffix for p in (tmp / f"{side}-{tag}").rglob("*") if p.is_file()})
                for side in ("single", "batch")
            }
    return out


def worker(kind: str, n: int) -> None:
    """One measurement in this fresh process: prints JSON. ``devices``: warm, same-shape series,
    the align() loop and align_batch over every host device; otherwise cold, mixed shapes."""
    import jax

    import lmalign_jax as lm
    from lmalign_jax.batch import align_batch

    if kind == "devices":
        r = in_process(n)
        print(
            json.dumps(
                {
                    "devices": len(jax.devices()),
                    "loop_s": r["align_loop_s"],
                    "batch_s": r["align_batch_s"],
                    "max_abs_difference": r["max_abs_difference"],
                }
            )
        )
        return
    series = make_series(n, mixed=True)
    shapes = {(o.n_views, o.n_markers) for o in series}
    if kind == "loop":
        seconds, results = timed(lambda: [lm.align(o) for o in series])
    else:
        seconds, results = timed(lambda: align_batch(series))
    print(
        json.dumps(
            {"seconds": seconds, "shapes": len(shapes), "converged": sum(r.converged for r in results)}
        )
    )


def mixed(n: int) -> dict:
    out = {}
    for kind in ("loop", "batch"):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.batch_bench", "--worker", kind, "--n", str(n)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def host_devices(n: int) -> dict:
    """In-process rows again in a fresh process with one XLA host device per core."""
    cores = os.cpu_count() or 1
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={cores}", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch_bench", "--worker", "devices", "--n", str(n)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="number of series")
    p.add_argument(
        "--cli-n",
        type=int,
        default=10,
        help="series timed through one 'lmalign align' process each (at least 10)",
    )
    p.add_argument("--no-cli", action="store_true", help="skip the command-line rows")
    p.add_argument(
        "--mixed", action="store_true", help="also time series of varying shapes, compilation included"
    )
    p.add_argument("--out", help="write the numbers as JSON here")
    p.add_argument("--worker", choices=("loop", "batch", "devices"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.n)
        return 0

    import jax

    from benchmarks.common import cpu_model, environment

    report = {"meta": environment(quick=False),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "device": str(jax.devices()[0]),
                          "jax": jax.__version__,
                          "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}}  # fmt: skip
    report["in_process"] = r = in_process(args.n)
    base = r["n"] / r["align_loop_s"]
    rows = [
        ("align() loop", r["n"], r["align_loop_s"], base),
        ("align_batch", r["n"], r["align_batch_s"], base),
    ]
    if (os.cpu_count() or 1) > 1:
        report["host_devices"] = d = host_devices(args.n)
        rows += [
            (
                f"align() loop, fresh process with {d['devices']} host devices",
                args.n,
                d["loop_s"],
                args.n / d["loop_s"],
            ),
            (
                f"align_batch over {d['devices']} host devices (same process)",
                args.n,
                d["batch_s"],
                args.n / d["loop_s"],
            ),
        ]
    if not args.no_cli:
        report["command_line"] = c = command_line(args.n, args.cli_n)
        for tag, label in (
            ("no_figure", "--no-figure on both sides"),
            ("figure", "with the .png report on both sides"),
        ):
            per = c[f"cli_align_per_series_{tag}_s"]
            shell = len(per) / sum(per)
            rows += [
                (f"lmalign align, one process per series, {label} "
                 f"(median {np.median(per):.2f} s, range {min(per):.2f}-{max(per):.2f} s)",
                 len(per), sum(per), shell),
                (f"lmalign batch, {label}", c["n"], c[f"cli_batch_{tag}_s"], shell),
            ]  # fmt: skip
    if args.mixed:
        report["mixed"] = mx = mixed(args.n)
        cold = args.n / mx["loop"]["seconds"]
        rows += [
            (
                f"mixed shapes, cold: align() loop ({mx['loop']['shapes']} shapes)",
                args.n,
                mx["loop"]["seconds"],
                cold,
            ),
            ("mixed shapes, cold: align_batch", args.n, mx["batch"]["seconds"], cold),
        ]
    print(
        f"\n{args.n} series of {VIEWS} views x {MARKERS} markers; "
        f"{report['machine']['cpu']}, {report['machine']['device']}"
    )
    print(
        f"align_batch vs align(): max |difference| {r['max_abs_difference']:.2e}; "
        f"converged {r['converged'][0]} / {r['converged'][1]}"
    )
    print(
        f"first calls (compilation): align() {r['first_call_align_s']:.1f} s, "
        f"align_batch {r['first_call_batch_s']:.1f} s\n"
    )
    print(
        "Baselines: the align() loop (in-process rows), 'lmalign align' per series (command-line rows), "
        "the cold loop (mixed)."
    )
    print("| method | series | seconds | series/s | vs its baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, count, secs, reference in rows:
        print(f"| {name} | {count} | {secs:.2f} | {count / secs:.2f} | {count / secs / reference:.2f}x |")
    report["rows"] = [
        {
            "method": name,
            "series": count,
            "seconds": secs,
            "series_per_s": count / secs,
            "vs_loop": count / secs / ref,
        }
        for name, count, secs, ref in rows
    ]
    report["meta"]["loadavg_end"] = list(os.getloadavg())
    m = report["meta"]
    print(
        f"\nload average (1, 5, 15 min) before {m['loadavg_start']}, after {m['loadavg_end']}; "
        f"commit {m['git']['commit']}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
