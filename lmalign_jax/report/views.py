"""An alignment on every view of the input files, in file order.

An :class:`~lmalign_jax.core.result.AlignmentResult` covers the views that were fitted, possibly
re-ordered by tilt. :func:`expand_to_file_views` maps it back onto every view of the input
files, with a transform for each excluded view interpolated from its neighbours in tilt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.result import AlignmentResult


@dataclass(frozen=True, eq=False)
class FileViews:
    """An alignment on every view of the input, in file order (n = all views, m = markers).

    Attributes:
        view_index: (n_fit,) file view of each view of the result (result row k = file view
            ``view_index[k]``).
        nominal_tilts_deg: (n,) the tilt file's angles.
        excluded: (n,) bool, views left out of the fit (by the user or for lack of markers).
        tilts_deg: (n,) solved tilt; the nominal tilt for an excluded view.
        parameters: name -> (n,) solved view parameters (degrees for angles, else model units),
            NaN for excluded views.
        xf: (n, 2, 3) IMOD transforms raw -> aligned, ``[A | D]`` about the image centre;
            interpolated for excluded views.
        xy: (n, m, 2) measured positions that were fitted, NaN elsewhere.
        mask: (n, m) bool, True where ``xy`` was fitted.
        residuals: (n, m, 2) projected - measured, NaN where not fitted.
    """

    view_index: np.ndarray
    nominal_tilts_deg: np.ndarray
    excluded: np.ndarray
    tilts_deg: np.ndarray
    parameters: dict
    xf: np.ndarray
    xy: np.ndarray
    mask: np.ndarray
    residuals: np.ndarray

    @property
    def n_views(self) -> int:
        return self.nominal_tilts_deg.size


def _polar(a: np.ndarray) -> tuple[float, np.ndarray]:
    """A = R(phi) P with P symmetric positive (polar decomposition): (phi radians, P (2, 2))."""
    u, s, vt = np.linalg.svd(a)
    if np.linalg.det(u @ vt) < 0:  # a reflection: keep R a rotation, P absorbs the sign
        u[:, -1] *= -1
        s[-1] *= -1
    r = u @ vt
    return math.atan2(r[1, 0], r[0, 0]), vt.T @ np.diag(s) @ vt


def interpolate_transforms(xf: np.ndarray, tilts_deg: np.ndarray, targets_deg: np.ndarray) -> np.ndarray:
    """Transforms at tilts ``targets_deg`` interpolated from known ones, linearly in tilt.

    xf: (k, 2, 3) known ``[A | D]`` at ``tilts_deg`` (k,); returns (t, 2, 3). Each ``A`` is split
    into a rotation and a symmetric stretch (``A = R(phi) P``); the rotation angle, the entries of
    ``P`` and the shift ``D`` are interpolated between the two known views nearest in tilt on
    either side. Outside the known range the nearest known transform is copied.
    """
    xf = np.asarray(xf, dtype=np.float64)
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    targets = np.atleast_1d(np.asarray(targets_deg, dtype=np.float64))
    order = np.argsort(tilts, kind="stable")
    tilts, xf = tilts[order], xf[order]
    polar = [_polar(a) for a in xf[:, :, :2]]
    phi = np.unwrap([p[0] for p in polar])
    stretch = np.stack([p[1] for p in polar])
    out = np.empty((targets.size, 2, 3))
    for k, t in enumerate(targets):
        hi = int(np.searchsorted(tilts, t, side="left"))
        if hi <= 0 or hi >= tilts.size:
            out[k] = xf[0 if hi <= 0 else -1]
            continue
        lo = hi - 1
        span = tilts[hi] - tilts[lo]
        w = 0.5 if span <= 0 else (t - tilts[lo]) / span
        angle = (1 - w) * phi[lo] + w * phi[hi]
        c, s = math.cos(angle), math.sin(angle)
        out[k, :, :2] = np.array([[c, -s], [s, c]]) @ ((1 - w) * stretch[lo] + w * stretch[hi])
        out[k, :, 2] = (1 - w) * xf[lo, :, 2] + w * xf[hi, :, 2]
    return out


def expand_to_file_views(result: AlignmentResult, view_index, nominal_tilts_deg) -> FileViews:
    """Map ``result`` (fitted views only, any order) onto all views of the input, in file order."""
    view_index = np.asarray(view_index, dtype=np.int64)
    nominal = np.asarray(nominal_tilts_deg, dtype=np.float64)
    n, m = nominal.size, result.observations.n_markers
    if view_index.shape != (result.observations.n_views,) or len(set(view_index.tolist())) != view_index.size:
        raise ValueError("view_index must give a distinct file view for every view of the result")
    excluded = np.ones(n, dtype=bool)
    excluded[view_index] = False
    model = result.model
    parameters = {}
    for name in model.parameters:
        values = np.full(n, np.nan)
        values[view_index] = result.parameter(name)
        parameters[name] = values
    tilts = nominal.copy()
    tilts[view_index] = result.tilts_deg
    xf = np.empty((n, 2, 3))
    xf[view_index] = result.xf
    if excluded.any():
        xf[excluded] = interpolate_transforms(result.xf, nominal[view_index], nominal[excluded])
    xy = np.full((n, m, 2), np.nan)
    xy[view_index] = result.observations.xy
    mask = np.zeros((n, m), dtype=bool)
    mask[view_index] = result.observations.mask
    residuals = np.full((n, m, 2), np.nan)
    residuals[view_index] = result.residuals
    return FileViews(view_index, nominal, excluded, tilts, parameters, xf, xy, mask, residuals)


def aligned_model_xy(fv: FileViews, markers: np.ndarray, center) -> tuple[np.ndarray, np.ndarray]:
    """Measured points mapped by the ``.xf`` and where the solved markers say they should be.

    Returns ``(aligned, ideal)``, both (n, m, 2) image pixels: ``aligned = A (p - c) + D + c``;
    ``ideal = (x cos t + z sin t, y) + c`` with (x, y, z) = ``markers`` (m, 3) and t the solved
    tilt (MODEL.md, "Outputs"). NaN where not fitted.
    """
    c = np.asarray(center, dtype=np.float64)
    a, d = fv.xf[:, :, :2], fv.xf[:, :, 2]
    aligned = np.einsum("vij,vmj->vmi", a, fv.xy - c) + d[:, None, :] + c
    t = np.radians(fv.tilts_deg)[:, None]  # (n, 1)
    x, y, z = markers[:, 0], markers[:, 1], markers[:, 2]
    ideal = np.stack([x * np.cos(t) + z * np.sin(t), np.broadcast_to(y, (t.size, y.size))], axis=-1) + c
    ideal = np.where(fv.mask[..., None], ideal, np.nan)
    return aligned, ideal
