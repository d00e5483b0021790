"""lmalign_jax.simulation.phantom: bead specimens, their exact projection into raw tilt series, peak finding.

Conventions (shared/MODEL.md): pixel (row r, column c) is centred at (c + 0.5, r + 0.5); the .xf
maps raw to aligned about the image centre; aligned x' - xc = x cos t + z sin t, y' - yc = y.
"""

from __future__ import annotations

import numpy as np
import pytest

from lmalign_jax.models import get_model
from lmalign_jax.recon import reconstruct
from lmalign_jax.simulation.phantom import (
    Phantom,
    bead_phantom,
    fit_similarity,
    jou_xf,
    locate_peaks,
    project_stack,
    series_alignment,
    voxel_index,
)
from lmalign_jax.simulation.synthetic import simulate

IDENTITY_A = np.eye(2)[None]
ZERO_D = np.zeros((1, 2))


def one_bead(x, y, z, sigma=1.5, density=1.0):
    return Phantom(positions=[[x, y, z]], sigma=sigma, density=density, is_bead=True)


def centroid(img, radius=4):
    """Intensity centroid (x, y) in image coordinates around the brightest pixel."""
    r, c = np.unravel_index(np.argmax(img), img.shape)
    rows, cols = np.mgrid[r - radius : r + radius + 1, c - radius : c + radius + 1]
    w = img[rows, cols]
    return np.array([np.sum(w * (cols + 0.5)) / w.sum(), np.sum(w * (rows + 0.5)) / w.sum()])


def test_identity_tilt0_peak_at_the_expected_pixel():
    # A bead at (x, y) = (3.5, -4.5) from the centre of a 64 x 48 image sits at image point
    # (35.5, 19.5): the centre of column 35, row 19. z does not matter at 0 degrees.
    stack = project_stack(one_bead(3.5, -4.5, 7.0), IDENTITY_A, ZERO_D, [0.0], (64, 48))
    assert stack.shape == (1, 48, 64) and stack.dtype == np.float32
    assert np.unravel_index(np.argmax(stack[0]), stack[0].shape) == (19, 35)
    assert stack[0, 19, 35] == pytest.approx(
        np.sqrt(2 * np.pi) * 1.5, rel=1e-6
    )  # line integral through the centre
    assert stack[0, 19, 34] == pytest.approx(stack[0, 19, 36]) and stack[0, 18, 35] == pytest.approx(
        stack[0, 20, 35]
    )
    # a bead at a pixel corner: four equal neighbours
    img = project_stack(one_bead(0.0, 0.0, 0.0), IDENTITY_A, ZERO_D, [0.0], (16, 16))[0]
    assert np.allclose(img[7:9, 7:9], img[7, 7]) and np.argmax(img) in (
        7 * 16 + 7,
        7 * 16 + 8,
        8 * 16 + 7,
        8 * 16 + 8,
    )


def test_tilt_moves_the_bead_along_x_only():
    t = 35.0
    x, y, z = 5.0, -3.0, 12.0
    img = project_stack(one_bead(x, y, z), IDENTITY_A, ZERO_D, [t], (64, 64))[0]
    expect = np.array([x * np.cos(np.radians(t)) + z * np.sin(np.radians(t)), y]) + 32.0
    assert np.allclose(centroid(img), expect, atol=0.02)


def test_raw_image_matches_the_jou_model_of_the_markers():
    """Through a misalignment, a bead appears in the raw image where the jou model puts the marker."""
    views = np.array(
        [
            [1.02, np.radians(-12.0), np.radians(40.0), 6.0, -4.0],
            [0.98, np.radians(80.0), np.radians(-25.0), -3.0, 2.5],
        ]
    )
    a, d = jou_xf(views)
    bead = np.array([10.0, -7.0, 9.0])
    stack = project_stack(one_bead(*bead), a, d, np.degrees(views[:, 2]), (96, 80), oversample=3)
    model = get_model("jou")
    for v in range(2):
        expect = np.asarray(model.project(views[v], bead), dtype=float) + np.array([48.0, 40.0])
        assert np.allclose(centroid(stack[v], radius=6), expect, atol=0.03)


def test_oversampling_and_mass():
    bead = one_bead(0.3, -0.2, 0.0, sigma=1.0, density=2.0)
    mass = 2.0 * (2 * np.pi) ** 1.5 * 1.0**3  # integral of the 3-D Gaussian
    for k in (1, 4):
        img = project_stack(bead, IDENTITY_A, ZERO_D, [0.0], (32, 32), oversample=k)[0]
        assert img.sum() == pytest.approx(mass, rel=1e-3)
    centre = project_stack(one_bead(0.5, 0.5, 0.0), IDENTITY_A, ZERO_D, [0.0], (32, 32), oversample=4)[
        0, 16, 16
    ]
    point = project_stack(one_bead(0.5, 0.5, 0.0), IDENTITY_A, ZERO_D, [0.0], (32, 32))[0, 16, 16]
    assert centre < point  # a pixel average is below the peak value


