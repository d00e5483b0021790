"""Whole-process time of ``lmalign align``: cold (fresh cache folder) and warm, with and without
the report figure, on the real BBa set (61 views x 23 markers) and a simulated 61 x 20,000-marker
series; beside IMOD's ``tiltalign`` when it can be run.

    python benchmarks/cli_bench.py                       # both sets, 5 warm runs each
    python benchmarks/cli_bench.py --sets bba --repeats 7
    python benchmarks/cli_bench.py --package-root /path/to/other/checkout   # time another tree
    python benchmarks/cli_bench.py --before /path/to/old/checkout [--before-path DIR]

Each run is a new ``python -m lmalign_jax align`` process (what a user waits for), timed from
start to exit. Warm runs reuse the cache folder a cold run filled: the median and the full range
are reported. With ``--before``, an older tree is timed in the same run, its warm runs
alternating with this tree's (same data, repeats, outputs and threads on both sides);
``--before-path`` puts a folder first on that side's ``PYTHONPATH`` (e.g. the dependency
versions a fresh install got then). The machine's load (``os.getloadavg``) is recorded before
every run, as timings on a shared machine mean little without it. The JSON goes to benchmarks/results/.

The ``resident_*`` variants start ``lmalign resident`` for the side first (its own runtime and
cache folders) and time the same command through it; the plain variants run with
``LMALIGN_RESIDENT=0``, each command in its own process. A ``--before`` tree without the
resident command cannot run those variants: choose ``--variants figure,no_figure`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, git_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "lmalign_jax" / "data" / "imod-bb"
LARGE = {"views": 61, "markers": 20000, "seed": 5}
VARIANTS = ("figure", "no_figure", "resident_figure", "resident_no_figure")
#: Variants run through a resident process (``lmalign resident start`` first, one per side and
#: variant, in its own runtime folder); the others run with ``LMALIGN_RESIDENT=0``. For those, the
#: ``cpu_s`` of a run is the caller's alone (the command's process is the resident one's child).
RESIDENT_VARIANTS = ("resident_figure", "resident_no_figure")


def _env(
    package_root: Path, cache: Path | None, first: Path | None = None, runtime: Path | None = None
) -> dict:
    path = os.pathsep.join([str(first)] * (first is not None) + [str(package_root)])
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=path, LMALIGN_RESIDENT="0")
    env.pop("LMALIGN_NO_COMPILATION_CACHE", None)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    if runtime is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime)
        env.pop("LMALIGN_RESIDENT")
    return env


def _resident(env: dict, action: str) -> str:
    """``lmalign resident start|stop`` for one side's environment; its output line."""
    done = subprocess.run(
        [sys.executable, "-m", "lmalign_jax", "resident", action, "--idle-minutes", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tempfile.gettempdir(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"lmalign resident {action}: {done.stderr.strip()}")
    return done.stdout.strip()


def _timed(cmd: list[str], env: dict, timeout: float) -> dict:
    """One process, timed start to exit. A non-zero exit is recorded with its last error line
    (a run that fails after aligning, e.g. while writing, still took that long)."""
    load = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    # cwd: a neutral folder, as 'python -m' puts the current folder before PYTHONPATH
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir()
    )
    seconds = time.perf_counter() - began
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    stages = [line.split("lmalign:", 1)[-1].strip() for line in done.stderr.splitlines() if "stage " in line]
    run = {
        "seconds": round(seconds, 3),
        "cpu_s": round(cpu, 3),
        "load_1min": round(load, 2),
        "stages": stages,
        "exit_code": done.returncode,
    }
    if done.returncode != 0:
        run["error"] = (done.stderr.strip().splitlines() or [""])[-1][-300:]
    return run


def _summary(runs: list[dict]) -> dict:
    times = [r["seconds"] for r in runs]
    cpu = [r["cpu_s"] for r in runs]
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": min(times),
        "max_s": max(times),
        "median_cpu_s": round(statistics.median(cpu), 3),
        "min_cpu_s": min(cpu),
        "max_cpu_s": max(cpu),
        "n": len(times),
        "runs": runs,
    }


