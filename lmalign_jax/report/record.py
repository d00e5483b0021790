"""The ``<prefix>.json`` record of one alignment: built from a result, written, read back.

:func:`build_record` turns a result into one JSON-ready ``dict`` (the single source of the
numbers shown by the summary and the figure); :func:`record_to_json` writes it. This module is
the only place that knows the layout of the file: :func:`read_record` reads one back into an
:class:`AlignmentRecord` for the commands that use an earlier alignment (``reconstruct
--alignment``, ``batch --resume``).

Optional sections, present only when their option was used: ``robust``, ``truth``,
``surfaces`` (IMOD's surface analysis, :meth:`~lmalign_jax.analysis.surfaces.SurfaceAnalysis.to_dict`,
with ``flattened``: whether its tilt change was applied to the ``.tlt``). They add to version 1:
a reader that does not know one ignores it.

Records carry, when the run computed standard errors, each fitted view's
``parameter_covariance`` (k x k, record units: degrees for angles) and a ``misregistration``
section (the coarse map, the near-degenerate directions in words); both were added within
version 1, and :func:`read_covariance` reads them back.

A ``local`` section (``align --local``: the local file's name, per patch its centre, markers,
residuals before and after and whether it was kept and why, and the totals) was added within
version 1 too; its layout is in :mod:`lmalign_jax.report.record_local`, and
:attr:`AlignmentRecord.local` reads it back (None when absent).

Conventions: views are 0-based in the record (``"view"``) with IMOD's 1-based number beside
(``"view_number"``); angles in degrees; lengths in pixels; residual = projected - measured.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..analysis.covariance import AlignmentCovariance
from ..analysis.misregistration import COORDINATES, DEFINITION, misregistration, misregistration_map
from ..core.result import AlignmentResult
from ..io.errors import InputError
from ..io.tilts import check_tilt_range
from ..models import MODELS, get_model
from .record_local import LocalRecord, local_section, read_local_section
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


# --------------------------------------------------------------------------- reading a record back


@dataclass(frozen=True)
class AlignmentRecord:
    """What a written record says about its alignment (views in file order, n of them).

    ``xf`` (n, 2, 3) raw -> aligned ``[A | D]`` and ``tilts_deg`` (n,) are None for an alignment
    that did not converge. Paths are as the record names them; ``excluded_by_user`` is 1-based;
    ``options`` holds the run's model, modes, stages, dtype, max_iterations, rotation and robust
    settings as written. Fields a record lacks are None. ``tilts_deg`` are those of the written
    ``.tlt``: flattened by the surface analysis' tilt change when ``surfaces["flattened"]``.
    """

    path: str
    record_version: int
    converged: bool
    status: str
    exit_code: int | None
    xf: np.ndarray | None
    tilts_deg: np.ndarray | None
    image_size: tuple[float, float] | None
    markers_path: str | None = None
    tilts_path: str | None = None
    stack_path: str | None = None
    excluded_by_user: list | None = None
    options: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    rms_residual_px: float | None = None
    mean_residual_px: float | None = None
    has_standard_errors: bool = False
    surfaces: dict | None = None
    pixel_size_A: float | None = None
    model_name: str | None = None
    views: ViewTable | None = None
    markers: MarkerTable | None = None
    sd_residual_px: float | None = None
    n_points: int | None = None
    n_free: int | None = None
    local: LocalRecord | None = None

    @property
    def local_path(self) -> str | None:
        """The local alignment file the record names, beside the record (None: no ``local``)."""
        if self.local is None:
            return None
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), self.local.file)


@dataclass(frozen=True)
class ViewTable:
    """The record's per-view numbers (n views, file order): ``excluded`` (n,) bool,
    ``nominal_tilts_deg`` (n,), ``parameters`` name -> (n,) (the model's, degrees/pixels/
    ratios), ``mean_residual_px`` (n,) (NaN: no point)."""

    excluded: np.ndarray
    nominal_tilts_deg: np.ndarray
    parameters: dict
    mean_residual_px: np.ndarray


@dataclass(frozen=True)
class MarkerTable:
    """The record's solved markers (m): ``ids`` (m,) in the input file, ``xyz`` (m, 3) pixels
    from the specimen centre, ``mean_residual_px`` (m,) (NaN: no point)."""

    ids: np.ndarray
    xyz: np.ndarray
    mean_residual_px: np.ndarray


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _transforms(path: str, views: list) -> tuple[np.ndarray, np.ndarray]:
    xf = np.empty((len(views), 2, 3))
    tilts = np.empty(len(views))
    for k, v in enumerate(views):
        values = v.get("xf") if isinstance(v, dict) else None
        tilt = v.get("tilt_deg") if isinstance(v, dict) else None
        if not (
            isinstance(values, list)
            and len(values) == 6
            and all(map(_is_number, values))
            and _is_number(tilt)
        ):
            raise InputError(path, None, f"view {k} has no valid 'xf' (6 numbers) and 'tilt_deg'")
        xf[k, :, :2] = np.reshape(values[:4], (2, 2))
        xf[k, :, 2] = values[4:]
        tilts[k] = tilt
    check_tilt_range(tilts, path)
    return xf, tilts


def _number_or_nan(value) -> float:
    return float(value) if _is_number(value) else float("nan")


def _view_table(views: list) -> ViewTable | None:
    """The per-view table, or None when a view lacks its numbers (an older or cut record)."""
    names = views[0].get("parameters") if isinstance(views[0], dict) else None
    if not isinstance(names, dict) or not names:
        return None
    rows = []
    for v in views:
        params = v.get("parameters") if isinstance(v, dict) else None
        if not (
            isinstance(params, dict)
            and params.keys() == names.keys()
            and (v.get("excluded") or all(map(_is_number, params.values())))
            and _is_number(v.get("nominal_tilt_deg"))
        ):
            return None  # an excluded view has no solved parameters (null): NaN
        rows.append(v)
    return ViewTable(
        excluded=np.array([bool(v.get("excluded")) for v in rows]),
        nominal_tilts_deg=np.array([float(v["nominal_tilt_deg"]) for v in rows]),
        parameters={n: np.array([_number_or_nan(v["parameters"][n]) for v in rows]) for n in names},
        mean_residual_px=np.array([_number_or_nan(v.get("mean_residual_px")) for v in rows]),
    )


def _marker_table(markers) -> MarkerTable | None:
    """The solved markers, or None when the record has none (a failed alignment)."""
    if not isinstance(markers, list) or not markers:
        return None
    keys = ("x", "y", "z")
    if not all(
        isinstance(m, dict) and isinstance(m.get("id"), int) and all(_is_number(m.get(k)) for k in keys)
        for m in markers
    ):
        return None
    return MarkerTable(
        ids=np.array([m["id"] for m in markers], dtype=np.int64),
        xyz=np.array([[float(m[k]) for k in keys] for m in markers]),
        mean_residual_px=np.array([_number_or_nan(m.get("mean_residual_px")) for m in markers]),
    )


def read_covariance(path: str) -> AlignmentCovariance:
    """The fitted views' parameters and covariance from a record (for the misregistration of
    points); InputError naming ``path`` when it is not a record or carries no covariance."""
    record, _ = _load_record(path)
    model_name = record.get("model", {}).get("name") if isinstance(record.get("model"), dict) else None
    if model_name not in MODELS:
        raise InputError(path, None, f"unknown or missing model name {model_name!r}")
    model = get_model(model_name)
    to_record = _record_units(model)
    k = model.n_parameters
    views, covariances = [], []
    for entry in record["views"]:
        if not isinstance(entry, dict) or entry.get("excluded"):
            continue
        cov = entry.get("parameter_covariance")
        params = entry.get("parameters")
        if cov is None:
            raise InputError(
                path,
                None,
                f"view {entry.get('view_number')} has no parameter covariance: the record was written "
                "without standard errors (--no-errors, batch, an older lmalign) or its fit was singular; "
                "re-run lmalign align",
            )
        try:
            cov = np.asarray(cov, dtype=np.float64)
            values = np.array([params[name] for name in model.parameters], dtype=np.float64)
        except (TypeError, KeyError, ValueError):
            cov, values = None, None
        if cov is None or cov.shape != (k, k) or not (np.isfinite(cov).all() and np.isfinite(values).all()):
            raise InputError(
                path, None, f"view {entry.get('view_number')}: parameters or parameter_covariance malformed"
            )
        views.append(values / to_record)
        covariances.append(cov / np.outer(to_record, to_record))
    if not views:
        raise InputError(path, None, "no fitted views")
    summary = record.get("summary") if isinstance(record.get("summary"), dict) else {}
    sigma = summary.get("sigma_px")
    return AlignmentCovariance(
        model, np.array(views), np.array(covariances), float(sigma) if _is_number(sigma) else float("nan")
    )


def _load_record(path: str, hint: str = "") -> tuple[dict, int]:
    """The parsed record and its version; InputError naming ``path`` if it is not one (``hint``:
    what to give instead, added to the message of a JSON file that is not a record)."""
    if not os.path.isfile(path):
        raise InputError(
            path, None, "is a directory, not a file" if os.path.isdir(path) else "file not found"
        )
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(path, e.lineno, f"not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise InputError(path, None, "not UTF-8 text (not an lmalign .json record)") from None
    views = record.get("views") if isinstance(record, dict) else None
    if not isinstance(views, list) or not views:
        raise InputError(
            path,
            None,
            "not an lmalign alignment record (no 'views' list)" + (f"; {hint}" if hint else ""),
        )
    version = record.get("record_version", 0)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise InputError(
            path,
            None,
            f"record_version {version} is newer than this lmalign reads ({RECORD_VERSION}); "
            "update lmalign_jax",
        )
    return record, version


def read_track_settings(path: str) -> dict:
    """The ``settings`` of a tracking record (``<prefix>_track.json``, ``lmalign track``): the
    stack and tilt file, bead diameter and its source, rotation and target number of beads, as
    written; InputError naming ``path`` when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f).get("settings")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise InputError(path, None, f"not a tracking record ({e.__class__.__name__})") from None
    if not isinstance(settings, dict):
        raise InputError(path, None, "not a tracking record (no 'settings')")
    return settings


