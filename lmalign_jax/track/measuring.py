"""Centring of all beads of one view about their predictions, with the leave-out rules of
:mod:`lmalign_jax.track.tracking` (its module docstring, steps 3 and 4): OUTSIDE, CROWDED, WEAK,
JUMP, and the whole-view registration before them (:mod:`lmalign_jax.track.register`)."""

from __future__ import annotations

import numpy as np

from .centring import WindowMatch, correlate_windows, extract_windows
from .register import FALSE_ALARM, bead_threshold, register_view
from .result import CROWDED, FOUND, JUMP, NOT_REACHED, OUTSIDE, WEAK

__all__ = ["Measurer", "MIN_AMPLITUDE", "MIN_SNR", "RIVAL", "WIDE_RADIUS_PER_DIAMETER", "similarity_about"]

#: Smallest correlation peak, as a fraction of the average bead's.
MIN_AMPLITUDE = 0.35
#: Smallest correlation peak over the correlation's robust noise level.
MIN_SNR = 4.0
#: Largest second peak within 2 D, as a fraction of the peak.
RIVAL = 0.6
#: Search radius of the second, wider registration where the first finds nothing, in bead diameters.
WIDE_RADIUS_PER_DIAMETER = 12.0
#: Magnification and in-plane rotation changes about the image centre tried, coarse to fine
#: (each level halves the steps about the best so far), when most beads of a registered view are
#: not found: between two views the scale may jump by a percent and the rotation by half a degree
#: (the realistic simulator's per-view jitter), which moves a bead 2,000 px from the centre of a
#: 4k view by 20 px, more than the bead search and no shift the registration can find.
SIMILARITY_SCALE_STEP = 0.01
SIMILARITY_ROTATION_STEP_DEG = 0.5
SIMILARITY_LEVELS = 3


def similarity_about(points, centre, scale: float, rotation_deg: float) -> np.ndarray:
    """``centre + (1 + scale) R(rotation) (points - centre)``: (n, 2) points magnified by
    ``1 + scale`` and turned counter-clockwise by ``rotation_deg`` about ``centre`` (x, y)."""
    a = np.radians(rotation_deg)
    rot = (1.0 + scale) * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.asarray(centre, dtype=np.float64)
    return c + (np.asarray(points, dtype=np.float64) - c) @ rot.T


def _crowded(match) -> np.ndarray:
    """A second peak within ``2 D`` above ``RIVAL`` of the peak that is itself bead-like, at least
    ``MIN_SNR`` sigmas of the correlation's background (a lattice or ice texture makes many weaker
    peaks that are no second bead)."""
    return (match.rival > RIVAL) & (match.rival * match.snr >= MIN_SNR)