def _inputs(which: str, work: Path, package_root: Path) -> list[str]:
    """The ``lmalign align`` arguments (before the outputs) for one data set."""
    if which == "bba":
        return [str(DATA / "BBa.resid"), "--tilts", str(DATA / "BBa.tlt"), "--image-size", "512", "512"]
    folder = work / "large"
    if not (folder / "synthetic.csv").exists():
        cmd = [
            sys.executable,
            "-m",
            "lmalign_jax",
            "simulate",
            "--out-dir",
            str(folder),
            "--views",
            str(LARGE["views"]),
            "--markers",
            str(LARGE["markers"]),
            "--seed",
            str(LARGE["seed"]),
        ]
        subprocess.run(
            cmd,
            env=_env(package_root, work / "sim-cache"),
            check=True,
            capture_output=True,
            timeout=1800,
            cwd=work,
        )
    return [
        str(folder / "synthetic.csv"),
        "--tilts",
        str(folder / "synthetic.rawtlt"),
        "--image-size",
        "2048",
        "2048",
    ]


def bench_set(
    which: str, sides: dict, work: Path, repeats: int, timeout: float, variants=VARIANTS, save=None
) -> dict:
    """Cold and warm runs, with and without the figure, for one data set, on every side
    (``name -> (package root, first PYTHONPATH folder or None)``), warm runs alternating between
    sides; ``save(out)`` after each case. Returns ``{side: {variant: {cold, warm}}}``."""
    first_root = next(iter(sides.values()))[0]
    args = _inputs(which, work, first_root)
    out: dict = {name: {} for name in sides}
    for label in variants:
        figure = label in ("figure", "resident_figure")
        resident = label in RESIDENT_VARIANTS
        envs, cmds, colds, warms = {}, {}, {}, {name: [] for name in sides}
        for name, (root, first) in sides.items():
            cache = Path(tempfile.mkdtemp(prefix=f"cache-{name}-{which}-{label}-", dir=work))
            # a short folder: a Unix socket's path is at most 107 bytes
            runtime = Path(tempfile.mkdtemp(prefix="lmb", dir="/tmp")) if resident else None
            cmds[name] = [
                sys.executable,
                "-m",
                "lmalign_jax",
                "align",
                *args,
                "--quiet",
                "--out-dir",
                str(work / f"out-{name}-{which}-{label}"),
            ] + ([] if figure else ["--no-figure"])
            envs[name] = _env(root, cache, first, runtime)
            if resident:
                print(f"{name:>6} {_resident(envs[name], 'start')}", flush=True)
            colds[name] = _timed(cmds[name], envs[name], timeout)
        for _ in range(repeats):
            for name in sides:
                warms[name].append(_timed(cmds[name], envs[name], timeout))
        if resident:
            for name in sides:
                _resident(envs[name], "stop")
        for name in sides:
            out[name][label] = {"cold": colds[name], "warm": _summary(warms[name])}
            w, cold = out[name][label]["warm"], colds[name]
            print(
                f"{name:>6} {which:>5} {label:<10} cold {cold['seconds']:7.2f} s   warm median "
                f"{w['median_s']:6.2f} s (range {w['min_s']:.2f}-{w['max_s']:.2f}; "
                f"CPU {w['median_cpu_s']:.2f} s; load {cold['load_1min']:.1f})",
                flush=True,
            )
        if save is not None:
            save(out)
    return out


