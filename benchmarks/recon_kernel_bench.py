"""Back-projection and resampling kernels of this tree against those of an earlier commit, in one run.

Not a test. Run as::

    python -m benchmarks.recon_kernel_bench [--before f2aa275] [--size 1024] [--rows 64] \
        [--thickness 256] [--views 61] [--tilt 60] [--repeat 5] [--reproject] [--out FILE]

The earlier commit's ``lmalign_jax/recon/_kernels.py`` is read with ``git show`` and imported
as a separate module, so both versions run in the same process on the same data, taking turns
(one call of each per round, ``repeat`` rounds after a warm-up); the median and range of each
are reported with the load average, and the largest difference between the two volumes
relative to the largest value (float32 precision: a few 1e-7 up to ~1e-4 where the white-noise
test data make interpolation sensitive to the last bit of the detector position).
Back-projection: one slab of ``rows`` rows, ``thickness`` slices, ``views`` views over +-60
degrees, G voxel-updates/s = views x size x rows x thickness / seconds.

With ``--reproject`` it times instead, on the same slab and taking turns: one back-projection
(FBP's kernel), the SIRT re-projector of this tree (gathers, ``_kernels.reproject``) and the one
SIRT had before (``jax.linear_transpose`` of the back-projector, a scatter-add), and one SIRT
iteration ``x + C A^T R (b - A x)`` with each, reporting each as a multiple of the
back-projection and the largest difference between the two re-projections.
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
    ap.add_argument("--tilt", type=float, default=60.0, help="views span +-tilt degrees")
    ap.add_argument("--reproject", action="store_true", help="time the SIRT re-projector instead")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.reproject:
        return reprojection(args)
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import environment
    from lmalign_jax.recon import _kernels as after

    before = load_kernels(args.before)
    meta = environment(quick=True)
    rng = np.random.default_rng(0)
    n, rows, nz, nv = args.size, args.rows, args.thickness, args.views
    q = jnp.asarray(rng.normal(size=(nv, n, rows)).astype(np.float32))
    th = np.deg2rad(np.linspace(-args.tilt, args.tilt, nv))
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


def reprojection(args) -> int:
    """The ``--reproject`` case (module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import environment
    from lmalign_jax.recon import _kernels
    from lmalign_jax.recon.sirt import project

    meta = environment(quick=True)
    rng = np.random.default_rng(0)
    nd = nx = args.size
    rows, nz, nv = args.rows, args.thickness, args.views
    th = np.deg2rad(np.linspace(-args.tilt, args.tilt, nv))
    c, s = jnp.asarray(np.cos(th), jnp.float32), jnp.asarray(np.sin(th), jnp.float32)
    q = jnp.asarray(rng.normal(size=(nv, nd, rows)).astype(np.float32))
    vol = jnp.asarray(rng.normal(size=(nz, rows, nx)).astype(np.float32))
    z_chunk = _kernels.choose_z_chunk(nz, nx, rows)
    taps = _kernels.reprojection_taps(c, nx)

    def backproject(views):
        return _kernels.backproject(views, c, s, nz=nz, nx=nx, z_chunk=z_chunk)

    def scatter_project(volume):  # what sirt.project was before the gathers
        zeros = jnp.zeros((nv, nd, rows), volume.dtype)
        return jax.linear_transpose(backproject, zeros)(volume)[0]

    def gather_project(volume):
        return project(volume, c, s, nd=nd, taps=taps)

    ones_views = jnp.ones((nv, nd, rows), jnp.float32)
    r_w = 1.0 / jnp.maximum(gather_project(jnp.ones_like(vol)), 1e-6)
    c_w = 1.0 / jnp.maximum(backproject(ones_views), 1e-6)

    def iteration(project_fn):
        return jax.jit(lambda x, b: x + c_w * backproject(r_w * (b - project_fn(x))))

    step_gather, step_scatter = iteration(gather_project), iteration(scatter_project)
    jit_gather, jit_scatter, jit_bp = jax.jit(gather_project), jax.jit(scatter_project), jax.jit(backproject)
    calls = {
        "backproject": lambda: jit_bp(q),
        "reproject_gather": lambda: jit_gather(vol),
        "reproject_scatter": lambda: jit_scatter(vol),
        "sirt_iteration_gather": lambda: step_gather(vol, q),
        "sirt_iteration_scatter": lambda: step_scatter(vol, q),
    }
    res = turns(calls, args.repeat)
    a, b = (np.asarray(res["outputs"][k], np.float64) for k in ("reproject_scatter", "reproject_gather"))
    med = {k: v[len(v) // 2] for k, v in res["times"].items()}
    report = {
        "case": "reproject",
        "size": nx,
        "rows": rows,
        "thickness": nz,
        "views": nv,
        "tilt_deg": args.tilt,
        "taps": taps,
        "seconds": res["times"],
        "cpu_seconds": res["cpu"],
        "median_over_backprojection": {k: v / med["backproject"] for k, v in med.items()},
        "reproject_max_rel_diff": float(np.abs(a - b).max() / np.abs(a).max()),
    }
    meta["loadavg_end"] = list(os.getloadavg())
    report["meta"] = meta
    for k, t in res["times"].items():
        print(f"{k:23s}: median {med[k] * 1e3:7.0f} ms ({t[0] * 1e3:.0f}-{t[-1] * 1e3:.0f}), "
              f"{med[k] / med['backproject']:5.2f} x one back-projection")  # fmt: skip
    print(f"max |gather - scatter| / max |scatter| = {report['reproject_max_rel_diff']:.1e}; taps {taps}")
    print(f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
