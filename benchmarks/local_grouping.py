"""Local alignment with its increments free per view or grouped as Etomo groups them.

    python -m benchmarks.local_grouping [--out FILE]

Not a timing: what each grouping does to the answer, judged as issue #15 asks.

- Simulated series (41 views x 60 markers, 2048 px, 0.3 px noise; rigid, and with a smooth 3 px
  in-plane warp, as tests/test_local_alignment.py): the RMS error of the aligned positions
  against the noise-free ones (each marker fitted through the local file as IMOD's tilt applies
  it), as a multiple of the global alignment's, seeds 1-3.
- IMOD's real BBa and midzone2a sets: the mean residual global -> local (markers fitted through
  the local file as tilt applies it), and compare's 3-fold leave-out gain (mean reduction of the
  held-out points' squared prediction error, px^2; positive: the local file predicts better).

Each with the default keeping rule (chi-square test, 3 sd) and with every patch kept, the
increments free per view (the default) and grouped as Etomo's defaults (rotation and tilt by 6
views, scale by 7: ``--local-mode``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import environment

ETOMO = (("rotation", "group:6"), ("tilt", "group:6"), ("scale", "group:7"))
DATA = Path(__file__).parent.parent / "lmalign_jax" / "data"
REAL = {"BBa": ("imod-bb/BBa", (512, 512)), "midzone2a": ("imod-midzone2/midzone2a", (1950, 1024))}
SIZE, NOISE = 2048, 0.3


def _warped(warp_px: float, seed: int):
    """(observations, noise-free centred raw positions): a smooth conformal warp growing with tilt."""
    import jax
    import numpy as np

    from lmalign_jax import get_model, simulate
    from lmalign_jax.observations import Observations

    s = simulate(n_views=41, n_markers=60, image_size=(SIZE, SIZE), noise_px=NOISE, seed=seed)
    with jax.enable_x64(True):
        project = jax.vmap(jax.vmap(get_model("jou").project, in_axes=(None, 0)), in_axes=(0, None))
        clean = np.asarray(project(s.views, s.markers))
    u = clean / (SIZE / 2)
    amp = warp_px * s.observations.tilts_deg[:, None] / 60.0
    clean = clean + np.stack([amp * (u[..., 0] ** 2 - u[..., 1] ** 2), amp * 2 * u[..., 0] * u[..., 1]], -1)
    noise = NOISE * np.random.default_rng(seed + 100).standard_normal(clean.shape)
    obs = Observations(clean + noise + SIZE / 2, s.observations.mask, s.observations.tilts_deg, (SIZE, SIZE))
    return obs, clean


def _aligned_error(result, local, clean) -> float:
    import numpy as np

    from lmalign_jax.core.local_apply import fit_markers_through_local, project_through_local

    obs, xf = result.observations, result.xf
    truth = np.einsum("vij,vmj->vmi", xf[:, :, :2], clean) + xf[:, None, :, 2]
    xyz, _ = fit_markers_through_local(
        local, result.aligned_xy() - obs.center, obs.mask, result.tilts_deg, obs.image_size, result.markers
    )
    predicted = project_through_local(local, xyz, result.tilts_deg, obs.image_size)
    error = np.where(obs.mask[..., None], predicted - truth, 0)
    return float(np.sqrt(np.sum(error**2) / (2 * obs.n_observed)))


def _real(name: str):
    from lmalign_jax import io
    from lmalign_jax.observations import Observations

    stem, size = REAL[name]
    tilts = io.read_tilts(DATA / f"{stem}.tlt")
    markers = io.resid_to_markers(io.read_resid(DATA / f"{stem}.resid"), size, n_views=tilts.size)
    return Observations(markers.xy, markers.mask, tilts, size)


def run() -> dict:
    from lmalign_jax import align
    from lmalign_jax.analysis.compare import compare_models
    from lmalign_jax.core.local import LocalOptions, align_local

    variants = {
        "per_view_test": LocalOptions(),
        "per_view_all": LocalOptions(significance=None),
        "etomo_test": LocalOptions(modes=ETOMO),
        "etomo_all": LocalOptions(modes=ETOMO, significance=None),
    }
    simulated = {}
    for name, warp in (("rigid", 0.0), ("warped_3px", 3.0)):
        for seed in (1, 2, 3):
            obs, clean = _warped(warp, seed)
            result = align(obs)
            base = _aligned_error(result, None, clean)
            row = {"global_error_px": base}
            for key, options in variants.items():
                local = align_local(result, options)
                row[key] = {
                    "error_over_global": _aligned_error(result, local.file, clean) / base,
                    "kept": sum(p.kept_local for p in local.patches),
                    "patches": len(local.patches),
                }
            simulated[f"{name}_seed{seed}"] = row
    real = {}
    for name in REAL:
        obs = _real(name)
        result = align(obs)
        row = {}
        for key, options in variants.items():
            local = align_local(result, options)
            cv = compare_models(obs, "jou", folds=3, local=options).local
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
    return {"simulated": simulated, "real": real, "etomo_modes": dict(ETOMO)}


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
