"""Where the time of one ``lmalign reconstruct`` goes, phase by phase, in one run.

Not a test. Run as::

    python -m benchmarks.recon_profile [--sizes 512,1024] [--views 61] [--thickness 256] [--out FILE]

For each size a synthetic stack is made (as :mod:`benchmarks.recon_process_bench`) and the
command is run twice in a fresh child process each (the first fills JAX's persistent
compilation cache, as a user's first run would; the second is what a user's later runs see).
In the child, the command's own functions are wrapped with timers that wait for their results,
so the phases add up (and overlap, of the disk writes with compute, is removed: the writes are
timed in their background thread): Python + JAX + package imports; reading the views from the
memory-mapped stack; resampling + filtering (one call per view); back-projection (one call per
slab; the in-kernel transpose to volume order timed separately on a slab of the same shape);
copying each slab to the host; writing (the writer thread's seconds); the first call of each
kernel beyond its later calls (compilation or a cache load); and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
import jax
import lmalign_jax.cli._main as cli_main
t_import = time.perf_counter() - t_start
import numpy as np
from lmalign_jax.io import mrc_volume as io_mrc
from lmalign_jax.recon import _kernels, fbp

T = {}
FIRST = {}

def timed(name, fn, block=True):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        if block:
            jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        if name not in FIRST:
            FIRST[name] = dt
        T.setdefault(name, []).append(dt)
        return out
    return wrapper

fbp._finite_view = timed("read", fbp._finite_view, block=False)
fbp._bin_view = timed("bin", fbp._bin_view, block=False)
fbp._kernels = type("K", (), {})()
for name in dir(_kernels):
    if not name.startswith("__"):
        setattr(fbp._kernels, name, getattr(_kernels, name))
fbp._kernels.resample_filter_view = timed("resample_filter", _kernels.resample_filter_view)
fbp._kernels.backproject = timed("backproject", _kernels.backproject)
fbp._finish_slab = timed("to_host_and_queue", fbp._finish_slab, block=False)
io_mrc.VolumeWriter._write = timed("write_thread", io_mrc.VolumeWriter._write, block=False)
t0 = time.perf_counter()
rc = cli_main.main(sys.argv[1:])
t_main = time.perf_counter() - t0
total = time.perf_counter() - t_start
assert rc == 0, rc
import resource
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"import_s": t_import, "main_s": t_main, "total_s": total,
                  "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime, "peak_mb": ru.ru_maxrss / 1024,
                  "sums": {k: sum(v) for k, v in T.items()}, "calls": {k: len(v) for k, v in T.items()},
                  "first": FIRST, "later_median": {k: sorted(v[1:])[len(v[1:]) // 2] if len(v) > 1 else None
                                                    for k, v in T.items()}}))
"""


def child(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def transpose_time(nz: int, rows: int, nx: int, repeat: int = 5) -> float:
    """Seconds for the (z, x, rows) -> (z, rows, x) transpose of one slab, as the kernel does."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda a: jnp.transpose(a, (0, 2, 1)))
    a = jnp.ones((nz, nx, rows), jnp.float32)
    f(a).block_until_ready()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def phases(run: dict, n_slabs: int, t_transpose: float) -> dict:
    s, first, later = run["sums"], run["first"], run["later_median"]
    compile_s = sum(max(0.0, first[k] - (later[k] or first[k])) for k in ("resample_filter", "backproject"))
    out = {
        "import": run["import_s"],
        "read": s.get("read", 0.0) + s.get("bin", 0.0),
        "resample_filter": s["resample_filter"]
        - max(0.0, first["resample_filter"] - later["resample_filter"]),
        "backproject_without_transpose": s["backproject"]
        - max(0.0, first["backproject"] - (later["backproject"] or first["backproject"]))
        - n_slabs * t_transpose,
        "transpose": n_slabs * t_transpose,
        "to_host_and_queue": s.get("to_host_and_queue", 0.0),
        "write_thread": s.get("write_thread", 0.0),
        "compile_or_cache_load": compile_s,
    }
    accounted = sum(v for k, v in out.items() if k != "write_thread") + 0.0
    out["rest"] = run["total_s"] - accounted
    out["total"] = run["total_s"]
    out["cpu_user"], out["cpu_sys"] = run.get("cpu_user_s", 0.0), run.get("cpu_sys_s", 0.0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--views", type=int, default=61)
    ap.add_argument("--thickness", type=int, default=256)
    ap.add_argument("--out", help="write the JSON record here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import environment
    from benchmarks.recon_process_bench import make_stack
    from lmalign_jax.recon.fbp import plan_slabs

    meta = environment(quick=True)
    report = {"views": args.views, "thickness": args.thickness, "sizes": {}, "meta": meta}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            paths = make_stack(Path(tmp), size, args.views)
            out = str(Path(tmp) / "t.rec.mrc")
            cmd = ["reconstruct", paths["mrc"], "--xf", paths["xf"], "--tlt", paths["tlt"],
                   "--thickness", str(args.thickness), "--out", out, "-q"]  # fmt: skip
            first = child(cmd)
            warm = child(cmd)
            plan = plan_slabs(args.views, size, size, args.thickness)
            n_slabs = -(-size // plan.slab_rows)
            tt = transpose_time(args.thickness, plan.slab_rows, size)
            report["sizes"][size] = {
                "first_run": phases(first, n_slabs, tt), "warm_run": phases(warm, n_slabs, tt),
                "raw_warm": warm, "slab_rows": plan.slab_rows, "n_slabs": n_slabs}  # fmt: skip
            print(
                f"{size} x {size} x {args.views} -> thickness {args.thickness} "
                f"(slabs of {plan.slab_rows} rows)"
            )
            for name in ("first_run", "warm_run"):
                ph = report["sizes"][size][name]
                print(f"  {name:9s} " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
    report["meta"]["loadavg_end"] = list(os.getloadavg())
    print(f"load average at start {meta['loadavg_start']}, at end {report['meta']['loadavg_end']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
