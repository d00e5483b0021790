"""lmalign_jax.track: gold beads found in one image, against images drawn with known bead positions.

Beads are projected solid spheres (``2 sqrt(R^2 - r^2)``, scaled to a peak contrast) integrated
over each pixel, at random sub-pixel positions, on a background with a gradient, two large
"ice" blobs (3 bead diameters wide, twice the bead contrast), a straight "carbon" edge (a step of
twice the bead contrast) and white noise. Position tolerances come from the Cramer-Rao bound of
that bead under that noise (:func:`crlb_px`); pixel convention (MODEL.md): pixel (r, c) is centred
at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmalign_jax.simulation.phantom import bead_phantom, project_stack
from lmalign_jax.track import SIGMA_PER_DIAMETER, estimate_bead_diameter, find_beads
from lmalign_jax.track.filters import bead_responses, response_statistics
from lmalign_jax.track.peaks import crowded, false_peak_threshold, peak_masks

SHAPE = (256, 256)
DIAMETER = 8.0
NOISE = 0.1  # per pixel, in units of the bead's peak contrast


def draw_spheres(img, positions, diameter, amplitude, oversample=4):
    """Add projected spheres of peak ``amplitude`` centred at ``positions`` (n, 2) (x, y),
    pixel-integrated."""
    ny, nx = img.shape
    radius = diameter / 2.0
    sub = (np.arange(oversample) + 0.5) / oversample
    for x, y in positions:
        c0, c1 = max(0, int(x - radius) - 1), min(nx, int(x + radius) + 2)
        r0, r1 = max(0, int(y - radius) - 1), min(ny, int(y + radius) + 2)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = (np.arange(c0, c1)[:, None] + sub).ravel()
        ys = (np.arange(r0, r1)[:, None] + sub).ravel()
        rr = (xs[None, :] - x) ** 2 + (ys[:, None] - y) ** 2
        val = amplitude * np.sqrt(np.clip(1.0 - rr / radius**2, 0.0, None))
        img[r0:r1, c0:c1] += val.reshape(r1 - r0, oversample, c1 - c0, oversample).mean(axis=(1, 3))
    return img


def scene(shape=SHAPE, n_beads=20, diameter=DIAMETER, contrast=-1.0, noise=NOISE, seed=0, clutter=True):
    """(image, true positions (n, 2)): beads at least 3 diameters apart, away from the clutter."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx] + 0.5
    img = 10.0 + 0.01 * xx - 0.005 * yy
    blobs = [(0.2 * nx, 0.75 * ny), (0.7 * nx, 0.3 * ny)] if clutter else []
    edge_x = 0.85 * nx
    pos = []
    for _ in range(20000):
        if len(pos) == n_beads:
            break
        p = rng.uniform(diameter, [nx - diameter, ny - diameter])
        if pos and np.min(np.linalg.norm(np.asarray(pos) - p, axis=1)) < 3.0 * diameter:
            continue
        edge_distance = abs((p[0] - edge_x) + 0.1 * (p[1] - ny / 2.0)) / math.sqrt(1.01)
        if clutter and (
            any(math.hypot(*(p - b)) < 5.0 * diameter for b in blobs) or edge_distance < 3.0 * diameter
        ):
            continue
        pos.append(p)
    pos = np.asarray(pos).reshape(-1, 2)
    for bx, by in blobs:
        s = 1.5 * diameter
        img += 2.0 * contrast * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2.0 * s * s))
    if clutter:
        img += 2.0 * contrast / (1.0 + np.exp(-((xx - edge_x) + 0.1 * (yy - ny / 2.0)) / 0.7))
    draw_spheres(img, pos, diameter, contrast)
    img += noise * rng.standard_normal(img.shape)
    return img, pos


def crlb_px(diameter, noise, contrast=1.0):
    """Cramer-Rao bound (px) on one coordinate of a sphere bead with this contrast under white noise."""
    n = int(2 * diameter) + 8
    h = 1e-3

    def image(dx):
        return draw_spheres(
            np.zeros((n, n)), [(n / 2 + 0.3 + dx, n / 2 + 0.2)], diameter, contrast, oversample=16
        )

    grad = (image(h) - image(-h)) / (2 * h)
    return noise / math.sqrt(float(np.sum(grad * grad)))


