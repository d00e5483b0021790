"""Bead tracking from raw images: finding gold beads in one view, following them through a stack.

Public API
----------
* :func:`find_beads` -- positions ``(n, 2)`` (x, y in IMOD image coordinates, pixels) and scores of
  the gold beads in one image (:mod:`lmalign_jax.track.find`).
* :func:`find_beads_large` -- the same for an image of any size: detection on a binned copy
  (4k x 4k), centres at full resolution (:mod:`lmalign_jax.track.large`).
* :func:`estimate_bead_diameter` -- the bead diameter in pixels from the image itself
  (:mod:`lmalign_jax.track.scale`).
* :func:`bead_responses` -- the matched (Laplacian-of-Gaussian) filter
  (:mod:`lmalign_jax.track.filters`).
* :func:`track_beads` -- beads found on the view nearest 0 degrees and tracked through a whole
  stack, each view predicted by the alignment fitted so far -> :class:`TrackResult`
  (:mod:`lmalign_jax.track.tracking`); :data:`REASONS` names the codes of ``TrackResult.reasons``
  (why a bead was left out of a view).

Modules: ``filters`` (the filter in Fourier space), ``peaks`` (threshold, non-maximum
suppression, sub-pixel fit), ``find`` (the procedure), ``scale`` (diameter estimate),
``coarse`` (whole-view shifts), ``centring`` (batched correlation with the averaged bead),
``register`` (a view's pooled shift against its predicted beads), ``measuring`` (all beads of one
view centred about their predictions, with the leave-out rules),
``seeding`` (the beads chosen on the seed view, on both surfaces), ``fitting`` (fixed-shape fits
with :mod:`lmalign_jax.core` and predictions), ``result`` (:class:`TrackResult`, the reasons,
lost views and ``TrackResult.observations()``), ``tracking`` (the procedure). Nothing here imports
``lmalign_jax.io`` or ``lmalign_jax.cli``, and no JAX setting is changed on import.
"""

from lmalign_jax.track.filters import SIGMA_PER_DIAMETER, bead_responses
from lmalign_jax.track.find import find_beads
from lmalign_jax.track.large import find_beads_large
from lmalign_jax.track.scale import estimate_bead_diameter
from lmalign_jax.track.tracking import REASONS, TrackingError, TrackResult, track_beads

__all__ = [
    "find_beads",
    "find_beads_large",
    "estimate_bead_diameter",
    "bead_responses",
    "SIGMA_PER_DIAMETER",
    "track_beads",
    "TrackResult",
    "TrackingError",
    "REASONS",
]
