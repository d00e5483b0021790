"""lmalign_jax.simulation.cryo: realistic raw stacks and their truth, and bead detection judged against it.

The truth (per-view raw bead centres) is checked against the package's own projection model and
against noise-free images; the counts against Poisson statistics; then
:func:`lmalign_jax.track.find_beads` with default settings (only the bead diameter given) is
judged on realistic views (textured specimen, ice, a carbon edge, close pairs) at good dose (200
electrons per pixel per view, where a bead's centre sits ~4 background standard deviations below
its surroundings, as in real images) and cryo dose (30, ~1.6): the issue's targets are >= 95% of the
beads found, <= 2% false detections and centres within 0.3 px RMS at good dose.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_public_types import assert_fields_match_annotations

from lmalign_jax.simulation.cryo import Imaging, bead_truth, cryo_specimen, render_stack, simulate_cryo_series
from lmalign_jax.simulation.phantom import jou_xf
from lmalign_jax.track import find_beads, find_beads_large

SIZE = (384, 384)
DIAMETER = 8.0
TILTS = np.array([-60.0, -30.0, 0.0, 30.0, 60.0])
GOOD_DOSE = 200.0
CRYO_DOSE = 30.0
#: A detection within this distance of a true centre is that bead (a quarter of a diameter).
MATCH_PX = 2.0


def alignment(tilts, seed=0, shift=20.0):
    """A misaligned series' .xf: rotation -12 deg, scale 1.01, per-view shifts of sd ``shift`` px."""
    rng = np.random.default_rng(seed)
    views = np.zeros((tilts.size, 5))
    views[:, 0] = 1.01
    views[:, 1] = np.radians(-12.0)
    views[:, 2] = np.radians(tilts)
    views[:, 3:] = rng.normal(0.0, shift, (tilts.size, 2))
    a, d = jou_xf(views)
    return a, d


def specimen_of(seed, **options):
    """A specimen of the size every test here uses (30 beads, 2 ice blobs: one compilation)."""
    kw = dict(n_beads=30, bead_diameter_px=DIAMETER, thickness_px=60, seed=seed) | options
    return cryo_specimen(SIZE, **kw)


@pytest.fixture(scope="module")
def stacks():
    """Two specimens, each at good and at cryo dose: {(seed, dose): (stack, truth)}; {seed: specimen}."""
    out = {}
    for seed in (1, 2):
        specimen = specimen_of(seed)
        out[seed] = specimen
        a, d = alignment(TILTS, seed)
        for dose in (GOOD_DOSE, CRYO_DOSE):
            out[seed, dose] = render_stack(specimen, Imaging(dose=dose), a, d, TILTS, SIZE, seed=seed)
    return out


def judge(stack, truth, views):
    """Pooled over ``views``: (found fraction of the clean beads, false fraction of the detections,
    RMS per axis of the clean beads' centres, number of clean beads). Clean: wholly inside the
    image, no other bead within 1.5 diameters, not within a diameter of ice or the carbon edge."""
    found = clean_total = false = detections = 0
    errors = []
    for v in views:
        pos, _ = find_beads(stack[v], DIAMETER)
        xy = truth.xy[v]
        clean = truth.visible[v] & (truth.nearest_px[v] > 1.5 * DIAMETER) & ~truth.near_feature[v]
        dist = np.linalg.norm(pos[:, None, :] - xy[None, :, :], axis=2)
        hit = dist.min(axis=0) < MATCH_PX if pos.shape[0] else np.zeros(xy.shape[0], bool)
        false += int(np.sum(dist.min(axis=1) >= MATCH_PX)) if pos.shape[0] else 0
        detections += pos.shape[0]
        found += int(np.sum(hit & clean))
        clean_total += int(clean.sum())
        if pos.shape[0]:
            errors.append((pos[np.argmin(dist, axis=0)] - xy)[hit & clean])
    err = np.concatenate(errors)
    return found / clean_total, false / max(detections, 1), math.sqrt(float(np.mean(err**2))), clean_total