def test_bead_phantom_random_and_given():
    ph = bead_phantom(n_beads=10, box=(100, 80, 30), n_blobs=2, seed=4)
    assert ph.n_objects == 12 and ph.is_bead.sum() == 10 and ph.bead_positions.shape == (10, 3)
    assert np.all(np.abs(ph.positions) <= np.array([50, 40, 15]) + 1e-9)
    beads = ph.bead_positions
    dist = np.linalg.norm(beads[:, None] - beads[None], axis=-1) + np.eye(10) * 1e9
    assert dist.min() >= 4 * 1.5
    assert np.all(ph.sigma[ph.is_bead] == 1.5) and np.all(ph.density[~ph.is_bead] < ph.density[ph.is_bead][0])
    assert np.array_equal(
        bead_phantom(n_beads=10, box=(100, 80, 30), n_blobs=2, seed=4).positions, ph.positions
    )
    given = bead_phantom([[1, 2, 3], [4, 5, 6]], n_blobs=0)
    assert np.array_equal(given.bead_positions, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="cannot place"):
        bead_phantom(n_beads=50, box=(5, 5, 5))
    with pytest.raises(ValueError, match="sigmas must be positive"):
        Phantom(positions=[[0, 0, 0]], sigma=0.0, density=1.0, is_bead=True)


def test_to_volume_and_locate_peaks():
    ph = bead_phantom([[3.2, -5.7, 4.1], [-10.0, 8.0, -6.3]], n_blobs=0)
    vol = ph.to_volume((24, 40, 48))
    k, j, i = np.round(voxel_index(ph.bead_positions[:1], vol.shape)[0]).astype(int)
    assert np.unravel_index(np.argmax(vol), vol.shape) == (k, j, i)
    found, dist = locate_peaks(vol, ph.bead_positions + 0.8)  # searched from a wrong guess
    assert np.allclose(found, ph.bead_positions, atol=0.1)
    # binned: voxels 2 px wide
    vol2 = ph.to_volume((12, 20, 24), binning=2)
    found2, _ = locate_peaks(vol2, ph.bead_positions, binning=2)
    assert np.allclose(found2, ph.bead_positions, atol=0.3)
    _, d_out = locate_peaks(vol, [[500.0, 0.0, 0.0]])
    assert np.isnan(d_out[0])


def test_series_alignment_jou_and_fitted_agree():
    s = simulate(n_views=5, n_markers=4, image_size=(512, 512), seed=1)
    a, d, t = series_alignment(s)
    a2, d2 = jou_xf(s.views)
    assert np.allclose(a, a2) and np.allclose(d, d2) and np.allclose(t, s.true_tilts_deg)
    # the generic path (fitted transforms) on the imod model with neutral extras: the same maps
    si = simulate(n_views=5, n_markers=4, image_size=(512, 512), model="imod", seed=1)
    ai, di, ti = series_alignment(si)
    m = get_model("imod")
    jv = si.views[:, [m.index(p) for p in ("scale", "rotation", "tilt", "dx", "dy")]]
    aj, dj = jou_xf(jv)
    assert (
        np.allclose(ai, aj, atol=1e-9)
        and np.allclose(di, dj, atol=1e-6)
        and np.allclose(ti, si.true_tilts_deg)
    )


def test_fit_similarity_removes_a_gauge():
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 30, (8, 3))
    c, s = np.cos(0.02), np.sin(0.02)
    ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    moved = 1.003 * pts @ ry.T + np.array([5.0, -3.0, 2.0])
    assert np.allclose(fit_similarity(pts, moved), moved, atol=1e-9)


def test_projection_reconstructs_at_the_bead_positions():
    """Phantom -> raw stack through a misalignment -> FBP: beads within a fraction of a voxel."""
    rng = np.random.default_rng(5)
    n = 31
    tilts = np.linspace(-60, 60, n) + rng.normal(0, 0.3, n)
    views = np.column_stack(
        [
            1 + rng.normal(0, 0.01, n),
            np.radians(-12 + rng.normal(0, 0.5, n)),
            np.radians(tilts),
            rng.normal(0, 3, (n, 2)),
        ]
    )
    a, d = jou_xf(views)
    ph = bead_phantom(n_beads=6, box=(60, 60, 20), n_blobs=2, blob_sigma=(4, 6), seed=3)
    stack = project_stack(ph, a, d, tilts, (96, 96))
    vol = reconstruct(stack, a, d, tilts, 32)
    _, dist = locate_peaks(vol, ph.bead_positions)
    assert dist.max() < 0.3, dist
    vol2 = reconstruct(stack, a, d, tilts, 32, binning=2)
    _, dist2 = locate_peaks(vol2, ph.bead_positions, binning=2)
    assert dist2.max() < 0.3, dist2


def test_project_stack_checks():
    with pytest.raises(ValueError, match="need xf_A"):
        project_stack(one_bead(0, 0, 0), np.eye(2)[None], np.zeros((1, 2)), [0.0, 10.0], (8, 8))
    with pytest.raises(ValueError, match="oversample"):
        project_stack(one_bead(0, 0, 0), IDENTITY_A, ZERO_D, [0.0], (8, 8), oversample=0)
    out = np.zeros((1, 8, 10))
    assert project_stack(one_bead(0, 0, 0), IDENTITY_A, ZERO_D, [0.0], (10, 8), out=out) is out
    noisy = project_stack(one_bead(0, 0, 0), IDENTITY_A, ZERO_D, [0.0], (64, 64), noise=0.1, seed=2)[0]
    assert 0.08 < np.std(noisy[:20, :20]) < 0.12