class Measurer:
    """Centring of all beads of one view about their predictions, with the leave-out rules."""

    def __init__(self, template, diameter: float, image_size, size: int, count: int, register_views: bool):
        self.template, self.diameter, self.size, self.count = template, diameter, size, count
        self.nx, self.ny = image_size
        self.register_views = register_views
        self.registration = None

    def measure(self, view, predicted, active, search: float, min_snr: float = MIN_SNR, register=False):
        """(positions (m, 2), reasons (m,) int8, amplitude (m,)) for the beads marked ``active``;
        with ``register`` the predictions are first moved by the view's pooled shift
        (:func:`lmalign_jax.track.register.register_view`) where that shift is significant, and
        when most beads are still not found, by the magnification and rotation change (about the
        image centre) whose registration is most significant, if that finds more."""
        if not (register and self.register_views):
            self.registration = None
            return self._measure_at(view, predicted, active, search, min_snr)
        d = self.diameter
        chosen = active & np.all(np.isfinite(predicted), axis=1)
        registration = register_view(view, predicted[chosen], self.template, d)
        if not registration.significant:  # the coarse shift may be off by more: look wider
            wide = register_view(view, predicted[chosen], self.template, d, WIDE_RADIUS_PER_DIAMETER * d)
            if wide.significant:
                registration = wide
        self.registration = registration
        moved = predicted + registration.shift if registration.significant else predicted
        out = self._measure_at(view, moved, active, search, min_snr)
        if 2 * int(np.sum(out[1] == FOUND)) >= int(chosen.sum()):
            return out
        turned = self._similarity(view, predicted, chosen)
        if turned is None:
            return out
        self.registration, moved = turned
        again = self._measure_at(view, moved, active, search, min_snr)
        if np.sum(again[1] == FOUND) > np.sum(out[1] == FOUND):
            return again
        self.registration = registration
        return out

    def _similarity(self, view, predicted, chosen):
        """(registration, moved predictions) of the most significant magnification and rotation
        change about the image centre (``SIMILARITY_*``: a 5 x 5 grid, then finer about the
        best), each registered within ``RADIUS_PER_DIAMETER`` diameters (the coarse shift is
        right; the view turned or changed scale); the false-alarm rate is shared among the tries.
        None when no try is significant."""
        d = self.diameter
        centre = (0.5 * self.nx, 0.5 * self.ny)
        p = predicted[chosen]
        reaches = [2] + [1] * (SIMILARITY_LEVELS - 1)  # a 5 x 5 grid, then the 8 around the best
        tries = sum((2 * r + 1) ** 2 for r in reaches) - (len(reaches) - 1)
        best, best_at = None, (0.0, 0.0)
        for level, reach in enumerate(reaches):
            ds, dr = SIMILARITY_SCALE_STEP / 2**level, SIMILARITY_ROTATION_STEP_DEG / 2**level
            s0, r0 = best_at
            for i in range(-reach, reach + 1):
                for j in range(-reach, reach + 1):
                    if level > 0 and i == 0 and j == 0:
                        continue  # tried at the level before
                    s, r = s0 + i * ds, r0 + j * dr
                    turned = similarity_about(p, centre, s, r)
                    reg = register_view(view, turned, self.template, d, false_alarm=FALSE_ALARM / tries)
                    if best is None or reg.z > best.z:
                        best, best_at = reg, (s, r)
        if best is None or not best.significant:
            return None
        moved = np.array(predicted, dtype=np.float64, copy=True)
        finite = np.all(np.isfinite(moved), axis=1)
        moved[finite] = similarity_about(moved[finite], centre, *best_at) + best.shift
        return best, moved

    def _measure_at(self, view, predicted, active, search, min_snr):
        """The leave-out rules and centring about ``predicted`` (already registered)."""
        m = predicted.shape[0]
        d = self.diameter
        reasons = np.full(m, NOT_REACHED, dtype=np.int8)
        positions = np.full((m, 2), np.nan)
        amplitude = np.full(m, np.nan)
        live = active & np.all(np.isfinite(predicted), axis=1)
        margin = 0.5 * d + 1.0
        p = np.where(np.isfinite(predicted), predicted, -1e9)
        inside = (p[:, 0] >= margin) & (p[:, 0] <= self.nx - margin)
        inside &= (p[:, 1] >= margin) & (p[:, 1] <= self.ny - margin)
        reasons[live & ~inside] = OUTSIDE
        live &= inside
        idx = np.flatnonzero(live)
        if idx.size > 1:
            gap = np.linalg.norm(p[idx, None] - p[None, idx], axis=2) + np.diag(np.full(idx.size, np.inf))
            close = gap.min(axis=1) < 2.0 * d
            reasons[idx[close]] = CROWDED
            idx = idx[~close]
        if idx.size == 0:
            return positions, reasons, amplitude
        pred = predicted[idx]
        match = self._match(view, pred, search)
        offset = match.positions - pred
        good = self._acceptable(match, min_snr)
        if good.sum() >= 3:
            shift = np.median(offset[good], axis=0)
            if np.hypot(*shift) > 0.25 * search:  # the whole view is off: measure again about it
                pred = pred + shift
                match = self._match(view, pred, search)
                offset = match.positions - predicted[idx]
                good = self._acceptable(match, min_snr)
        weak = (match.amplitude < MIN_AMPLITUDE) | (match.snr < min_snr)
        if self.registration is not None and self.registration.significant:
            weak &= ~self._backed_by_registration(match, offset, good, min_snr)
        rival = _crowded(match)
        reasons[idx] = np.where(rival, CROWDED, np.where(weak, WEAK, FOUND))
        if good.sum() >= 3:
            centre = np.median(offset[good], axis=0)
            dev = np.linalg.norm(offset - centre, axis=1)
            spread = 1.4826 * np.median(dev[good])
            jump = dev > max(0.4 * d, 1.5, 4.0 * spread)
            reasons[idx[jump & good]] = JUMP
        ok = reasons[idx] == FOUND
        positions[idx[ok]] = match.positions[ok]
        amplitude[idx] = match.amplitude
        return positions, reasons, amplitude

    def _match(self, view, pred, search):
        """Correlate the windows at ``pred`` (k, 2), padded to ``self.count`` windows so that the
        compiled correlation has one shape per tracking."""
        k = pred.shape[0]
        padded = np.concatenate([pred, np.broadcast_to(pred[:1], (self.count - k, 2))])
        windows, origins = extract_windows(view, padded, self.size)
        match = correlate_windows(windows, origins, self.template, padded, search, self.diameter)
        return WindowMatch(match.positions[:k], match.amplitude[:k], match.snr[:k], match.rival[:k])

    def _backed_by_registration(self, match, offset, strong, min_snr):
        """(k,) beads of a registered view accepted below ``min_snr``: found where the registered
        prediction puts them (within the JUMP tolerance of the strong beads' common offset) at a
        peak that noise reaches there with probability ``BEAD_FALSE_ALARM``
        (:func:`lmalign_jax.track.register.bead_threshold`)."""
        d = self.diameter
        centre, spread = np.zeros(2), 0.0
        if strong.sum() >= 3:
            centre = np.median(offset[strong], axis=0)
            spread = 1.4826 * float(np.median(np.linalg.norm(offset[strong] - centre, axis=1)))
        agree = max(0.4 * d, 1.5, 4.0 * spread)
        threshold = min(min_snr, bead_threshold(agree, self.template))
        near = np.linalg.norm(offset - centre, axis=1) <= agree
        return near & (match.amplitude >= MIN_AMPLITUDE) & (match.snr >= threshold) & ~_crowded(match)

    @staticmethod
    def _acceptable(match, min_snr):
        return (match.amplitude >= MIN_AMPLITUDE) & (match.snr >= min_snr) & ~_crowded(match)
