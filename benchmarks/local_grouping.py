"""Local alignment with its increments free per view, or grouped by Etomo's group sizes in blocks or linearly.

    python -m benchmarks.local_grouping [--out FILE]

Not a timing: what each grouping does to the answer, judged as issue #15 asks.

- Simulated series (41 views x 60 markers, 2048 px, 0.3 px noise; rigid, and with a smooth 3 px
  in-plane warp, as tests/test_local_alignment.py): the RMS error of the aligned positions
  against the noise-free ones (each marker fitted through the local file as IMOD's tilt applies
  it), as a multiple of the global alignment's, seeds 1-3.
- IMOD's real BB and midzone2 sets, both axes: the mean residual global -> local (markers fitted
  through the local file as tilt applies it), and compare's 3-fold leave-out gain (mean reduction
  of the held-out points' squared prediction error, px^2; positive: the local file predicts
  better); beside them IMOD's own drop, its shipped local file judged the same way
  (tests/data/imod-local).

Each with the default keeping rule (chi-square test, 3 sd) and with every patch kept; the
increments free per view, or grouped by Etomo's default sizes (rotation and tilt by 6 views,
scale by 7: ``--local-mode``) in blocks (``group:N``, one increment per block) or linearly
(``linear:N``, increments every N views interpolated between, as Etomo's LocalRotOption 3,
LocalTiltOption 5 and LocalMagOption 3 do); the markers held at the global solution
(FixXYZCoordinates 1, the default) or, with the linear grouping, also free in each patch
(``linear_free``: FixXYZCoordinates 0). Each patch weighs its markers fully, as tiltalign does
(``even``), or, the default since 2026-12-05, by the share tilt gives the patch at each marker
(``blend``; ``LocalOptions.weighting``): the ``_blend`` rows, with the linear grouping.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import environment

SIZES = (("rotation", 6), ("tilt", 6), ("scale", 7))
BLOCKS = tuple((name, f"group:{n}") for name, n in SIZES)
LINEAR = tuple((name, f"linear:{n}") for name, n in SIZES)
DATA = Path(__file__).parent.parent / "lmalign_jax" / "data"
IMOD_LOCAL = Path(__file__).parent.parent / "tests" / "data" / "imod-local"
REAL = {
    "BBa": ("imod-bb/BBa", (512, 512)),
    "BBb": ("imod-bb/BBb", (512, 512)),
    "midzone2a": ("imod-midzone2/midzone2a", (1950, 1024)),
    "midzone2b": ("imod-midzone2/midzone2b", (1024, 1950)),
}
NOISE = 0.3


def _real(name: str):
    from lmalign_jax import io
    from lmalign_jax.observations import Observations

    stem, size = REAL[name]
    tilts = io.read_tilts(DATA / f"{stem}.tlt")
    markers = io.resid_to_markers(io.read_resid(DATA / f"{stem}.resid"), size, n_views=tilts.size)
    return Observations(markers.xy, markers.mask, tilts, size)


def _imod_drop(name: str, obs) -> dict:
    """IMOD's shipped local file judged as ours are: measured points through its .tltxf, each marker
    fitted through the global transform (with its z factors), then through the local file."""
    import numpy as np

    from lmalign_jax.core.local_apply import fit_markers_through_local
    from lmalign_jax.io.imod import read_xf
    from lmalign_jax.io.imod_local import read_local_xf

    stem, size = REAL[name]
    a, d = read_xf(DATA / f"{stem}.tltxf")
    centre = np.asarray(size) / 2
    aligned = np.einsum("vij,vmj->vmi", a, obs.xy - centre) + d[:, None]
    aligned = np.where(obs.mask[..., None], aligned, 0.0)
    start = np.loadtxt(DATA / f"{stem}fid.xyz", usecols=(1, 2, 3)) - [*centre, 0.0]
    z_factors = np.loadtxt(IMOD_LOCAL / f"{name}.zfac")
    local = read_local_xf(IMOD_LOCAL / f"{name}local.xf", n_views=obs.n_views)
    means = []
    for transform in (None, local):
        _, r = fit_markers_through_local(
            transform, aligned, obs.mask, obs.tilts_deg, size, start, z_factors=z_factors
        )
        means.append(float(np.nanmean(np.hypot(r[..., 0], r[..., 1]))))
    return {"mean_residual_global_px": means[0], "mean_residual_local_px": means[1]}


def run() -> dict:
    from lmalign_jax import align
    from lmalign_jax.analysis.compare import compare_models
    from lmalign_jax.core.local import PER_VIEW_MODES, LocalOptions, align_local
    from lmalign_jax.simulation.local_truth import aligned_position_error, warped_observations

    groupings = (("per_view", PER_VIEW_MODES, True), ("blocks", BLOCKS, True), ("linear", LINEAR, True))
    groupings += (("linear_free", LINEAR, False),)
    variants = {
        f"{label}{suffix}_{rule}": LocalOptions(
            modes=modes, significance=3.0 if rule == "test" else None, fix_markers=fix, weighting=weighting
        )
        for label, modes, fix in groupings
        for weighting, suffix in (("even", ""), ("blend", "_blend"))
        if weighting == "even" or label.startswith("linear")
        for rule in ("test", "all")
    }
    simulated = {}
    for name, warp in (("rigid", 0.0), ("warped_3px", 3.0)):
        for seed in (1, 2, 3):
            obs, clean = warped_observations(warp, seed, noise_px=NOISE)
            result = align(obs)
            base = aligned_position_error(result, None, clean)
            row = {"global_error_px": base}
            for key, options in variants.items():
                local = align_local(result, options)
                row[key] = {
                    "error_over_global": aligned_position_error(result, local.file, clean) / base,
                    "kept": sum(p.kept_local for p in local.patches),
                    "patches": len(local.patches),
                }
            simulated[f"{name}_seed{seed}"] = row
    real = {}
    for name in REAL:
        obs = _real(name)
        result = align(obs)
        row = {"imod_shipped": _imod_drop(name, obs)}
        for key, options in variants.items():
            local = align_local(result, options)
            cv = compare_models(obs, "jou", folds=3, local=options).local
            print(name, key, f"{local.global_mean_px:.4f} -> {local.local_mean_px:.4f}", file=sys.stderr)
            row[key] = {
                "mean_residual_global_px": local.global_mean_px,
                "mean_residual_local_px": local.local_mean_px,
                "kept": sum(p.kept_local for p in local.patches),
                "patches": len(local.patches),
                "leave_out_gain_px2": cv.leave_out_gain_px2,
                "leave_out_gain_se_px2": cv.leave_out_gain_se_px2,
                "delta_bic": cv.delta_bic,
            }
        real[name] = row
    return {"simulated": simulated, "real": real, "modes": {"blocks": dict(BLOCKS), "linear": dict(LINEAR)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="results JSON (default: print only)")
    args = parser.parse_args(argv)
    result = {"environment": environment(quick=False), **run()}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
