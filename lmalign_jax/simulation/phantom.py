"""Synthetic specimens (gold beads and weak blobs) and their projection into raw tilt series.

Conventions (``/work/shared/MODEL.md``):

* Specimen positions ``(x, y, z)`` are pixels from the specimen centre: x across the tilt axis,
  y along it, z along the beam at 0 degrees.
* In the *aligned* frame of view ``v`` (tilt ``theta``) a point is seen at
  ``x' - xc = x cos(theta) + z sin(theta)``, ``y' - yc = y``.
* The IMOD ``.xf`` maps raw image coordinates to aligned ones about the image centre
  ``c = (NX/2, NY/2)``: ``x' - c = A (x - c) + D``. For the "jou" model ``A = R(-alpha) / s``,
  ``D = -A d`` (:func:`jou_xf`).
* Pixel ``(row r, column c)`` is centred at ``(c + 0.5, r + 0.5)``; a stack is
  ``(n_views, NY, NX)``. Voxel ``(k, j, i)`` of a ``(NZ, NY, NX)`` volume is centred at
  ``(i + 0.5 - NX/2, j + 0.5 - NY/2, k + 0.5 - NZ/2)`` (times the binning, in specimen pixels).

Every object is an isotropic 3-D Gaussian of standard deviation ``sigma`` and peak density
``density``. Its projection along any direction is the 2-D Gaussian
``density * sqrt(2 pi) * sigma * exp(-r^2 / (2 sigma^2))``, so :func:`project_stack` is exact
(no voxelisation, no ray marching): each raw pixel is mapped by its view's ``.xf`` into the
aligned frame and the projected Gaussians are evaluated there. Pixel values are line integrals
of density (dense objects bright, no noise unless asked, no contrast inversion), which is what
:func:`lmalign_jax.recon.reconstruct` inverts.

For realistic raw stacks (dose-limited counts, dark gold spheres on both surfaces of a slab,
textured specimen, ice, a carbon edge, close pairs) and their per-view bead truth, see
:mod:`lmalign_jax.simulation.cryo`; the ideal projections here stay for reconstruction checks.

Also here, for checking reconstructions of a phantom: :func:`voxel_index` (specimen position ->
fractional voxel index), :func:`locate_peaks` (sub-voxel peak position near each expected bead)
and :func:`fit_similarity` (remove the gauge freedom of a solved alignment before comparing
its frame with the truth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Phantom",
    "bead_phantom",
    "project_stack",
    "jou_xf",
    "series_alignment",
    "voxel_index",
    "locate_peaks",
    "fit_similarity",
]

SQRT_2PI = float(np.sqrt(2.0 * np.pi))
#: Gaussians are evaluated out to this many standard deviations (exp(-18) ~ 1.5e-8 of the peak).
CUTOFF_SIGMAS = 6.0


@dataclass(frozen=True, eq=False)
class Phantom:
    """A specimen made of isotropic 3-D Gaussians.

    positions: (n, 3) float64 centres ``(x, y, z)``, pixels from the specimen centre.
    sigma: (n,) standard deviations, pixels.
    density: (n,) peak densities (arbitrary units; a line integral through the centre is
        ``density * sqrt(2 pi) * sigma``).
    is_bead: (n,) True for the gold beads, False for the weak blobs.
    """

    positions: np.ndarray
    sigma: np.ndarray
    density: np.ndarray
    is_bead: np.ndarray

    def __post_init__(self):
        pos = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        n = pos.shape[0]
        sigma = np.broadcast_to(np.asarray(self.sigma, dtype=np.float64), (n,)).copy()
        density = np.broadcast_to(np.asarray(self.density, dtype=np.float64), (n,)).copy()
        is_bead = np.broadcast_to(np.asarray(self.is_bead, dtype=bool), (n,)).copy()
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(sigma)) and np.all(np.isfinite(density))):
            raise ValueError("phantom positions, sigmas and densities must be finite")
        if np.any(sigma <= 0):
            raise ValueError("phantom sigmas must be positive")
        object.__setattr__(self, "positions", pos)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "density", density)
        object.__setattr__(self, "is_bead", is_bead)

    @property
    def n_objects(self) -> int:
        return self.positions.shape[0]

    @property
    def bead_positions(self) -> np.ndarray:
        """(n_beads, 3) centres of the beads, in the order they were given."""
        return self.positions[self.is_bead]

    def to_volume(self, shape, *, binning: float = 1.0, dtype=np.float32) -> np.ndarray:
        """The density sampled at the voxel centres of a ``(NZ, NY, NX)`` volume whose voxels are
        ``binning`` specimen pixels wide (centred on the specimen origin, MODEL.md convention)."""
        nz, ny, nx = (int(s) for s in shape)
        if min(nz, ny, nx) < 1:
            raise ValueError(f"shape must be three positive sizes (NZ, NY, NX), got {shape}")
        b = float(binning)
        vol = np.zeros((nz, ny, nx), dtype=np.float64)
        for (x, y, z), s, d in zip(self.positions / b, self.sigma / b, self.density, strict=True):
            axes = []
            for centre, n in ((z, nz), (y, ny), (x, nx)):
                fc = centre - 0.5 + n / 2.0  # fractional index of the centre
                lo = max(0, int(np.floor(fc - CUTOFF_SIGMAS * s)))
                hi = min(n, int(np.ceil(fc + CUTOFF_SIGMAS * s)) + 1)
                idx = np.arange(lo, hi)
                axes.append((slice(lo, hi), np.exp(-((idx - fc) ** 2) / (2.0 * s * s))))
            if any(a[1].size == 0 for a in axes):
                continue
            (sz, gz), (sy, gy), (sx, gx) = axes
            vol[sz, sy, sx] += d * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
        return vol.astype(dtype)


def _random_positions(rng, n, box, min_separation, existing=None, max_tries=200):
    half = np.asarray(box, dtype=np.float64) / 2.0
    placed = [] if existing is None else list(existing)
    out = []
    for _ in range(n):
        for _ in range(max_tries):
            p = rng.uniform(-half, half)
            if (
                not placed
                or min_separation <= 0
                or np.min(np.linalg.norm(np.asarray(placed) - p, axis=1)) >= min_separation
            ):
                break
        else:
            raise ValueError(
                f"cannot place {n} objects {min_separation:g} px apart "
                f"in a {box[0]:g} x {box[1]:g} x {box[2]:g} box"
            )
        placed.append(p)
        out.append(p)
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def bead_phantom(
    positions=None,
    *,
    n_beads: int = 12,
    box=(180.0, 180.0, 40.0),
    bead_sigma: float = 1.5,
    bead_density: float = 1.0,
    n_blobs: int = 3,
    blob_positions=None,
    blob_sigma=(6.0, 12.0),
    blob_density: float = 0.03,
    min_separation: float | None = None,
    seed: int = 0,
) -> Phantom:
    """Gold beads (small, dense Gaussians) plus a few larger, weak blobs ("cell" density).

    Args:
        positions: (n, 3) bead centres ``(x, y, z)`` in pixels from the specimen centre (e.g. the
            markers of a simulated series); random when None.
        n_beads: number of random beads (ignored when ``positions`` is given).
        box: ``(X, Y, Z)`` extent in pixels, centred on the origin, of the random positions
            (beads and blobs): ``|x| <= X/2``, ``|y| <= Y/2``, ``|z| <= Z/2``.
        bead_sigma, bead_density: size (standard deviation, px) and peak density of every bead.
        n_blobs: number of random blobs (ignored when ``blob_positions`` is given).
        blob_positions: (m, 3) blob centres, pixels.
        blob_sigma: (min, max) range of the blobs' standard deviations, px (uniform draw).
        blob_density: peak density of the blobs (weak compared with the beads).
        min_separation: smallest distance between random beads, px; default ``4 * bead_sigma``.
        seed: random seed (positions and blob sizes).

    Returns:
        A :class:`Phantom`; beads first, in the order given, then blobs.
    """
    rng = np.random.default_rng(seed)
    if positions is None:
        if n_beads < 0:
            raise ValueError(f"n_beads must be >= 0, got {n_beads}")
        sep = 4.0 * bead_sigma if min_separation is None else float(min_separation)
        beads = _random_positions(rng, int(n_beads), box, sep)
    else:
        beads = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if blob_positions is None:
        if n_blobs < 0:
            raise ValueError(f"n_blobs must be >= 0, got {n_blobs}")
        blobs = _random_positions(rng, int(n_blobs), box, 0.0)
    else:
        blobs = np.asarray(blob_positions, dtype=np.float64).reshape(-1, 3)
    lo, hi = (float(v) for v in np.broadcast_to(np.asarray(blob_sigma, dtype=np.float64), (2,)))
    sizes = rng.uniform(lo, hi, blobs.shape[0]) if blobs.shape[0] else np.zeros(0)
    n, m = beads.shape[0], blobs.shape[0]
    return Phantom(
        positions=np.concatenate([beads, blobs]),
        sigma=np.concatenate([np.full(n, float(bead_sigma)), sizes]),
        density=np.concatenate([np.full(n, float(bead_density)), np.full(m, float(blob_density))]),
        is_bead=np.concatenate([np.ones(n, dtype=bool), np.zeros(m, dtype=bool)]),
    )


def project_stack(
    phantom: Phantom,
    xf_A,
    xf_shift,
    tilts_deg,
    image_size,
    *,
    oversample: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    out=None,
    dtype=np.float32,
) -> np.ndarray:
    """The raw (unaligned) tilt series of ``phantom`` seen through a known alignment.

    For each view the image is the one that, once its ``.xf`` is applied (raw -> aligned about
    the image centre), shows the specimen tilted by the view's tilt angle: raw pixel centre ``p``
    takes the projected density at ``q = A (p - c) + D``, where a specimen point appears at
    ``(x cos(theta) + z sin(theta), y)``.

    Args:
        phantom: the specimen (:func:`bead_phantom`).
        xf_A, xf_shift: (n_views, 2, 2) and (n_views, 2) IMOD transforms, raw -> aligned.
        tilts_deg: (n_views,) true tilt angles, degrees.
        image_size: ``(NX, NY)`` in pixels.
        oversample: ``k`` averages ``k x k`` samples per pixel (pixel integration) instead of the
            value at the pixel centre (``k = 1``).
        noise: standard deviation of Gaussian noise added to every pixel (0: none).
        seed: seed of that noise.
        out: optional preallocated ``(n_views, NY, NX)`` array (e.g. a memory-mapped MRC), filled
            view by view.
        dtype: dtype of the array allocated when ``out`` is None.

    Returns:
        ``(n_views, NY, NX)`` array (``out`` when given), ``stack[view, row, column]``.
    """
    a = np.asarray(xf_A, dtype=np.float64)
    d = np.asarray(xf_shift, dtype=np.float64)
    t = np.radians(np.asarray(tilts_deg, dtype=np.float64).reshape(-1))
    n_views = t.size
    if a.shape != (n_views, 2, 2) or d.shape != (n_views, 2):
        raise ValueError(
            f"need xf_A (n, 2, 2) and xf_shift (n, 2) for n = {n_views} tilts, got {a.shape} and {d.shape}"
        )
    nx, ny = (int(s) for s in image_size)
    if nx < 1 or ny < 1:
        raise ValueError(f"image_size must be two positive sizes (NX, NY), got {image_size}")
    k = int(oversample)
    if k < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if out is None:
        out = np.zeros((n_views, ny, nx), dtype=dtype)
    elif tuple(out.shape) != (n_views, ny, nx):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(n_views, ny, nx)}")
    rng = np.random.default_rng(seed)
    centre = np.array([nx / 2.0, ny / 2.0])
    sub = (np.arange(k) + 0.5) / k  # sample offsets inside a pixel
    x, y, z = phantom.positions.T
    height = phantom.density * SQRT_2PI * phantom.sigma  # line integral through the centre
    for v in range(n_views):
        a_inv = np.linalg.inv(a[v])
        reach = np.linalg.norm(a_inv, 2)  # raw pixels per aligned pixel, at most
        q0 = np.stack([x * np.cos(t[v]) + z * np.sin(t[v]), y], axis=1)  # (n, 2) aligned, centred
        p0 = (q0 - d[v]) @ a_inv.T + centre  # raw image coordinates of the centres
        img = np.zeros((ny, nx), dtype=np.float64)
        for (px, py), (q0x, q0y), s, h in zip(p0, q0, phantom.sigma, height, strict=True):
            r = CUTOFF_SIGMAS * s * reach
            c0, c1 = max(0, int(np.floor(px - r))), min(nx, int(np.ceil(px + r)) + 1)
            r0, r1 = max(0, int(np.floor(py - r))), min(ny, int(np.ceil(py + r)) + 1)
            if c0 >= c1 or r0 >= r1:
                continue
            cols = (np.arange(c0, c1)[:, None] + sub).ravel() - centre[0]  # (w k,)
            rows = (np.arange(r0, r1)[:, None] + sub).ravel() - centre[1]  # (h k,)
            qx = a[v, 0, 0] * cols[None, :] + a[v, 0, 1] * rows[:, None] + d[v, 0]
            qy = a[v, 1, 0] * cols[None, :] + a[v, 1, 1] * rows[:, None] + d[v, 1]
            val = h * np.exp(-((qx - q0x) ** 2 + (qy - q0y) ** 2) / (2.0 * s * s))
            img[r0:r1, c0:c1] += val.reshape(r1 - r0, k, c1 - c0, k).mean(axis=(1, 3))
        if noise > 0:
            img += noise * rng.standard_normal(img.shape)
        out[v] = img
    return out


def jou_xf(views) -> tuple[np.ndarray, np.ndarray]:
    """IMOD transforms of "jou" view parameters ``(scale, rotation, tilt, dx, dy)`` (radians,
    pixels), (n, 5) -> ``A`` (n, 2, 2), ``D`` (n, 2): ``A = R(-alpha) / s``, ``D = -A d``."""
    v = np.asarray(views, dtype=np.float64).reshape(-1, 5)
    s, alpha = v[:, 0], v[:, 1]
    c, si = np.cos(alpha), np.sin(alpha)
    a = np.stack([np.stack([c, si], axis=-1), np.stack([-si, c], axis=-1)], axis=-2) / s[:, None, None]
    d = -np.einsum("vij,vj->vi", a, v[:, 3:5])
    return a, d


def series_alignment(series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true alignment of a :class:`lmalign_jax.simulation.synthetic.SyntheticSeries`:
    ``(xf_A (n, 2, 2), xf_shift (n, 2), tilts_deg (n,))``.

    "jou" views are converted in closed form (:func:`jou_xf`). Other models are converted by
    fitting, per view, the 2-D affine map from the model's projections of a grid of specimen
    points to their aligned positions (as :func:`lmalign_jax.core.result.fit_image_transforms` does
    for a solved alignment); a model whose image side is not affine raises ``ValueError``.
    """
    from ..models import get_model

    model = get_model(series.model)
    views = np.asarray(series.views, dtype=np.float64)
    tilts = views[:, model.index("tilt")]
    if model.name == "jou":
        a, d = jou_xf(views)
        return a, d, np.degrees(tilts)

    import jax
    import jax.numpy as jnp

    from ..core.result import fit_image_transforms

    g = np.array([-100.0, 0.0, 100.0])
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    with jax.default_device(jax.devices("cpu")[0]), jax.enable_x64(True):
        project = jax.vmap(jax.vmap(model.project, in_axes=(None, 0)), in_axes=(0, None))
        predicted = np.asarray(project(jnp.asarray(views), jnp.asarray(grid)), dtype=np.float64)
    aligned = np.stack(
        [
            grid[None, :, 0] * np.cos(tilts)[:, None] + grid[None, :, 2] * np.sin(tilts)[:, None],
            np.broadcast_to(grid[None, :, 1], (views.shape[0], grid.shape[0])),
        ],
        axis=-1,
    )
    xf = fit_image_transforms(predicted, aligned)
    misfit = np.einsum("vij,vpj->vpi", xf[:, :, :2], predicted) + xf[:, None, :, 2] - aligned
    if np.max(np.abs(misfit)) > 1e-6:
        raise ValueError(
            f"model {model.name!r} with these parameters is not an affine image transform; no exact .xf"
        )
    return xf[:, :, :2], xf[:, :, 2], np.degrees(tilts)


