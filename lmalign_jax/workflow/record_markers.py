"""What an alignment record says about its markers: where its solution puts them on the views it
fitted (:func:`fitted_positions`, the model's projection of the solved markers), and the measured
points behind it (:func:`measured_markers`: the marker file, checked to be the one the record was
fitted to, :func:`check_markers_match`). The exports fill gaps and judge marker files with them.
And the part of its geometry that varies with height beyond tilt's formula (:func:`z_factors`),
which the IMOD export writes as a ``.zfac`` and the reconstruction applies."""

from __future__ import annotations

import os

import numpy as np

from ..export import ViewGeometry
from ..export.imod import projected_positions, xtilt_file_value_deg
from ..io import InputError, MarkerSet
from ..io.imod_local import ZFAC_NEGLIGIBLE
from ..report import AlignmentRecord
from .series import _on_tilt_file_views, _read_marker_file
from .status import UsageError

__all__ = [
    "MATCH_FLOOR_PX",
    "MATCH_RMS_FACTOR",
    "check_markers_match",
    "excluded_views",
    "fitted_positions",
    "measured_markers",
    "model_projection",
    "record_geometry",
    "z_factors",
    "interpolated_z_factors",
    "Z_PARAMETERS",
]

#: A marker file matches a record when the median distance of its points from where the record's
#: solution puts them is at most this many times the record's RMS residual (at least
#: :data:`MATCH_FLOOR_PX`): the record's own marker file gives its residuals (a median of about
#: 1.2 RMS), another series' file points hundreds of pixels off.
MATCH_RMS_FACTOR = 5.0
MATCH_FLOOR_PX = 2.0
#: Parameters that can make the projection height-dependent beyond tilt's ``(x cos t + z sin t,
#: y)``: with all of them neutral the z factors are 0 and are not computed (no JAX import).
Z_PARAMETERS = ("mag_x", "mag_y", "mag_z", "compression", "xstretch", "skew", "declination")


def measured_markers(record: AlignmentRecord, markers_path: str | None = None, option: str = "--markers"):
    """The measured points behind ``record`` (for the filled model): ``markers_path`` (given as
    ``option``), else the marker file the record names (as given, then beside the record). None
    when not found. UsageError when the file does not match the record
    (:func:`check_markers_match`)."""
    candidates = [markers_path] if markers_path else []
    if not markers_path and record.markers_path:
        candidates += [
            record.markers_path,
            os.path.join(
                os.path.dirname(os.path.abspath(record.path)), os.path.basename(record.markers_path)
            ),
        ]
    for path in candidates:
        if path and (os.path.isfile(path) or markers_path):
            markers, _, _ = _read_marker_file(path, None, None)
            who = f"{option} {path}" if markers_path else f"marker file {path} (named by the record)"
            return check_markers_match(record, markers, path, who)
    return None


def check_markers_match(record: AlignmentRecord, markers: MarkerSet, path: str, who: str) -> MarkerSet:
    """``markers`` (read from ``path``) on the record's views, when they are the points the record
    was fitted to; UsageError (``who`` does not match ...) otherwise. The file must have no
    point past the record's views, the record's image size (when the file records one and is not
    the file the record names: ``align --image-size`` may have overridden its header), every
    marker of the record, as many points of them on the fitted views as the fit had, and those
    points within :data:`MATCH_RMS_FACTOR` times the record's RMS residual (median) of where the
    record's model puts its solved markers (:func:`fitted_positions`)."""

    def refuse(problem: str):
        raise UsageError(
            f"{who} does not match the alignment {record.path}: {problem}; "
            "give --markers with the measured points of this series"
        )

    if record.xf is None:
        return markers  # nothing to export: export_alignment says so
    n = record.xf.shape[0]
    observed = np.flatnonzero(markers.mask.any(axis=1))
    if observed.size and observed[-1] + 1 > n:
        refuse(f"it has points on view {observed[-1] + 1} (counting from 1) but the record has {n} views")
    markers = _on_tilt_file_views(markers, path, None, n)
    if record.markers is None or record.image_size is None:
        return markers  # export_alignment refuses the record
    own = record.markers_path is not None and os.path.realpath(path) in {
        os.path.realpath(record.markers_path),
        os.path.realpath(
            os.path.join(os.path.dirname(os.path.abspath(record.path)), os.path.basename(record.markers_path))
        ),
    }
    if markers.image_size is not None and record.image_size is not None and not own:
        (fx, fy), (rx, ry) = markers.image_size, record.image_size
        if abs(fx - rx) > 0.5 or abs(fy - ry) > 0.5:
            refuse(f"it is for a {fx:g} x {fy:g} image, the record for {rx:g} x {ry:g}")
    column = {int(mid): k for k, mid in enumerate(markers.marker_ids)}
    ids = [int(i) for i in record.markers.ids]
    missing = [i for i in ids if i not in column]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        refuse(f"it lacks {len(missing)} of the record's {len(ids)} markers (ids {shown})")
    cols = [column[i] for i in ids]
    fitted = ~excluded_views(record)
    seen = markers.mask[:, cols] & fitted[:, None]
    n_seen = int(seen.sum())
    if record.n_points is not None and n_seen != record.n_points:
        refuse(
            f"it has {n_seen} points of the record's {len(ids)} markers on the {int(fitted.sum())} fitted "
            f"views, the fit had {record.n_points}"
        )
    predicted = fitted_positions(record)
    distance = np.linalg.norm(markers.xy[:, cols][seen] - predicted[seen], axis=-1)
    distance = distance[np.isfinite(distance)]
    rms = float(record.rms_residual_px) if record.rms_residual_px is not None else 0.0
    limit = max(MATCH_RMS_FACTOR * rms, MATCH_FLOOR_PX)
    median = float(np.median(distance)) if distance.size else 0.0
    if not median <= limit:
        refuse(
            f"its points lie a median {median:.1f} px from where the record's solution puts them "
            f"(the record's RMS residual is {rms:.2f} px)"
        )
    return markers


