"""Which alignment a reconstruction applies: an ``lmalign align`` record read back
(:func:`read_alignment_json`: its transforms and tilts, a deformation model's warp or shape, the z
factors of a model whose projection varies with height, a flattened record's X-axis tilt) or
IMOD's files (:func:`read_alignment_files`: ``.xf``, a tilt file, optionally tiltalign's
``.zfac``), each checked line by line before any reconstruction starts; :func:`with_x_axis_tilt`
adds tilt's XTILTFILE and XAXISTILT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..deformation_parameters import DEFORMATION_PARAMETERS, WARP_PARAMETERS, rigid_part_through_xf
from ..export.imod import read_xtilt, read_zfac
from ..io import read_xf
from ..io.errors import InputError
from ..recon.fbp import MAX_XF_ENTRY, transform_measures
from ..recon.warp_backprojection import WarpSampling
from ..report import read_record
from .record_markers import flattened_xtilt_deg, z_factors
from .series import check_tilts_vary, read_tilt_file

__all__ = [
    "Alignment",
    "ShapeViews",
    "MAX_Z_FACTOR",
    "Z_FACTOR_EFFECT_PX",
    "read_alignment_json",
    "read_alignment_files",
    "with_x_axis_tilt",
]

#: Largest |xzfac|, |yzfac| taken from a z-factor file (tilt's are small corrections to sin(tilt)
#: and 0; 1 would double a height).
MAX_Z_FACTOR = 1.0


class ShapeViews(NamedTuple):
    """A ``--model shape`` record's per-view parameters (name -> (V,) values, degrees and pixels)
    and the views its fit solved (V,), for ``core.shape_apply.shape_patches``."""

    parameters: dict
    fitted: np.ndarray


@dataclass
class Alignment:
    """Per-view transforms and tilts for the reconstruction, in the stack's view order."""

    xf_A: np.ndarray  # (n, 2, 2)
    xf_shift: np.ndarray  # (n, 2), unbinned pixels
    tilts_deg: np.ndarray  # (n,)
    source: str  # what to show the user
    xf_source: str  # the file the transforms came from
    tilt_source: str  # the file the tilts came from
    image_size: tuple[float, float] | None = None  # the image size the alignment was made for
    local_path: str | None = None  # the local alignment file a record names (align --local)
    local_summary: str | None = None  # its patches kept and residuals, in words
    warp: WarpSampling | None = None  # a warp model's per-view warp, applied position by position
    shape: ShapeViews | None = None  # a shape model's per-view shape, applied position by position
    # (n, 2) xzfac, yzfac: the height-dependent part beyond tilt's formula (luther, diez), applied as
    # tilt's ZFACTORFILE; None when negligible
    z_factors: np.ndarray | None = None
    z_source: str | None = None  # the file the z factors came from
    # a record's z factors too small to apply (Z_FACTOR_EFFECT_PX) but written as its .zfac by
    # export (ZFAC_NEGLIGIBLE): with them, as tilt with that .zfac, a local file's own are applied
    small_z_factors: np.ndarray | None = None
    # (n,) the X-axis tilt of each view, degrees, as tilt applies it: the .xtilt value minus
    # XAXISTILT (a flattened record's: its .xtilt's); None when there is none
    x_tilts_deg: np.ndarray | None = None
    x_tilt_source: str | None = None  # where the X-axis tilts came from
    # 0-based views the alignment did not fit (a record's excluded views: their transforms are
    # interpolated), left out of the tomogram by default as Etomo copies ExcludeList to tilt.com
    excluded_views: np.ndarray | None = None


def read_alignment_json(path: str) -> Alignment:
    """The per-view transforms and tilts of an ``lmalign align`` record (``--alignment``)."""
    record = read_record(path, hint="give --xf and --tlt for IMOD files")
    if not record.converged:
        raise InputError(
            path, None, f"this alignment did not converge ({record.status}); it has no usable transforms"
        )
    _check_xf_lines(path, record.xf[:, :, :2], record.xf[:, :, 2], by_view=True)
    summary = None
    if record.local is not None:
        loc = record.local
        summary = f"{loc.n_kept} of {loc.n_patches} patches kept"
        if loc.global_mean_residual_px is not None and loc.local_mean_residual_px is not None:
            summary += (
                f", mean residual {loc.global_mean_residual_px:.4f} px global, "
                f"{loc.local_mean_residual_px:.4f} px local"
            )
    warp, shape = _warp_sampling(record), _shape_views(record)
    # a deformation model's own sampling carries its geometry whole
    zfac = z_factors(record) if warp is None and shape is None else None
    alignment = Alignment(
        record.xf[:, :, :2],
        record.xf[:, :, 2],
        record.tilts_deg,
        path,
        path,
        path,
        record.image_size,
        record.local_path,
        summary,
        warp,
        shape,
        _height_factors(record, zfac),
        path,
        zfac,
    )
    if record.views is not None and record.views.excluded.any():
        alignment.excluded_views = np.flatnonzero(record.views.excluded)
    x_tilt = flattened_xtilt_deg(record)
    if x_tilt != 0.0:  # what its .xtilt holds, as tilt reads it with XAXISTILT 0
        alignment.x_tilts_deg = np.full(record.tilts_deg.size, x_tilt)
        alignment.x_tilt_source = path
    return alignment