def test_truth_is_the_projection_model_of_the_markers():
    """simulate_cryo_series: the raw bead centres equal the "jou" model's projections of the same
    markers (its series, no marker noise), through a misalignment of tens of pixels."""
    cryo = simulate_cryo_series(
        n_views=TILTS.size, image_size=SIZE, n_beads=30, thickness_px=60, imaging=Imaging(dose=None), seed=3
    )
    np.testing.assert_allclose(cryo.truth.xy, cryo.series.observations.xy, atol=1e-9)
    shifts = np.linalg.norm(np.einsum("vij,vj->vi", np.linalg.inv(cryo.xf_A), cryo.xf_shift), axis=1)
    assert cryo.stack.shape == (TILTS.size, *SIZE) and shifts.max() > 10.0
    assert_fields_match_annotations(cryo.truth)
    assert_fields_match_annotations(cryo.specimen)
    assert_fields_match_annotations(cryo)


def test_noise_free_beads_sit_at_their_true_centres():
    """Flat specimen, no noise: isolated beads are found at the truth (bias of the 3 x 3 fit only)."""
    specimen = specimen_of(4, close_pairs=0.0)
    a, d = alignment(TILTS, 4)
    flat = Imaging(dose=None, background=0.0, carbon_optical_depth=0.0, ice_optical_depth=0.0)
    stack, truth = render_stack(specimen, flat, a, d, TILTS, SIZE)
    for v in range(TILTS.size):
        pos, _ = find_beads(stack[v], DIAMETER, polarity="dark")
        # away from the borders (the mirrored extension of the filter pulls a bead there)
        inner = np.all((truth.xy[v] > 2 * DIAMETER) & (truth.xy[v] < np.array(SIZE) - 2 * DIAMETER), axis=1)
        clean = inner & (truth.nearest_px[v] > 2.0 * DIAMETER)
        dist = np.linalg.norm(pos[:, None] - truth.xy[v][None], axis=2)
        assert clean.sum() >= 10 and np.all(dist.min(axis=0)[clean] < 0.03)


def test_counts_are_poisson_and_darken_as_one_over_cos():
    """No beads, ice, carbon or texture: every pixel is Poisson with mean dose exp(-tau / cos)."""
    specimen = specimen_of(5)
    imaging = Imaging(
        dose=CRYO_DOSE,
        background=0.0,
        slab_optical_depth=0.4,
        bead_optical_depth=0.0,
        ice_optical_depth=0.0,
        carbon_optical_depth=0.0,
    )
    a, d = alignment(TILTS, 5)
    stack, _ = render_stack(specimen, imaging, a, d, TILTS, SIZE, seed=5)
    expected = CRYO_DOSE * np.exp(-0.4 / np.cos(np.radians(TILTS)))
    n = SIZE[0] * SIZE[1]
    mean = stack.mean(axis=(1, 2))
    var = stack.var(axis=(1, 2))
    # the mean of n Poisson counts has sd sqrt(mean / n); the variance ratio sd ~ sqrt(2 / n)
    assert np.all(np.abs(mean - expected) < 5 * np.sqrt(expected / n))
    assert np.all(np.abs(var / mean - 1.0) < 5 * math.sqrt(2.0 / n) + 5 * np.sqrt(1 / (expected * n)))
    assert np.all(stack == np.round(stack)) and stack.min() >= 0


def test_views_do_not_depend_on_the_batching(stacks):
    """View by view (as for a large stack written to a memory-mapped MRC) gives the same counts."""
    a, d = alignment(TILTS[:2], 1)
    one_by_one = np.zeros((2, SIZE[1], SIZE[0]), dtype=np.float32)
    render_stack(
        stacks[1], Imaging(dose=GOOD_DOSE), a, d, TILTS[:2], SIZE, seed=1, out=one_by_one, memory_bytes=1
    )
    np.testing.assert_array_equal(stacks[1, GOOD_DOSE][0][:2], one_by_one)


def test_pairs_overlap_at_their_tilt_and_beads_leave_the_field():
    specimen = cryo_specimen(SIZE, n_beads=30, close_pairs=0.4, thickness_px=60, seed=7)
    assert specimen.pairs.shape[0] == 6
    tilts = np.concatenate([[0.0], specimen.pair_tilts_deg])
    a = np.broadcast_to(np.eye(2), (tilts.size, 2, 2))
    truth = bead_truth(specimen, a, np.zeros((tilts.size, 2)), tilts, SIZE)
    for k, (i, j) in enumerate(specimen.pairs):
        gap = np.linalg.norm(truth.xy[:, i] - truth.xy[:, j], axis=1)
        assert gap[0] > 2 * DIAMETER and gap[k + 1] <= 0.3 * DIAMETER + 1e-9
    # two surfaces, beads spread past the field: some seen at 0 deg are gone at 60 deg, some come in
    assert set(np.unique(specimen.beads[:, 2])) == {-30.0, 30.0}
    a, d = alignment(np.array([0.0, 60.0]), 7)
    side = bead_truth(specimen, a, d, [0.0, 60.0], SIZE)
    assert np.any(side.visible[0] & ~side.visible[1]) and np.any(~side.visible[0] & side.visible[1])


