"""Closed-form starting values: tilt-axis angle from the marker tracks, shifts, markers."""

from __future__ import annotations

import numpy as np

from ..observations import Observations


def estimate_rotation_deg(obs: Observations) -> float:
    """Tilt-axis angle (degrees, counter-clockwise from the image y axis, in (-90, 90]).

    Markers move perpendicular to the tilt axis as the specimen tilts. The principal
    direction u of all track displacements (each marker's positions minus its mean) is
    R(alpha) (1, 0), so alpha = atan2(u_y, u_x), folded by 180 degrees (a rotation by 180
    degrees is the same solution with the specimen reflected through its centre).
    """
    xy = obs.centered_xy
    mask = obs.mask
    count = mask.sum(axis=0)
    mean = (xy * mask[..., None]).sum(axis=0) / count[:, None]
    d = np.where(mask[..., None], xy - mean, 0.0).reshape(-1, 2)
    _, vecs = np.linalg.eigh(d.T @ d)
    u = vecs[:, -1]
    angle = np.degrees(np.arctan2(u[1], u[0]))
    return float((angle + 90.0) % 180.0 - 90.0) if (angle + 90.0) % 180.0 != 0 else 90.0


def _rotate(angle, xy):
    """xy (..., 2) rotated counter-clockwise by ``angle`` (radians, broadcast against xy[..., 0])."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], axis=-1)


def starting_markers_and_shifts(obs: Observations, rotation_rad: np.ndarray, ref_view: int):
    """Markers (n_markers, 3) at z = 0 and per-view shifts (n_views, 2), closed form.

    Each marker's x, y come from the view nearest 0 degrees in which it is seen (x divided
    by cos(tilt)), after removing that view's shift; a view's shift is the mean offset of its
    markers from their projections with unit scale and nominal tilt. Two passes: first the
    markers of the reference view (whose shift is 0), then all.
    """
    tilts = np.radians(obs.tilts_deg)
    xy = obs.centered_xy
    mask = obs.mask
    n_views, n_markers = mask.shape
    unrotated = _rotate(-rotation_rad[:, None], xy)  # (v, m, 2)
    shifts = np.zeros((n_views, 2))
    markers = np.zeros((n_markers, 3))
    known = mask[ref_view].copy()
    markers[known, :2] = unrotated[ref_view, known]
    for _ in range(2):
        predicted = markers[None, :, 0] * np.cos(tilts)[:, None]  # (v, m), z = 0
        use = mask & known[None, :]
        rot_pred = _rotate(
            rotation_rad[:, None],
            np.stack([predicted, np.broadcast_to(markers[:, 1], predicted.shape)], axis=-1),
        )
        offset = np.where(use[..., None], xy - rot_pred, 0.0).sum(axis=1)
        n = use.sum(axis=1)
        shifts = np.where(n[:, None] > 0, offset / np.maximum(n, 1)[:, None], shifts)
        shifts[ref_view] = 0.0
        # markers from their lowest-tilt view, with that view's shift removed
        weight = np.where(mask, -np.abs(tilts)[:, None], -np.inf)
        best = np.argmax(weight, axis=0)
        local = _rotate(-rotation_rad[best], xy[best, np.arange(n_markers)] - shifts[best])
        update = ~mask[ref_view]
        markers[update, 0] = local[update, 0] / np.cos(tilts[best[update]])
        markers[update, 1] = local[update, 1]
        known[:] = True
    return markers, shifts