#: z factors that move no solved marker by this much (pixels) are not applied: float32 rounding
#: of a model without a height term gives ~1e-7, and each applied factor costs the local
#: back-projector (FBP about 2x, SIRT much more).
Z_FACTOR_EFFECT_PX = 0.01


def _height_factors(record, zfac: np.ndarray | None) -> np.ndarray | None:
    """A record's z factors ``zfac`` (``record_markers.z_factors``) where they move its markers by at
    least :data:`Z_FACTOR_EFFECT_PX` at the markers' heights; None otherwise."""
    if zfac is None or record.markers is None:
        return None
    height = float(np.max(np.abs(record.markers.xyz[:, 2]), initial=0.0))
    return zfac if height * float(np.abs(zfac).max()) >= Z_FACTOR_EFFECT_PX else None


def _deformation_views(record, model: str) -> tuple[dict, np.ndarray] | None:
    """A ``--model <model>`` record's per-view parameters (name -> (V,) values) and the views its
    fit solved (V,): excluded views and views with a non-finite parameter are not. None for a
    record of another model, or one without the model's parameters."""
    if record.model_name != model or record.views is None:
        return None
    p = record.views.parameters
    if not all(
        name in p for name in ("scale", "rotation", "tilt", "dx", "dy", *DEFORMATION_PARAMETERS[model])
    ):
        return None
    fitted = ~record.views.excluded & np.isfinite(np.column_stack([p[n] for n in p])).all(axis=1)
    parameters = {name: np.asarray(v, float) for name, v in p.items()}
    surfaces = record.surfaces or {}
    if surfaces.get("flattened") is True:  # the .tlt's frame, as record.tilts_deg (read_record checks it)
        parameters["tilt"] = parameters["tilt"] + float(surfaces["tilt_angle_change_deg"])
    return parameters, fitted


def _shape_views(record) -> ShapeViews | None:
    """The per-view shape of a ``--model shape`` record; None for other models."""
    views = _deformation_views(record, "shape")
    return None if views is None else ShapeViews(*views)


def _warp_sampling(record) -> WarpSampling | None:
    """The per-view warp of a ``--model warp`` record (``recon.warp_backprojection``): M = A s
    R(rotation), e = A d + D from the record's parameters (degrees, px) and ``.xf``; views left out
    of the fit sample as the rigid model does (M = I, e = 0, no warp). None for other models."""
    views = _deformation_views(record, "warp")
    if views is None:
        return None
    p, fitted = views
    mats, offsets = rigid_part_through_xf(p, fitted, record.xf)
    tilts = np.where(fitted, p["tilt"], record.tilts_deg)
    coef = np.column_stack([np.where(fitted, p[n], 0.0) for n in WARP_PARAMETERS])
    return WarpSampling(mats, offsets, tilts, coef)


def read_alignment_files(xf_path: str, tlt_path: str, zfac_path: str | None = None) -> Alignment:
    """An IMOD ``.xf`` and a tilt file (``.tlt``/``.rawtlt``/``.mdoc``), and optionally tilt's z
    factors (``.zfac``, one ``xzfac yzfac`` line per view, each within +-1)."""
    a, d = read_xf(xf_path)
    _check_xf_lines(xf_path, a, d)
    tilts, _ = read_tilt_file(tlt_path)
    check_tilts_vary(tilts, tlt_path, "a tomogram needs views at different tilts")
    alignment = Alignment(
        a, d, np.asarray(tilts, dtype=np.float64), f"{xf_path} and {tlt_path}", xf_path, tlt_path
    )
    if zfac_path is not None:
        zfac = read_zfac(zfac_path)
        big = np.flatnonzero(np.abs(zfac).max(axis=1) > MAX_Z_FACTOR)
        if big.size:
            raise InputError(
                zfac_path,
                int(big[0]) + 1,
                f"z factors {zfac[big[0], 0]:g} {zfac[big[0], 1]:g} are not a height correction (tilt's "
                f"z factors are small fractions; at most {MAX_Z_FACTOR:g} here)",
            )
        alignment.z_factors, alignment.z_source = zfac, zfac_path
        alignment.source = f"{xf_path}, {tlt_path} and {zfac_path}"
    return alignment