def match(found, truth):
    """(errors (n_truth, 2) found - truth of each true bead's nearest detection, distance of each
    detection to its nearest truth)."""
    if found.shape[0] == 0 or truth.shape[0] == 0:
        return np.full((truth.shape[0], 2), np.inf), np.full(found.shape[0], np.inf)
    d = np.linalg.norm(found[:, None, :] - truth[None, :, :], axis=2)
    return found[np.argmin(d, axis=0)] - truth, np.min(d, axis=1)


@pytest.mark.parametrize(
    "contrast, polarity", [(-1.0, "dark"), (-1.0, "auto"), (1.0, "bright"), (1.0, "auto")]
)
def test_all_beads_found_nothing_else_at_the_cramer_rao_bound(contrast, polarity):
    img, truth = scene(contrast=contrast, seed=1)
    pos, scores = find_beads(img, DIAMETER, polarity=polarity)
    sd = crlb_px(DIAMETER, NOISE)
    errors, nearest = match(pos, truth)
    # Every bead within 5 bound standard deviations per axis (a 1-in-10^6 miss for an efficient
    # estimator), no detection farther than that from a bead: no blob, edge or border detection.
    assert np.all(np.abs(errors) < 5 * sd)
    assert pos.shape == truth.shape and np.all(nearest < 5 * math.sqrt(2) * sd)
    # RMS per axis within 2.5x the bound: over 180 scenes (60 seeds, both polarities) the ratio was
    # 1.45 on average with a spread of ~0.15 (40 samples per scene: 1/sqrt(80) ~ 11% relative), at
    # most 1.89; 2.5 is more than 4 spreads above the mean.
    rms = math.sqrt(float(np.mean(errors**2)))
    assert rms < 2.5 * sd and rms < 0.15
    assert np.all(np.abs(np.mean(errors, axis=0)) < 4 * rms / math.sqrt(truth.shape[0]))
    assert np.all(np.diff(scores) <= 0) and scores[-1] > 5.0


def test_wrong_polarity_finds_nothing():
    img, _ = scene(contrast=-1.0, seed=2)
    pos, scores = find_beads(img, DIAMETER, polarity="bright")
    assert pos.shape == (0, 2) and scores.shape == (0,)


def test_noiseless_positions_have_no_bias():
    img, truth = scene(noise=0.0, seed=3, clutter=False)
    pos, _ = find_beads(img, DIAMETER)
    errors, _ = match(pos, truth)
    assert pos.shape == truth.shape
    assert np.max(np.abs(errors)) < 0.03  # the 3 x 3 quadratic's bias on a filtered sphere


@pytest.mark.parametrize("seed", range(4))
def test_no_beads_gives_empty_arrays(seed):
    img, truth = scene(n_beads=0, seed=10 + seed)
    assert truth.shape == (0, 2)
    pos, scores = find_beads(img, DIAMETER)
    assert pos.shape == (0, 2) and scores.shape == (0,) and pos.dtype == np.float64


