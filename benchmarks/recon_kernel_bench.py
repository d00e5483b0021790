"""Back-projection and resampling kernels of this tree against those of an earlier commit, in one run.

Not a test. Run as::

    python -m benchmarks.recon_kernel_bench [--before f2aa275] [--size 1024] [--rows 64] \
        [--thickness 256] [--views 61] [--repeat 5] [--out FILE]

The earlier commit's ``lmalign_jax/recon/_kernels.py`` is read with ``git show`` and imported
as a separate module, so both versions run in the same process on the same data, taking turns
(one call of each per round, ``repeat`` rounds after a warm-up); the median and range of each
are reported with the load average, and the largest difference between the two volumes
relative to the largest value (float32 precision: a few 1e-7 up to ~1e-4 where the white-noise
test data make interpolation sensitive to the last bit of the detector position).
Back-projection: one slab of ``rows`` rows, ``thickness`` slices, ``views`` views over +-60
degrees, G voxel-updates/s = views x size x rows x thickness / seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_kernels(commit: str):
    """The ``_kernels`` module of ``commit``, imported under another name."""
    src = subprocess.run(["git", "show", f"{commit}:lmalign_jax/recon/_kernels.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp())
    path = folder / f"kernels_{commit[:10]}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def turns(calls: dict, repeat: int) -> dict:
    import jax

    out = {name: jax.block_until_ready(f()) for name, f in calls.items()}
    times = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for _ in range(repeat):
        for name, f in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(f())
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {"outputs": out, "times": {k: sorted(v) for k, v in times.items()},
            "cpu": {k: sorted(v) for k, v in cpu.items()}}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="f2aa275")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--thickness", type=int, default=256)
    ap.add_argument("--views", type=int, default=61)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import environment
    from lmalign_jax.recon import _kernels as after

    before = load_kernels(args.before)
    meta = environment(quick=True)
    rng = np.random.default_rng(0)
    n, rows, nz, nv = args.size, args.rows, args.thickness, args.views
    q = jnp.asarray(rng.normal(size=(nv, n, rows)).astype(np.float32))
    th = np.deg2rad(np.linspace(-60, 60, nv))
    c, s = jnp.asarray(np.cos(th), jnp.float32), jnp.asarray(np.sin(th), jnp.float32)
    calls = {}
    for name, mod in (("before", before), ("after", after)):
        zc = mod.choose_z_chunk(nz, n, rows)
        calls[name] = lambda mod=mod, zc=zc: mod.backproject(q, c, s, nz=nz, nx=n, z_chunk=zc)
    res = turns(calls, args.repeat)
    a, b = (np.asarray(res["outputs"][k]) for k in ("before", "after"))
    updates = nv * n * rows * nz
    report = {"size": n, "rows": rows, "thickness": nz, "views": nv, "before_commit": args.before,
              "backproject": {k: {"seconds": v, "median_gvox_per_s": updates / v[len(v) // 2] / 1e9,
                                  "cpu_seconds": res["cpu"][k]} for k, v in res["times"].items()},
              "backproject_max_rel_diff": float(np.abs(a - b).max() / np.abs(a).max())}  # fmt: skip
    meta["loadavg_end"] = list(os.getloadavg())
    report["meta"] = meta
    for k, v in report["backproject"].items():
        t, cpu = v["seconds"], v["cpu_seconds"][len(v["seconds"]) // 2]
        mid = t[len(t) // 2]
        print(f"backproject {k:6s}: median {mid * 1e3:.0f} ms ({t[0] * 1e3:.0f}-{t[-1] * 1e3:.0f}), "
              f"{v['median_gvox_per_s']:.2f} G voxel-updates/s; CPU s median {cpu:.3f} "
              f"({updates / cpu / 1e9:.2f} G per CPU-s)")  # fmt: skip
    print(f"max |after - before| / max |before| = {report['backproject_max_rel_diff']:.1e}")
    print(f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
