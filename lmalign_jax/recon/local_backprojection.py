"""Back-projection through an IMOD local alignment, as IMOD's ``tilt`` does with LOCALFILE.

A separate function from :func:`lmalign_jax.recon.reconstruct` (whose kernels are being rewritten
for speed elsewhere): it reads the globally ALIGNED stack, as ``tilt`` does, and for every voxel
and view samples the position that the local file gives that voxel (bilinear weights of the four
patch centres around the voxel's (x, y), each patch projecting with its own tilt and transform;
:mod:`lmalign_jax.core.local_apply` states the formulas from tilt.f90). Rows are filtered as in
weighted FBP (``recon.filters``) and each view is weighted by its angular increment.

Memory: one view's positions for the whole volume, (NZ, NY, NX, 2) floats, at a time: meant for
volumes up to some hundred million voxels per call.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates
from jaxtyping import Float

from ..core.local_apply import local_projection_matrices, patch_weights
from ..io.imod_local import LocalAlignment
from .filters import angular_increments, filter_response

__all__ = ["backproject_local", "reconstruct_local"]


@jax.jit
def _accumulate(filtered, mats, shifts, patches, weights, xyz):
    """Sum over views of each voxel's sampled value. filtered (V, NY, NX); mats (P, V, 2, 3);
    shifts (P, V, 2); patches, weights (NY, NX, 4); xyz (NZ, NY, NX, 3) centred voxel positions."""
    ny, nx = filtered.shape[1:]

    def view(total, data):
        image, m, d = data  # (NY, NX), (P, 2, 3), (P, 2)
        m_eff = jnp.einsum("yxk,yxkij->yxij", weights, m[patches])
        d_eff = jnp.einsum("yxk,yxki->yxi", weights, d[patches])
        pos = jnp.einsum("yxij,zyxj->zyxi", m_eff, xyz) + d_eff
        col = pos[..., 0] + nx / 2 - 0.5
        row = pos[..., 1] + ny / 2 - 0.5
        return total + map_coordinates(image, [row, col], order=1, mode="constant", cval=0.0), None

    total = jnp.zeros(xyz.shape[:3], filtered.dtype)
    total, _ = jax.lax.scan(view, total, (filtered, jnp.moveaxis(mats, 1, 0), jnp.moveaxis(shifts, 1, 0)))
    return total


def backproject_local(
    aligned: Float[np.ndarray, "views ny nx"],
    tilts_deg: Float[np.ndarray, " views"],
    local: LocalAlignment | None,
    thickness: int,
    *,
    xtilts_deg: Float[np.ndarray, " views"] | None = None,
    z_factors: Float[np.ndarray, "views 2"] | None = None,
    filter: str | None = "ramp",
    radial=None,
    dtype=jnp.float32,
) -> Float[np.ndarray, "nz ny nx"]:
    """Weighted back-projection of an aligned stack through a local alignment (None: global only).

    Args:
        aligned: (n_views, NY, NX) the stack after the global ``.xf`` (tilt's input ``.ali``).
        tilts_deg: (n_views,) the global tilts (tilt's TILTFILE); the file's deltas are added.
        local: the local alignment (``io.read_local_xf``), its grid in this stack's pixels.
        thickness: NZ, slices of the volume.
        xtilts_deg, z_factors: the global X-axis tilts and z factors, if any (as tilt's options).
        filter, radial: row filter and IMOD's radial fall-off (``recon.filters.filter_response``).
    Returns:
        (NZ, NY, NX) volume; voxel (k, j, i) centred at (i + 0.5 - NX/2, j + 0.5 - NY/2,
        k + 0.5 - NZ/2), the frame of ``lmalign_jax.recon.reconstruct``.
    """
    aligned = np.asarray(aligned)
    n_views, ny, nx = aligned.shape
    if int(thickness) < 1:
        raise ValueError(f"thickness must be a positive number of slices, got {thickness}")
    nz = int(thickness)
    n_pad, response = filter_response(nx, filter, radial)
    weight = angular_increments(tilts_deg)
    rows = jnp.asarray(aligned, dtype)
    spectrum = jnp.fft.rfft(rows, n=n_pad, axis=-1) * jnp.asarray(response, dtype)
    filtered = jnp.fft.irfft(spectrum, n=n_pad, axis=-1)[..., :nx] * jnp.asarray(weight, dtype)[:, None, None]
    mats, shifts = local_projection_matrices(local, tilts_deg, xtilts_deg, z_factors)
    x = np.arange(nx) + 0.5 - nx / 2
    y = np.arange(ny) + 0.5 - ny / 2
    z = np.arange(nz) + 0.5 - nz / 2
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    xyz = np.stack([xx, yy, zz], -1)
    if local is None:
        patches = np.zeros((ny, nx, 4), np.int32)
        weights = np.zeros((ny, nx, 4))
        weights[..., 0] = 1.0
    else:
        gx, gy = np.meshgrid(x + nx / 2, y + ny / 2)
        p, w = patch_weights(local, np.column_stack([gx.ravel(), gy.ravel()]))
        patches, weights = p.reshape(ny, nx, 4).astype(np.int32), w.reshape(ny, nx, 4)
    out = _accumulate(
        filtered,
        jnp.asarray(mats, dtype),
        jnp.asarray(shifts, dtype),
        jnp.asarray(patches),
        jnp.asarray(weights, dtype),
        jnp.asarray(xyz, dtype),
    )
    return np.asarray(out)


def _bin(view: np.ndarray, b: int) -> np.ndarray:
    ny, nx = view.shape[0] // b, view.shape[1] // b
    return view[: ny * b, : nx * b].reshape(ny, b, nx, b).mean(axis=(1, 3))


def reconstruct_local(
    stack,
    xf_A: Float[np.ndarray, "views 2 2"],
    xf_shift: Float[np.ndarray, "views 2"],
    tilts_deg: Float[np.ndarray, " views"],
    local: LocalAlignment,
    thickness: float,
    *,
    binning: int = 1,
    filter: str | None = "ramp",
    radial=None,
    dtype=jnp.float32,
) -> Float[np.ndarray, "nz ny nx"]:
    """A tomogram from the RAW stack, its global ``.xf``/tilts and a local alignment.

    Each raw view (binned ``binning`` x ``binning``) is resampled into the globally aligned frame
    (bilinear, ``x' = A (x - c) + D + c``), then :func:`backproject_local` applies the local file,
    its grid and shifts divided by the binning (as tilt's IMAGEBINNED). Volume
    ``(round(thickness / binning), NY // binning, NX // binning)`` in the frame of
    :func:`lmalign_jax.recon.reconstruct` (its overall scale may differ).
    """
    a = np.asarray(xf_A, np.float64)
    d = np.asarray(xf_shift, np.float64)
    b = int(binning)
    views = [_bin(np.asarray(stack[v], np.float64), b) for v in range(a.shape[0])]
    ny, nx = views[0].shape
    x = np.arange(nx) + 0.5 - nx / 2
    y = np.arange(ny) + 0.5 - ny / 2
    gx, gy = np.meshgrid(x, y)
    aligned = np.empty((len(views), ny, nx))
    for v, image in enumerate(views):
        inv = np.linalg.inv(a[v])
        raw = np.einsum("ij,jyx->iyx", inv, np.stack([gx - d[v, 0] / b, gy - d[v, 1] / b]))
        coords = [jnp.asarray(raw[1] + ny / 2 - 0.5), jnp.asarray(raw[0] + nx / 2 - 0.5)]
        aligned[v] = np.asarray(
            map_coordinates(jnp.asarray(image), coords, order=1, mode="constant", cval=0.0)
        )
    scaled = dataclasses.replace(
        local,
        start=(local.start[0] / b, local.start[1] / b),
        spacing=(local.spacing[0] / b, local.spacing[1] / b),
        transforms=np.concatenate([local.transforms[..., :2], local.transforms[..., 2:] / b], -1),
    )
    nz = max(1, int(round(thickness / b)))
    return backproject_local(aligned, tilts_deg, scaled, nz, filter=filter, radial=radial, dtype=dtype)