def test_constant_and_pure_noise_images_give_no_beads():
    pos, _ = find_beads(np.full(SHAPE, 1234.5), DIAMETER)
    assert pos.shape == (0, 2)
    rng = np.random.default_rng(5)
    for _ in range(3):
        pos, _ = find_beads(1000.0 + rng.standard_normal(SHAPE), DIAMETER)
        assert pos.shape == (0, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_all_zero_image_gives_no_beads(dtype):
    """A dark (all-zero) view: no noise level to scale the local one by (it divided by zero)."""
    from lmalign_jax.track import find_beads_large

    for image in (np.zeros(SHAPE, dtype=dtype), np.zeros((40, 300), dtype=dtype)):
        pos, scores = find_beads(image, 3.0)
        assert pos.shape == (0, 2) and scores.shape == (0,)
        for polarity in ("dark", "bright"):
            assert find_beads(image, DIAMETER, polarity=polarity, min_score=3.0)[0].shape == (0, 2)
        assert find_beads_large(image, 3.0)[0].shape == (0, 2)


@pytest.mark.parametrize("shape", [(1, 1), (2, 9), (3, 4)])
def test_tiny_images_do_not_crash(shape):
    img = np.random.default_rng(0).standard_normal(shape)
    pos, scores = find_beads(img, DIAMETER)
    assert pos.shape[1] == 2 and pos.shape[0] == scores.shape[0]


def test_one_bead_in_a_small_image():
    img = np.zeros((20, 24))
    draw_spheres(img, [(11.3, 9.8)], 6.0, -1.0)
    img += 0.05 * np.random.default_rng(1).standard_normal(img.shape)
    pos, _ = find_beads(img, 6.0)
    assert pos.shape == (1, 2)
    assert np.all(np.abs(pos[0] - [11.3, 9.8]) < 5 * crlb_px(6.0, 0.05))


def test_non_square_image_keeps_x_along_columns():
    img, truth = scene(shape=(120, 300), n_beads=10, seed=4)
    assert truth[:, 0].max() > 120  # some beads only fit if x runs along the 300 columns
    pos, _ = find_beads(img, DIAMETER)
    errors, _ = match(pos, truth)
    assert pos.shape == truth.shape and np.all(np.abs(errors) < 5 * crlb_px(DIAMETER, NOISE))


@pytest.mark.parametrize("offset", [0.0, 1.0e4])
def test_float32_and_float64_agree(offset):
    img, truth = scene(seed=6)
    img = img + offset
    p64, s64 = find_beads(img.astype(np.float64), DIAMETER)
    p32, s32 = find_beads(img.astype(np.float32), DIAMETER)
    assert p64.shape == p32.shape == truth.shape
    # the same beads, paired by position (two scores within float32's rounding may swap places)
    pair = np.argmin(np.linalg.norm(p64[:, None] - p32[None], axis=2), axis=1)
    assert np.unique(pair).size == pair.size
    p32, s32 = p32[pair], s32[pair]
    # float32 rounds 10 + noise to 1e-6 and 1e4 + noise to 1e-3 (rms 3e-4): 3e-6 and 3e-3 of the
    # noise (0.1), so positions move by that fraction of their own error (~0.07 px) at most.
    assert np.max(np.abs(p64 - p32)) < (1e-4 if offset == 0 else 2e-3)
    assert np.allclose(s64, s32, rtol=1e-4 if offset == 0 else 3e-3)


def test_clusters_and_large_blobs_are_rejected():
    img = np.full(SHAPE, 5.0)
    isolated = [(30.3, 30.6), (100.2, 98.7)]
    touching = [(60.0, 90.0), (68.0, 90.4)]  # one diameter apart: a cluster
    draw_spheres(img, isolated + touching, DIAMETER, -1.0)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]] + 0.5
    img += -2.0 * np.exp(-((xx - 95) ** 2 + (yy - 40) ** 2) / (2 * 12.0**2))  # ice blob, 3 D wide
    img += NOISE * np.random.default_rng(7).standard_normal(img.shape)
    pos, _ = find_beads(img, DIAMETER)
    errors, _ = match(pos, np.asarray(isolated))
    assert pos.shape == (2, 2) and np.all(np.abs(errors) < 5 * crlb_px(DIAMETER, NOISE))


def test_max_beads_keeps_the_strongest():
    img, truth = scene(seed=8, clutter=False)
    pos, scores = find_beads(img, DIAMETER)
    top, top_scores = find_beads(img, DIAMETER, max_beads=5)
    assert top.shape == (5, 2) and np.array_equal(top, pos[:5])
    # the same scores, to float rounding (two compiled variants of the detector)
    np.testing.assert_allclose(top_scores, scores[:5], rtol=1e-6)
    # min_score overrides the automatic threshold: above the weakest bead's score, it drops that one
    fewer, fewer_scores = find_beads(img, DIAMETER, min_score=0.5 * (scores[-1] + scores[-2]))
    assert fewer.shape[0] == pos.shape[0] - 1 and np.all(fewer_scores > scores[-1])


