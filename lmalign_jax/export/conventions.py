"""Sign and axis conventions: our solved alignment in RELION 5's and AreTomo's parameters.

Everything here is numpy, in one place, so that each convention is written down once.

Our alignment (MODEL.md). Per view j an IMOD transform ``xf_j = [A_j | D_j]`` maps the raw
image to the aligned one about the image centre ``c = (nx/2, ny/2)``; in the aligned frame the
tilt axis is the y axis and a specimen point ``X = (x, y, z)`` (pixels from the specimen
centre) lies at ``P Ry(theta_j) Rx(xi_j) X`` (``theta`` the solved tilt, ``xi`` the X-axis
tilt, 0 for every model we solve). So in the raw image

    p - c = A^-1 (P Ry(theta) Rx(xi) X - D)                                         (ours)

with ``Rx, Ry, Rz`` right-handed (counter-clockwise seen from the positive axis) and ``P``
dropping z. For the "jou" model ``A = R(-alpha) / s``, ``D = -A d``.

RELION 5 (``Tomogram::setProjectionMatrix`` in RELION's src/jaz/tomography/tomogram.cpp, a
note there credits Alister Burt): ``S(image centre) S(shift / pixel size) Rz(ZRot) Ry(YTilt)
Rx(XTilt) S(-tomogram centre)``, that is in centred coordinates

    p - c = P Rz(rlnTomoZRot) Ry(rlnTomoYTilt) Rx(rlnTomoXTilt) X + (XShift, YShift) / pixel
                                                                                   (RELION)

RELION's IMOD importer (src/tomography_python_programs/align_tilt_series/imod/_utils.py with
teamtomo's yet_another_imod_wrapper ``XF``) sets YTilt = the .tlt angle, XTilt = 0, ZRot =
``atan2(-A21, A11)`` and the shift to ``-pinv(A) D`` pixels. Since ``P Rz(a) = R(a) P``, this
equals (ours) exactly when ``A`` is a pure rotation; we write the same numbers, and XTilt =
our X-axis tilt. RELION puts its centres at pixel index ``int(N/2)``, half a pixel from
IMOD's ``(N-1)/2`` for even N; its importer ignores that and so do we.

AreTomo ``.aln`` global rows (the inverse of the .aln -> .xf conversion documented in the
``alnfile`` package, ``df_to_xf``, and in ``cryoet-alignment``'s ``are2imod``: ``A = R(-ROT)``,
``D = -A (TX, TY)``):

    p - c = R(ROT) P Ry(TILT) X + (TX, TY)                                           (AreTomo)

with shifts in raw-image pixels. Neither format has a per-view magnification or stretch:
when ``A`` is not a pure rotation the exported geometry differs from ours by at most
:func:`unrepresented_px` pixels in the image; GMAG is written as 1 (``alnfile`` and
``cryoet-alignment`` ignore it when converting to IMOD).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "ViewGeometry",
    "aretomo_parameters",
    "aretomo_project",
    "decompose_xf",
    "our_project",
    "relion_parameters",
    "relion_project",
    "unrepresented_px",
    "xf_from_rotation_shift",
]


@dataclasses.dataclass(frozen=True, eq=False)
class ViewGeometry:
    """A solved alignment, per view, in the units every export starts from.

    Attributes:
        xf: (n_views, 2, 3) IMOD transforms raw -> aligned ``[A | D]`` about the image centre,
            D in pixels.
        tilts_deg: (n_views,) solved tilt angles, degrees.
        x_tilt_deg: (n_views,) X-axis tilt, degrees (IMOD's ``.xtilt``; 0 for our models).
        image_size: (nx, ny) of the raw images, pixels.
    """

    xf: np.ndarray
    tilts_deg: np.ndarray
    x_tilt_deg: np.ndarray
    image_size: tuple[float, float]

    def __post_init__(self):
        xf = np.asarray(self.xf, dtype=np.float64)
        tilts = np.asarray(self.tilts_deg, dtype=np.float64)
        x_tilt = (
            np.zeros_like(tilts) if self.x_tilt_deg is None else np.asarray(self.x_tilt_deg, dtype=np.float64)
        )
        if xf.ndim != 3 or xf.shape[1:] != (2, 3) or xf.shape[0] == 0:
            raise ValueError(f"xf must be (n_views, 2, 3) with n_views > 0, got {xf.shape}")
        n = xf.shape[0]
        if tilts.shape != (n,) or x_tilt.shape != (n,):
            raise ValueError(f"tilts_deg and x_tilt_deg must be ({n},), got {tilts.shape} and {x_tilt.shape}")
        if not (np.all(np.isfinite(xf)) and np.all(np.isfinite(tilts)) and np.all(np.isfinite(x_tilt))):
            raise ValueError("xf, tilts_deg and x_tilt_deg must be finite")
        if np.any(np.abs(np.linalg.det(xf[:, :, :2])) < 1e-12):
            raise ValueError("every xf matrix A must be invertible")
        size = tuple(float(s) for s in self.image_size)
        if len(size) != 2 or not all(np.isfinite(s) and s > 0 for s in size):
            raise ValueError(f"image_size must be two positive numbers (nx, ny), got {self.image_size}")
        object.__setattr__(self, "xf", xf)
        object.__setattr__(self, "tilts_deg", tilts)
        object.__setattr__(self, "x_tilt_deg", x_tilt)
        object.__setattr__(self, "image_size", size)

    @classmethod
    def from_result(cls, result, x_tilt_deg=None) -> ViewGeometry:
        """From a solved :class:`lmalign_jax.AlignmentResult` (its ``xf``, ``tilts_deg`` and
        ``observations.image_size``); ``x_tilt_deg`` (n_views,) defaults to zeros."""
        return cls(result.xf, result.tilts_deg, x_tilt_deg, result.observations.image_size)

    @property
    def n_views(self) -> int:
        return self.xf.shape[0]


def _rot2(angle_deg):
    """(..., 2, 2) counter-clockwise rotations by ``angle_deg`` degrees."""
    a = np.radians(np.asarray(angle_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _rot3(axis: int, angle_deg):
    """(..., 3, 3) right-handed rotations about x (0), y (1) or z (2) by ``angle_deg`` degrees."""
    a = np.radians(np.asarray(angle_deg, dtype=np.float64))
    out = np.zeros(a.shape + (3, 3))
    i, j = [k for k in range(3) if k != axis]
    out[..., axis, axis] = 1.0
    out[..., i, i] = out[..., j, j] = np.cos(a)
    # about y the cyclic order is (z, x): R[0, 2] = +sin, R[2, 0] = -sin
    sign = -1.0 if axis == 1 else 1.0
    out[..., i, j] = -sign * np.sin(a)
    out[..., j, i] = sign * np.sin(a)
    return out


def decompose_xf(xf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split IMOD transforms into what RELION and AreTomo can hold.

    xf: (n, 2, 3) ``[A | D]`` raw -> aligned. Returns ``(rotation_deg (n,), magnification (n,),
    specimen_shift_px (n, 2))``: the tilt-axis angle ``atan2(-A21, A11)`` (counter-clockwise
    from the image y axis, as RELION's importer reads it), ``1 / sqrt(det A)`` (our per-view
    scale s), and ``-A^-1 D``, where the specimen centre projects in the raw image relative to
    its centre, pixels.
    """
    xf = np.asarray(xf, dtype=np.float64)
    a, d = xf[:, :, :2], xf[:, :, 2]
    rotation = np.degrees(np.arctan2(-a[:, 1, 0], a[:, 0, 0]))
    magnification = 1.0 / np.sqrt(np.abs(np.linalg.det(a)))
    shift = -np.linalg.solve(a, d[:, :, None])[:, :, 0]
    return rotation, magnification, shift


def xf_from_rotation_shift(rotation_deg, shift_px) -> np.ndarray:
    """(n, 2, 3) IMOD transforms ``A = R(-rotation)``, ``D = -A shift`` from tilt-axis angles
    (n,) degrees and specimen shifts (n, 2) pixels (AreTomo's ROT, TX, TY)."""
    a = _rot2(-np.asarray(rotation_deg, dtype=np.float64))
    d = -np.einsum("nij,nj->ni", a, np.asarray(shift_px, dtype=np.float64))
    return np.concatenate([a, d[:, :, None]], axis=2)


def unrepresented_px(geometry: ViewGeometry) -> np.ndarray:
    """(n_views,) largest image displacement, pixels, between our geometry and the rotation +
    shift exported to RELION/AreTomo, over the image corners (magnification, stretch, skew).
    Exactly 0 when every ``A`` is a pure rotation."""
    rotation, _, _ = decompose_xf(geometry.xf)
    a_inv = np.linalg.inv(geometry.xf[:, :, :2])
    nx, ny = geometry.image_size
    corners = np.array([[nx, ny], [nx, -ny], [-nx, ny], [-nx, -ny]]) / 2.0
    err = np.einsum("nij,cj->nci", a_inv - _rot2(rotation), corners)
    return np.linalg.norm(err, axis=-1).max(axis=1)


def relion_parameters(geometry: ViewGeometry, pixel_size_angst: float) -> dict[str, np.ndarray]:
    """Per-tilt RELION 5 columns (each (n_views,)): rlnTomoXTilt, rlnTomoYTilt, rlnTomoZRot in
    degrees, rlnTomoXShiftAngst, rlnTomoYShiftAngst in Angstrom (``pixel_size_angst`` A/px)."""
    if not (np.isfinite(pixel_size_angst) and pixel_size_angst > 0):
        raise ValueError(f"pixel size must be a positive number of Angstrom, got {pixel_size_angst}")
    rotation, _, shift = decompose_xf(geometry.xf)
    return {
        "rlnTomoXTilt": geometry.x_tilt_deg.copy(),
        "rlnTomoYTilt": geometry.tilts_deg.copy(),
        "rlnTomoZRot": rotation,
        "rlnTomoXShiftAngst": shift[:, 0] * pixel_size_angst,
        "rlnTomoYShiftAngst": shift[:, 1] * pixel_size_angst,
    }


def relion_project(parameters: dict, pixel_size_angst: float, xyz) -> np.ndarray:
    """RELION 5's projection of points ``xyz`` (m, 3), pixels from the tomogram centre, with
    the per-tilt ``parameters`` of :func:`relion_parameters`: (n_views, m, 2) positions
    relative to the image centre, pixels."""
    rot = (
        _rot3(2, parameters["rlnTomoZRot"])
        @ _rot3(1, parameters["rlnTomoYTilt"])
        @ _rot3(0, parameters["rlnTomoXTilt"])
    )
    shift = (
        np.stack([parameters["rlnTomoXShiftAngst"], parameters["rlnTomoYShiftAngst"]], -1) / pixel_size_angst
    )
    return np.einsum("nij,mj->nmi", rot[:, :2, :], np.asarray(xyz, dtype=np.float64)) + shift[:, None, :]


def aretomo_parameters(geometry: ViewGeometry) -> dict[str, np.ndarray]:
    """AreTomo ``.aln`` global columns (each (n_views,)): ROT degrees, GMAG (1), TX, TY pixels,
    SMEAN, SFIT, SCALE (1), BASE (0), TILT degrees. X-axis tilt has no per-view column there."""
    rotation, _, shift = decompose_xf(geometry.xf)
    n = geometry.n_views
    ones = np.ones(n)
    return {
        "ROT": rotation,
        "GMAG": ones.copy(),
        "TX": shift[:, 0],
        "TY": shift[:, 1],
        "SMEAN": ones.copy(),
        "SFIT": ones.copy(),
        "SCALE": ones.copy(),
        "BASE": np.zeros(n),
        "TILT": geometry.tilts_deg.copy(),
    }


def aretomo_project(parameters: dict, xyz) -> np.ndarray:
    """AreTomo's projection of ``xyz`` (m, 3), pixels from the specimen centre, with the .aln
    columns ROT, TX, TY, TILT: (n_views, m, 2) positions relative to the image centre, pixels."""
    proj = np.einsum("nij,mj->nmi", _rot3(1, parameters["TILT"])[:, :2, :], np.asarray(xyz, dtype=np.float64))
    shift = np.stack([parameters["TX"], parameters["TY"]], -1)
    return np.einsum("nij,nmj->nmi", _rot2(parameters["ROT"]), proj) + shift[:, None, :]


def our_project(geometry: ViewGeometry, xyz) -> np.ndarray:
    """Our projection of ``xyz`` (m, 3), pixels from the specimen centre, through the xf:
    ``A^-1 (P Ry(theta) Rx(xi) X - D)``, (n_views, m, 2) relative to the image centre, pixels."""
    rot = _rot3(1, geometry.tilts_deg) @ _rot3(0, geometry.x_tilt_deg)
    aligned = np.einsum("nij,mj->nmi", rot[:, :2, :], np.asarray(xyz, dtype=np.float64))
    aligned = aligned - geometry.xf[:, None, :, 2]
    return np.einsum("nij,nmj->nmi", np.linalg.inv(geometry.xf[:, :, :2]), aligned)