def record_geometry(record: AlignmentRecord) -> ViewGeometry:
    try:
        return ViewGeometry(record.xf, record.tilts_deg, None, record.image_size)
    except ValueError as exc:
        raise InputError(record.path, None, f"its transforms cannot be exported ({exc})") from None


def excluded_views(record: AlignmentRecord) -> np.ndarray:
    """(n,) views left out of the solution (by the user or for lack of markers)."""
    if record.views is not None:
        return record.views.excluded
    return np.zeros(record.xf.shape[0], dtype=bool)


def model_projection(record: AlignmentRecord, model, keep: np.ndarray) -> np.ndarray:
    """(k, m, 2) centred pixels: the record's solved markers projected by ``model`` with the
    record's parameters of the views ``keep`` (what the fit compared with the measured points), in
    double precision (float32 left 1e-4 px between a .zfac and its .xf, 1e-3 px at 13k px)."""
    import jax
    import jax.numpy as jnp

    views = record.views
    params = np.stack(  # (P, k), the model's units: the record has angles in degrees
        [
            np.radians(views.parameters[p][keep]) if kind == "angle" else views.parameters[p][keep]
            for p, kind in zip(model.parameters, model.kinds, strict=True)
        ]
    )
    xyz = record.markers.xyz
    with jax.enable_x64(True):
        projected = model.project(
            jnp.asarray(params[:, :, None], jnp.float64), jnp.asarray(xyz.T[:, None, :], jnp.float64)
        )
        projected = np.asarray(projected, np.float64)
    return projected.transpose(1, 2, 0)


def fitted_positions(record: AlignmentRecord) -> np.ndarray:
    """(n_views, m, 2) IMOD image coordinates: where the record's solution puts its markers on
    the fitted views (its model's projection; the exported geometry's when the record's model or
    parameters are unknown here), NaN on the others."""
    keep = ~excluded_views(record)
    out = np.full((record.xf.shape[0], record.markers.xyz.shape[0], 2), np.nan)
    centre = np.asarray(record.image_size, dtype=np.float64) / 2.0
    model = None
    if record.views is not None and record.model_name is not None:
        from ..models import MODELS, get_model  # JAX: loaded on use

        if record.model_name in MODELS:
            model = get_model(record.model_name)
            if any(p not in record.views.parameters for p in model.parameters):
                model = None
    if model is not None and keep.any():
        out[keep] = model_projection(record, model, keep) + centre
    else:
        out[keep] = projected_positions(record_geometry(record), record.markers.xyz)[keep]
    return out


def flattened_xtilt_deg(record: AlignmentRecord) -> float:
    """The X-axis tilt (degrees) a record's ``.xtilt`` gives IMOD's tilt: that of the surface
    analysis of ``align --flatten`` (``export.imod.xtilt_file_value_deg``), 0 for a record that
    was not flattened or had too few beads for one."""
    surfaces = record.surfaces or {}
    x_tilt = surfaces.get("x_axis_tilt_deg")
    if surfaces.get("flattened") is not True or not isinstance(x_tilt, int | float):
        return 0.0
    return xtilt_file_value_deg(x_tilt)


