"""Benchmark of lmalign_jax.recon's FBP against scikit-image and ASTRA (CPU); prints a table.

Not a test. Run as::

    OPENBLAS_NUM_THREADS=1 python benchmarks/recon_bench.py [--size 512] [--rows 64] [--views 61]

Measures voxel-updates per second (views x voxels) of

* ``fbp_2d`` on a batch of ``rows`` sinograms (rows innermost, the tomography case) and on one;
* ``skimage.transform.iradon`` (ramp, linear) per slice;
* ASTRA's 2-D CPU ``FBP`` algorithm (linear projector, Ram-Lak) per slice;

all on identical sinograms (a Shepp-Logan slice, +-60 degrees), and the wall time of a full
``reconstruct`` of a ``rows``-slice ``size x size`` slab from a raw stack with a per-view
alignment applied (rotation, scale, shifts; resampling + filtering + back-projection).

Timings are the best of several runs after a warm-up call (JIT compilation excluded), with
``block_until_ready`` semantics (results are pulled back to numpy).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:  # imported by the runner (python -m benchmarks) or run as a script from benchmarks/
    from .common import cpu_model
except ImportError:
    from common import cpu_model  # noqa: E402


def best_time(fn, repeat=3):
    fn()  # warm-up / compile
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(size=512, rows=64, views=61, skimage_slices=2, astra_slices=4, repeat=3):
    """Measure everything; return a dict (the hook ``benchmarks/run.py`` calls; ``main`` prints it)."""
    args = argparse.Namespace(size=size, rows=rows, views=views, skimage_slices=skimage_slices,
                              astra_slices=astra_slices, repeat=repeat)
    from skimage.data import shepp_logan_phantom
    from skimage.transform import iradon, radon, rescale

    from lmalign_jax.recon import fbp_2d, reconstruct

    n, rows, nv = args.size, args.rows, args.views
    theta = np.linspace(-60.0, 60.0, nv)
    phantom = rescale(shepp_logan_phantom(), (n - 2) / 400, anti_aliasing=True)
    img = np.zeros((n, n))
    img[1 : n - 1, 1 : n - 1] = phantom
    sino_sk = radon(img, theta)  # (n_det, n_views), skimage layout
    scale = 1.0 + 0.01 * np.arange(rows)
    sino_ours = (sino_sk.T[:, None, :] * scale[None, :, None]).astype(np.float32)  # (views, rows, det)
    per_slice = nv * n * n
    results = []

    # ours, batch of rows (the tomography layout)
    t = best_time(lambda: fbp_2d(sino_ours, -theta), args.repeat)
    results.append(("lmalign_jax fbp_2d, %d-row batch" % rows, t / rows, per_slice * rows / t))
    # ours, a single slice
    one = sino_ours[:, 0, :]
    t = best_time(lambda: fbp_2d(one, -theta), args.repeat)
    results.append(("lmalign_jax fbp_2d, single slice", t, per_slice / t))
    ours_slice = fbp_2d(one, -theta)

    # scikit-image iradon, per slice
    sk = sino_sk.astype(np.float32)
    k = max(1, args.skimage_slices)

    def run_sk():
        for r in range(k):
            iradon(sk * scale[r], theta, output_size=n, filter_name="ramp", interpolation="linear")

    t = best_time(run_sk, 1)
    results.append(("skimage iradon (ramp, linear)", t / k, per_slice * k / t))
    sk_slice = iradon(sk, theta, output_size=n, filter_name="ramp", interpolation="linear")

    # ASTRA CPU FBP, per slice
    astra_version = "not installed"
    astra_slice = None
    try:
        import astra

        astra_version = astra.__version__
        vol_geom = astra.create_vol_geom(n, n)
        proj_geom = astra.create_proj_geom("parallel", 1.0, n, np.deg2rad(theta))
        proj_id = astra.create_projector("linear", proj_geom, vol_geom)
        sino_ids = [astra.data2d.create("-sino", proj_geom, (sino_sk.T * scale[r]).astype(np.float32))
                    for r in range(max(1, args.astra_slices))]
        rec_id = astra.data2d.create("-vol", vol_geom, 0.0)

        def astra_fbp(sid):
            cfg = astra.astra_dict("FBP")
            cfg["ReconstructionDataId"] = rec_id
            cfg["ProjectionDataId"] = sid
            cfg["ProjectorId"] = proj_id
            cfg["option"] = {"FilterType": "Ram-Lak"}
            alg = astra.algorithm.create(cfg)
            astra.algorithm.run(alg)
            astra.algorithm.delete(alg)
            return astra.data2d.get(rec_id)

        def run_astra():
            for sid in sino_ids:
                astra_fbp(sid)

        t = best_time(run_astra, 1)
        results.append(("ASTRA CPU FBP (linear, Ram-Lak)", t / len(sino_ids), per_slice * len(sino_ids) / t))
        astra_slice = astra_fbp(sino_ids[0])
        astra.data2d.delete(sino_ids + [rec_id])
        astra.projector.delete(proj_id)
    except ImportError:
        pass

    # full reconstruct of an aligned slab from a raw stack with a per-view alignment
    rng = np.random.default_rng(0)
    alpha = np.deg2rad(rng.uniform(-4, 4, nv))
    s = 1.0 + rng.normal(0, 0.01, nv)
    A = np.stack([np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / si for a, si in zip(alpha, s)])
    D = rng.normal(0, 4.0, (nv, 2))
    stack = sino_ours  # (views, rows, width): raw images of a slab
    out = np.zeros((n, rows, n), np.float32)
    t_slab = best_time(lambda: reconstruct(stack, A, D, theta, n, out=out), args.repeat)
    results.append((f"reconstruct {rows}x{n}x{n} slab, aligned (preallocated out)", t_slab / rows,
                    per_slice * rows / t_slab))
    t_new = best_time(lambda: reconstruct(stack, A, D, theta, n), args.repeat)
    results.append((f"reconstruct {rows}x{n}x{n} slab, aligned (new output)", t_new / rows,
                    per_slice * rows / t_new))

    def corr(a, b):
        yy, xx = np.mgrid[:n, :n] - n / 2 + 0.5
        m = xx**2 + yy**2 < (0.45 * n) ** 2
        return np.corrcoef(a[m], b[m])[0, 1]

    return {
        "size": n, "rows": rows, "views": nv, "astra_version": astra_version,
        "results": [{"method": name, "seconds_per_slice": per, "voxel_updates_per_s": rate} for name, per, rate in results],
        "slab_seconds_preallocated": t_slab, "slab_seconds_new_output": t_new,
        "corr_skimage": float(corr(ours_slice, sk_slice)),
        "corr_astra": None if astra_slice is None else float(corr(ours_slice, astra_slice)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="slice width and thickness (pixels)")
    ap.add_argument("--rows", type=int, default=64, help="slices (y rows) in the slab")
    ap.add_argument("--views", type=int, default=61, help="views over +-60 degrees")
    ap.add_argument("--skimage-slices", type=int, default=2)
    ap.add_argument("--astra-slices", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = run(args.size, args.rows, args.views, args.skimage_slices, args.astra_slices, args.repeat)
    import jax

    n, rows, nv, astra_version = out["size"], out["rows"], out["views"], out["astra_version"]
    results = [(r["method"], r["seconds_per_slice"], r["voxel_updates_per_s"]) for r in out["results"]]
    t_slab, t_new = out["slab_seconds_preallocated"], out["slab_seconds_new_output"]
    print(f"# recon benchmark {datetime.date.today().isoformat()}  CPU: {cpu_model()} "
          f"({os.cpu_count()} logical CPUs)  OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    import scipy
    import skimage

    print(f"# python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), numpy "
          f"{np.__version__}, scipy {scipy.__version__}, scikit-image {skimage.__version__}, astra {astra_version}")
    print(f"# {nv} views over +-60 deg, slices {n}x{n}, {rows} rows; float32")
    print(f"{'method':58s} {'s/slice':>10s} {'Gvox-upd/s':>11s}")
    for name, per, rate in results:
        print(f"{name:58s} {per:10.4f} {rate / 1e9:11.3f}")
    print(f"aligned {rows}-slice {n}x{n} {nv}-view slab: {t_slab:.3f} s (preallocated out), {t_new:.3f} s (new)")
    # Sanity check that all three reconstruct the same slice. skimage's rotation centre is pixel
    # n//2 (ours n/2 - 0.5: half a pixel apart for even n, hence < 1); ASTRA scales as if the views
    # covered 180 degrees (ours: the measured range), hence correlation rather than differences.
    line = f"agreement with ours (correlation inside 0.45 n): skimage {out['corr_skimage']:.4f}"
    if out["corr_astra"] is not None:
        line += f", ASTRA {out['corr_astra']:.4f}"
    print(line)


if __name__ == "__main__":
    main()