def test_projected_phantom_beads_are_found_where_the_projector_put_them():
    """Gaussian beads of a 3-D phantom projected at 30 degrees through a rotated, shifted, scaled .xf."""
    phantom = bead_phantom(n_beads=15, box=(200.0, 200.0, 40.0), bead_sigma=2.0, n_blobs=3, seed=3)
    theta = np.radians(30.0)
    a, shift = _xf(1.03, 84.0, 2.5, -1.5)
    img = project_stack(phantom, a, shift, [30.0], SHAPE, noise=0.2, seed=1, oversample=3)[0]
    x, y, z = phantom.bead_positions.T
    q = np.stack([x * np.cos(theta) + z * np.sin(theta), y], axis=1)
    truth = (q - shift[0]) @ np.linalg.inv(a[0]).T + np.array(SHAPE) / 2.0  # raw image coordinates
    diameter = 2.0 / SIGMA_PER_DIAMETER  # a Gaussian of sigma s matches a sphere of s / 0.301
    pos, _ = find_beads(img, diameter, polarity="auto")
    # expected: beads wholly inside the image and not within 1.5 diameters of another (a cluster)
    expected = np.all((truth > diameter / 2) & (truth < SHAPE[0] - diameter / 2), axis=1) & ~crowded(
        truth, 1.5 * diameter
    )
    assert expected.sum() >= 10
    errors, nearest = match(pos, truth[expected])
    assert pos.shape[0] == expected.sum() and np.all(np.abs(errors) < 0.3)
    assert math.sqrt(float(np.mean(errors**2))) < 0.1
    # the diameter convention for Gaussian beads: s / 0.301 (pixel integration adds 1/12 px^2)
    assert abs(estimate_bead_diameter(img, min_diameter_px=4.0, max_diameter_px=16.0) / diameter - 1.0) < 0.15


def _xf(scale, alpha_deg, dx, dy):
    """One IMOD .xf (A (1, 2, 2), shift (1, 2)) of the "jou" model: A = R(-alpha) / s, D = -A d."""
    al = np.radians(alpha_deg)
    rot = np.array([[np.cos(-al), -np.sin(-al)], [np.sin(-al), np.cos(-al)]])
    a = rot / scale
    return a[None], (-a @ np.array([dx, dy]))[None]


@pytest.mark.parametrize("diameter", [5.0, 10.0])
def test_bead_diameter_is_estimated_within_15_percent(diameter):
    img, _ = scene(n_beads=25, diameter=diameter, seed=9)
    estimate = estimate_bead_diameter(img, min_diameter_px=4.0, max_diameter_px=16.0)
    assert abs(estimate / diameter - 1.0) < 0.15


def test_bead_diameter_of_pure_noise_is_nan():
    img = 50.0 + np.random.default_rng(12).standard_normal(SHAPE)
    assert math.isnan(estimate_bead_diameter(img, min_diameter_px=4.0, max_diameter_px=16.0))


def test_noise_peaks_follow_the_euler_characteristic_prediction():
    """With the threshold for 1 expected noise maximum, white-noise images average about 1."""
    rng = np.random.default_rng(11)
    sigma, counts = SIGMA_PER_DIAMETER * DIAMETER, []
    for _ in range(24):
        maps = bead_responses(rng.standard_normal((128, 128)), (sigma,), border=1)[0]
        noise, roughness = response_statistics(maps[1:-1, 1:-1])
        u = false_peak_threshold(128 * 128, roughness, expected_false=1.0)
        counts.append(int(peak_masks(maps, u * noise, 1, border=1)[0].sum()))
    # Poisson(1) over 24 images: the mean has a standard deviation of 0.2; allow the asymptotic
    # formula a factor ~1.6 either way.
    assert 0.4 < np.mean(counts) < 1.8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bead_diameter_px=0.0), "bead_diameter_px"),
        (dict(bead_diameter_px=8.0, polarity="black"), "polarity"),
        (dict(bead_diameter_px=8.0, max_beads=-1), "max_beads"),
        (dict(bead_diameter_px=8.0, min_separation_px=-2.0), "min_separation_px"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_beads(np.zeros((32, 32)), **kwargs)


def test_bad_images_raise_one_line_errors():
    with pytest.raises(ValueError, match="2-D"):
        find_beads(np.zeros((2, 32, 32)), DIAMETER)
    bad = np.zeros((32, 32))
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_beads(bad, DIAMETER)
