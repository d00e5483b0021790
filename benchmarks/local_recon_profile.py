"""Where a local-alignment reconstruction spends its time, and what sharing one sampled position
across rows (the trick of the fast global kernel) would cost in accuracy and gain in speed.

    python -m benchmarks.local_recon_profile [--size 512] [--views 61] [--thickness 128]
        [--repeat 3] [--tolerance 0.05] [--parts accuracy,time,kernels] [--out results.json]

Issue #15 asks local reconstruction to take at most twice the global time. The problem is
``local_recon_bench``'s (same stack, ``.xf`` and 3 x 3 local file, same seed). Three parts:

1. Time. ``recon.reconstruct`` and ``reconstruct_local`` take turns in this process (one warm-up
   call each, then ``--repeat``); inside the local one the seconds of the per-slab kernel
   (``_accumulate_band``, synchronised) are summed apart, the rest being band resampling,
   filtering and writing.
2. Accuracy of row sharing. The global kernel computes one detector position per (view, z, x)
   and reads it for every row of a slab (contiguous loads). With a local alignment voxel
   (x, y, z) samples ``p = base(x, y) + z slope(x, y)``, its own position. If a group of R rows
   shared one position (the group's mean of ``p - (0, y)``, each row reading its own row), the
   position error of a voxel would be ``|d_j(x) + z e_j(x)|`` with ``d, e`` the deviations of its
   row's base and slope from the group means: convex in z, so its largest value over the volume
   is at ``z = +-NZ/2``. That maximum is computed for every view and group (an exact bound, no
   sampling), for R = 2 .. 64, and per (view, 64-row slab) the largest R within
   ``--tolerance`` px.
3. Kernel speed on one slab (64 rows at the middle of the volume, random band values): the exact
   local kernel, the global kernel on the same slab and views, and rows-shared local kernels
   (one position per view, z, x and group of R rows, positions as in part 2; two formulations,
   :func:`_shared_kernels`), all taking turns, with each shared volume's agreement with the exact
   one. The shared kernels are experiments written here, not library paths.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

from benchmarks.common import environment, machine_slug
from benchmarks.local_recon_bench import _local_file
from benchmarks.recon_bench import interleaved_times

SLAB_ROWS = 64
GROUPS = (2, 4, 8, 16, 32, 64)


def problem(size: int, views: int, thickness: int):
    """``local_recon_bench``'s problem: (stack, A, D, tilts, LocalSampling)."""
    import numpy as np

    from lmalign_jax.core.local_apply import local_sampling
    from lmalign_jax.recon.local_backprojection import LocalSampling

    rng = np.random.default_rng(0)
    stack = rng.standard_normal((views, size, size)).astype(np.float32)
    tilts = np.linspace(-60, 60, views)
    ang = np.radians(85 + rng.uniform(-0.5, 0.5, views))
    a = 1.002 * np.stack([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]).transpose(2, 0, 1)
    d = rng.uniform(-20, 20, (views, 2))
    local = _local_file(views, size, rng)
    return stack, a, d, tilts, LocalSampling(*local_sampling(local, tilts, (size, size)))


def column_positions(sampling):
    """Per view, float64: base (V, 2, NY, NX) of ``p - (0, y)`` and slope (V, 2, NY, NX), centred
    pixels of the aligned frame, for the voxel columns of the whole volume."""
    import numpy as np

    ny, nx = sampling.patches.shape[:2]
    x = np.arange(nx) + 0.5 - nx / 2
    y = np.arange(ny) + 0.5 - ny / 2
    w = np.asarray(sampling.weights, np.float64)
    m = np.einsum("yxk,yxkvij->vijyx", w, np.asarray(sampling.mats, np.float64)[sampling.patches])
    d = np.einsum("yxk,yxkvi->viyx", w, np.asarray(sampling.shifts, np.float64)[sampling.patches])
    base = m[:, :, 0] * x + m[:, :, 1] * y[:, None] + d
    base[:, 1] -= y[:, None]
    return base, m[:, :, 2]


def sharing_error(base, slope, rows: int, half_depth: float):
    """(V, NY // rows) largest position error (px) of sharing each group's mean position."""
    import numpy as np

    v, _, ny, nx = base.shape
    g = ny // rows
    b = base[:, :, : g * rows].reshape(v, 2, g, rows, nx)
    s = slope[:, :, : g * rows].reshape(v, 2, g, rows, nx)
    db = b - b.mean(axis=3, keepdims=True)
    ds = s - s.mean(axis=3, keepdims=True)
    top = np.hypot(db[:, 0] + half_depth * ds[:, 0], db[:, 1] + half_depth * ds[:, 1])
    bottom = np.hypot(db[:, 0] - half_depth * ds[:, 0], db[:, 1] - half_depth * ds[:, 1])
    return np.maximum(top, bottom).max(axis=(2, 3))