def imports(package_root: Path, repeats: int, first: Path | None = None) -> dict:
    """The floor a process cannot go under: starting Python and importing jax, and the package."""
    out = {}
    probes = (
        ("python", "pass"),
        ("jax", "import jax"),
        ("launcher", "import lmalign_jax.cli.resident"),  # what a command through a resident process imports
        ("lmalign_jax", "import lmalign_jax.cli._main"),  # every command, as a process of its own
    )
    for name, code in probes:
        env = _env(package_root, None, first)
        runs = [_timed([sys.executable, "-c", code], env, 120) for _ in range(repeats)]
        out[name] = _summary(runs)
    return out


def tiltalign() -> dict:
    """IMOD's tiltalign on the same data, when it can be run here."""
    exe = shutil.which("tiltalign")
    if exe is None:
        return {"skipped": "tiltalign (IMOD) is not installed on this machine"}
    # The bundled BBa set holds IMOD's outputs (.resid, .xf, .tlt), not the .fid model tiltalign reads.
    return {"skipped": f"tiltalign found at {exe}, but the bundled BBa set has no .fid model to give it"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", default="bba,large", help="comma-separated: bba, large (default both)")
    p.add_argument("--repeats", type=int, default=5, help="warm runs per case (default 5)")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated: figure, no_figure, resident_figure, resident_no_figure (default all)",
    )
    p.add_argument(
        "--large-repeats", type=int, help="warm runs per case on the large series (default --repeats)"
    )
    p.add_argument("--large-variants", help="variants on the large series (default --variants)")
    p.add_argument(
        "--package-root",
        type=Path,
        default=ROOT,
        help="checkout whose lmalign_jax is timed (default this one)",
    )
    p.add_argument("--before", type=Path, help="an older checkout timed in the same run, alternating")
    p.add_argument("--before-path", type=Path, help="a folder put first on the --before side's PYTHONPATH")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/<date>-<host>-cli.json)")
    args = p.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = (set(sets) - {"bba", "large"}) | (set(variants) - set(VARIANTS))
    if unknown or args.repeats < 1:
        p.error(f"unknown sets or variants {sorted(unknown)}" if unknown else "--repeats must be at least 1")

    package_commit = subprocess.run(
        ["git", "-C", str(args.package_root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    meta = environment(quick=False) | {
        "git": git_state(),
        "package_root": str(args.package_root.resolve()),
        "package_commit": package_commit or None,
    }
    sides = {"after": (args.package_root, None)}
    if args.before is not None:
        before_commit = subprocess.run(
            ["git", "-C", str(args.before), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        sides = {"before": (args.before, args.before_path)} | sides
        meta |= {
            "before_root": str(args.before.resolve()),
            "before_commit": before_commit or None,
            "before_path": str(args.before_path) if args.before_path else None,
        }
    meta["load_start"] = os.getloadavg()
    report = {"benchmark": "cli_bench", "meta": meta, "large_series": LARGE, "tiltalign": tiltalign()}
    out = args.out or ROOT / "benchmarks" / "results" / f"{meta['date']}-{socket.gethostname()}-cli.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(part=None, which=None):
        """Rewrite the JSON after every case, so an interrupted run keeps what it measured."""
        if which is not None:
            report[which] = part
        meta["load_end"] = os.getloadavg()
        out.write_text(json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="cli-bench-") as work:
        report["imports"] = {
            name: imports(root, args.repeats, first) for name, (root, first) in sides.items()
        }
        for name, found in report["imports"].items():
            print(
                f"{name:>6} imports: "
                + ", ".join(
                    f"{k} {v['median_s']:.2f} s (CPU {v['median_cpu_s']:.2f} s)" for k, v in found.items()
                ),
                flush=True,
            )
        save()
        for which in sets:
            large = which == "large"
            repeats = args.large_repeats if (large and args.large_repeats) else args.repeats
            chosen = (
                [v.strip() for v in args.large_variants.split(",")]
                if (large and args.large_variants)
                else variants
            )
            bench_set(
                which,
                sides,
                Path(work),
                repeats,
                args.timeout,
                chosen,
                save=lambda part, w=which: save(part, w),
            )
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