def test_detection_at_good_dose_meets_the_targets(stacks):
    """Views within 30 deg of zero: >= 95% found, <= 2% false, <= 0.3 px RMS (measured: 100%,
    0%, 0.17-0.20 px over ~170 beads; at +-60 deg, where the texture doubles and the dose
    falls, ~85% are found at 0.3 px)."""
    for seed in (1, 2):
        stack, truth = stacks[seed, GOOD_DOSE]
        found, false, rms, n = judge(stack, truth, (1, 2, 3))
        print(f"good dose, seed {seed}: {n} clean beads, {found:.1%} found, {false:.1%} false, {rms:.3f} px")
        assert n >= 60 and found >= 0.95 and false <= 0.02 and rms <= 0.3


def test_detection_at_cryo_dose_has_no_false_beads(stacks):
    """Cryo dose (30 e/px): fewer beads pass the significance threshold (measured ~75-85% at
    0-30 deg, 0.3-0.4 px RMS), but what is found is a bead."""
    for seed in (1, 2):
        stack, truth = stacks[seed, CRYO_DOSE]
        found, false, rms, n = judge(stack, truth, (1, 2, 3))
        print(f"cryo dose, seed {seed}: {n} clean beads, {found:.1%} found, {false:.1%} false, {rms:.3f} px")
        assert false <= 0.02 and found >= 0.5 and rms <= 0.6


def test_binned_detection_centres_at_full_resolution(stacks):
    """find_beads_large with binning forced (2x): the same beads, centred as well as unbinned."""
    stack, truth = stacks[1, GOOD_DOSE]
    v = 2
    full, _ = find_beads(stack[v], DIAMETER)
    binned, _ = find_beads_large(stack[v], DIAMETER, max_detection_px=192)
    clean = truth.visible[v] & (truth.nearest_px[v] > 1.5 * DIAMETER) & ~truth.near_feature[v]
    for pos in (full, binned):
        dist = np.linalg.norm(pos[:, None] - truth.xy[v][None], axis=2)
        assert np.mean(dist.min(axis=0)[clean] < MATCH_PX) >= 0.95
    dist = np.linalg.norm(binned[:, None] - truth.xy[v][None], axis=2)
    hit = (dist.min(axis=0) < MATCH_PX) & clean
    err = binned[np.argmin(dist, axis=0)][hit] - truth.xy[v][hit]
    assert math.sqrt(float(np.mean(err**2))) <= 0.3


def test_beads_sit_about_four_background_sds_deep_at_good_dose():
    """The calibration: a bead's centre pixel against the textured, noisy background around it
    (per pixel, 0 deg, no ice or carbon): ~4 sd at 200 e/px (real gold: about 4), ~1.6 at 30.
    Over 8 specimens the depth was 3.96 +- 0.11 and 1.64 +- 0.15; allowed: 4 of those spreads."""
    specimen = specimen_of(3)
    a, d = alignment(TILTS, 3)
    no_ice = dict(ice_optical_depth=0.0, carbon_optical_depth=0.0)
    rows, cols = np.mgrid[0 : SIZE[1], 0 : SIZE[0]] + 0.5
    for dose, expected, spread in ((GOOD_DOSE, 3.96, 0.11), (CRYO_DOSE, 1.64, 0.15)):
        stack, truth = render_stack(specimen, Imaging(dose=dose, **no_ice), a, d, TILTS, SIZE, seed=3)
        img, xy = stack[2], truth.xy[2]
        gap2 = np.min((cols[..., None] - xy[:, 0]) ** 2 + (rows[..., None] - xy[:, 1]) ** 2, axis=2)
        background = img[gap2 > (1.5 * DIAMETER) ** 2]
        inside = np.all((xy > DIAMETER) & (xy < np.array(SIZE) - DIAMETER), axis=1)
        centres = img[xy[inside, 1].astype(int), xy[inside, 0].astype(int)]
        depth = (background.mean() - centres.mean()) / background.std()
        assert inside.sum() >= 20 and abs(depth - expected) < 4 * spread, (dose, depth)
