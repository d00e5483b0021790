"""The ``<prefix>.json`` record of one alignment: its layout, read back.

The record is built and written by :mod:`lmalign_jax.report.record_build` (:func:`build_record`,
:func:`record_to_json`); this module is the only place that parses the file: :func:`read_record`
reads one back into an :class:`AlignmentRecord` for the commands that use an earlier alignment
(``reconstruct --alignment``, ``batch --resume``).

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
from ..io.atomic import atomic_write
from ..io.errors import InputError
from ..io.markerset import IMAGE_SIZE_RULE, image_size_ok
from ..io.tilts import check_tilt_range
from ..models import MODELS, get_model
from .record_build import RECORD_VERSION, _record_units, record_to_json
from .record_local import LocalRecord, read_local_section


@dataclass(frozen=True)
class AlignmentRecord:
    """What a written record says about its alignment (views in file order, n of them).

    ``xf`` (n, 2, 3) raw -> aligned ``[A | D]`` and ``tilts_deg`` (n,) are None for an alignment
    that did not converge. Paths are as the record names them; ``excluded_by_user`` is 1-based;
    ``options`` holds the run's model, modes, stages, dtype, max_iterations, rotation and robust
    settings as written. Fields a record lacks are None. ``tilts_deg`` are those of the written
    ``.tlt``: flattened by the surface analysis' tilt change when ``surfaces["flattened"]``.
    ``exit_code`` is the command's: a step after the alignment that failed (``align
    --reconstruct``) sets it and says why in the record's ``failed_after_alignment``.
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

    def check_converged(self, purpose: str) -> None:
        """InputError naming the record when its alignment did not converge (there is nothing to
        ``purpose``, e.g. "export")."""
        if self.converged and self.xf is not None:
            return
        why = "summary.converged is false" if self.status == "converged" else f"status {self.status}"
        raise InputError(
            self.path, None, f"this alignment did not converge ({why}); there is nothing to {purpose}"
        )


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
        scale = float(np.abs(cov).max())
        if np.diag(cov).min() < -1e-9 * scale or np.abs(cov - cov.T).max() > 1e-9 * scale:
            raise InputError(
                path,
                None,
                f"view {entry.get('view_number')}: parameter_covariance is not a covariance (a negative "
                "variance, or not symmetric)",
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
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(path, None, f"record_version {version!r} is not an integer")
    if version > RECORD_VERSION:
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


def _file_name(path: str, inputs: dict, name: str) -> str | None:
    """``inputs[name]``: a file name or None; InputError naming the field for anything else."""
    value = inputs.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(path, None, f"inputs.{name} must be a file name (a string), got {value!r}")
    return value


def _view_numbers(path: str, value) -> list | None:
    """``inputs.excluded_by_user``: a list of view numbers (1-based) or None; InputError otherwise."""
    if value is None or (
        isinstance(value, list) and all(_is_number(v) and isinstance(v, int) and v > 0 for v in value)
    ):
        return value
    raise InputError(path, None, f"inputs.excluded_by_user must be a list of view numbers, got {value!r}")


def _image_size(path: str, size) -> tuple[float, float] | None:
    """``inputs.image_size`` (None when absent); InputError unless it is :data:`IMAGE_SIZE_RULE`."""
    if size is None:
        return None
    if not (isinstance(size, list) and len(size) == 2 and all(map(_is_number, size)) and image_size_ok(size)):
        raise InputError(path, None, f"inputs.image_size must be {IMAGE_SIZE_RULE}, got {size!r}")
    return float(size[0]), float(size[1])


def _summary_number(path: str, summary: dict, name: str) -> float | None:
    """``summary[name]`` (None when absent or null); InputError when it is not a finite number."""
    value = summary.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise InputError(path, None, f"summary.{name} must be a finite number, got {value!r}")
    return float(value)


def _flattened_tilts(path: str, tilts: np.ndarray, surfaces: dict) -> np.ndarray:
    """The tilts of the written ``.tlt`` of a flattened record: ``tilts`` plus the surface
    analysis' tilt change; InputError when the change or the X-axis tilt is not a number, or the
    changed tilts leave -90..90."""
    change = surfaces.get("tilt_angle_change_deg")
    if not _is_number(change):
        raise InputError(path, None, "'surfaces' is flattened but has no valid 'tilt_angle_change_deg'")
    x_tilt = surfaces.get("x_axis_tilt_deg")
    if x_tilt is not None and not (_is_number(x_tilt) and abs(x_tilt) < 90):
        raise InputError(path, None, f"surfaces.x_axis_tilt_deg must be degrees in -90..90, got {x_tilt!r}")
    flattened = tilts + change
    bad = np.flatnonzero(~(np.abs(flattened) < 90.0))
    if bad.size:
        raise InputError(
            path,
            None,
            f"surfaces.tilt_angle_change_deg {change:g} puts view {bad[0] + 1}'s tilt at "
            f"{flattened[bad[0]]:g} degrees, outside -90..90",
        )
    return flattened


def read_record(path: str, *, hint: str = "") -> AlignmentRecord:
    """Read an ``lmalign align`` record; InputError (naming ``path``, with ``hint``: what else the
    command takes) if it is not one."""
    record, version = _load_record(path, hint)
    return _parse_record(record, version, path)


def record_as_read(record: dict, path: str) -> AlignmentRecord:
    """A record being written (``build_record``'s dict) as :func:`read_record` will read it back
    from ``path`` (through its JSON, so every value is what the file will hold)."""
    return _parse_record(json.loads(record_to_json(record)), RECORD_VERSION, path)


def _parse_record(record: dict, version: int, path: str) -> AlignmentRecord:
    """An ``lmalign align`` record's contents (``record``, as its JSON holds them, of
    ``record_version`` ``version``) as :class:`AlignmentRecord`; messages name ``path``."""

    def section(name) -> dict:
        value = record.get(name)
        return value if isinstance(value, dict) else {}

    summary, inputs = section("summary"), section("inputs")
    converged = summary.get("converged") is not False
    xf, tilts = _transforms(path, record["views"]) if converged else (None, None)
    surfaces = record.get("surfaces") if isinstance(record.get("surfaces"), dict) else None
    if tilts is not None and surfaces is not None and surfaces.get("flattened") is True:
        tilts = _flattened_tilts(path, tilts, surfaces)
    outputs = record.get("outputs")
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
        image_size=_image_size(path, inputs.get("image_size")),
        markers_path=_file_name(path, inputs, "markers"),
        tilts_path=_file_name(path, inputs, "tilts"),
        stack_path=_file_name(path, inputs, "stack"),
        excluded_by_user=_view_numbers(path, inputs.get("excluded_by_user")),
        options=section("options"),
        outputs=[str(o) for o in outputs] if isinstance(outputs, list) else [],
        rms_residual_px=_summary_number(path, summary, "rms_residual_px"),
        mean_residual_px=_summary_number(path, summary, "mean_residual_px"),
        has_standard_errors="leave_one_out_rms_px" in summary,
        surfaces=surfaces,
        pixel_size_A=float(pixel) if _is_number(pixel) and pixel > 0 else None,
        model_name=model.get("name") if isinstance(model.get("name"), str) else None,
        views=_view_table(record["views"]),
        markers=_marker_table(record.get("markers")),
        sd_residual_px=_summary_number(path, summary, "sd_residual_px"),
        n_points=summary.get("n_points") if isinstance(summary.get("n_points"), int) else None,
        n_free=summary.get("n_free") if isinstance(summary.get("n_free"), int) else None,
        local=read_local_section(path, record.get("local")),
    )


def mark_record_failed(path: str | os.PathLike, exit_code: int, reason: str) -> None:
    """Rewrite the record at ``path`` (atomically) to say a step after the alignment failed:
    its ``exit_code`` and ``failed_after_alignment`` (``reason``, one line). The alignment's
    own files stay valid; the record no longer says the whole command succeeded."""
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    record["exit_code"] = int(exit_code)
    record["failed_after_alignment"] = reason
    with atomic_write(path) as f:
        f.write(record_to_json(record))