def voxel_index(xyz, shape, binning: float = 1.0) -> np.ndarray:
    """Fractional voxel indices ``(k, j, i)`` of specimen positions ``xyz`` (n, 3) (pixels from the
    specimen centre) in a ``(NZ, NY, NX)`` volume of ``binning``-pixel voxels."""
    p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3) / float(binning)
    nz, ny, nx = shape
    return np.stack([p[:, 2] + nz / 2.0 - 0.5, p[:, 1] + ny / 2.0 - 0.5, p[:, 0] + nx / 2.0 - 0.5], axis=1)


def _nearest_strong_maximum(win: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Index of the local maximum of ``win`` nearest ``guess`` among those at least half as high
    as the window's maximum (so a brighter neighbouring bead in the window is not taken)."""
    padded = np.pad(win, 1, constant_values=-np.inf)
    is_max = np.ones(win.shape, dtype=bool)
    n0, n1, n2 = win.shape
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dz or dy or dx:
                    is_max &= win >= padded[1 + dz : 1 + dz + n0, 1 + dy : 1 + dy + n1, 1 + dx : 1 + dx + n2]
    top = win.max()
    strong = is_max & (win >= (0.5 * top if top > 0 else top))
    idx = np.argwhere(strong)
    if idx.size == 0:
        return np.array(np.unravel_index(np.argmax(win), win.shape))
    return idx[np.argmin(np.linalg.norm(idx - guess, axis=1))]


def locate_peaks(volume, xyz, *, binning: float = 1.0, search: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Where the peaks near the expected positions ``xyz`` (n, 3) appear in ``volume`` (NZ, NY, NX).

    For each position the local maximum nearest the expected voxel, among those within ``search``
    voxels (per axis) and at least half as bright as the brightest there, is taken and refined to
    sub-voxel precision by a parabola through it and its two neighbours along each axis.

    Returns ``(found, distance)``: found positions (n, 3) in specimen pixels (like ``xyz``) and
    their distances from the expected ones (n,) in **voxels**. A position outside the volume
    gives NaN.
    """
    vol = np.asarray(volume)
    shape = vol.shape
    expected = voxel_index(xyz, shape, binning)
    found = np.full(expected.shape, np.nan)
    for n, e in enumerate(expected):
        g = np.round(e).astype(int)
        if np.any(g < 0) or np.any(g >= np.array(shape)):
            continue
        lo = np.maximum(g - search, 0)
        hi = np.minimum(g + search + 1, shape)
        win = np.asarray(vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float64)
        m = _nearest_strong_maximum(win, e - lo) + lo
        peak = float(vol[tuple(m)])
        pos = m.astype(np.float64)
        for ax in range(3):
            if 0 < m[ax] < shape[ax] - 1:
                lo_i, hi_i = m.copy(), m.copy()
                lo_i[ax] -= 1
                hi_i[ax] += 1
                vm, vp = float(vol[tuple(lo_i)]), float(vol[tuple(hi_i)])
                curv = vm - 2.0 * peak + vp
                if curv < 0:
                    pos[ax] += float(np.clip(0.5 * (vm - vp) / curv, -0.5, 0.5))
        found[n] = pos
    dist = np.linalg.norm(found - expected, axis=1)
    nz, ny, nx = shape
    b = float(binning)
    xyz_found = np.stack(
        [
            (found[:, 2] + 0.5 - nx / 2.0) * b,
            (found[:, 1] + 0.5 - ny / 2.0) * b,
            (found[:, 0] + 0.5 - nz / 2.0) * b,
        ],
        axis=1,
    )
    return xyz_found, dist


def fit_similarity(source, target) -> np.ndarray:
    """``source`` (n, 3) moved by the least-squares similarity (scale, rotation, translation) that
    best matches ``target`` (n, 3) (Umeyama 1991). Removes the gauge freedoms of a solved alignment
    (common shift, scale, rotation about the tilt axis) before comparing it with the truth."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or src.shape[0] < 3:
        raise ValueError(f"need two (n, 3) point sets with n >= 3, got {src.shape} and {dst.shape}")
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - ms, dst - md
    u, sv, vt = np.linalg.svd(d0.T @ s0 / src.shape[0])
    e = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[2, 2] = -1.0
    rot = u @ e @ vt
    var = np.mean(np.sum(s0**2, axis=1))
    scale = float(np.trace(np.diag(sv) @ e) / var) if var > 0 else 1.0
    return scale * s0 @ rot.T + md
