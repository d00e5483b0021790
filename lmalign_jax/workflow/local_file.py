"""A local alignment file read for a reconstruction (``reconstruct --local``), checked against
the stack and the global alignment before anything is computed: transforms that are singular,
overflow or move the image by more than its size, z factors beyond a height correction, local
angles outside -90..90 degrees, a grid that is not this stack's; its grid and shifts scaled from
the pixel size it was made for to the stack's, as IMOD's tilt scales them."""

from __future__ import annotations

import numpy as np

from ..io.errors import InputError
from ..io.imod_local import (
    LocalAlignment,
    aligned_footprint,
    check_local_grid,
    pixel_scale,
    read_local_xf,
    scaled_to_stack,
)
from ..recon.fbp import MAX_XF_ENTRY, transform_measures
from .alignment_inputs import MAX_Z_FACTOR, Alignment

__all__ = ["read_checked_local", "read_local_for"]


def read_checked_local(
    path: str, alignment: Alignment, image_size: tuple[int, int], header_pixel: float | None, warn
) -> LocalAlignment:
    """The local file ``path`` for ``alignment``'s views over an ``image_size`` (nx, ny) stack whose
    header gives ``header_pixel`` (A, None: none), scaled to it (with a ``warn``-ing; a file with a
    pixel size for a stack without one is applied unscaled, with a ``warn``-ing that names both);
    InputError naming the file, patch and view of the first problem."""
    xf = np.concatenate([alignment.xf_A, alignment.xf_shift[:, :, None]], -1)
    return read_local_for(
        path, xf, alignment.tilts_deg, alignment.x_tilts_deg, image_size, header_pixel, warn
    )


def read_local_for(
    path: str,
    xf: np.ndarray,
    tilts_deg: np.ndarray,
    x_tilts_deg: np.ndarray | None,
    image_size: tuple[int, int],
    header_pixel: float | None,
    warn,
    frame: str = "stack",
) -> LocalAlignment:
    """:func:`read_checked_local` for a global alignment given as ``xf`` (n, 2, 3), ``tilts_deg``
    (n,) and ``x_tilts_deg`` (n,) or None, over an ``image_size`` (nx, ny) image of
    ``header_pixel`` A pixels (None: unknown), which the warnings call the ``frame`` ("stack";
    ``lmalign export``: "record")."""
    local = read_local_xf(path, n_views=np.size(tilts_deg))
    _check_local_transforms(path, local)
    _check_local_angles(path, local, tilts_deg, x_tilts_deg)
    footprint = aligned_footprint(xf, tilts_deg, image_size)
    check_local_grid(path, local, image_size, header_pixel or 0.0, footprint)
    factor = pixel_scale(local, header_pixel or 0.0)
    if local.pixel_size > 0 and not header_pixel:
        warn(
            f"{path}: made for {local.pixel_size:g} A pixels, but the {frame}"
            + ("'s header has" if frame == "stack" else " has")
            + f" no pixel size, so it cannot be scaled to the {frame} (IMOD's tilt scales a local file by "
            f"its pixel / the stack's): its grid and shifts are applied as written, in this {frame}'s "
            f"pixels; if the stack is binned otherwise than the one it was made for, give the {frame} "
            "its pixel size"
        )
    elif factor != 1.0:
        warn(
            f"{path}: made for {local.pixel_size:g} A pixels, the {frame}'s are {header_pixel:g} "
            f"A: its grid and shifts are scaled by {factor:g}, as IMOD's tilt scales them"
        )
        local = scaled_to_stack(local, header_pixel)
    _check_local_reach(path, local, image_size)
    return local