def accuracy_of_sharing(sampling, thickness: int, tolerance: float) -> dict:
    import numpy as np

    base, slope = column_positions(sampling)
    n_views, _, ny, _ = base.shape
    n_slabs = ny // SLAB_ROWS
    allowed = np.ones((n_views, n_slabs), int)
    max_error, median_slab_error = {}, {}
    for rows in GROUPS:
        err = sharing_error(base, slope, rows, thickness / 2)
        per_slab = err[:, : n_slabs * SLAB_ROWS // rows].reshape(n_views, n_slabs, -1).max(axis=2)
        allowed[per_slab <= tolerance] = rows
        max_error[rows] = float(err.max())
        median_slab_error[rows] = float(np.median(per_slab))
    values, counts = np.unique(allowed, return_counts=True)
    gradient = np.abs(np.diff(base, axis=2)).max(axis=1)  # |change of p - (0, y)| per row, base only
    return {
        "max_position_error_px": max_error,
        "median_view_slab_error_px": median_slab_error,
        "tolerance_px": tolerance,
        "largest_rows_within_tolerance_per_view_slab": dict(
            zip(values.tolist(), counts.tolist(), strict=True)
        ),
        "row_gradient_px_per_row": {"max": float(gradient.max()), "median": float(np.median(gradient))},
    }


def times_with_kernel_share(stack, a, d, tilts, sampling, thickness, repeat, memory) -> dict:
    import numpy as np

    from lmalign_jax.recon import local_backprojection as lb
    from lmalign_jax.recon import reconstruct

    kernel = lb._accumulate_band
    spent = [0.0]

    def timed_kernel(*args, **kwargs):
        t0 = time.perf_counter()
        out = kernel(*args, **kwargs)
        out.block_until_ready()
        spent[0] += time.perf_counter() - t0
        return out

    out_g = np.empty((thickness, *stack.shape[1:]), np.float32)
    out_l = np.empty_like(out_g)
    kernel_s = []

    def local():
        spent[0] = 0.0
        lb.reconstruct_local(stack, a, d, tilts, sampling, thickness, memory_bytes=memory, out=out_l)
        kernel_s.append(spent[0])

    lb._accumulate_band = timed_kernel
    try:
        sides = {
            "global": lambda: reconstruct(stack, a, d, tilts, thickness, memory_bytes=memory, out=out_g),
            "local": local,
        }
        times = interleaved_times(sides, repeat)
    finally:
        lb._accumulate_band = kernel
    kernel_s = kernel_s[1:]  # the warm-up call compiled
    return {
        "seconds": times,
        "local_kernel_seconds": kernel_s,
        "local_kernel_share": [k / t for k, t in zip(kernel_s, times["local"], strict=True)],
        "ratio_per_repeat": [tl / tg for tl, tg in zip(times["local"], times["global"], strict=True)],
        "ratio_median": statistics.median(times["local"]) / statistics.median(times["global"]),
    }


def _edge_index(u, n: int):
    """``_kernels._linear_index``'s clamping (zero over one sample outside, zero beyond), as a
    float index into the zero-padded axis and its fraction."""
    import jax.numpy as jnp

    u = jnp.clip(u, -1.0, float(n))
    i0 = jnp.minimum(jnp.floor(u), n - 1.0)
    return i0 + 1.0, u - i0


def _shared_kernels():
    """Two rows-shared experiments: each group of R rows of a slab reads one position per (view,
    z, x) (the group's mean of ``p - (0, y)``, each row its own row), bilinear weights shared.

    ``slices``: two gathers of R + 1 rows from the transposed band at the data-dependent row
    offset. ``rows``: the global kernel's form, whole-row gathers from a fixed-layout array:
    the band is copied once per slab for every whole-row offset s (``copies[s, c, g] = band
    rows s + g R .. s + g R + R`` of column c), and the two row neighbours are two copies, so
    every gather is a whole contiguous row of R values (no slicing of gathered rows, which made
    XLA's CPU loop 5x slower here)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    gather_dims = lax.GatherDimensionNumbers(offset_dims=(3,), collapsed_slice_dims=(), start_index_map=(0,))

    def group_means(base, slope, r):
        v, _, rows, nx = base.shape
        g = rows // r
        return base.reshape(v, 2, g, r, nx).mean(3), slope.reshape(v, 2, g, r, nx).mean(3)  # (V, 2, G, NX)

    @partial(jax.jit, static_argnames=("rows_shared", "z_chunk"))
    def slices(band, base, slope, z, *, rows_shared, z_chunk):
        """band (V, B, NX) as ``_accumulate_band`` reads it; base, slope (V, 2, rows, NX) in band
        index units (column; row minus the voxel's own slab row). Returns (NZ, rows, NX)."""
        n_views, n_band, nx = band.shape
        rows, r = base.shape[2], rows_shared
        g = rows // r
        height = n_band + r + 3
        flat = jnp.pad(jnp.transpose(band, (0, 2, 1)), ((0, 0), (1, 1), (1, r + 2))).reshape(n_views, -1)
        mean_b, mean_s = group_means(base, slope, r)
        start = jnp.arange(g, dtype=jnp.int32)[:, None] * r

        def chunk(zc):
            ic, fc = _edge_index(mean_b[:, 0, None] + zc[None, :, None, None] * mean_s[:, 0, None], nx)
            row = jnp.clip(mean_b[:, 1, None] + zc[None, :, None, None] * mean_s[:, 1, None], 0.0, n_band - r)
            ir = jnp.floor(row)
            k = ic.astype(jnp.int32) * height + ir.astype(jnp.int32) + 1 + start
            k, fc, fr = lax.optimization_barrier((k, fc, row - ir))  # (V, zc, G, NX)

            def view(v, acc):
                def take(kk):
                    mode = lax.GatherScatterMode.PROMISE_IN_BOUNDS
                    return lax.gather(flat[v], kk[..., None], gather_dims, (r + 1,), mode=mode)

                lo, hi = take(k[v]), take(k[v] + height)
                f = fr[v][..., None]
                left = lo[..., :r] + f * (lo[..., 1:] - lo[..., :r])
                right = hi[..., :r] + f * (hi[..., 1:] - hi[..., :r])
                return acc + left + fc[v][..., None] * (right - left)

            acc = lax.fori_loop(0, n_views, view, jnp.zeros((z_chunk, g, nx, r), band.dtype))
            return jnp.transpose(acc, (0, 1, 3, 2)).reshape(z_chunk, rows, nx)

        return lax.map(chunk, z.reshape(-1, z_chunk)).reshape(-1, rows, nx)

    @partial(jax.jit, static_argnames=("rows_shared", "z_chunk"))
    def whole_rows(band, base, slope, z, *, rows_shared, z_chunk):
        """As ``slices``, with whole-row gathers from per-offset copies of the band."""
        n_views, n_band, nx = band.shape
        rows, r = base.shape[2], rows_shared
        g = rows // r
        offsets = n_band - rows + 1  # whole-row offsets s of a slab row's band row (s = j's row - j)
        bt = jnp.pad(jnp.transpose(band, (0, 2, 1)), ((0, 0), (1, 1), (0, 1)))  # (V, NX + 2, B + 1)
        copies = jnp.stack(
            [bt[:, :, s : s + rows].reshape(n_views, nx + 2, g, r) for s in range(offsets + 1)], 1
        ).reshape(n_views, -1, r)  # row (s (NX + 2) + c) G + group
        mean_b, mean_s = group_means(base, slope, r)
        mean_b, mean_s = jnp.swapaxes(mean_b, 2, 3), jnp.swapaxes(mean_s, 2, 3)  # (V, 2, NX, G)
        group = jnp.arange(g, dtype=jnp.int32)
        next_row, next_col = (nx + 2) * g, g

        def chunk(zc):
            ic, fc = _edge_index(mean_b[:, 0, None] + zc[None, :, None, None] * mean_s[:, 0, None], nx)
            row = jnp.clip(
                mean_b[:, 1, None] + zc[None, :, None, None] * mean_s[:, 1, None], 0.0, offsets - 1.0
            )
            ir = jnp.floor(row)
            k = (ir.astype(jnp.int32) * (nx + 2) + ic.astype(jnp.int32)) * g + group
            k, fc, fr = lax.optimization_barrier((k, fc, row - ir))  # (V, zc, NX, G)

            def view(v, acc):
                t, kk = copies[v], k[v]
                a0, a1, b0, b1 = t[kk], t[kk + next_row], t[kk + next_col], t[kk + next_col + next_row]
                f = fr[v][..., None]
                left = a0 + f * (a1 - a0)
                right = b0 + f * (b1 - b0)
                return acc + left + fc[v][..., None] * (right - left)

            acc = lax.fori_loop(0, n_views, view, jnp.zeros((z_chunk, nx, g, r), band.dtype))
            return jnp.transpose(acc.reshape(z_chunk, nx, rows), (0, 2, 1))

        return lax.map(chunk, z.reshape(-1, z_chunk)).reshape(-1, rows, nx)

    return {"slices": slices, "rows": whole_rows}


def kernel_speed(sampling, tilts, thickness, repeat) -> dict:
    """Seconds per call on one 64-row slab, the kernels taking turns (module docstring)."""
    import jax.numpy as jnp
    import numpy as np

    from lmalign_jax.recon import _kernels
    from lmalign_jax.recon import local_backprojection as lb

    ny, nx = sampling.patches.shape[:2]
    n_views = sampling.mats.shape[1]
    margin = lb.row_margin(sampling, (thickness, ny, nx))
    j0 = (ny // 2 // SLAB_ROWS) * SLAB_ROWS
    take = np.arange(j0, j0 + SLAB_ROWS)
    rng = np.random.default_rng(1)
    band = jnp.asarray(rng.standard_normal((n_views, SLAB_ROWS + 2 * margin, nx)), jnp.float32)
    band0 = jnp.float32(j0 - margin - ny / 2 + 0.5)
    x = jnp.asarray(np.arange(nx) + 0.5 - nx / 2, jnp.float32)
    y = jnp.asarray(take + 0.5 - ny / 2, jnp.float32)
    z = jnp.asarray(np.arange(thickness) + 0.5 - thickness / 2, jnp.float32)
    z_chunk = _kernels.choose_z_chunk(thickness, nx, SLAB_ROWS, _kernels.POSITIONWISE_CHUNK_ELEMS)
    args = (
        band,
        band0,
        jnp.asarray(sampling.mats, jnp.float32),
        jnp.asarray(sampling.shifts, jnp.float32),
        jnp.asarray(sampling.patches[take], jnp.int32),
        jnp.asarray(sampling.weights[take], jnp.float32),
        x,
        y,
        z,
    )
    base, slope = column_positions(sampling)
    base = base[:, :, take].copy()
    base[:, 0] += nx / 2 - 0.5
    base[:, 1] += margin  # band row of slab row j: j + margin + (p_y - y)
    base_d, slope_d = jnp.asarray(base, jnp.float32), jnp.asarray(slope[:, :, take], jnp.float32)
    rad = np.radians(tilts)
    q = jnp.transpose(band[:, margin : margin + SLAB_ROWS], (0, 2, 1))
    cos_t, sin_t = jnp.asarray(np.cos(rad), jnp.float32), jnp.asarray(np.sin(rad), jnp.float32)
    kernels = _shared_kernels()
    sides = {
        "local_exact": lambda: lb._accumulate_band(*args, z_chunk=z_chunk).block_until_ready(),
        "global": lambda: _kernels.backproject(
            q, cos_t, sin_t, nz=thickness, nx=nx, z_chunk=z_chunk
        ).block_until_ready(),
    }
    variants = [("slices", 8), ("slices", 64)] + [("rows", r) for r in (2, 4, 8, 16, 64)]

    def call(name, r):
        return kernels[name](band, base_d, slope_d, z, rows_shared=r, z_chunk=z_chunk)

    for name, r in variants:
        sides[f"shared_{name}_{r}"] = partial(lambda n, r: call(n, r).block_until_ready(), name, r)
    exact = np.asarray(lb._accumulate_band(*args, z_chunk=z_chunk))
    agreement = {}
    for name, r in variants:
        got = np.asarray(call(name, r))
        diff = got - exact
        agreement[f"shared_{name}_{r}"] = {
            "max_abs_diff_over_sd": float(np.abs(diff).max() / exact.std()),
            "rms_diff_over_sd": float(diff.std() / exact.std()),
            "correlation": float(np.corrcoef(got.ravel(), exact.ravel())[0, 1]),
        }
    times = interleaved_times(sides, repeat)
    return {
        "slab_rows": SLAB_ROWS,
        "seconds_per_slab": times,
        "median_over_global": {
            k: statistics.median(v) / statistics.median(times["global"]) for k, v in times.items()
        },
        "shared_vs_exact": agreement,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--views", type=int, default=61)
    parser.add_argument("--thickness", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-gb", type=float, default=1.0)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--parts", default="accuracy,time,kernels", help="comma-separated subset")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    meta = environment(quick=False)
    stack, a, d, tilts, sampling = problem(args.size, args.views, args.thickness)
    result = {
        "problem": {"size": args.size, "views": args.views, "thickness": args.thickness, "patches": [3, 3]}
    }
    if "accuracy" in parts:
        result["accuracy_of_row_sharing"] = accuracy_of_sharing(sampling, args.thickness, args.tolerance)
        print(json.dumps(result["accuracy_of_row_sharing"], indent=1), flush=True)
    if "time" in parts:
        result["time"] = times_with_kernel_share(
            stack, a, d, tilts, sampling, args.thickness, args.repeat, int(args.memory_gb * 1e9)
        )
        print(json.dumps(result["time"], indent=1), flush=True)
    if "kernels" in parts:
        result["kernel_speed"] = kernel_speed(sampling, tilts, args.thickness, args.repeat)
        print(json.dumps(result["kernel_speed"], indent=1), flush=True)
    meta["loadavg_end"] = list(os.getloadavg())
    record = {"benchmark": "local_recon_profile", "environment": meta, **result}
    out = args.out or (
        Path(__file__).parent / "results" / f"{meta['date']}-{machine_slug(meta)}-local-recon-profile.json"
    )
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
