"""Whole-view registration against the predicted beads: one pooled shift from all beads at once.

Why
---
A new view's prediction (fitted alignment of the views so far, moved by the coarse shift between
neighbouring views, :mod:`lmalign_jax.track.coarse`) can be off by tens of pixels where the coarse
correlation failed: at cryo dose (30 e/px) and 60 degrees the thick, dark, noisy views correlate
poorly with their neighbours. Each bead alone is then searched in the wrong place and, at 1-3
noise sigmas, cannot be told from noise, so the whole view was lost. All beads move together, so
their evidence is pooled, as strong trackers register a view before centring single beads.

How
---
The view is correlated with a synthetic image of all predicted beads (the averaged bead placed
at every predicted position) over shifts within ``radius_px``. That correlation is the sum, over
beads, of each bead's window correlated with the template, read at the prediction plus the
shift; it is computed that way (one batched FFT of the windows, each moved by its prediction's
sub-pixel part so that index ``W/2`` is the prediction). Each window's correlation is divided by
its robust noise level (1.4826 MAD over the window), so a bead in a textured patch does not
outweigh the others and the pooled map is a sum of unit-variance maps.

When is the pooled peak real
----------------------------
The null distribution of the pooled map is estimated from the map itself: its median and robust
standard deviation over the search disc farther than one bead diameter from the peak, and its
roughness (the variance of its one-pixel steps over its variance: how finely it fluctuates; for
a bead template about 0.6 px^-2, a correlation length near 1.3 px, far finer than a bead). The
peak's height over that noise, ``z``, must exceed the level that a Gaussian field of that
roughness reaches anywhere in the search disc with probability :data:`FALSE_ALARM`
(:func:`excursion_threshold`, the expected Euler characteristic of its excursion set): about 5.1
for a search radius of 4 bead diameters of 8 px. Below that the shift is not used. On pure
Poisson noise the pooled peak reaches 3.2-4.0 (tests/test_track_register.py).

Single beads
------------
After a significant registration each bead is centred alone about its moved prediction. A bead
found where the registered prediction puts it (within the tracker's JUMP tolerance of the
strong beads' common offset, :mod:`lmalign_jax.track.tracking`) is backed by the pooled
evidence: it needs only a peak that noise reaches within that disc with probability
:data:`BEAD_FALSE_ALARM` (:func:`bead_threshold`; the window's correlation divided by its noise
level is a unit Gaussian at a point without a bead), not the peak a bead found alone needs.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from jaxtyping import ArrayLike, Float

from .centring import extract_windows, window_size

__all__ = [
    "Registration",
    "register_view",
    "excursion_threshold",
    "roughness",
    "bead_threshold",
    "FALSE_ALARM",
    "BEAD_FALSE_ALARM",
    "RADIUS_PER_DIAMETER",
    "MAX_POOLED_BEADS",
]

#: Probability that pure noise passes the pooled-peak test in one view.
FALSE_ALARM = 1e-3
#: Probability that pure noise passes as a bead in a registered view (:func:`bead_threshold`).
BEAD_FALSE_ALARM = 1e-2
#: Most beads pooled (the first ones given: the tracker's are in farthest-point order, strongest
#: first): 16 beads at 1.5 noise sigmas each already make a pooled peak of 6; more only cost time.
MAX_POOLED_BEADS = 16
#: Search radius of the registration, in bead diameters.
RADIUS_PER_DIAMETER = 4.0


class Registration:
    """The pooled shift of one view: ``shift`` (2,) pixels to add to the predictions, ``z`` its
    height over the pooled map's noise, ``threshold`` the height noise reaches with probability
    :data:`FALSE_ALARM`, ``significant`` whether ``z`` passed it, ``beads`` how many beads were
    pooled."""

    __slots__ = ("shift", "z", "threshold", "significant", "beads")

    def __init__(self, shift, z, threshold, significant, beads):
        self.shift, self.z, self.threshold, self.significant = shift, z, threshold, significant
        self.beads = beads


def excursion_threshold(area_px2: float, roughness: float, false_alarm: float) -> float:
    """Smallest height ``u`` (noise sigmas) that a smooth unit-variance Gaussian field exceeds
    somewhere over ``area_px2`` with probability ``false_alarm``: the expected Euler
    characteristic of the excursion set, ``area * roughness * u exp(-u^2 / 2) / (2 pi)^(3/2)
    + Q(u)`` (``roughness`` the variance of the field's derivative along one axis, px^-2;
    Adler & Taylor, Random Fields and Geometry, 2007, ch. 11), solved by bisection."""
    normal = NormalDist()

    def exceed(u):
        return area_px2 * roughness * u * math.exp(-0.5 * u * u) / (2.0 * math.pi) ** 1.5 + (
            1.0 - normal.cdf(u)
        )

    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if exceed(mid) > false_alarm else (lo, mid)
    return hi


def roughness(template: Float[ArrayLike, "size size"]) -> float:
    """Variance of the derivative (px^-2, mean of the two axes) of a white-noise image correlated
    with ``template``, over the correlation's variance: the template's gradient energy over its
    energy (finite differences)."""
    t = np.asarray(template, dtype=np.float64)
    energy = float(np.sum(t * t))
    if energy <= 0:
        return 1.0
    gx, gy = np.diff(t, axis=1), np.diff(t, axis=0)
    return 0.5 * float(np.sum(gx * gx) + np.sum(gy * gy)) / energy


def bead_threshold(agree_px: float, template: Float[ArrayLike, "size size"]) -> float:
    """Smallest correlation peak (noise sigmas of the bead's window) that pure noise reaches with
    probability :data:`BEAD_FALSE_ALARM` within ``agree_px`` of a registered prediction
    (:func:`excursion_threshold` over that disc, the roughness of ``template``'s correlation): a
    bead backed by the pooled evidence needs no more (module docstring, "Single beads")."""
    return excursion_threshold(math.pi * agree_px * agree_px, roughness(template), BEAD_FALSE_ALARM)


def register_view(
    view: Float[ArrayLike, "rows columns"],
    predicted: Float[ArrayLike, "beads 2"],
    template: Float[ArrayLike, "size size"],
    bead_diameter_px: float,
    radius_px: float | None = None,
    false_alarm: float = FALSE_ALARM,
) -> Registration:
    """Shift of the whole view against the beads predicted in it (module docstring).

    Args:
        view: (NY, NX) one raw view.
        predicted: (n, 2) predicted bead positions ``(x, y)``, pixels (rows with NaN are skipped).
        template: (W, W) averaged bead from :func:`lmalign_jax.track.centring.bead_template`,
            centred on pixel ``W/2``.
        bead_diameter_px: bead diameter, pixels.
        radius_px: largest shift searched, pixels (default ``RADIUS_PER_DIAMETER`` diameters).
        false_alarm: probability that noise alone passes the significance test (the caller
            divides it among several tries of the same view).
    """
    d = float(bead_diameter_px)
    radius = RADIUS_PER_DIAMETER * d if radius_px is None else float(radius_px)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    p = p[np.all(np.isfinite(p), axis=1)][:MAX_POOLED_BEADS]
    if p.shape[0] == 0:
        return Registration(np.zeros(2), 0.0, math.inf, False, 0)
    size = window_size(d, radius)
    windows, origins = extract_windows(np.asarray(view), p, size)
    half = size // 2
    t = np.asarray(template, dtype=np.float64)
    padded = np.zeros((size, size))
    th = t.shape[0] // 2
    lo = half - th
    padded[lo : lo + t.shape[0], lo : lo + t.shape[1]] = t
    t0 = np.roll(padded, (-half, -half), axis=(0, 1))
    frac = p - origins - 0.5 - half  # (n, 2) in [-0.5, 0.5): index W/2 + frac is the prediction
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    phase = np.exp(2j * np.pi * kx[None] * frac[:, 0, None, None]) * np.exp(
        2j * np.pi * ky[None] * frac[:, 1, None, None]
    )  # (n, W, W/2 + 1), separable
    w = windows.astype(np.float32)
    w = w - w.mean(axis=(1, 2), keepdims=True)
    spectrum = np.conj(np.fft.rfft2(t0)).astype(np.complex64)
    corr = np.fft.irfft2(np.fft.rfft2(w) * (spectrum[None] * phase.astype(np.complex64)), s=(size, size))
    sample = corr[:, ::2, ::2].reshape(p.shape[0], -1)  # a quarter of the pixels: plenty for a median
    med = np.median(sample, axis=1)
    mad = np.median(np.abs(sample - med[:, None]), axis=1)
    usable = mad > 0
    if not usable.any():
        return Registration(np.zeros(2), 0.0, math.inf, False, 0)
    pooled = np.sum((corr[usable] - med[usable, None, None]) / (1.4826 * mad[usable, None, None]), axis=0)
    idx = np.arange(size) - half
    r2 = idx[None, :] ** 2 + idx[:, None] ** 2
    disc = r2 <= radius * radius
    score = np.where(disc, pooled, -np.inf)
    py, px = np.unravel_index(int(np.argmax(score)), score.shape)
    dy, dx = idx[:, None] - (py - half), idx[None, :] - (px - half)
    background = pooled[disc & (dx * dx + dy * dy > d * d)]
    centre = float(np.median(background))
    sd = 1.4826 * float(np.median(np.abs(background - centre)))
    z = (float(pooled[py, px]) - centre) / sd if sd > 0 else 0.0
    steps = np.concatenate(
        [
            (pooled[:, 1:] - pooled[:, :-1])[disc[:, 1:] & disc[:, :-1]],
            (pooled[1:] - pooled[:-1])[disc[1:] & disc[:-1]],
        ]
    )
    rough = (1.4826 * float(np.median(np.abs(steps)))) ** 2 / (sd * sd) if sd > 0 else 1.0
    threshold = excursion_threshold(math.pi * radius * radius, rough, false_alarm)
    fx = _vertex(pooled[py, px - 1], pooled[py, px], pooled[py, px + 1]) if 0 < px < size - 1 else 0.0
    fy = _vertex(pooled[py - 1, px], pooled[py, px], pooled[py + 1, px]) if 0 < py < size - 1 else 0.0
    shift = np.array([px - half + fx, py - half + fy], dtype=np.float64)
    return Registration(shift, z, threshold, bool(z >= threshold), int(usable.sum()))


def _vertex(left: float, mid: float, right: float) -> float:
    """Sub-pixel offset of a maximum from three samples (parabola), within half a pixel."""
    den = left - 2.0 * mid + right
    if not (den < 0 and math.isfinite(den)):
        return 0.0
    return float(np.clip(0.5 * (left - right) / den, -0.5, 0.5))
