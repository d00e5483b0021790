"""Choosing the beads to track on the seed view, and the averaged bead they are tracked with.

On a specimen with two surfaces the chosen beads are spread over both (issue #14): where more
well-separated beads are found than are to be tracked, :mod:`lmalign_jax.track.tracking` first
tracks all of them through the few views nearest the seed view and fits the alignment, whose
bead heights (parallax: ``x cos(t) + z sin(t)``) :func:`split_surfaces` sorts into two surfaces,
and :func:`choose_on_surfaces` takes half of the beads from each.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike, Float, Int

from .centring import bead_template, correlate_windows, extract_windows
from .result import MIN_TRACKED_BEADS

__all__ = [
    "choose_beads",
    "choose_on_surfaces",
    "split_surfaces",
    "seed_template",
    "MAX_SEED_AMPLITUDE_DEVIATION",
]

#: Largest relative difference of a seed bead's correlation amplitude from the median.
MAX_SEED_AMPLITUDE_DEVIATION = 0.35


def choose_beads(
    positions: Float[ArrayLike, "candidates 2"],
    scores: Float[ArrayLike, " candidates"],
    image_size: tuple[int, int],
    bead_diameter_px: float,
    target: int,
) -> Int[np.ndarray, " chosen"]:
    """Indices of up to ``target`` well-spread, unambiguous candidates.

    A candidate with another within ``2 D`` or nearer than ``D`` to the border is dropped; the
    rest are taken in farthest-point order (each next one the farthest from those taken, its
    distance weighted by the square root of its relative score), starting from the strongest.
    """
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    d = float(bead_diameter_px)
    nx, ny = image_size
    if p.shape[0] == 0 or target <= 0:
        return np.zeros(0, dtype=np.int64)
    gap = np.linalg.norm(p[:, None] - p[None], axis=2) + np.diag(np.full(p.shape[0], np.inf))
    ok = (gap.min(axis=1) >= 2.0 * d) & (p[:, 0] >= d) & (p[:, 0] <= nx - d)
    ok &= (p[:, 1] >= d) & (p[:, 1] <= ny - d)
    idx = np.flatnonzero(ok)
    return idx[_farthest_points(p[idx], s[idx], target)]


def _farthest_points(p: np.ndarray, s: np.ndarray, target: int) -> np.ndarray:
    """Indices into ``p`` of up to ``target`` points in farthest-point order (distances weighted
    by the square root of the relative score), strongest first; all of them, strongest first,
    when there are no more than ``target``."""
    if p.shape[0] <= target:
        return np.argsort(-s, kind="stable")
    weight = np.sqrt(np.clip(s / np.max(s), 1e-6, None))
    chosen = [int(np.argmax(s))]
    nearest = np.linalg.norm(p - p[chosen[0]], axis=1)
    for _ in range(target - 1):
        k = int(np.argmax(nearest * weight))
        chosen.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(p - p[k], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def split_surfaces(z: Float[ArrayLike, " beads"], bead_diameter_px: float) -> np.ndarray | None:
    """(n,) bool, True for the beads on the upper of two surfaces, or None when the heights ``z``
    do not form two groups: the largest gap between sorted heights must be at least one bead
    diameter (two layers closer than a bead are one) with 2 or more beads on each side."""
    z = np.asarray(z, dtype=np.float64)
    ok = np.isfinite(z)
    if ok.sum() < 4:
        return None
    zs = np.sort(z[ok])
    gaps = np.diff(zs)
    k = int(np.argmax(gaps[1:-1])) + 1  # 2 or more on each side
    if gaps[k] < float(bead_diameter_px):
        return None
    return ok & (z > 0.5 * (zs[k] + zs[k + 1]))


def choose_on_surfaces(
    positions: Float[ArrayLike, "candidates 2"],
    scores: Float[ArrayLike, " candidates"],
    eligible: Int[ArrayLike, " eligible"],
    upper: np.ndarray,
    target: int,
) -> Int[np.ndarray, " chosen"]:
    """Indices of ``target`` of the ``eligible`` candidates (well separated, from
    :func:`choose_beads`), half on each surface (``upper``: (eligible,) bool) where both have
    enough, the rest from the other; farthest-point order within each surface."""
    p = np.asarray(positions, dtype=np.float64)[np.asarray(eligible)]
    s = np.asarray(scores, dtype=np.float64)[np.asarray(eligible)]
    groups = [np.flatnonzero(upper), np.flatnonzero(~upper)]
    first = min(groups[0].size, max(target - groups[1].size, target // 2))
    share = (first, min(groups[1].size, target - first))
    picked = np.concatenate([g[_farthest_points(p[g], s[g], n)] for g, n in zip(groups, share, strict=True)])
    picked = picked[np.argsort(-s[picked], kind="stable")]
    return np.asarray(eligible)[picked]


def seed_template(image, candidates, chosen, diameter: float, size: int):
    """The averaged bead of the chosen seed beads, without those whose correlation amplitude
    against it is far from the median (two touching beads seen as one are about twice as strong).
    Returns (chosen, template)."""
    windows, origins = extract_windows(image, candidates[chosen], size)
    template = bead_template(windows, origins, candidates[chosen], diameter)
    match = correlate_windows(windows, origins, template, candidates[chosen], 2.0, diameter)
    ratio = match.amplitude / np.median(match.amplitude)
    typical = np.abs(ratio - 1.0) <= MAX_SEED_AMPLITUDE_DEVIATION
    if typical.sum() >= MIN_TRACKED_BEADS and not typical.all():
        chosen = chosen[typical]
        template = bead_template(windows[typical], origins[typical], candidates[chosen], diameter)
    return chosen, template
