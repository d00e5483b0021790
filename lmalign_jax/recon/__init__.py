"""Weighted filtered back-projection (FBP) of aligned tilt series, in JAX.

Public API
----------
* :func:`reconstruct` -- tomogram ``(NZ, NY, NX)`` from a raw stack and its IMOD ``.xf``/tilts.
* :func:`fbp_2d` -- plain FBP of 2-D sinograms (or a batch of them), for checks against
  scikit-image and ASTRA.
* :func:`filter_response`, :func:`density_weights`, :func:`angular_increments` -- the filters and
  the view weighting, in :mod:`lmalign_jax.recon.filters`.

Conventions (``/work/shared/MODEL.md``)
---------------------------------------
The ``.xf`` maps raw to aligned about the image centre ``c = (NX/2, NY/2)``:
``x' = A (x - c) + D + c``. In the aligned frame the tilt axis is the y axis and a specimen point
``(x, y, z)`` is seen at ``x' - xc = x cos(theta) + z sin(theta)``, ``y' - yc = y``. The volume is a
numpy array ``(NZ, NY, NX)``; voxel ``(k, j, i)`` is centred at
``(i + 0.5 - NX/2, j + 0.5 - NY/2, k + 0.5 - NZ/2)``; z is the beam direction at 0 degrees.
Pixel ``(r, c)`` of an image is centred at ``(c + 0.5, r + 0.5)``.

Design
------
**Two interpolations, alignment by resampling.** Each raw view is resampled *once* into the
aligned frame with bilinear interpolation through the inverse of its ``.xf`` transform (rotation,
scale, shift; after binning, shifts divided by the binning). The aligned rows are then filtered
along x (perpendicular to the tilt axis, which is y there) and back-projected with linear
interpolation along the detector x. That is two interpolations in all, the same count as IMOD's
``newstack`` + ``tilt``. We chose this over projecting every voxel into the raw image because
with single-axis tilt in the aligned frame all y rows of a slab share the detector coordinate:
one index and weight per (view, x, z) serves every row, so the inner loop is a contiguous vector
update over rows, which is what makes the back-projection fast. (Projecting every voxel into the
raw image would cost a 2-D bilinear lookup per voxel and view with nothing shared between rows,
and filtering perpendicular to the tilt axis would still need rows resampled along the rotated
axis, i.e. an interpolation of its own.)

**Edges.** Before resampling, each view's mean is subtracted; positions outside the raw image
read as zero, i.e. as the mean level, and filter rows are zero-padded to at least twice their
length. This keeps the ramp filter from ringing at the image borders and at the edge of the
rotated field. The reconstruction is therefore defined up to an additive constant, as with any
FBP of a limited field of view; it is linear in the input (no log, no contrast inversion).

**Filters** (:mod:`lmalign_jax.recon.filters`): the Ram-Lak ramp built from its spatial kernel (DC
response correct, linear convolution), optional Shepp-Logan, cosine, Hamming, Hann windows, and
IMOD's ``radial=(cutoff, falloff)`` Gaussian roll-off, all in cycles/pixel of the binned data.

**Weighting and scale.** Each view is multiplied by the angular interval it represents (IMOD's
density weighting: half the distance between its neighbours in sorted angle, the single gap for
an end view), in radians. So an evenly spaced full 180 degree series gets ``pi / n`` per view
(the textbook normalisation, equal to scikit-image's), uneven and dose-symmetric series are
weighted by their real angular density, and a missing wedge is *not* compensated: the sum covers
only the measured range, so measured frequencies keep their true scale and unmeasured ones are
absent (densities of compact objects come out lower by roughly range/180 degrees and elongated
in z).

**Memory and speed.** The work is cut to a memory budget (:func:`plan_slabs`): a *pass* resamples
and filters a band of y rows of every view (reading only the raw rows that band can reach),
then back-projects it in *slabs* of rows; each slab goes to ``out`` -- an array, or a
:class:`lmalign_jax.io.mrc_volume.VolumeWriter` that writes it from a background thread while the next
slab is computed (JAX dispatches the next slab before the previous one is fetched). Within a
slab, z is processed in chunks whose accumulator (about 1 MiB) stays in cache, views are summed
in a loop, and the row axis is innermost. The same jit-compiled code runs on CPU or GPU; the
library never changes global JAX settings (float64 computation needs the caller to enable x64).

**SIRT** (:mod:`lmalign_jax.recon.sirt`): the re-projector is the exact transpose of the
back-projector, written as gathers with rows innermost (as the back-projector); SIRT runs slab
by slab (each y row is its own 2-D problem). :func:`lmalign_jax.recon.filters.sirt_like_response`
gives the FBP filter that mimics N SIRT iterations (``reconstruct(sirtlike=N)``).
"""

from .fbp import SlabPlan, default_memory_bytes, fbp_2d, plan_slabs, reconstruct
from .filters import FILTERS, angular_increments, density_weights, filter_response, sirt_like_response
from .sirt import SirtOptions

__all__ = [
    "reconstruct",
    "fbp_2d",
    "plan_slabs",
    "SlabPlan",
    "default_memory_bytes",
    "SirtOptions",
    "filter_response",
    "sirt_like_response",
    "density_weights",
    "angular_increments",
    "FILTERS",
]
