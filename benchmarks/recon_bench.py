"""Benchmark of lmalign_jax.recon's FBP against scikit-image and ASTRA (CPU), like for like.

Not a test. Run as::

    python -m benchmarks.recon_bench [--size 512] [--rows 32] [--views 61] [--repeat 3] \
        [--threads 1] [--out r.json]

Every side does the same work: it reconstructs the same ``rows`` slices (``size x size``, from
identical sinograms of a Shepp-Logan slice, +-60 degrees), each timed ``repeat`` times after
one warm-up call (JIT compilation excluded; results pulled back to numpy), the sides taking
turns so that a change of load during the run falls on all of them. Ours takes the
slab as one batch (its layout); skimage's ``iradon`` and ASTRA's 2-D CPU ``FBP`` (linear
projector, Ram-Lak) loop over the same slices. The whole process runs on ``--threads`` cores:
it is pinned to that many CPUs (``sched_setaffinity``) before any library loads, with XLA's,
OpenMP's and OpenBLAS's thread counts set to match, so no side gets more cores than another.
Also timed (ours only): a full ``reconstruct`` of the slab from a raw stack with a per-view
alignment applied (rotation, scale, shifts; resampling + filtering + back-projection).

Each row records every repeat; tables give the median and the whole range (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def limit_threads(threads: int) -> dict:
    """Pin this process to ``threads`` CPUs and cap every thread pool to match; call before
    numpy, jax, skimage or astra are imported. Returns what was set, for the record."""
    cpus = sorted(os.sched_getaffinity(0))[:threads] if hasattr(os, "sched_getaffinity") else []
    if cpus:
        os.sched_setaffinity(0, cpus)
    n = str(threads)
    os.environ.update(OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    return {
        "threads": threads,
        "cpus": cpus,
        **{k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS")},
    }


def interleaved_times(sides: dict, repeat: int) -> dict:
    """Seconds of ``repeat`` calls of each side's function after one warm-up call each, taken
    in turns (side 1, side 2, ..., side 1, ...), so a change in the machine's load during the
    run falls on every side alike. ``sides``: name -> function; returns name -> [seconds]."""
    for fn in sides.values():
        fn()
    out = {name: [] for name in sides}
    for _ in range(repeat):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def run(size=512, rows=32, views=61, repeat=3, skimage_slices=None, astra_slices=None) -> dict:
    """Measure in this process (threads as the caller left them); return a dict.

    ``skimage_slices`` / ``astra_slices`` are accepted for old callers and ignored: every side
    reconstructs all ``rows`` slices.
    """
    import numpy as np
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, radon, rescale

    from lmalign_jax.recon import fbp_2d, reconstruct

    n, nv = size, views
    theta = np.linspace(-60.0, 60.0, nv)
    phantom = rescale(shepp_logan_phantom(), (n - 2) / 400, anti_aliasing=True)
    img = np.zeros((n, n))
    img[1 : n - 1, 1 : n - 1] = phantom
    sino_sk = radon(img, theta)  # (n_det, n_views), skimage layout
    scale = 1.0 + 0.01 * np.arange(rows)
    sino_ours = (sino_sk.T[:, None, :] * scale[None, :, None]).astype(np.float32)  # (views, rows, det)
    sk_slices = [(sino_sk * s).astype(np.float32) for s in scale]  # the same slices, skimage layout
    work = nv * n * n * rows  # voxel updates of the slab
    results = []

    def record(method, seconds, like_for_like=True):
        results.append({"method": method, "slices": rows, "repeats": len(seconds), "seconds": seconds,
                        "seconds_per_slice": float(np.median(seconds)) / rows,
                        "voxel_updates_per_s": work / float(np.median(seconds)),
                        "voxel_updates_per_s_range": [work / max(seconds), work / min(seconds)],
                        "like_for_like": like_for_like})  # fmt: skip

    sides = {
        f"lmalign_jax fbp_2d, {rows}-row batch": lambda: np.asarray(fbp_2d(sino_ours, -theta)),
        "lmalign_jax fbp_2d, one slice per call": lambda: [
            np.asarray(fbp_2d(sino_ours[:, r, :], -theta)) for r in range(rows)
        ],
    }
    ours_slice = np.asarray(fbp_2d(sino_ours[:, 0, :], -theta))

    def run_sk():
        for s in sk_slices:
            iradon(s, theta, output_size=n, filter_name="ramp", interpolation="linear")

    sides["skimage iradon (ramp, linear), one slice per call"] = run_sk
    sk_slice = iradon(sk_slices[0], theta, output_size=n, filter_name="ramp", interpolation="linear")

    astra_version, astra_slice = None, None
    try:
        import astra
    except ImportError:
        astra = None
    if astra is not None:
        astra_version = astra.__version__
        vol_geom = astra.create_vol_geom(n, n)
        proj_geom = astra.create_proj_geom("parallel", 1.0, n, np.deg2rad(theta))
        proj_id = astra.create_projector("linear", proj_geom, vol_geom)
        sino_ids = [astra.data2d.create("-sino", proj_geom, np.ascontiguousarray(s.T)) for s in sk_slices]
        rec_id = astra.data2d.create("-vol", vol_geom, 0.0)

        def astra_fbp(sid):
            cfg = astra.astra_dict("FBP")
            cfg.update(
                ReconstructionDataId=rec_id,
                ProjectionDataId=sid,
                ProjectorId=proj_id,
                option={"FilterType": "Ram-Lak"},
            )
            alg = astra.algorithm.create(cfg)
            astra.algorithm.run(alg)
            astra.algorithm.delete(alg)
            return astra.data2d.get(rec_id)

        sides["ASTRA CPU FBP (linear, Ram-Lak), one slice per call"] = lambda: [
            astra_fbp(s) for s in sino_ids
        ]
        astra_slice = astra_fbp(sino_ids[0])

    # ours only: a full reconstruct of an aligned slab from a raw stack with a per-view alignment
    rng = np.random.default_rng(0)
    alpha = np.deg2rad(rng.uniform(-4, 4, nv))
    s = 1.0 + rng.normal(0, 0.01, nv)
    A = np.stack(
        [
            np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / si
            for a, si in zip(alpha, s, strict=True)
        ]
    )
    D = rng.normal(0, 4.0, (nv, 2))
    out = np.zeros((n, rows, n), np.float32)
    ours_only = {
        f"reconstruct {rows}x{n}x{n} slab, aligned (preallocated out)": lambda: reconstruct(
            sino_ours, A, D, theta, n, out=out
        ),
        f"reconstruct {rows}x{n}x{n} slab, aligned (new output)": lambda: reconstruct(
            sino_ours, A, D, theta, n
        ),
    }
    for name, seconds in interleaved_times({**sides, **ours_only}, repeat).items():
        record(name, seconds, name in sides)
    if astra is not None:
        astra.data2d.delete(sino_ids + [rec_id])
        astra.projector.delete(proj_id)

    yy, xx = np.mgrid[:n, :n] - n / 2 + 0.5
    inside = xx**2 + yy**2 < (0.45 * n) ** 2

    def corr(a, b):
        return float(np.corrcoef(a[inside], b[inside])[0, 1])

    return {
        "size": n, "rows": rows, "views": nv, "repeat": repeat,
        "astra_version": astra_version or "not installed",
        "results": results,
        "corr_skimage": corr(ours_slice, sk_slice),
        "corr_astra": None if astra_slice is None else corr(ours_slice, astra_slice),
    }  # fmt: skip


def run_isolated(size=512, rows=32, views=61, repeat=3, threads=1) -> dict:
    """``run`` in a fresh process limited to ``threads`` cores (see the module docstring), with
    the machine, versions, commit and load average (before and after) recorded."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "recon.json"
        args = [sys.executable, "-m", "benchmarks.recon_bench",
                "--size", str(size), "--rows", str(rows), "--views", str(views),
                "--repeat", str(repeat), "--threads", str(threads), "--out", str(out), "--quiet"]  # fmt: skip
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"recon_bench failed ({proc.returncode}): {proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def markdown(report: dict) -> str:
    """The results as a markdown table (median and the whole range of the repeats)."""
    lines = [f"{report['views']} views over +-60 degrees, {report['size']}x{report['size']} slices, "
             f"the same {report['rows']} slices "
             f"on every side, float32, {report['limits']['threads']} thread(s) each "
             f"(process pinned to CPUs {report['limits']['cpus']}); "
             f"median of {report['repeat']} runs after a warm-up, range min-max; "
             f"ASTRA {report['astra_version']}.", "",
             "| method | like for like | s / slice (median) | Gvoxel-updates / s: median | range |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in report["results"]:
        lo, hi = r["voxel_updates_per_s_range"]
        lines.append(f"| {r['method']} | {'yes' if r['like_for_like'] else 'ours only'} | "
                     f"{r['seconds_per_slice']:.4f} | "
                     f"{r['voxel_updates_per_s'] / 1e9:.3f} | {lo / 1e9:.3f}-{hi / 1e9:.3f} |")  # fmt: skip
    line = f"\n\nAgreement with ours (correlation inside 0.45 n): skimage {report['corr_skimage']:.4f}"
    if report.get("corr_astra") is not None:
        line += f", ASTRA {report['corr_astra']:.4f}"
    return "\n".join(lines) + line + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="slice width and thickness (pixels)")
    ap.add_argument(
        "--rows", type=int, default=32, help="slices (y rows) in the slab, reconstructed by every side"
    )
    ap.add_argument("--views", type=int, default=61, help="views over +-60 degrees")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of every side after one warm-up")
    ap.add_argument("--threads", type=int, default=1, help="cores for the whole process (every side)")
    ap.add_argument("--out", help="write the JSON record here (and a .md beside it)")
    ap.add_argument("--quiet", action="store_true", help="do not print the table")
    args = ap.parse_args(argv)
    limits = limit_threads(args.threads)  # before numpy / jax load
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    from benchmarks.common import environment

    meta = environment(quick=False)
    report = run(args.size, args.rows, args.views, args.repeat)
    meta["loadavg_end"] = list(os.getloadavg())
    report.update(limits=limits, meta=meta)
    md = markdown(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        Path(args.out).with_suffix(".md").write_text(md)
    if not args.quiet:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