#: Largest |X-axis tilt| (degrees) a view may take: beyond it the specimen is no longer seen
#: from its side facing the beam (tilt's X-axis tilts are levelling corrections of a few degrees).
MAX_X_AXIS_TILT_DEG = 90.0


def with_x_axis_tilt(
    alignment: Alignment, xtilt_path: str | None = None, x_axis_tilt_deg: float | None = None
) -> Alignment:
    """``alignment`` with IMOD tilt's X-axis tilt: XTILTFILE ``xtilt_path`` (an ``.xtilt``, one
    angle in degrees per view; it replaces the alignment's own) minus XAXISTILT
    ``x_axis_tilt_deg``, as tilt.f90 takes ``alpha(view) = xtilt(view) - XAXISTILT``. Changed in
    place and returned; all zero leaves ``x_tilts_deg`` None. InputError naming the file's line
    (or the view) where a tilt is not within -90..90 degrees, or its count differs from the views'.
    """
    n = alignment.tilts_deg.size
    sources = []
    x_tilts = alignment.x_tilts_deg
    if alignment.x_tilts_deg is not None and alignment.x_tilt_source is not None:
        sources.append(alignment.x_tilt_source)
    if xtilt_path is not None:
        x_tilts = read_xtilt(xtilt_path)
        if x_tilts.size != n:
            raise InputError(
                xtilt_path,
                None,
                f"has {x_tilts.size} X-axis tilt angles but {alignment.tilt_source} has {n} tilts "
                "(one per view)",
            )
        bad = np.flatnonzero(~(np.abs(x_tilts) < MAX_X_AXIS_TILT_DEG))
        if bad.size:
            raise InputError(
                xtilt_path, int(bad[0]) + 1, f"X-axis tilt {x_tilts[bad[0]]:g} is outside -90..90 degrees"
            )
        sources = [xtilt_path]
    if x_axis_tilt_deg:
        given = np.zeros(n) if x_tilts is None else x_tilts
        x_tilts = given - x_axis_tilt_deg
        bad = np.flatnonzero(~(np.abs(x_tilts) < MAX_X_AXIS_TILT_DEG))
        if bad.size:
            v = int(bad[0])
            raise InputError(
                sources[0] if sources else alignment.source,
                None,
                f"view {v + 1}'s X-axis tilt is {given[v]:g} - XAXISTILT {x_axis_tilt_deg:g} = "
                f"{x_tilts[v]:g} degrees, outside -90..90",
            )
        sources.append(f"XAXISTILT {x_axis_tilt_deg:g}")
    alignment.x_tilts_deg = None if x_tilts is None or not np.any(x_tilts != 0.0) else x_tilts
    alignment.x_tilt_source = " and ".join(sources) if alignment.x_tilts_deg is not None else None
    return alignment


def _check_xf_lines(path: str, a: np.ndarray, d: np.ndarray, by_view: bool = False) -> None:
    """InputError naming the line (view k on line k + 1; with ``by_view``, a record's view k) of
    the first transform that cannot be reconstructed through: a matrix that maps the view onto a
    line or a point, or an entry (or inverse's entry) beyond ``MAX_XF_ENTRY`` (float32 overflow)."""
    largest, det, singular, inverse = transform_measures(a, d)
    for v in range(len(a)):
        line, at = (None, f"view {v}: ") if by_view else (v + 1, "")
        if largest[v] > MAX_XF_ENTRY:
            raise InputError(path, line, f"{at}a shift or matrix entry of {largest[v]:g} is not an alignment")
        if singular[v]:
            problem = f"the matrix is singular (determinant {det[v]:.3g}): it maps the view onto a line"
            raise InputError(path, line, f"{at}{problem} or a point")
        if inverse[v] > MAX_XF_ENTRY:
            problem = f"the matrix shrinks the view {inverse[v]:.3g} times: not an alignment"
            raise InputError(path, line, at + problem)
