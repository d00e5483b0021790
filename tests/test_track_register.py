"""Whole-view registration against the predicted beads (lmalign_jax.track.register) and the
tracking at cryo dose that needs it, against the realistic simulator's truth.

The specimen: 31 views (-60..60 deg) of 384 x 384 px, 16 gold beads of 8 px on the two surfaces
of a 60 px slab, textured specimen, ice, carbon edge, Poisson counts at 30 e/px (cryo dose; a
bead's centre ~1.6 background sd deep at 0 deg, less at 60 deg). Specimen seed 2 is the one whose
-60 deg view was lost before the registration: the coarse shift of its neighbour correlation was
off by ~25 px there, and no bead alone passed the tests so far from its prediction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2

from lmalign_jax.simulation.cryo import Imaging, simulate_cryo_series
from lmalign_jax.track.centring import bead_template, extract_windows, window_size
from lmalign_jax.track.register import excursion_threshold, register_view, roughness
from lmalign_jax.track.tracking import track_beads

SIZE, SPECIMEN = 384, 2


@pytest.fixture(scope="module")
def cryo_dose():
    return simulate_cryo_series(
        n_views=31,
        image_size=(SIZE, SIZE),
        n_beads=16,
        thickness_px=60.0,
        shift_px=5.0,
        imaging=Imaging(dose=30.0),
        seed=SPECIMEN,
    )


def _template(cryo):
    """The averaged bead of the 0-degree view at the true positions (as the tracker's seed)."""
    d = cryo.specimen.bead_diameter_px
    seed = int(np.argmin(np.abs(cryo.series.observations.tilts_deg)))
    xy = cryo.truth.xy[seed]
    keep = np.all((xy > 2 * d) & (xy < SIZE - 2 * d), axis=1) & (cryo.truth.nearest_px[seed] > 2 * d)
    size = window_size(d, max(d, 5.0))
    windows, origins = extract_windows(np.asarray(cryo.stack[seed]), xy[keep], size)
    return bead_template(windows, origins, xy[keep], d)


def test_excursion_threshold_is_exceeded_by_noise_at_its_false_alarm_rate():
    """White noise correlated with a Gaussian template (sd 2 px) is a Gaussian field of roughness
    1 / (2 sd^2) = 0.125 px^-2, which :func:`roughness` reads off the template; the maximum of
    such a field over a disc of radius 20 px exceeds ``excursion_threshold(area, roughness, 0.1)``
    in 10% of 400 draws, within 4 binomial standard deviations (0.06)."""
    rng = np.random.default_rng(11)
    size, sd, radius, alpha, draws = 64, 2.0, 20.0, 0.1, 400
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    template = np.exp(-(xx**2 + yy**2) / (2.0 * sd * sd))
    assert abs(roughness(template) - 1.0 / (2.0 * sd * sd)) <= 0.01
    threshold = excursion_threshold(math.pi * radius * radius, roughness(template), alpha)
    spectrum = np.conj(np.fft.rfft2(np.fft.ifftshift(template))) / np.sqrt(np.sum(template**2))
    disc = xx**2 + yy**2 <= radius * radius
    exceeded = 0
    for _ in range(draws):
        field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * spectrum, s=(size, size))
        exceeded += bool(field[disc].max() > threshold)
    rate = exceeded / draws
    print(f"threshold {threshold:.2f}: exceeded in {rate:.3f} of {draws} draws (expected {alpha})")
    assert abs(rate - alpha) <= 4.0 * math.sqrt(alpha * (1 - alpha) / draws)


def test_registration_recovers_a_large_shift_of_a_cryo_dose_60_degree_view(cryo_dose):
    """Predictions = truth moved by a known shift (25 px, as the failed coarse shift): the pooled
    correlation finds it back to within the sub-pixel scatter expected of ~10 beads at ~0.5 px
    each (0.5 px), and calls it significant; each bead alone would not have found it."""
    cryo = cryo_dose
    d = cryo.specimen.bead_diameter_px
    template = _template(cryo)
    view = np.asarray(cryo.stack[0])
    inside = np.all((cryo.truth.xy[0] > d) & (cryo.truth.xy[0] < SIZE - d), axis=1)
    truth = cryo.truth.xy[0][inside]
    error = np.array([-21.0, -13.0])  # the predictions' error: the shift to find is its opposite
    reg = register_view(view, truth + error, template, d)
    print(f"shift {reg.shift.round(2)}, z {reg.z:.1f} (threshold {reg.threshold:.2f})")
    assert reg.significant
    assert np.linalg.norm(reg.shift + error) <= 0.5


def test_registration_of_pure_noise_is_not_significant(cryo_dose):
    """Views of Poisson noise at the same dose and no specimen: the pooled peak stays below the
    false-alarm threshold (1e-3 per view) in every one of 12 views."""
    cryo = cryo_dose
    d = cryo.specimen.bead_diameter_px
    template = _template(cryo)
    predicted = cryo.truth.xy[0][np.all((cryo.truth.xy[0] > d) & (cryo.truth.xy[0] < SIZE - d), axis=1)]
    rng = np.random.default_rng(3)
    z = []
    for _ in range(12):
        noise = rng.poisson(30.0 * np.exp(-0.6), size=(SIZE, SIZE)).astype(np.float32)
        reg = register_view(noise, predicted, template, d)
        z.append((round(reg.z, 2), round(reg.threshold, 2)))
        assert not reg.significant
    print(f"pooled peak on noise (z, threshold): {z}")


