"""Choosing the beads to track on the seed view, and the averaged bead they are tracked with."""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike, Float, Int

from .centring import bead_template, correlate_windows, extract_windows
from .result import MIN_TRACKED_BEADS

__all__ = ["choose_beads", "seed_template", "MAX_SEED_AMPLITUDE_DEVIATION"]

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
    if idx.size <= target:
        return idx[np.argsort(-s[idx], kind="stable")]
    weight = np.sqrt(np.clip(s[idx] / np.max(s[idx]), 1e-6, None))
    chosen = [int(np.argmax(s[idx]))]
    nearest = np.linalg.norm(p[idx] - p[idx[chosen[0]]], axis=1)
    for _ in range(target - 1):
        k = int(np.argmax(nearest * weight))
        chosen.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(p[idx] - p[idx[k]], axis=1))
    return idx[np.asarray(chosen)]


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
