"""How a solved synthetic series compares with the truth that generated it (``lmalign demo``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..models import get_model
from .selection import Selection


def compare_with_truth(result, truth, sel: Selection, marker_ids) -> dict:
    """Gauge-free comparison of a solved alignment with the series that generated it."""
    model = get_model(truth.model)
    obs = result.observations
    true_views = truth.views[sel.view_index]
    true_markers = truth.markers[np.asarray(marker_ids) - 1]  # ids are 1..n in the demo files
    with jax.enable_x64(True):
        project = jax.vmap(jax.vmap(model.project, in_axes=(None, 0)), in_axes=(0, None))
        clean = (
            np.asarray(project(jnp.asarray(true_views), jnp.asarray(true_markers)), dtype=np.float64)
            + obs.center
        )
    fitted = obs.xy + result.residuals  # the solved model's projections
    err = (fitted - clean)[obs.mask]
    model_error = float(np.sqrt(np.mean(err**2)))
    dt = result.tilts_deg - np.degrees(true_views[:, model.index("tilt")])
    tilt_error = float(np.sqrt(np.mean((dt - dt.mean()) ** 2)))
    dr = result.rotation_deg - np.degrees(true_views[:, model.index("rotation")])
    floor = truth.noise_px * result.noise_floor_factor
    lines = [
        f"solved projections vs noise-free truth: {model_error:.3f} px RMS per coordinate (noise "
        f"{truth.noise_px:.2f} px)",
        f"RMS residual {result.rms_residual_px:.3f} px vs expected noise floor {floor:.3f} px",
        f"tilt angles: {tilt_error:.3f} deg RMS error (after the common offset of {dt.mean():+.3f} deg, a "
        "gauge freedom)",
        f"tilt-axis rotation: mean error {dr.mean():+.3f} deg, RMS {np.sqrt(np.mean(dr**2)):.3f} deg",
    ]
    return {
        "noise_px": truth.noise_px,
        "model_error_px": model_error,
        "noise_floor_px": floor,
        "tilt_rms_error_deg": tilt_error,
        "tilt_offset_deg": float(dt.mean()),
        "rotation_mean_error_deg": float(dr.mean()),
        "rotation_rms_error_deg": float(np.sqrt(np.mean(dr**2))),
        "lines": lines,
    }


def truth_ok(t: dict) -> bool:
    """The demo's pass mark: projections within the noise, rotation within 0.5 deg, RMS near the floor."""
    return (
        t["model_error_px"] < t["noise_px"]
        and abs(t["rotation_mean_error_deg"]) < 0.5
        and t["tilt_rms_error_deg"] < 0.5
    )