def test_cryo_dose_view_lost_before_is_kept_and_centred(cryo_dose):
    """The -60 deg view is kept (it was lost without the registration, checked here too), with
    at least 3 beads whose centring error is within the scatter of the other views at 50 degrees
    or more (the RMS within the chi-square 99.9% bound for its number of points), and no track
    anywhere takes a point on another bead."""
    cryo = cryo_dose
    d = cryo.specimen.bead_diameter_px
    tilts = cryo.series.observations.tilts_deg
    before = track_beads(cryo.stack, tilts, d, register_views=False)
    assert 0 in before.lost_views.tolist()  # the case this test is about
    track = track_beads(cryo.stack, tilts, d)
    assert track.lost_views.size == 0
    truth = cryo.truth.xy
    live = np.flatnonzero(track.found.any(axis=0))
    ids = np.empty(live.size, dtype=np.int64)
    for k, b in enumerate(live):
        v = int(np.argmax(track.found[:, b]))
        ids[k] = int(np.argmin(np.linalg.norm(truth[v] - track.xy[v, b], axis=1)))
    assert len(set(ids.tolist())) == ids.size  # one true bead per track
    err = track.xy[:, live] - truth[:, ids]
    clean = track.found[:, live] & (cryo.truth.nearest_px[:, ids] >= d)
    assert np.all(np.linalg.norm(err[clean], axis=1) < 0.5 * d)  # no point on another bead
    view0 = clean & (np.arange(tilts.size) == 0)[:, None]
    others = clean & ((np.abs(tilts) >= 50.0) & (np.arange(tilts.size) != 0))[:, None]
    n0 = int(view0.sum())
    assert track.found[0].sum() >= 3 and n0 >= 3
    rms0 = float(np.sqrt(np.mean(err[view0] ** 2)))
    reference = float(np.sqrt(np.mean(err[others] ** 2)))
    bound = reference * float(np.sqrt(chi2.ppf(0.999, 2 * n0) / (2 * n0)))
    print(f"view 0: {n0} beads, centring RMS {rms0:.3f} px; other views >= 50 deg {reference:.3f} px")
    assert rms0 <= bound


def _field_of_beads(size: int, n: int, d: float, depth: float, seed: int):
    """A (size, size) view of unit Gaussian noise with ``n`` dark Gaussian beads (sd d/3, centre
    ``depth`` noise sd deep) at least 4 d apart and 2 d from the edges; their centres (n, 2)."""
    rng = np.random.default_rng(seed)
    xy = []
    while len(xy) < n:
        p = rng.uniform(2 * d, size - 2 * d, 2)
        if all(np.hypot(*(p - q)) >= 4 * d for q in xy):
            xy.append(p)
    xy = np.array(xy)
    view = rng.standard_normal((size, size))
    half, sd = int(2 * d), d / 3.0
    for x, y in xy:
        c, r = int(x), int(y)
        yy, xx = np.mgrid[r - half : r + half + 1, c - half : c + half + 1]
        view[r - half : r + half + 1, c - half : c + half + 1] -= depth * np.exp(
            -((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2) / (2 * sd * sd)
        )
    return view.astype(np.float32), xy


def test_a_view_whose_scale_and_rotation_jumped_is_found_again():
    """A 2k view whose magnification jumped by 1.2% and rotation by 0.6 degrees against its
    prediction (beads near the edges 15-20 px off, more than the bead search, and no single
    shift): the shift-only registration leaves most beads unfound; the magnification and
    rotation search finds >= 90% of them, each at the peak found when centring from its true
    position."""
    from lmalign_jax.track.measuring import Measurer, similarity_about

    size, n, d, search = 2048, 40, 8.0, 8.0
    view, truth = _field_of_beads(size, n, d, depth=5.0, seed=7)
    win = window_size(d, search)
    windows, origins = extract_windows(view, truth, win)
    template = bead_template(windows, origins, truth, d)
    centre = (size / 2, size / 2)
    predicted = similarity_about(truth, centre, -0.012, 0.6) + np.array([3.0, -2.0])
    measurer = Measurer(template, d, (size, size), win, n, True)
    active = np.ones(n, dtype=bool)

    shift_only = Measurer(template, d, (size, size), win, n, True)
    shift_only._similarity = lambda *args: None
    _, why_before, _ = shift_only.measure(view, predicted, active, search, register=True)
    assert (why_before == 0).sum() < n / 2  # the case this test is about

    pos, why, _ = measurer.measure(view, predicted, active, search, register=True)
    found = why == 0
    # the reference: the same beads centred from their true positions
    ref, why_ref, _ = Measurer(template, d, (size, size), win, n, True).measure(view, truth, active, search)
    both = found & (why_ref == 0)
    moved = np.linalg.norm(pos[both] - ref[both], axis=1)
    print(f"found {found.sum()} of {n} (shift only: {(why_before == 0).sum()}); {moved.max():.3f} px off")
    assert found.sum() >= 0.9 * n and both.sum() == found.sum()
    assert np.all(moved < 0.05)  # the same peak as when centred from the truth
    assert np.all(np.linalg.norm(ref[both] - truth[both], axis=1) < 0.25 * d)  # and that is the bead


def test_the_scale_and_rotation_search_finds_nothing_in_noise():
    """On pure noise, none of the 41 magnification-rotation tries passes the false-alarm test
    (shared among them), so no prediction is moved."""
    from lmalign_jax.track.measuring import Measurer

    size, n, d = 2048, 40, 8.0
    view, truth = _field_of_beads(size, n, d, depth=5.0, seed=7)
    win = window_size(d, d)
    windows, origins = extract_windows(view, truth, win)
    template = bead_template(windows, origins, truth, d)
    noise = np.random.default_rng(5).standard_normal((size, size)).astype(np.float32)
    measurer = Measurer(template, d, (size, size), win, n, True)
    for seed in range(3):
        predicted = np.random.default_rng(seed).uniform(2 * d, size - 2 * d, (n, 2))
        assert measurer._similarity(noise, predicted, np.ones(n, dtype=bool)) is None
