"""Bead tracking on realistic cryo stacks, with and without the whole-view registration, in one run.

    python -m benchmarks.track_cryo_bench                        # 384 px, 31 views, seeds 0-9 at 30 e/px
    python -m benchmarks.track_cryo_bench --doses 30 200 --seeds 0 1 2 3 --size 1024 --views 61 --beads 60

Each specimen (:func:`lmalign_jax.simulation.cryo.simulate_cryo_series`: gold spheres of 8 px on
the two surfaces of a 60 px slab, textured specimen with lattice patches, ice, carbon edge,
per-view shifts of ~5 px, Poisson counts at the dose) is tracked in-process by
:func:`lmalign_jax.track.track_beads` with ``register_views=False`` (the tracking before the
registration) and ``True``, alternating which goes first, ``--repeats`` times each after one
untimed tracking of the specimen (its batch shape compiles); the least time of each is kept.
Per run, against the simulator's truth (definitions of
tests/test_track_realistic.py): points found; the fraction found of the visible unambiguous
points (true centre one diameter inside the image, no other bead within 2.5 diameters); mixed
points (clean points more than half a diameter from their own bead); lost views; the centring
RMS per coordinate (clean points, mean removed); the alignment error of
``lmalign_jax.align(track.observations())`` (true positions mapped by its .xf, fitted per bead
through its tilts); the tracking's wall seconds. Timings are taken under whatever load the
machine has (recorded before and after); compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from benchmarks.common import environment, machine_slug  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _alignment_error(result, truth_xy) -> float:
    """RMS misfit (px per coordinate) of the true raw positions mapped by ``result.xf``, fitted
    per bead by a 3-D point through the solved tilts."""
    xf = result.xf
    centre = np.asarray(result.observations.center)
    q = np.einsum("vij,vbj->vbi", xf[:, :, :2], truth_xy - centre) + xf[:, None, :, 2]
    t = np.radians(result.tilts_deg)
    design = np.stack([np.cos(t), np.sin(t)], axis=1)
    fit_x = design @ np.linalg.lstsq(design, q[:, :, 0], rcond=None)[0]
    fit_y = np.mean(q[:, :, 1], axis=0, keepdims=True)
    return float(np.sqrt(np.mean((q[:, :, 0] - fit_x) ** 2 + (q[:, :, 1] - fit_y) ** 2) / 2.0))


def judge(cryo, track, size: int) -> dict:
    """The tracking against the simulator's truth (module docstring)."""
    import lmalign_jax as L

    d = cryo.specimen.bead_diameter_px
    truth = cryo.truth.xy
    live = np.flatnonzero(track.found.any(axis=0))
    ids = np.empty(live.size, dtype=np.int64)
    for k, b in enumerate(live):
        v = int(np.argmax(track.found[:, b]))
        ids[k] = int(np.argmin(np.linalg.norm(truth[v] - track.xy[v, b], axis=1)))
    found = track.found[:, live]
    err = track.xy[:, live] - truth[:, ids]
    clean = found & (cryo.truth.nearest_px[:, ids] >= d)
    pos = truth[:, ids]
    inside = np.all((pos >= d) & (pos <= size - d), axis=2)
    gaps = np.linalg.norm(pos[:, :, None] - truth[:, None, :], axis=3)
    gaps[:, np.arange(ids.size), ids] = np.inf
    wanted = inside & (gaps.min(axis=2) >= 2.5 * d)
    e = err[clean]
    out = {
        "beads": int(live.size),
        "distinct_true_beads": len(set(ids.tolist())),
        "points": int(found.sum()),
        "wanted_points": int(wanted.sum()),
        "found_fraction": round(float(found[wanted].mean()), 4) if wanted.any() else None,
        "mixed_points": int(np.sum(np.linalg.norm(e, axis=1) >= 0.5 * d)),
        "lost_views": [int(v) for v in track.lost_views],
        "centring_rms_px": round(float(np.sqrt(np.mean((e - e.mean(axis=0)) ** 2))), 4),
        "alignment_error_px": None,
    }
    try:
        views, beads = track.fit_selection()
        column = {int(b): k for k, b in enumerate(live)}
        true_xy = truth[np.ix_(views, ids[[column[int(b)] for b in beads]])]
        out["alignment_error_px"] = round(_alignment_error(L.align(track.observations()), true_xy), 4)
    except Exception as exc:  # a failed alignment is a result here, not a crash of the benchmark
        out["alignment_error_px"] = f"failed: {exc}"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--doses", type=float, nargs="+", default=[30.0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--views", type=int, default=31)
    p.add_argument("--beads", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="timed trackings per setting (the least is kept)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from lmalign_jax.simulation.cryo import Imaging, simulate_cryo_series
    from lmalign_jax.track import track_beads

    meta = environment(quick=False)
    meta["loadavg_start"] = list(os.getloadavg())

    def specimen(seed, dose):
        return simulate_cryo_series(
            n_views=args.views,
            image_size=(args.size, args.size),
            n_beads=args.beads,
            thickness_px=60.0,
            shift_px=5.0,
            imaging=Imaging(dose=dose),
            seed=seed,
        )

    warm = specimen(args.seeds[0], args.doses[0])
    for register in (False, True):
        track_beads(
            warm.stack,
            warm.series.observations.tilts_deg,
            warm.specimen.bead_diameter_px,
            register_views=register,
        )
    rows = []
    for dose in args.doses:
        for k, seed in enumerate(args.seeds):
            cryo = specimen(seed, dose)
            tilts = cryo.series.observations.tilts_deg
            d = cryo.specimen.bead_diameter_px
            track_beads(cryo.stack, tilts, d)  # compiles this specimen's batch shape: not timed
            times = {False: [], True: []}
            for _ in range(args.repeats):
                for register in (False, True) if k % 2 == 0 else (True, False):
                    t0 = time.perf_counter()
                    track_beads(cryo.stack, tilts, d, register_views=register)
                    times[register].append(time.perf_counter() - t0)
            for register in (False, True):
                load = os.getloadavg()[0]
                track = track_beads(cryo.stack, tilts, d, register_views=register)
                seconds = min(times[register])
                row = {"dose": dose, "seed": seed, "register_views": register, "track_s": round(seconds, 3)}
                row.update(judge(cryo, track, args.size))
                row["load_1min"] = round(load, 2)
                row["track_s_all"] = [round(t, 3) for t in times[register]]
                rows.append(row)
                print(json.dumps(row), flush=True)

    summary = {}
    for dose in args.doses:
        for register in (False, True):
            sel = [r for r in rows if r["dose"] == dose and r["register_views"] == register]
            key = f"{dose:g}e_{'after' if register else 'before'}"
            align = [r["alignment_error_px"] for r in sel if isinstance(r["alignment_error_px"], float)]
            summary[key] = {
                "specimens": len(sel),
                "points": sum(r["points"] for r in sel),
                "found_fraction_mean": round(float(np.mean([r["found_fraction"] for r in sel])), 4),
                "lost_views": sum(len(r["lost_views"]) for r in sel),
                "specimens_with_lost_views": sum(bool(r["lost_views"]) for r in sel),
                "mixed_points": sum(r["mixed_points"] for r in sel),
                "centring_rms_px_median": round(float(np.median([r["centring_rms_px"] for r in sel])), 4),
                "alignment_error_px_median": round(float(np.median(align)), 4) if align else None,
                "alignment_error_px_max": round(float(np.max(align)), 4) if align else None,
                "alignment_failed": len(sel) - len(align),
                "track_s_median": round(float(np.median([r["track_s"] for r in sel])), 3),
                "track_s_total": round(float(np.sum([r["track_s"] for r in sel])), 2),
            }
            print(key, json.dumps(summary[key]))
    meta["loadavg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "track_cryo_bench: track_beads on realistic cryo stacks, register_views False vs True",
        "meta": meta,
        "setup": {
            "size": args.size,
            "views": args.views,
            "beads": args.beads,
            "doses": args.doses,
            "seeds": args.seeds,
            "thickness_px": 60.0,
            "shift_px": 5.0,
        },
        "summary": summary,
        "runs": rows,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"{meta['date']}-{machine_slug(meta)}-track-cryo.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
