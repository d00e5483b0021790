"""Whole-process ``lmalign reconstruct`` against IMOD's ``newstack`` + ``tilt`` and scikit-image.

Not a test. Run as::

    python -m benchmarks.recon_process_bench [--size 1024] [--views 61] [--thickness 256] \
        [--repeat 3] [--out benchmarks/results/<date>-recon-process.json]

What it measures, on one synthetic stack (``size`` x ``size`` px, ``views`` views over +-60
degrees, every view rotated ~85 degrees and shifted by its ``.xf``, float32 MRC):

* **Whole process** (what a user waits for): ``python -m lmalign_jax reconstruct STACK --xf
  --tlt --thickness T`` in a fresh process, wall clock and peak resident memory (``ru_maxrss``
  of that child alone, from ``os.wait4`` in a small launcher), median of ``repeat`` runs after one warm-up run
  (which fills JAX's persistent compilation cache as a user's second run would find it), for
  the default FBP, a bounded ``--memory``, ``--sirtlike 10``, ``--layout imod-tilt``, the
  default through ``lmalign resident`` (started first; wall clock only: the command runs in the
  resident process's child) and (at the smaller sizes) ``--sirt``. Every side uses every core of
  the machine; no other variant uses a resident process.
* **Where the time goes** (in this process, after a warm-up, each stage blocked on): imports,
  reading the views, resampling + filtering into the aligned frame, back-projection, writing.
* **scikit-image** ``iradon`` (ramp, linear), one slice per call, on ``--sk-rows`` slices of the
  same aligned, unfiltered rows; it reconstructs a square ``size`` x ``size`` slice (it cannot
  make a ``thickness``-thick one), so its per-job time is extrapolated from those slices to all
  rows and shown beside its throughput in voxel-updates/s, the like-for-like figure.
* **IMOD**: not installed here. Its figures are the ones measured on this machine and reported
  in issue #17 (1024 x 1024 x 61 views, thickness 256, ``newstack -xform`` then ``tilt
  -THICKNESS 256``, median of 3, both cores): 15.4 s and 82 MB; ours then: 15.6 s, 1,925 MB.
  They are cited, not re-measured; the load during that measurement is not known to us.
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
IMOD_CITED = {
    "source": "issue #17, measured on this 2-core machine by the issue's author (median of 3, both cores)",
    "job": "1024 x 1024 px, 61 views, thickness 256",
    "newstack_plus_tilt": {"wall_s": 15.4, "peak_mb": 82},
    "lmalign_before": {"wall_s": 15.6, "peak_mb": 1925},
}


def make_stack(folder: Path, size: int, views: int, seed: int = 0) -> dict:
    import mrcfile
    import numpy as np

    rng = np.random.default_rng(seed)
    paths = {k: folder / f"s{size}.{k}" for k in ("mrc", "xf", "tlt")}
    if size <= 2048:
        stack = rng.normal(100.0, 10.0, (views, size, size)).astype(np.float32)
        with mrcfile.new(paths["mrc"], overwrite=True) as mrc:
            mrc.set_data(stack)
            mrc.voxel_size = 2.0
        del stack
    else:  # 4k: 4 GB of views, written one at a time (other values than the small sizes' seed)
        with mrcfile.new_mmap(paths["mrc"], shape=(views, size, size), mrc_mode=2, overwrite=True) as mrc:
            for v in range(views):
                mrc.data[v] = rng.standard_normal((size, size), dtype=np.float32) * 10 + 100
            mrc.voxel_size = 2.0
    tilts = np.linspace(-60, 60, views)
    np.savetxt(paths["tlt"], tilts, fmt="%.2f")
    with open(paths["xf"], "w") as f:
        for a in np.deg2rad(rng.normal(85.0, 1.0, views)):
            c, s = np.cos(a), np.sin(a)
            dx, dy = rng.normal(0, 5, 2)
            f.write(f"{c:12.7f}{-s:12.7f}{s:12.7f}{c:12.7f}{dx:12.3f}{dy:12.3f}\n")
    return {k: str(v) for k, v in paths.items()}


# A small launcher between this (large) process and the measured one: Linux carries a parent's
# ru_maxrss over fork + exec, so the command is forked from a fresh, small Python instead.
_LAUNCHER = """
import os, sys, time, json
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_mb": ru.ru_maxrss / 1024, "rc": os.waitstatus_to_exitcode(status)}))
"""


#: Variants run through ``lmalign resident`` (started for the variant, in its own runtime folder,
#: stopped after); the others never use a resident process. Through one, the command runs in the
#: resident process's child: the wall clock is the user's, the CPU and peak memory measured here
#: would be the launcher's alone, so they are not recorded.
RESIDENT_VARIANTS = ("resident",)


def _child_env(root: Path, runtime: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), OPENBLAS_NUM_THREADS="1", LMALIGN_RESIDENT="0")
    if runtime is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime)
        env.pop("LMALIGN_RESIDENT")
    return env


def _resident(root: Path, runtime: Path, action: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lmalign_jax", "resident", action, "--idle-minutes", "30"],
        env=_child_env(root, runtime),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    if done.returncode != 0:
        raise RuntimeError(f"lmalign resident {action}: {done.stderr.strip()}")


def run_child(args: list[str], root: Path = ROOT, runtime: Path | None = None) -> dict:
    """Wall seconds, CPU seconds (user + sys) and peak RSS (MB) of one child process, importing
    ``lmalign_jax`` from ``root`` (this tree by default); with ``runtime`` through the resident
    process serving that folder."""
    env = _child_env(root, runtime)
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=root,  # `python -m` puts the working directory first on sys.path: it must be root
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")
    return result


def whole_process(
    paths: dict, thickness: int, repeat: int, variants: dict, out_dir: Path, roots: dict, warm_up: bool = True
) -> list:
    """Each variant run by each package root (``{label: root}``): one warm-up run per side (unless
    ``warm_up`` is false: then compilation is in the timed runs), then ``repeat`` rounds in which
    the sides take turns (like for like under a changing load)."""
    rows = []
    for name, extra in variants.items():
        args = [sys.executable, "-m", "lmalign_jax", "reconstruct", paths["mrc"], "--xf", paths["xf"],
                "--tlt", paths["tlt"], "--thickness", str(thickness), "--out", str(out_dir / "t.rec.mrc"),
                "-q", *extra]  # fmt: skip
        resident = name in RESIDENT_VARIANTS
        # a short folder: a Unix socket's path is at most 107 bytes
        runtimes = {
            label: Path(tempfile.mkdtemp(prefix="lmr", dir="/tmp")) if resident else None for label in roots
        }
        for label, root in roots.items() if resident else ():
            _resident(root, runtimes[label], "start")
        for label, root in roots.items() if warm_up else ():
            run_child(args, root, runtimes[label])  # warm-up: fills the persistent compilation cache
        runs = {label: [] for label in roots}
        for _ in range(repeat):
            for label, root in roots.items():
                runs[label].append(run_child(args, root, runtimes[label]))
        for label, root in roots.items() if resident else ():
            _resident(root, runtimes[label], "stop")
        for label, side in runs.items():
            walls = sorted(r["wall_s"] for r in side)
            cpus = sorted(r["cpu_s"] for r in side) if not resident else [float("nan")]
            peaks = sorted(r["peak_mb"] for r in side) if not resident else [float("nan")]
            rows.append({"variant": name, "code": label, "args": extra, "warm_up": warm_up,
                         "wall_s": walls, "peak_mb": peaks,
                         "median_wall_s": walls[len(walls) // 2], "cpu_s": cpus,
                         "median_cpu_s": cpus[len(cpus) // 2],
                         "median_peak_mb": peaks[len(peaks) // 2]})  # fmt: skip
            r = rows[-1]
            print(
                f"  {name} ({label}): {r['median_wall_s']:.2f} s, {r['median_cpu_s']:.2f} CPU-s, "
                f"{r['median_peak_mb']:.0f} MB",
                flush=True,
            )
    return rows


def breakdown(paths: dict, thickness: int) -> dict:
    """Seconds per stage of the default FBP, in this process (warm: second pass of each); the
    imports (Python, JAX and the command-line package) timed in a fresh process."""
    probe = run_child([sys.executable, "-c", "import jax, lmalign_jax.cli._main"])
    import jax.numpy as jnp
    import numpy as np

    from lmalign_jax.io import read_xf
    from lmalign_jax.io.mrc import read_stack
    from lmalign_jax.io.mrc_volume import stream_volume
    from lmalign_jax.recon import _kernels, angular_increments, filter_response
    from lmalign_jax.recon.fbp import plan_slabs

    imports = probe["wall_s"]
    stack = read_stack(paths["mrc"])
    a, d = read_xf(paths["xf"])
    tilts = np.loadtxt(paths["tlt"])
    nv, ny, nx = stack.shape
    t0 = time.perf_counter()
    views = [np.array(stack[v]) for v in range(nv)]
    read = time.perf_counter() - t0
    n_pad, resp = filter_response(nx)
    inc = angular_increments(tilts)
    a_inv = np.linalg.inv(a)
    f32 = jnp.float32
    rows = plan_slabs(nv, ny, nx, thickness).slab_rows

    def stage1():
        q = np.zeros((ny // rows, nv, nx, rows), np.float32)
        for v in range(nv):
            params = _kernels.view_params(a_inv[v], d[v], [nx / 2, ny / 2], inc[v],
                                          views[v].mean(dtype=np.float64), 0, 0)  # fmt: skip
            r = _kernels.resample_filter_view(
                jnp.asarray(views[v]), jnp.asarray(params, f32), jnp.asarray(resp, f32),
                ny_out=ny, nx_out=nx, n_pad=n_pad, rows=ny, slab_rows=rows, keep_mean=False,
            )  # fmt: skip
            q[:, v] = np.asarray(r)
        return q

    stage1()
    t0 = time.perf_counter()
    q = stage1()
    resample = time.perf_counter() - t0
    th = np.deg2rad(tilts)
    c, s = jnp.asarray(np.cos(th), f32), jnp.asarray(np.sin(th), f32)
    zc = _kernels.choose_z_chunk(thickness, nx, rows)

    def stage2(keep):
        for k in range(ny // rows):
            vol = _kernels.backproject(jnp.asarray(q[k]), c, s, nz=thickness, nx=nx, z_chunk=zc)
            block = np.asarray(vol)
            if keep is not None:
                keep.append(block)

    stage2(None)
    t0 = time.perf_counter()
    slabs = []
    stage2(slabs)
    back = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=Path(paths["mrc"]).parent) as tmp:
        t0 = time.perf_counter()
        with stream_volume(Path(tmp) / "w.mrc", (thickness, ny, nx), 2.0) as w:
            for k, block in enumerate(slabs):
                w.write_rows(k * rows, block[:, : min(rows, ny - k * rows)])
        write = time.perf_counter() - t0
    updates = nv * nx * ny * thickness
    return {"imports_s": imports, "read_views_s": read, "resample_filter_s": resample,
            "backproject_s": back, "write_s": write, "slab_rows": rows, "z_chunk": zc,
            "backproject_gvox_updates_per_s": updates / back / 1e9}  # fmt: skip


def skimage_side(paths: dict, rows: int) -> dict:
    import numpy as np
    from skimage.transform import iradon

    from lmalign_jax.io.mrc import read_stack

    stack = read_stack(paths["mrc"])
    tilts = np.loadtxt(paths["tlt"])
    nv, ny, nx = stack.shape
    sino = np.array(stack[:, ny // 2 : ny // 2 + rows, :], dtype=np.float64)  # (views, rows, nx)
    iradon(sino[:, 0, :].T, theta=tilts, filter_name="ramp", interpolation="linear", circle=False)
    t0 = time.perf_counter()
    for r in range(rows):
        iradon(sino[:, r, :].T, theta=tilts, filter_name="ramp", interpolation="linear", circle=False)
    per_slice = (time.perf_counter() - t0) / rows
    return {"slices_timed": rows, "seconds_per_slice": per_slice, "slice_shape": [nx, nx],
            "extrapolated_job_s": per_slice * ny,
            "gvox_updates_per_s": nv * nx * nx / per_slice / 1e9}  # fmt: skip


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"Run {m['timestamp']} on `{m['machine']}` ({m['cpu_model']}, {m['cpu_count']} CPUs), "
             f"load average {m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end; "
             f"commit {(m['git']['commit'] or '?')[:10]}. Stack {report['size']} x {report['size']} px, "
             f"{report['views']} views, thickness {report['thickness']}.", "",
             "| whole process | wall, median (all runs) | CPU s (user + sys), median | peak RSS MB, median |",
             "|---|---|---|---|"]  # fmt: skip
    imod = IMOD_CITED["newstack_plus_tilt"]
    if report["size"] == 1024 and report["thickness"] == 256 and report["views"] == 61:
        lines.append(
            f"| IMOD newstack + tilt (cited, issue #17) | {imod['wall_s']:.1f} s | - | {imod['peak_mb']} |"
        )
        old = IMOD_CITED["lmalign_before"]
        lines.append(f"| lmalign reconstruct before this work (cited, issue #17) | {old['wall_s']:.1f} s "
                     f"| - | {old['peak_mb']:,} |")  # fmt: skip
    for r in report["whole_process"]:
        runs = ", ".join(f"{w:.2f}" for w in r["wall_s"])
        code = "" if r.get("code", "this tree") == "this tree" else f" ({r['code']})"
        via = " (through lmalign resident)" if r["variant"] in RESIDENT_VARIANTS else ""
        name = " ".join(r["args"]) + code + via
        lines.append(f"| lmalign reconstruct {name} | {r['median_wall_s']:.2f} s ({runs}) | "
                     f"{r['median_cpu_s']:.2f} | {r['median_peak_mb']:.0f} |")  # fmt: skip
    b = report["breakdown"]
    if b:
        lines += ["", "| stage (in process, warm) | seconds |", "|---|---|"]
        for k in ("imports_s", "read_views_s", "resample_filter_s", "backproject_s", "write_s"):
            lines.append(f"| {k[:-2].replace('_', ' ')} | {b[k]:.2f} |")
        lines.append(f"\nBack-projection: {b['backproject_gvox_updates_per_s']:.2f} G voxel-updates/s "
                     f"(slabs of {b['slab_rows']} rows, z chunks of {b['z_chunk']}).")  # fmt: skip
    sk = report.get("skimage")
    if sk:
        lines.append(f"scikit-image iradon: {sk['seconds_per_slice']:.2f} s per {sk['slice_shape'][0]}^2 "
                     f"slice ({sk['slices_timed']} timed), {sk['gvox_updates_per_s']:.3f} G voxel-updates/s; "
                     f"the whole job extrapolated: {sk['extrapolated_job_s']:.0f} s.")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sizes", help="comma-separated sizes, one after the other (--out gets -SIZE added)")
    ap.add_argument("--package-root", help="also run the lmalign_jax found in this folder (e.g. an earlier "
                    "commit's `git archive`), taking turns with this tree")  # fmt: skip
    ap.add_argument("--sirt-repeat", type=int, default=1,
                    help="timed runs of --sirt (no warm-up run: compilation, ~1 s, is included)")  # fmt: skip
    ap.add_argument("--views", type=int, default=61)
    ap.add_argument("--thickness", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sk-rows", type=int, default=2, help="slices scikit-image reconstructs (0: skip)")
    ap.add_argument("--sirt", type=int, default=0, help="also time --sirt N (0: skip)")
    ap.add_argument("--memory", type=float, default=0.2, help="the bounded-memory variant's --memory GB")
    ap.add_argument(
        "--variants", help="comma-separated subset of default,bounded,sirtlike,imod-tilt,sirt,resident"
    )
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-stage timing")
    ap.add_argument("--no-warm-up", action="store_true", help="no warm-up run before the timed ones")
    ap.add_argument("--workdir", help="folder for the stack and outputs (default: a temporary one)")
    ap.add_argument("--out", help="write the JSON record here (and a .md beside it)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import environment

    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else [args.size]
    roots = {"this tree": ROOT}
    if args.package_root:
        roots = {f"code in {args.package_root}": Path(args.package_root).resolve(), **roots}
    for size in sizes:
        meta = environment(quick=False)
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            folder = Path(tmp)
            paths = make_stack(folder, size, args.views)
            variants = {"default": [], "bounded": ["--memory", str(args.memory)],
                        "sirtlike": ["--sirtlike", "10"], "imod-tilt": ["--layout", "imod-tilt"],
                        "resident": []}  # fmt: skip
            if args.variants:
                variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
            print(f"{size} px, whole process:", flush=True)
            rows = whole_process(
                paths, args.thickness, args.repeat, variants, folder, roots, warm_up=not args.no_warm_up
            )
            if args.sirt:
                sirt = {"sirt": ["--sirt", str(args.sirt)]}
                rows += whole_process(
                    paths, args.thickness, args.sirt_repeat, sirt, folder, roots, warm_up=False
                )
            print("breakdown ...", flush=True)
            parts = None if args.no_breakdown else breakdown(paths, args.thickness)
            sk = skimage_side(paths, args.sk_rows) if args.sk_rows else None
        meta["loadavg_end"] = list(os.getloadavg())
        report = {"size": size, "views": args.views, "thickness": args.thickness, "repeat": args.repeat,
                  "imod_cited": IMOD_CITED, "whole_process": rows, "breakdown": parts, "skimage": sk,
                  "package_roots": {k: str(v) for k, v in roots.items()}, "meta": meta}  # fmt: skip
        md = markdown(report)
        if args.out:
            out = Path(args.out)
            if len(sizes) > 1:
                out = out.with_name(f"{out.stem}-{size}{out.suffix}")
            out.write_text(json.dumps(report, indent=1) + "\n")
            out.with_suffix(".md").write_text(md)
        print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
