"""Per-point weights of the robust fit (``robust.align_robust``, whose docstring gives the scheme).

``view_groups`` splits the views into groups of neighbours in tilt angle; ``normalised_residuals``
scales each observation's residual length within its group, ``u = (r - median_g) / scale_g`` with
``scale = MAD / mad_constant``; ``loss_weights`` turns ``u`` into the loss's IRLS weight in [0, 1]
(1 at or below the median); ``keep_determined`` gives ``KEEP_WEIGHT`` to the rejected points each
marker and view needs to stay determined. ``mask``, residual lengths, ``u`` and weights are
(n_views, n_markers) arrays (``u`` NaN where unobserved); lengths, medians and scales are in
pixels, ``u`` and the tuning constants (``LOSSES``) in units of the scale.

IMOD divides the MAD by 0.6745 (MADN, the constant for a Gaussian variable). Residual
*lengths* are not Gaussian: with Gaussian errors of sigma per coordinate they follow a
Rayleigh law with median 1.1774 sigma and MAD 0.4485 sigma, so MADN is only 0.665 sigma
and IMOD's K = 4.685 cut sits 3.1 sigma above the median, down-weighting ordinary
points. We default to ``mad_constant = RAYLEIGH_MAD`` (0.4485), which makes the scale an
estimate of sigma and the constants below their usual Gaussian meaning (the Tukey cut
then sits about 5.8 sigma from zero, beyond which a Gaussian inlier lands less than once
in a million); pass ``mad_constant=MADN_CONSTANT`` for IMOD's exact choice.
"""

from __future__ import annotations

import numpy as np

#: Loss name -> default tuning constant (in units of the robust scale), the usual
#: 95%-efficiency values for Gaussian errors.
LOSSES = {"tukey": 4.685, "huber": 1.345, "cauchy": 2.385}
#: MAD / 0.6745 (MADN) estimates sigma of a Gaussian variable (IMOD's normalisation).
MADN_CONSTANT = 0.6745
#: MAD / 0.44845 estimates sigma per coordinate from Rayleigh-distributed residual lengths
#: (2-D Gaussian errors): the MAD of such lengths is 0.44845 sigma. The default.
RAYLEIGH_MAD = 0.44845
#: Weight given instead of 0 to points a marker or view needs to stay determined.
KEEP_WEIGHT = 1e-3
#: Fewest positively weighted views per marker / markers per view the weights may leave (a view
#: keeps more where its own parameters need more: ``core.problem.points_needed``).
MIN_SUPPORT = 3


def loss_weights(u: np.ndarray, loss: str = "tukey", tuning: float | None = None) -> np.ndarray:
    """IRLS weight w(u) of normalised residuals ``u``; u <= 0 (at or below the median) gives 1.

    Args:
        u: normalised residuals (any shape); NaN gives NaN.
        loss: "tukey", "huber" or "cauchy".
        tuning: the loss's constant (default ``LOSSES[loss]``).
    """
    loss, tuning = _check_loss(loss, tuning)
    u = np.asarray(u, dtype=np.float64)
    a = np.maximum(u, 0.0) / tuning
    with np.errstate(divide="ignore", invalid="ignore"):
        if loss == "tukey":
            w = np.where(a < 1.0, (1.0 - a * a) ** 2, 0.0)
        elif loss == "huber":
            w = np.where(a <= 1.0, 1.0, 1.0 / np.where(a > 0, a, 1.0))
        else:
            w = 1.0 / (1.0 + a * a)
    return np.where(np.isnan(u), np.nan, w)


def view_groups(tilts_deg, mask, group_size: int, min_group_points: int = 0) -> list[np.ndarray]:
    """Groups of neighbouring views (by tilt angle) for the robust scale.

    Views are sorted by tilt; each group takes ``group_size`` consecutive ones, extended
    until it holds at least ``min_group_points`` observations. A short remainder joins the
    last group. Returns a list of view-index arrays that partitions all views.
    """
    group_size = _check_group_size(group_size)
    order = np.argsort(np.asarray(tilts_deg, dtype=np.float64), kind="stable")
    per_view = np.asarray(mask).sum(axis=1)
    groups: list[list[int]] = []
    current: list[int] = []
    for v in order:
        current.append(int(v))
        if len(current) >= group_size and per_view[current].sum() >= min_group_points:
            groups.append(current)
            current = []
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return [np.sort(np.asarray(g, dtype=int)) for g in groups]


def normalised_residuals(
    lengths, mask, groups, min_scale_px: float = 1e-3, mad_constant: float = RAYLEIGH_MAD
):
    """``(r - median_g) / scale_g`` per observation, ``scale = MAD / mad_constant`` per group.

    Returns (u (n_views, n_markers), NaN where unobserved; medians (n_groups,); scales (n_groups,)).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    u = np.full(lengths.shape, np.nan)
    medians, scales = np.zeros(len(groups)), np.zeros(len(groups))
    for i, g in enumerate(groups):
        sel = np.zeros(mask.shape, dtype=bool)
        sel[g] = mask[g]
        r = lengths[sel]
        if r.size == 0:
            continue
        med = float(np.median(r))
        scale = max(float(np.median(np.abs(r - med))) / mad_constant, min_scale_px)
        medians[i], scales[i] = med, scale
        u[sel] = (r - med) / scale
    return u, medians, scales


def keep_determined(
    weights,
    mask,
    lengths,
    min_support: int = MIN_SUPPORT,
    keep_weight: float = KEEP_WEIGHT,
    view_support=None,
):
    """Raise zero weights to ``keep_weight`` where a marker or view would lose its support.

    Each marker keeps positive weight in at least ``min(min_support, its views)`` views and
    each view in at least ``min(max(min_support, view_support[v]), its markers)`` markers
    (``view_support`` (n_views,): the points each view's own parameters need,
    ``core.problem.points_needed``; a zero weight takes a point out of the fit); the points
    revived are those with the smallest residual lengths. Returns a new weight array.
    """
    w = np.array(weights, dtype=np.float64)
    per_view = np.full(mask.shape[0], min_support)
    if view_support is not None:
        per_view = np.maximum(per_view, np.asarray(view_support, int))
    for axis in (0, 1):  # axis 0: per marker (over views); axis 1: per view (over markers)
        for _ in range(2):  # a second pass settles what the other axis changed
            n_lines = mask.shape[1 - axis]
            for line in range(n_lines):
                idx = (slice(None), line) if axis == 0 else (line, slice(None))
                m, wl, rl = mask[idx], w[idx], lengths[idx]
                support = min_support if axis == 0 else int(per_view[line])
                need = min(support, int(m.sum())) - int((m & (wl > 0)).sum())
                if need <= 0:
                    continue
                candidates = np.flatnonzero(m & ~(wl > 0))
                revive = candidates[np.argsort(rl[candidates], kind="stable")[:need]]
                wl = wl.copy()
                wl[revive] = keep_weight
                w[idx] = wl
    return w


def _check_loss(loss, tuning):
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown robust loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if tuning is None:
        return loss, LOSSES[loss]
    if not (np.isfinite(tuning) and tuning > 0):
        raise ValueError(f"tuning constant must be a positive number, got {tuning!r}")
    return loss, float(tuning)


def _check_group_size(group_size):
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer (views per group), got {group_size!r}")
    return int(group_size)
