"""Reconstruction with a local alignment against the global one: same stack, same run.

    python -m benchmarks.local_recon_bench [--size 512] [--views 61] [--thickness 128]
        [--repeat 3] [--memory-gb 1] [--field rough|bba|midzone2a|shape|xtilt] [--tolerance 0.1]
        [--no-exact]
        [--out results.json]

Issue #15 asks local reconstruction to take at most twice the global time. Both sides
reconstruct the same synthetic raw stack (``--views`` views of ``--size`` px, float32 noise: the
time does not depend on the content) with the same ``.xf`` (rotation ~85 degrees, scale, shifts:
every view is resampled), the same thickness, filter and ``--memory-gb`` budget, into a numpy
volume, in this process: ``recon.reconstruct`` (global) and ``recon.local_backprojection.
reconstruct_local`` with a 3 x 3 local file of small per-patch rotations, scales, shifts and delta
tilts (IMOD's layout, as ``align --local`` writes; ``--field bba``: IMOD's own 2 x 2 local
alignment of the BB set, ``tests/data/imod-local/BBalocal.xf``, with its 61 tilts, at its 512 px;
``--field midzone2a``: IMOD's 4 x 2 local alignment of the midzone2 set, ``midzone2alocal.xf``, with
its tilts, at its 1950 x 1024 px; ``--field shape``: a shape model's alignment, ``core.shape_apply``'s
patches for a specimen that domes by up to 40 px 1000 px from the centre and thins by up to 15%
over the series, the deformation ``lmalign reconstruct --alignment`` applies for ``--model shape``;
``--field xtilt``: the X-axis tilt of IMOD's BB set, ``XAXISTILT 1.94`` with its tilts, every view at
-1.94 deg, through one patch per view, and as ``reconstruct`` runs it, the untilted back-projection
read tilted, ``recon.xtilt_backprojection``, the side ``x_tilted``)
read through sheets (``recon.sheets``, ``--tolerance`` px, the library's default unless given) and, unless
``--no-exact``, with every voxel at its own position (``tolerance_px=0``). One warm-up call
each (compilation), then ``--repeat`` timed calls, the sides taking turns so a change of the
shared machine's load falls on both; the ratio is of the medians, and per repeat. The load
average is recorded before and after.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import environment, machine_slug
from benchmarks.recon_bench import interleaved_times


def _local_file(n_views: int, size: int, rng):
    """A 3 x 3 IMOD local alignment over a ``size`` image: per patch and view a rotation of up to
    0.3 deg, a scale of +-0.3%, shifts of up to 2 px and delta tilts of up to 0.3 deg."""
    import numpy as np

    from lmalign_jax.io.imod_local import LocalAlignment

    p = 9
    ang = np.radians(rng.uniform(-0.3, 0.3, (p, n_views)))
    s = 1 + rng.uniform(-0.003, 0.003, (p, n_views))
    a = s[..., None, None] * np.stack(
        [np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2
    )
    xf = np.concatenate([a, rng.uniform(-2, 2, (p, n_views, 2, 1))], -1)
    step = size // 3
    return LocalAlignment(
        (3, 3), (step // 2, step // 2), (step, step), 0.0, rng.uniform(-0.3, 0.3, (p, n_views)), xf
    )


def _shape_field(tilts, size: int):
    """(grid, mats, shifts) of a shape model's alignment over a ``size`` image (module docstring):
    the rigid part a unit transform, the shape growing linearly over the views."""
    import numpy as np

    from lmalign_jax.core.shape_apply import shape_patches

    n = tilts.size
    grow = np.linspace(0.0, 1.0, n)
    zero = np.zeros(n)
    params = {"scale": zero + 1.0, "rotation": zero, "tilt": tilts, "dx": zero, "dy": zero}
    shape = {"shrink": -150.0, "dome_xx": 40.0, "dome_xy": 10.0, "dome_yy": 30.0}
    params |= {name: value * grow for name, value in shape.items()}
    unit = np.tile(np.eye(2, 3), (n, 1, 1))
    return shape_patches(params, np.ones(n, bool), tilts, unit, (size, size))


BBA_LOCAL = Path(__file__).parent.parent / "tests" / "data" / "imod-local" / "BBalocal.xf"
BBA_TILTS = Path(__file__).parent.parent / "lmalign_jax" / "data" / "imod-bb" / "BBa.tlt"
#: IMOD's real local alignments: (local file, tilt file, image (NX, NY)).
REAL_FIELDS = {
    "bba": (BBA_LOCAL, BBA_TILTS, (512, 512)),
    "midzone2a": (
        BBA_LOCAL.parent / "midzone2alocal.xf",
        BBA_TILTS.parent.parent / "imod-midzone2" / "midzone2a.tlt",
        (1950, 1024),
    ),
}


def run(
    size=512,
    views=61,
    thickness=128,
    repeat=3,
    memory_gb=1.0,
    field="rough",
    exact=True,
    tolerance=None,
) -> dict:
    import numpy as np

    from lmalign_jax.core.local_apply import (
        column_sampling,
        local_projection_matrices,
        local_sampling,
        uniform_patches,
    )
    from lmalign_jax.io.imod_local import read_local_xf
    from lmalign_jax.recon import reconstruct
    from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local
    from lmalign_jax.recon.sheets import DEFAULT_TOLERANCE_PX, PatchGrid

    tolerance = DEFAULT_TOLERANCE_PX if tolerance is None else tolerance

    nx = ny = size
    if field == "xtilt" and (size, views) != (512, 61):
        raise SystemExit("--field xtilt is IMOD's BB set: --size 512 --views 61")
    if field in REAL_FIELDS:
        local_path, tilt_path, (nx, ny) = REAL_FIELDS[field]
        n_tilts = np.loadtxt(tilt_path).size
        if (size, views) != (max(nx, ny), n_tilts):
            raise SystemExit(
                f"--field {field} is IMOD's {nx} x {ny} px, {n_tilts}-view set: --size {max(nx, ny)} "
                f"--views {n_tilts}"
            )
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((views, ny, nx)).astype(np.float32)
    tilts = np.linspace(-60, 60, views)
    ang = np.radians(85 + rng.uniform(-0.5, 0.5, views))
    a = 1.002 * np.stack([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]).transpose(2, 0, 1)
    d = rng.uniform(-20, 20, (views, 2))
    local = _local_file(views, size, rng)
    if field in REAL_FIELDS:
        tilts = np.loadtxt(tilt_path)
        local = read_local_xf(local_path, tilts.size)
    if field == "xtilt":
        tilts = np.loadtxt(BBA_TILTS)
        x_tilts = np.full(tilts.size, -1.94)
        local, mats, shifts = uniform_patches(*local_projection_matrices(None, tilts, x_tilts), (nx, ny))
        columns = column_sampling(local, mats, shifts, (ny, nx))
    elif field == "shape":
        local, mats, shifts = _shape_field(tilts, size)
        columns = column_sampling(local, mats, shifts, (ny, nx))
    else:
        columns = local_sampling(local, tilts, (ny, nx))
    grid = PatchGrid(local.n_patches, local.start, local.spacing, 1, (ny, nx))
    sampling = LocalSampling(*columns, grid=grid)
    memory = int(memory_gb * 1e9)
    out_g = np.empty((thickness, ny, nx), np.float32)
    out_l = np.empty_like(out_g)
    out_e = np.empty_like(out_g)
    sides = {
        "global": lambda: reconstruct(stack, a, d, tilts, thickness, memory_bytes=memory, out=out_g),
        "local": lambda: reconstruct_local(
            stack, a, d, tilts, sampling, thickness, memory_bytes=memory, out=out_l, tolerance_px=tolerance
        ),
    }
    if field == "xtilt":  # what reconstruct runs for one X-axis tilt: the untilted volume read tilted
        from lmalign_jax.recon.xtilt_backprojection import reconstruct_x_tilted

        out_x = np.empty_like(out_g)
        sides["x_tilted"] = lambda: reconstruct_x_tilted(
            stack, a, d, tilts, -1.94, thickness, memory_bytes=memory, out=out_x
        )
    if exact:
        sides["local_exact"] = lambda: reconstruct_local(
            stack, a, d, tilts, sampling, thickness, memory_bytes=memory, out=out_e, tolerance_px=0
        )
    times = interleaved_times(sides, repeat)
    med = {k: statistics.median(v) for k, v in times.items()}
    voxel_updates = views * thickness * nx * ny
    return {
        "problem": {
            "size": size,
            "image_nx_ny": [nx, ny],
            "views": views,
            "thickness": thickness,
            "memory_gb": memory_gb,
            "field": field,
            "tolerance_px": tolerance,
            "patches": list(local.n_patches),
        },
        "seconds": times,
        "median_s": med,
        "ratio_local_over_global_median": med["local"] / med["global"],
        "ratio_per_repeat": [tl / tg for tl, tg in zip(times["local"], times["global"], strict=True)],
        **(
            {
                "ratio_x_tilted_over_global_median": med["x_tilted"] / med["global"],
                "ratio_x_tilted_per_repeat": [
                    tx / tg for tx, tg in zip(times["x_tilted"], times["global"], strict=True)
                ],
            }
            if "x_tilted" in times
            else {}
        ),
        **(
            {
                "ratio_local_exact_over_global_median": med["local_exact"] / med["global"],
                "sheets_vs_exact": {
                    "rms_diff_over_sd": float((out_l - out_e).std() / out_e.std()),
                    "max_abs_diff_over_sd": float(np.abs(out_l - out_e).max() / out_e.std()),
                },
            }
            if exact
            else {}
        ),
        "g_voxel_updates_per_s_median": {k: voxel_updates / v / 1e9 for k, v in med.items()},
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
    parser.add_argument("--field", choices=("rough", *REAL_FIELDS, "shape", "xtilt"), default="rough")
    parser.add_argument(
        "--tolerance", type=float, help="sheet tolerance, px (> 0; default: the library's, recon.sheets)"
    )
    parser.add_argument("--no-exact", action="store_true", help="skip the every-voxel local side")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    meta = environment(quick=False)
    if args.tolerance is not None and not args.tolerance > 0:
        parser.error("--tolerance must be > 0 (the exact reads are the local_exact side)")
    result = run(
        args.size,
        args.views,
        args.thickness,
        args.repeat,
        args.memory_gb,
        args.field,
        not args.no_exact,
        args.tolerance,
    )
    meta["loadavg_end"] = list(os.getloadavg())
    record = {"benchmark": "local_recon_bench", "environment": meta, **result}
    print(json.dumps({k: v for k, v in result.items() if k != "problem"}, indent=1))
    out = (
        args.out
        or Path(__file__).parent / "results" / f"{meta['date']}-{machine_slug(meta)}-local-recon.json"
    )
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
