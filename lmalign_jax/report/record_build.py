"""Building and writing the ``<prefix>.json`` record of one alignment.

:func:`build_record` turns a result into one JSON-ready ``dict`` (the single source of the
numbers shown by the summary and the figure); :func:`record_to_json` writes it as text. The
layout, its optional sections and its conventions are described in
:mod:`lmalign_jax.report.record`, which reads a record back (the only JSON reader); its ``local``
section is built in :mod:`lmalign_jax.report.record_local`. :data:`RECORD_VERSION` and the record
units of view parameters (:func:`_record_units`) are defined here and used by the reader.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..analysis.covariance import AlignmentCovariance
from ..analysis.misregistration import COORDINATES, DEFINITION, misregistration, misregistration_map
from ..core.result import AlignmentResult
from .record_local import local_section
from .views import FileViews, aligned_model_xy

#: Layout version of the record, written as its ``record_version``; a reader refuses newer ones.
#: Records written before the field existed read as version 0 (the same layout).
RECORD_VERSION = 1


def _stats(lengths: np.ndarray) -> dict:
    lengths = lengths[np.isfinite(lengths)]
    if lengths.size == 0:
        return {"n_points": 0, "mean_residual_px": None, "rms_residual_px": None, "max_residual_px": None}
    return {
        "n_points": int(lengths.size),
        "mean_residual_px": float(lengths.mean()),
        # per-component RMS, as rms_residual_px of the whole fit (|r|^2 has two components)
        "rms_residual_px": float(np.sqrt(np.mean(lengths**2) / 2.0)),
        "max_residual_px": float(lengths.max()),
    }


def build_record(
    result: AlignmentResult,
    fv: FileViews,
    *,
    marker_ids,
    inputs: dict,
    options: dict,
    n_worst: int = 10,
    software: dict | None = None,
    extra: dict | None = None,
    errors=None,
    local=None,
) -> dict:
    """Everything about one alignment as a JSON-ready dict.

    ``inputs`` and ``options`` describe the run (files, image size, exclusions, modes...) and
    are stored as given; ``marker_ids`` (m,) are the markers' ids in the input file.
    ``errors`` (an ``uncertainty.Uncertainty`` of ``result``) adds standard errors per view
    parameter and marker coordinate and leave-one-out residuals. ``local``: (LocalSolution,
    LocalOptions, file name) of ``align --local``, for the ``local`` section.
    """
    model = result.model
    obs = result.observations
    lengths = np.linalg.norm(fv.residuals, axis=-1)
    all_lengths = lengths[fv.mask]
    mean = float(all_lengths.mean()) if all_lengths.size else float("nan")
    sd = float(all_lengths.std(ddof=1)) if all_lengths.size > 1 else float("nan")
    center = obs.center
    aligned, ideal = aligned_model_xy(fv, result.markers, center)
    dev = (aligned - ideal)[fv.mask]

    views = []
    for v in range(fv.n_views):
        entry = {
            "view": v,
            "view_number": v + 1,
            "excluded": bool(fv.excluded[v]),
            "nominal_tilt_deg": float(fv.nominal_tilts_deg[v]),
            "tilt_deg": float(fv.tilts_deg[v]),
            "delta_tilt_deg": float(fv.tilts_deg[v] - fv.nominal_tilts_deg[v]),
            "parameters": {name: float(fv.parameters[name][v]) for name in model.parameters},
            **_stats(lengths[v][fv.mask[v]]),
            "xf": [float(x) for x in (*fv.xf[v, :, :2].ravel(), *fv.xf[v, :, 2])],
        }
        if errors is not None and not fv.excluded[v]:
            k = int(np.flatnonzero(fv.view_index == v)[0])
            entry["standard_errors"] = {
                name: float(errors.parameter_se(name)[k]) for name in model.parameters
            }
        views.append(entry)

    markers = []
    for i in range(obs.n_markers):
        x, y, z = (float(u) for u in result.markers[i])
        markers.append(
            {
                "index": i,
                "id": int(marker_ids[i]),
                "x": x,
                "y": y,
                "z": z,
                "n_views": int(fv.mask[:, i].sum()),
                **_stats(lengths[:, i][fv.mask[:, i]]),
            }
        )
        if errors is not None:
            markers[-1]["standard_errors"] = dict(
                zip(("x", "y", "z"), (float(e) for e in errors.markers_se[i]), strict=True)
            )

    worst = []
    for p in result.worst_points(n_worst):
        v = int(fv.view_index[p["view"]])
        worst.append(
            {
                "marker": p["marker"],
                "marker_id": int(marker_ids[p["marker"]]),
                "view": v,
                "view_number": v + 1,
                "x": p["x"],
                "y": p["y"],
                "dx": p["dx"],
                "dy": p["dy"],
                "residual_px": p["length"],
                "sds_above_mean": (p["length"] - mean) / sd if sd > 0 else None,
            }
        )
        if errors is not None:
            loo = errors.loo_residuals[p["view"], p["marker"]]
            worst[-1]["leave_one_out_residual_px"] = float(np.hypot(loo[0], loo[1]))

    stages = [
        {
            "name": s.name,
            "iterations": s.iterations,
            "accepted": s.accepted,
            "seconds": s.seconds,
            "status": s.status,
            "rms_residual_px": s.rms_residual_px,
            "n_free": s.n_free,
        }
        for s in result.stages
    ]
    rotation = fv.parameters["rotation"][~fv.excluded]
    summary = {
        "status": result.status,
        "converged": result.converged,
        "rms_residual_px": result.rms_residual_px,
        "mean_residual_px": result.mean_residual_px,
        "sd_residual_px": sd,
        "n_points": obs.n_observed,
        "n_free": result.n_free,
        "noise_floor_factor": result.noise_floor_factor,
        "sigma_px": result.sigma_px,
        "rotation_estimated_deg": result.rotation_estimated_deg,
        "rotation_mean_deg": float(np.mean(rotation)),
        "tilt_range_deg": [float(fv.tilts_deg.min()), float(fv.tilts_deg.max())],
        "solve_seconds": float(sum(s.seconds for s in result.stages)),
        # the .xf applied to the measured points vs (x cos t + z sin t, y) of the solved markers
        "aligned_check_rms_px": {
            "x": float(np.sqrt(np.mean(dev[:, 0] ** 2))) if dev.size else None,
            "y": float(np.sqrt(np.mean(dev[:, 1] ** 2))) if dev.size else None,
        },
    }
    record = {
        "record_version": RECORD_VERSION,
        "software": dict(software or {}),
        "inputs": dict(inputs),
        "model": {
            "name": model.name,
            "description": model.description,
            "parameters": list(model.parameters),
            "units": {
                p: ("deg" if k == "angle" else "px" if k == "length" else "ratio")
                for p, k in zip(model.parameters, model.kinds, strict=True)
            },
        },
        "options": dict(options),
        "stages": stages,
        "summary": summary,
        "views": views,
        "markers": markers,
        "worst_points": worst,
    }
    if errors is not None:
        summary["leave_one_out_rms_px"] = errors.loo_rms_px
        summary["leave_one_out_undetermined_points"] = errors.loo_undetermined
        summary["standard_errors_note"] = (
            "1-sigma, from sigma^2 (J^T J)^-1 with sigma = RMS residual corrected for the free "
            "parameters; tilts relative to their mean offset from nominal"
        )
    covariance = getattr(errors, "covariance", None) if errors is not None else None
    if covariance is not None and np.isfinite(covariance.view_covariance).all():  # else singular: none
        to_record = _record_units(model)
        for k, v in enumerate(fv.view_index):
            scaled = covariance.view_covariance[k] * np.outer(to_record, to_record)
            views[int(v)]["parameter_covariance"] = scaled
        record["misregistration"] = _misregistration_section(result, fv, covariance)
    if local is not None:
        solution, local_options, file_name = local
        record["local"] = local_section(solution, local_options, file_name, marker_ids)
    record.update(extra or {})
    return record


_PLAIN_NAMES = {"dx": "x shift", "dy": "y shift", "xstretch": "x-stretch", "beamtilt": "beam tilt"}


def _record_units(model) -> np.ndarray:
    """Record units per model unit of each view parameter (degrees for angles), (k,)."""
    return np.array([math.degrees(1.0) if kind == "angle" else 1.0 for kind in model.kinds])


def describe_degeneracy(degeneracy, view_numbers) -> str:
    """A near-degenerate direction in plain words; ``view_numbers`` (n_fit,) 1-based file
    numbers of the result's views."""
    names: dict[str, list[int]] = {}
    shared, markers = [], []
    for m in degeneracy.members:
        plain = _PLAIN_NAMES.get(m.parameter, m.parameter)
        if m.kind == "view":
            names.setdefault(plain, []).append(int(view_numbers[m.view]))
        elif m.kind == "shared":
            shared.append(f"the shared {plain} (view {int(view_numbers[m.view])} and others)")
        else:
            markers.append(m.parameter)
    parts = [
        f"{name} of view{'s' if len(views) > 1 else ''} {', '.join(map(str, sorted(views)))}"
        for name, views in names.items()
    ]
    parts += shared + markers
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    verb = "is nearly undetermined" if len(parts) == 1 else "are nearly interchangeable"
    return (
        f"{listed} {verb}: the data hold {100 * degeneracy.information:.2g}% of the information "
        "they would give each alone"
    )


def _misregistration_section(result: AlignmentResult, fv: FileViews, covariance: AlignmentCovariance) -> dict:
    view_numbers = np.asarray(fv.view_index) + 1
    return {
        "definition": DEFINITION,
        "coordinates": COORDINATES,
        "at_centre_px": float(misregistration(covariance, np.zeros((1, 3)))[0]),
        "map": misregistration_map(covariance, result.observations.image_size, result.markers),
        "near_degenerate": [
            {
                "text": describe_degeneracy(d, view_numbers),
                "information": d.information,
                "members": [
                    {
                        "kind": m.kind,
                        "parameter": m.parameter,
                        "view_number": None if m.view is None else int(view_numbers[m.view]),
                        "weight": m.weight,
                    }
                    for m in d.members
                ],
            }
            for d in covariance.degeneracies
        ],
    }


def _clean(value):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def record_to_json(record: dict) -> str:
    """The record as indented JSON text (NaN written as null)."""
    return json.dumps(_clean(record), indent=1, allow_nan=False) + "\n"