def read_record(path: str, *, hint: str = "") -> AlignmentRecord:
    """Read an ``lmalign align`` record; InputError (naming ``path``, with ``hint``: what else the
    command takes) if it is not one."""
    record, version = _load_record(path, hint)

    def section(name) -> dict:
        value = record.get(name)
        return value if isinstance(value, dict) else {}

    summary, inputs = section("summary"), section("inputs")
    converged = summary.get("converged") is not False
    xf, tilts = _transforms(path, record["views"]) if converged else (None, None)
    size = inputs.get("image_size")
    image_size = (
        (float(size[0]), float(size[1]))
        if isinstance(size, list) and len(size) == 2 and all(map(_is_number, size))
        else None
    )
    outputs = record.get("outputs")
    surfaces = record.get("surfaces") if isinstance(record.get("surfaces"), dict) else None
    flattened = surfaces is not None and surfaces.get("flattened") is True
    if tilts is not None and flattened:
        change = surfaces.get("tilt_angle_change_deg")
        if not _is_number(change):
            raise InputError(path, None, "'surfaces' is flattened but has no valid 'tilt_angle_change_deg'")
        tilts = tilts + change
    pixel = inputs.get("pixel_size_A")
    model = section("model")
    return AlignmentRecord(
        path=path,
        record_version=version,
        converged=converged,
        status=str(summary.get("status", "failed")),
        exit_code=record.get("exit_code"),
        xf=xf,
        tilts_deg=tilts,
        image_size=image_size,
        markers_path=inputs.get("markers"),
        tilts_path=inputs.get("tilts"),
        stack_path=inputs.get("stack"),
        excluded_by_user=inputs.get("excluded_by_user"),
        options=section("options"),
        outputs=[str(o) for o in outputs] if isinstance(outputs, list) else [],
        rms_residual_px=summary.get("rms_residual_px"),
        mean_residual_px=summary.get("mean_residual_px"),
        has_standard_errors="leave_one_out_rms_px" in summary,
        surfaces=surfaces,
        pixel_size_A=float(pixel) if _is_number(pixel) and pixel > 0 else None,
        model_name=model.get("name") if isinstance(model.get("name"), str) else None,
        views=_view_table(record["views"]),
        markers=_marker_table(record.get("markers")),
        sd_residual_px=summary.get("sd_residual_px") if _is_number(summary.get("sd_residual_px")) else None,
        n_points=summary.get("n_points") if isinstance(summary.get("n_points"), int) else None,
        n_free=summary.get("n_free") if isinstance(summary.get("n_free"), int) else None,
        local=read_local_section(path, record.get("local")),
    )