def _check_local_transforms(path: str, local) -> None:
    """InputError naming the first patch and (1-based) view of a local alignment whose transform is
    singular or has an entry beyond ``MAX_XF_ENTRY`` (as :func:`_check_xf_lines` for the global)."""
    t = local.transforms
    largest, _, singular, inverse = transform_measures(t[..., :2].reshape(-1, 2, 2), t[..., 2].reshape(-1, 2))
    huge = largest > MAX_XF_ENTRY
    bad = huge | singular | (inverse > MAX_XF_ENTRY)
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0])
        p, v = divmod(first, t.shape[1])
        nx = local.n_patches[0]
        problem = f"has a shift or matrix entry beyond {MAX_XF_ENTRY:g}" if huge[first] else "is singular"
        where = f"view {v + 1} in patch {p} (x {p % nx}, y {p // nx})"
        raise InputError(path, None, f"transform of {where} {problem}")


def _check_local_reach(path: str, local, image_size: tuple[int, int]) -> None:
    """InputError naming the first patch and (1-based) view of a local alignment whose transform
    moves a corner of the image by more than the image's larger side (not a local correction: the
    rows a view's reads reach, and so the band held, grow with it), or whose z factors are beyond
    ``MAX_Z_FACTOR`` (as a ``.zfac``'s)."""
    nx, ny = image_size
    corners = np.array([[-nx, -ny], [nx, -ny], [-nx, ny], [nx, ny]], float) / 2
    t = local.transforms
    moved = np.einsum("pvij,cj->pvci", t[..., :2], corners) + t[:, :, None, :, 2] - corners
    reach = np.sqrt(np.max(np.sum(moved**2, axis=-1), axis=-1))  # (P, V)
    side = max(nx, ny)
    nx_p = local.n_patches[0]
    if np.any(~(reach <= side)):
        p, v = (int(i) for i in np.argwhere(~(reach <= side))[0])
        raise InputError(
            path,
            None,
            f"the transform of view {v + 1} in patch {p} (x {p % nx_p}, y {p // nx_p}) moves the image's "
            f"corners by up to {reach[p, v]:.4g} px, more than the image's {side} px: not a local correction",
        )
    zf = local.z_factors
    if zf is not None and np.any(~(np.abs(zf) <= MAX_Z_FACTOR)):
        p, v, k = (int(i) for i in np.argwhere(~(np.abs(zf) <= MAX_Z_FACTOR))[0])
        raise InputError(
            path,
            None,
            f"the {'xy'[k]}z factor of view {v + 1} in patch {p} (x {p % nx_p}, y {p // nx_p}) is "
            f"{zf[p, v, k]:g}: not a height correction (tilt's z factors are small fractions; at most "
            f"{MAX_Z_FACTOR:g} here)",
        )


def _check_local_angles(path: str, local, tilts_deg: np.ndarray, x_tilts_deg: np.ndarray | None) -> None:
    """InputError naming the first patch and (1-based) view of a local alignment whose local tilt
    (global + delta) or X-axis tilt (the alignment's ``x_tilts_deg`` + delta) is not strictly
    within -90..90 degrees."""
    dt, dxt = local.delta_tilt_deg, local.delta_xtilt_deg
    tilts = np.asarray(tilts_deg, dtype=np.float64)
    if dxt is not None and x_tilts_deg is not None:
        dxt = dxt + np.asarray(x_tilts_deg, dtype=np.float64)[None]
    nx = local.n_patches[0]
    x_what = "delta X-axis tilt" if x_tilts_deg is None else "X-axis tilt plus delta"
    for angles, what in ((tilts[None] + dt, "local tilt"), (dxt, x_what)):
        bad = np.zeros(dt.shape, bool) if angles is None else ~(np.abs(angles) < 90)
        if np.any(bad):
            p, v = (int(i) for i in np.argwhere(bad)[0])
            value = f"{tilts[v]:g} + delta {dt[p, v]:g} = " if what == "local tilt" else ""
            where = f"patch {p} (x {p % nx}, y {p // nx}), view {v + 1}"
            raise InputError(
                path, None, f"{what} of {where} is {value}{angles[p, v]:g} degrees, outside -90..90"
            )
