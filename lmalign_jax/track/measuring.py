"""Centring of all beads of one view about their predictions, with the leave-out rules of
:mod:`lmalign_jax.track.tracking` (its module docstring, steps 3 and 4): OUTSIDE, CROWDED, WEAK,
JUMP, and the whole-view registration before them (:mod:`lmalign_jax.track.register`)."""

from __future__ import annotations

import numpy as np

from .centring import WindowMatch, correlate_windows, extract_windows
from .register import bead_threshold, register_view
from .result import CROWDED, FOUND, JUMP, NOT_REACHED, OUTSIDE, WEAK

__all__ = ["Measurer", "MIN_AMPLITUDE", "MIN_SNR", "RIVAL", "WIDE_RADIUS_PER_DIAMETER"]

#: Smallest correlation peak, as a fraction of the average bead's.
MIN_AMPLITUDE = 0.35
#: Smallest correlation peak over the correlation's robust noise level.
MIN_SNR = 4.0
#: Largest second peak within 2 D, as a fraction of the peak.
RIVAL = 0.6
#: Search radius of the second, wider registration where the first finds nothing, in bead diameters.
WIDE_RADIUS_PER_DIAMETER = 12.0


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
        (:func:`lmalign_jax.track.register.register_view`) where that shift is significant."""
        m = predicted.shape[0]
        d = self.diameter
        self.registration = None
        if register and self.register_views:
            chosen = active & np.all(np.isfinite(predicted), axis=1)
            self.registration = register_view(view, predicted[chosen], self.template, d)
            if not self.registration.significant:  # the coarse shift may be off by more: look wider
                wide = register_view(view, predicted[chosen], self.template, d, WIDE_RADIUS_PER_DIAMETER * d)
                if wide.significant:
                    self.registration = wide
            if self.registration.significant:
                predicted = predicted + self.registration.shift
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
