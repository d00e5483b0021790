"""Back-projection where each voxel column has its own blend of affine projections: how IMOD's
``tilt`` applies a local alignment (LOCALFILE).

A separate path from :func:`lmalign_jax.recon.reconstruct` (whose kernels are being rewritten for
speed elsewhere). For voxel column (y, x) and view v the sampled position in the globally ALIGNED
view is ``sum_k w_k(y, x) (M[p_k(y, x), v] X + D[p_k(y, x), v])`` (centred pixels), X the voxel's
centred position: for a local file, p_k and w_k are the four patches around (x, y) and their
bilinear weights and M, D each patch's projection and transform
(``lmalign_jax.core.local_apply.local_sampling`` builds them from tilt.f90's formulas). Rows are
filtered as in weighted FBP (``recon.filters``), each view weighted by its angular increment.

Memory: one view's positions for the whole volume, (NZ, NY, NX, 2) floats, at a time: meant for
volumes up to some hundred million voxels per call.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates
from jaxtyping import Float

from .filters import angular_increments, filter_response

__all__ = ["LocalSampling", "backproject_local", "reconstruct_local"]


class LocalSampling(NamedTuple):
    """Where each voxel column samples each view (module docstring).

    mats: (n_patches, n_views, 2, 3); shifts: (n_patches, n_views, 2), pixels of the volume's grid;
    patches: (NY, NX, 4) int patch indices; weights: (NY, NX, 4), summing to 1.
    """

    mats: np.ndarray
    shifts: np.ndarray
    patches: np.ndarray
    weights: np.ndarray


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
    sampling: LocalSampling,
    thickness: int,
    *,
    filter: str | None = "ramp",
    radial=None,
    dtype=jnp.float32,
) -> Float[np.ndarray, "nz ny nx"]:
    """Weighted back-projection of an aligned stack, each voxel column sampling as ``sampling`` says.

    Args:
        aligned: (n_views, NY, NX) the stack after the global ``.xf`` (tilt's input ``.ali``).
        tilts_deg: (n_views,) tilts for the angular weighting.
        sampling: :class:`LocalSampling` for this (NY, NX) grid.
        thickness: NZ, slices of the volume.
        filter, radial: row filter and IMOD's radial fall-off (``recon.filters.filter_response``).
    Returns:
        (NZ, NY, NX) volume; voxel (k, j, i) centred at (i + 0.5 - NX/2, j + 0.5 - NY/2,
        k + 0.5 - NZ/2), the frame of ``lmalign_jax.recon.reconstruct``.
    """
    aligned = np.asarray(aligned)
    n_views, ny, nx = aligned.shape
    if int(thickness) < 1:
        raise ValueError(f"thickness must be a positive number of slices, got {thickness}")
    if sampling.patches.shape != (ny, nx, 4) or sampling.mats.shape[1] != n_views:
        raise ValueError(
            f"sampling is for {sampling.patches.shape[:2]} columns and {sampling.mats.shape[1]} views, "
            f"the stack has {(ny, nx)} and {n_views}"
        )
    nz = int(thickness)
    n_pad, response = filter_response(nx, filter, radial)
    weight = angular_increments(tilts_deg)
    rows = jnp.asarray(aligned, dtype)
    spectrum = jnp.fft.rfft(rows, n=n_pad, axis=-1) * jnp.asarray(response, dtype)
    filtered = jnp.fft.irfft(spectrum, n=n_pad, axis=-1)[..., :nx] * jnp.asarray(weight, dtype)[:, None, None]
    x = np.arange(nx) + 0.5 - nx / 2
    y = np.arange(ny) + 0.5 - ny / 2
    z = np.arange(nz) + 0.5 - nz / 2
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    out = _accumulate(
        filtered,
        jnp.asarray(sampling.mats, dtype),
        jnp.asarray(sampling.shifts, dtype),
        jnp.asarray(sampling.patches, jnp.int32),
        jnp.asarray(sampling.weights, dtype),
        jnp.asarray(np.stack([xx, yy, zz], -1), dtype),
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
    sampling: LocalSampling,
    thickness: float,
    *,
    binning: int = 1,
    filter: str | None = "ramp",
    radial=None,
    dtype=jnp.float32,
) -> Float[np.ndarray, "nz ny nx"]:
    """A tomogram from the RAW stack, its global ``.xf``/tilts and a local sampling.

    Each raw view (binned ``binning`` x ``binning``) is resampled into the globally aligned frame
    (bilinear, ``x' = A (x - c) + D + c``, shifts in unbinned pixels), then :func:`backproject_local`
    with ``sampling`` made for the binned grid. Volume ``(round(thickness / binning), NY // binning,
    NX // binning)`` in the frame of :func:`lmalign_jax.recon.reconstruct` (its scale may differ).
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
    nz = max(1, int(round(thickness / b)))
    return backproject_local(aligned, tilts_deg, sampling, nz, filter=filter, radial=radial, dtype=dtype)
