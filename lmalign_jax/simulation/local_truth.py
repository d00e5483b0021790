"""A series whose views are warped smoothly in the image plane, and the error of aligned positions
against the noise-free ones: the known truth local alignment is judged by (issue #15).

The residual always falls with more parameters; the error of the aligned positions (each marker
fitted through the global transform alone, or through a local file as IMOD's tilt applies it)
against the simulator's noise-free positions does not.
"""

from __future__ import annotations

import jax
import numpy as np

from ..core.local_apply import fit_markers_through_local, project_through_local
from ..models import get_model
from ..observations import Observations
from .synthetic import simulate

__all__ = ["warped_observations", "aligned_position_error"]


def warped_observations(
    warp_px: float, seed: int = 1, *, n_views: int = 41, n_markers: int = 60, size: int = 2048, noise_px=0.3
) -> tuple[Observations, np.ndarray]:
    """(observations, noise-free centred raw positions (V, M, 2)) of a jou series (``simulate``)
    whose views carry the conformal field ``warp_px * tilt / 60 deg * (u^2 - v^2, 2 u v)`` (u, v =
    position / half the image): up to about ``warp_px`` where the markers are, smooth in the
    view, and not an affine map of the image (which the global per-view parameters would absorb).
    """
    s = simulate(n_views=n_views, n_markers=n_markers, image_size=(size, size), noise_px=noise_px, seed=seed)
    with jax.enable_x64(True):
        project = jax.vmap(jax.vmap(get_model("jou").project, in_axes=(None, 0)), in_axes=(0, None))
        clean = np.asarray(project(s.views, s.markers))
    u = clean / (size / 2)
    amp = warp_px * s.observations.tilts_deg[:, None] / 60.0
    clean = clean + np.stack([amp * (u[..., 0] ** 2 - u[..., 1] ** 2), amp * 2 * u[..., 0] * u[..., 1]], -1)
    noise = noise_px * np.random.default_rng(seed + 100).standard_normal(clean.shape)
    obs = Observations(clean + noise + size / 2, s.observations.mask, s.observations.tilts_deg, (size, size))
    return obs, clean


def aligned_position_error(result, local, clean: np.ndarray) -> float:
    """RMS error (px per coordinate) of the aligned positions ``result`` predicts, every marker
    fitted through ``local`` (an IMOD local alignment, or None: the global transform alone), against
    the noise-free raw positions ``clean`` (V, M, 2, centred) mapped by the same global transform."""
    obs, xf = result.observations, result.xf
    truth = np.einsum("vij,vmj->vmi", xf[:, :, :2], clean) + xf[:, None, :, 2]
    xyz, _ = fit_markers_through_local(
        local, result.aligned_xy() - obs.center, obs.mask, result.tilts_deg, obs.image_size, result.markers
    )
    predicted = project_through_local(local, xyz, result.tilts_deg, obs.image_size)
    error = np.where(obs.mask[..., None], predicted - truth, 0)
    return float(np.sqrt(np.sum(error**2) / (2 * obs.n_observed)))