def z_factors(record: AlignmentRecord) -> np.ndarray | None:
    """(n_views, 2) ``xzfac, yzfac`` for IMOD's ``tilt``, or None when they are all negligible
    (:data:`Z_PARAMETERS` all neutral, or every factor below :data:`ZFAC_NEGLIGIBLE`: imod's
    stretch and skew act on the image, after the projection) or the record lacks what they need.

    Per fitted view, the aligned positions of the solved markers (the ``.xf`` applied to the
    model's projection) minus tilt's ``(x cos t + z sin t, y)``, regressed on z through zero
    (least squares over the markers): the part of the geometry that varies with height and
    that ``tilt`` adds back as ``z (xzfac, yzfac)``. Excluded views get factors interpolated in
    tilt (:func:`interpolated_z_factors`), as their ``.xf``. For a model whose
    projection is affine in the marker position (luther, diez), the ``.xf`` was computed with
    these factors as tiltalign computes the pair (:func:`lmalign_jax.core.result.image_transforms`),
    so the regression is exact; for the deformation models it is the least-squares correction.
    A flattened record's factors are regressed on the height in its ``.tlt``'s frame (the solved
    markers turned by the tilt change), tilted about X by its ``.xtilt``'s X-axis tilt as tilt
    tilts them. Views with a non-finite parameter were not solved: they are
    interpolated as excluded ones;
    InputError for a record whose views lack a parameter of its model.
    """
    views, markers = record.views, record.markers
    if views is None or markers is None or record.model_name is None:
        return None
    from ..models import MODELS, get_model  # JAX: loaded on use

    if record.model_name not in MODELS:
        return None
    model = get_model(record.model_name)
    missing = [p for p in model.parameters if p not in views.parameters]
    if missing:
        raise InputError(
            record.path, None, f"its {record.model_name} views lack the parameter(s) {', '.join(missing)}"
        )
    # views with a non-finite parameter were not solved (as the deformation models' readers take them)
    finite = np.all([np.isfinite(views.parameters[p]) for p in model.parameters], axis=0)
    keep = ~views.excluded & finite
    neutral = dict(zip(model.parameters, model.neutral, strict=True))
    if not keep.any() or not any(
        p in Z_PARAMETERS and np.any(np.abs(views.parameters[p][keep] - neutral[p]) > 1e-12)
        for p in model.parameters
    ):
        return None
    xyz = markers.xyz
    projected = model_projection(record, model, keep)  # (k, m, 2), centred pixels
    xf = record.xf[keep]
    aligned = np.einsum("kij,kmj->kmi", xf[:, :, :2], projected) + xf[:, None, :, 2]
    # the frame of the .tlt: a flattened record's tilts carry the surface analysis' tilt change
    # c, so its volume (and tilt's z) is the solved one turned by c about y
    change = 0.0
    surfaces = record.surfaces or {}
    if surfaces.get("flattened") is True:
        change = np.radians(float(surfaces.get("tilt_angle_change_deg") or 0.0))
    x_tilt = np.radians(flattened_xtilt_deg(record))
    x = xyz[:, 0] * np.cos(change) - xyz[:, 2] * np.sin(change)
    z = xyz[:, 0] * np.sin(change) + xyz[:, 2] * np.cos(change)
    tilt = np.radians(record.tilts_deg[keep])[:, None]
    ideal = np.stack(
        [
            x[None] * np.cos(tilt) + z[None] * np.sin(tilt),
            np.broadcast_to(xyz[:, 1], tilt.shape[:1] + xyz[:, 1].shape),
        ],
        axis=-1,
    )
    # the height tilt's z factors multiply: in the volume its .xtilt tilts about X by x_tilt
    height = z * np.cos(x_tilt) - xyz[:, 1] * np.sin(x_tilt)
    denominator = float(np.sum(height * height))
    out = np.zeros((record.xf.shape[0], 2))
    if denominator > 0:
        out[keep] = np.einsum("m,kmi->ki", height, aligned - ideal) / denominator
        out = interpolated_z_factors(out, keep, views.nominal_tilts_deg)
    return out if np.abs(out).max() >= ZFAC_NEGLIGIBLE else None


def interpolated_z_factors(
    z_factors: np.ndarray, solved: np.ndarray, nominal_tilts_deg: np.ndarray
) -> np.ndarray:
    """(V, 2) ``z_factors`` with the views not ``solved`` (V,) bool given factors interpolated
    linearly in nominal tilt from the solved ones (the nearest copied beyond them), as their
    ``.xf`` is (``report.views.interpolate_transforms``): tilt reconstructs those views too."""
    out = np.array(z_factors, float)
    if solved.any() and not solved.all():
        tilts = np.asarray(nominal_tilts_deg, float)
        order = np.argsort(tilts[solved], kind="stable")
        for i in range(2):
            out[~solved, i] = np.interp(tilts[~solved], tilts[solved][order], out[solved, i][order])
    return out
