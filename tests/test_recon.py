"""Tests of lmalign_jax.recon (FBP) and lmalign_jax.io.mrc.

The 3-D phantoms are projected analytically (the line integral of a 3-D Gaussian is a 2-D
Gaussian), independently of the back-projector: a raw pixel p maps to the aligned frame by the
.xf transform, q = A (p - c) + D, where a specimen point (x, y, z) projects to
(x cos t + z sin t, y) (shared/MODEL.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from lmalign_jax.io.mrc import anisotropic_pixel_note, read_labels, read_stack, read_stack_header
from lmalign_jax.io.mrc_volume import create_volume
from lmalign_jax.recon import angular_increments, density_weights, fbp_2d, filter_response, reconstruct

# ----------------------------------------------------------------------------- helpers


def rot(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def project_blobs(blobs, tilts_deg, xf_A, xf_shift, ny, nx):
    """Raw stack (n_views, ny, nx) of Gaussian blobs (x, y, z, sigma, amplitude), pixel-centre
    sampled, seen through the true tilts and the .xf transforms (raw -> aligned)."""
    c = np.array([nx / 2.0, ny / 2.0])
    rows, cols = np.mgrid[0:ny, 0:nx]
    p = np.stack([cols + 0.5, rows + 0.5], axis=-1) - c  # (ny, nx, 2), centred raw coordinates
    stack = np.zeros((len(tilts_deg), ny, nx))
    for v, t in enumerate(np.deg2rad(tilts_deg)):
        q = p @ xf_A[v].T + xf_shift[v]  # centred aligned coordinates
        for x, y, z, s, amp in blobs:
            q0 = np.array([x * np.cos(t) + z * np.sin(t), y])
            r2 = np.sum((q - q0) ** 2, axis=-1)
            stack[v] += amp * np.sqrt(2 * np.pi) * s * np.exp(-r2 / (2 * s * s))
    return stack


def misalignment(n_views, seed, axis_deg=0.0):
    """Per-view in-plane rotation (axis_deg + a few degrees), scale ~1.01, shifts of several
    pixels; returns the .xf (A, D) that undoes them, as in MODEL.md (A = R(-alpha)/s, D = -A d)."""
    rng = np.random.default_rng(seed)
    alpha = axis_deg + rng.uniform(-4, 4, n_views)
    s = 1.0 + rng.normal(0, 0.01, n_views)
    d = rng.normal(0, 4.0, (n_views, 2))
    A = np.stack([rot(-a) / si for a, si in zip(alpha, s, strict=True)])
    D = -np.einsum("vij,vj->vi", A, d)
    return A, D


def voxel_of(x, y, z, shape):
    """Fractional (k, j, i) index of a specimen point (voxel centres at index + 0.5 - n/2)."""
    nz, ny, nx = shape
    return np.array([z - 0.5 + nz / 2, y - 0.5 + ny / 2, x - 0.5 + nx / 2])


def peak_centroid(vol, guess, radius=2):
    """Centroid of the positive peak nearest ``guess`` (k, j, i), in fractional indices."""
    g = np.round(guess).astype(int)
    lo = np.maximum(g - 3, 0)
    win = vol[lo[0] : g[0] + 4, lo[1] : g[1] + 4, lo[2] : g[2] + 4]
    m = np.array(np.unravel_index(np.argmax(win), win.shape)) + lo
    sl = tuple(slice(mi - radius, mi + radius + 1) for mi in m)
    w = vol[sl]
    w = np.clip(w - 0.3 * w.max(), 0, None)
    idx = np.mgrid[sl]
    return np.array([np.sum(w * i) / np.sum(w) for i in idx]), vol[tuple(m)]


# 41 views, +-60 degrees, with small tilt errors in the "true" angles.
NOMINAL = np.arange(-60.0, 60.1, 3.0)
TRUE_TILTS = NOMINAL + np.random.default_rng(7).normal(0, 0.3, NOMINAL.size)
BEADS = [  # x, y, z, sigma, amplitude (gold: small and dense)
    (-18.0, -16.0, 3.0, 1.2, 10.0),
    (12.3, -14.6, -6.2, 1.2, 10.0),
    (-3.7, 0.4, 7.1, 1.2, 10.0),
    (17.2, 5.5, 0.6, 1.2, 10.0),
    (-15.1, 15.8, -4.4, 1.2, 10.0),
    (5.9, 17.3, 5.2, 1.2, 10.0),
]
BLOBS = [(-12.0, -2.0, 0.0, 3.5, 1.0), (9.0, -5.0, 0.0, 4.0, 0.8)]  # larger, weaker "cell" blobs
NY = NX = 64
THICK = 28


@pytest.fixture(scope="module")
def aligned_case():
    A, D = misalignment(NOMINAL.size, seed=3)
    stack = project_blobs(BEADS + BLOBS, TRUE_TILTS, A, D, NY, NX).astype(np.float32)
    return stack, A, D


# ----------------------------------------------------------------------------- filters / weights


def test_ramp_from_spatial_kernel():
    n_pad, h = filter_response(100, "ramp")
    assert n_pad == 200 and h.shape == (101,)
    assert h[0] > 0 and h[0] < 1e-2  # small positive DC from the spatial kernel
    # H(1/2) = 1/2 less the kernel's tail beyond P/2: 2 / pi^2 sum over odd k > P/2 of 1/k^2 ~ 2 / (pi^2 P)
    assert 0.5 - 4 / (np.pi**2 * n_pad) < h[-1] < 0.5
    f = np.fft.rfftfreq(n_pad)
    assert np.allclose(h[1:], np.abs(f[1:]), atol=5e-3)
    for name in ("shepp-logan", "cosine", "hamming", "hann"):
        _, w = filter_response(100, name)
        assert np.all(w <= h + 1e-12) and w[0] == pytest.approx(h[0])
    _, r = filter_response(100, "ramp", radial=(0.25, 0.05))
    assert np.allclose(r[f <= 0.25], h[f <= 0.25])
    k = np.argmin(np.abs(f - 0.35))
    assert r[k] == pytest.approx(h[k] * np.exp(-((f[k] - 0.25) ** 2) / (2 * 0.05**2)))
    with pytest.raises(ValueError, match="unknown filter"):
        filter_response(100, "butterworth")
    with pytest.raises(ValueError, match="radial"):
        filter_response(100, "ramp", radial=(0.0, 0.1))


@pytest.mark.parametrize("n", [1, 7, 97, 100, 127, 1950])
def test_ramp_filtering_is_the_linear_convolution_whatever_the_padding(n):
    """Rows padded to ``padded_length`` (twice a 2-3-5-smooth number, not a power of two) are
    filtered exactly as the linear convolution with the Ram-Lak kernel, as with the next power
    of two >= 2 n (float64)."""
    from lmalign_jax.recon.filters import padded_length, ramp_kernel

    p = padded_length(n)
    assert p >= max(64, 2 * n) and p % 2 == 0
    m = p // 2
    for f in (2, 3, 5):
        while m % f == 0:
            m //= f
    assert m == 1 or p == 64
    row = np.random.default_rng(n).standard_normal(n)
    k = np.arange(-(n - 1), n)
    kernel = np.where(k == 0, 0.25, np.where(k % 2 != 0, -1.0 / (np.pi * np.maximum(np.abs(k), 1)) ** 2, 0.0))
    direct = np.convolve(row, kernel)[n - 1 : 2 * n - 1]
    for size in (p, 1 << int(np.ceil(np.log2(2 * n)))):
        h = np.fft.rfft(ramp_kernel(size)).real
        by_fft = np.fft.irfft(np.fft.rfft(row, size) * h, size)[:n]
        assert np.allclose(by_fft, direct, rtol=0, atol=1e-12)
    _, h = filter_response(n, "ramp")
    assert np.allclose(np.fft.irfft(np.fft.rfft(row, p) * h, p)[:n], direct, rtol=0, atol=1e-12)


def test_density_weights():
    assert np.allclose(density_weights(np.arange(-60, 61, 2.0)), 1.0)
    even = angular_increments(np.arange(-60, 61, 2.0))
    assert np.allclose(even, np.deg2rad(2.0))
    # dose-symmetric file order: same weights as the sorted series, permuted
    order = np.array([0, 1, -1, 2, -2, 3, -3]) * 3.0
    w = angular_increments(order)
    assert np.allclose(w, np.deg2rad(3.0))
    uneven = np.array([-60, -40, -20, -10, 0, 10, 20, 40, 60.0])
    inc = np.rad2deg(angular_increments(uneven))
    assert np.allclose(inc, [20, 20, 15, 10, 10, 10, 15, 20, 20])
    assert np.allclose(density_weights(uneven), inc / 15.0)


# ----------------------------------------------------------------------------- 2-D vs scikit-image


def _phantom_sinogram(n=127, n_angles=90, theta=None):
    skt = pytest.importorskip("skimage.transform")
    from skimage.data import shepp_logan_phantom

    img = skt.rescale(shepp_logan_phantom(), n / 400, anti_aliasing=True)
    assert img.shape == (n, n)
    if theta is None:
        theta = np.linspace(0, 180, n_angles, endpoint=False)
    return img, skt.radon(img, theta), theta


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fbp_2d_matches_skimage_iradon(dtype):
    skt = pytest.importorskip("skimage.transform")
    img, sino, theta = _phantom_sinogram()
    ref = skt.iradon(sino, theta, filter_name="ramp", interpolation="linear")
    # skimage: centre pixel n//2 (= our n/2 - 0.5 for odd n), detector t = x cos - z sin,
    # image row = our z, column = our x; sinogram (n_det, n_views) = ours transposed.
    ours = fbp_2d(sino.T, -theta, dtype=dtype)
    n = ref.shape[0]
    zz, xx = np.mgrid[:n, :n] - n // 2
    inside = zz**2 + xx**2 <= (n // 2) ** 2
    err = np.linalg.norm((ours - ref)[inside]) / np.linalg.norm(ref[inside])
    assert err < 1e-3
    # and it is a reconstruction of the phantom
    assert np.corrcoef(ours[inside], img[inside])[0, 1] > 0.95


def test_fbp_2d_batch_and_filters():
    _, sino, theta = _phantom_sinogram(n=63, n_angles=60)
    single = fbp_2d(sino.T, -theta, filter="hamming", output_shape=(40, 63))
    batch = fbp_2d(np.stack([sino.T, 2 * sino.T], axis=1), -theta, filter="hamming", output_shape=(40, 63))
    assert single.shape == (40, 63) and batch.shape == (40, 2, 63)
    assert np.allclose(batch[:, 0], single, atol=1e-5)
    assert np.allclose(batch[:, 1], 2 * single, atol=1e-5)


def test_density_weighting_uneven_angles():
    # Dense sampling over 0..90 degrees, sparse over 90..180: with density weighting the result
    # is close to an evenly sampled reconstruction; with equal weights it is not.
    dense = np.arange(0.0, 90.0, 1.0)
    sparse = np.arange(90.0, 180.0, 4.0)
    uneven = np.concatenate([sparse[::-1], dense])  # any file order
    _, sino_u, _ = _phantom_sinogram(n=63, theta=uneven)
    _, sino_e, theta_e = _phantom_sinogram(n=63, theta=np.arange(0.0, 180.0, 1.0))
    even = fbp_2d(sino_e.T, -theta_e, dtype=np.float64)
    weighted = fbp_2d(sino_u.T, -uneven, dtype=np.float64)
    # equal weights, from single-view back-projections (a lone view carries weight pi)
    single = np.stack(
        [fbp_2d(sino_u.T[v : v + 1], -uneven[v : v + 1], dtype=np.float64) for v in range(uneven.size)]
    )
    equal = single.sum(axis=0) / np.pi * (np.pi / uneven.size)
    zz, xx = np.mgrid[:63, :63] - 31
    inside = zz**2 + xx**2 <= 29**2

    def rel(a):
        return np.linalg.norm((a - even)[inside]) / np.linalg.norm(even[inside])

    assert rel(weighted) < 0.05 and rel(equal) > 5 * rel(weighted)  # measured 0.022 and 0.33


# ----------------------------------------------------------------------------- 3-D, alignment


def test_beads_at_true_positions_and_wrong_alignment_blurs(aligned_case):
    stack, A, D = aligned_case
    vol = reconstruct(stack, A, D, TRUE_TILTS, THICK, slab_rows=24)
    assert vol.shape == (THICK, NY, NX) and vol.dtype == np.float32
    peaks = []
    for x, y, z, *_ in BEADS:
        true = voxel_of(x, y, z, vol.shape)
        cen, peak = peak_centroid(vol, true)
        assert np.all(np.abs(cen - true) < 0.5), (true, cen)
        peaks.append(peak)
    # Without the alignment (identity .xf, nominal tilts), the beads smear out.
    ident = np.broadcast_to(np.eye(2), A.shape)
    bad = reconstruct(stack, ident, np.zeros_like(D), NOMINAL, THICK)
    bad_peaks = [peak_centroid(bad, voxel_of(x, y, z, bad.shape))[1] for x, y, z, *_ in BEADS]
    assert np.mean(bad_peaks) < 0.3 * np.mean(peaks)  # measured ~0.1
    # Rotation and scale right but shifts off by 2 px in half the views: still clearly worse.
    D2 = D.copy()
    D2[::2] += 2.0
    half = reconstruct(stack, A, D2, TRUE_TILTS, THICK)
    half_peaks = [peak_centroid(half, voxel_of(x, y, z, half.shape))[1] for x, y, z, *_ in BEADS]
    assert np.mean(half_peaks) < 0.7 * np.mean(peaks)  # measured ~0.5


def test_orientation_single_bead_tilt_axis_near_x():
    # Asymmetric tilt range, tilt axis at ~85 degrees in the raw images: the bead must land on
    # the voxel whose centre is its (x, y, z) -- signs of x, y and z all checked.
    tilts = np.arange(-48.0, 66.1, 3.0)
    A, D = misalignment(tilts.size, seed=11, axis_deg=85.0)
    bead = (10.5, -7.5, 5.5)
    stack = project_blobs([(*bead, 1.0, 5.0)], tilts, A, D, 48, 56).astype(np.float32)
    vol = reconstruct(stack, A, D, tilts, 24)
    assert vol.shape == (24, 48, 56)
    expect = voxel_of(*bead, vol.shape)
    assert np.allclose(expect, np.round(expect))
    assert np.unravel_index(np.argmax(vol), vol.shape) == tuple(int(e) for e in expect)
    # a mirrored z would appear at the mirrored voxel: make sure that one is not a peak
    k_mirror = vol.shape[0] - 1 - int(expect[0])
    assert vol[k_mirror, int(expect[1]), int(expect[2])] < 0.3 * vol.max()


def test_binning_slabs_progress_and_mrc_output(tmp_path):
    tilts = np.arange(-60.0, 60.1, 4.0)
    A, D = misalignment(tilts.size, seed=5)
    beads_raw = [(-20.0, 12.0, 6.0, 2.4, 10.0), (14.0, -18.0, -8.0, 2.4, 10.0), (2.0, 3.0, 0.0, 2.4, 10.0)]
    stack = project_blobs(beads_raw, tilts, A, D, 96, 100).astype(np.float32)  # raw pixels
    calls = []
    path = tmp_path / "tomo.mrc"
    with create_volume(path, (20, 48, 50), voxel_size=2 * 3.1) as out:
        res = reconstruct(
            stack,
            A,
            D,
            tilts,
            40,
            binning=2,
            out=out,
            slab_rows=7,
            progress=lambda d, t: calls.append((d, t)),
        )
        assert res is out
        expect_vol = np.array(out)
    assert calls[-1] == (48, 48) and len(calls) == 7
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    for x, y, z, *_ in beads_raw:
        true = voxel_of(x / 2, y / 2, z / 2, expect_vol.shape)
        cen, _ = peak_centroid(expect_vol, true)
        assert np.all(np.abs(cen - true) < 0.5), (true, cen)
    with mrcfile.open(path) as mrc:
        assert mrc.data.shape == (20, 48, 50) and mrc.data.dtype == np.float32
        assert np.allclose(mrc.voxel_size.x, 6.2) and np.allclose(mrc.voxel_size.z, 6.2)
        assert np.array_equal(mrc.data, expect_vol)
        h = mrc.header
        assert h.dmax == pytest.approx(expect_vol.max()) and h.dmin == pytest.approx(expect_vol.min())
        assert h.dmean == pytest.approx(expect_vol.mean(dtype=np.float64), abs=1e-5)
        assert h.rms == pytest.approx(expect_vol.std(dtype=np.float64), rel=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["tomo.mrc"]
    # one slab gives the same volume as seven
    whole = reconstruct(stack, A, D, tilts, 40, binning=2)
    assert np.allclose(whole, expect_vol, atol=1e-4 * np.abs(whole).max())


def test_float64_agrees_with_float32(aligned_case):
    import jax.numpy as jnp

    stack, A, D = aligned_case
    v32 = reconstruct(stack[:, :16], A, D, TRUE_TILTS, 12)
    v64 = reconstruct(stack[:, :16], A, D, TRUE_TILTS, 12, dtype=jnp.float64)
    assert v64.dtype == np.float64
    assert np.allclose(v32, v64, atol=1e-4 * np.abs(v64).max())


def test_view_order_filters_and_radial(aligned_case):
    stack, A, D = aligned_case
    sub = stack[:, 20:36]
    ref = reconstruct(sub, A, D, TRUE_TILTS, 16)
    perm = np.random.default_rng(1).permutation(len(TRUE_TILTS))  # e.g. dose-symmetric order
    assert np.allclose(reconstruct(sub[perm], A[perm], D[perm], TRUE_TILTS[perm], 16), ref, atol=1e-5)
    soft = reconstruct(sub, A, D, TRUE_TILTS, 16, radial=(0.2, 0.05))
    ham = reconstruct(sub, A, D, TRUE_TILTS, 16, filter="hamming")
    for v in (soft, ham):
        assert v.shape == ref.shape and np.all(np.isfinite(v))
        assert np.corrcoef(v.ravel(), ref.ravel())[0, 1] > 0.8
        assert np.abs(np.diff(v, axis=2)).mean() < np.abs(np.diff(ref, axis=2)).mean()  # smoother


# ----------------------------------------------------------------------------- MRC io, bad input


def test_mrc_stack_roundtrip(tmp_path):
    data = np.arange(3 * 8 * 10, dtype=np.float32).reshape(3, 8, 10)
    p = tmp_path / "s.mrc"
    with mrcfile.new(p) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = 2.5
    assert read_stack_header(p) == (3, 8, 10, pytest.approx(2.5))
    m = read_stack(p)
    assert isinstance(m, np.memmap) and m.shape == (3, 8, 10)
    assert np.array_equal(m, data)
    assert np.array_equal(read_stack(p, mmap=False), data)


def test_pixels_that_are_not_square_are_noted(tmp_path):
    """The package takes a header's x pixel size as every pixel's: y differing by more than 0.1%
    is worth a warning (reconstruct, align --stack, track/find-beads --bead-nm); float32 rounding
    of the cell and an unset size are not."""
    p = tmp_path / "s.mrc"
    for size, expected in (
        (
            (2.0, 2.5, 2.0),
            "s.mrc: the header's pixels are 2 x 2.5 A (x by y); pixels are taken as square, 2 A",
        ),
        ((1.35, 1.35 * (1 + 5e-4), 1.35), None),  # within 0.1%
        ((1.3517, 1.3517, 1.3517), None),
        ((0.0, 0.0, 0.0), None),  # not set
        ((0.0, 2.0, 0.0), None),  # no x size: nothing is taken from y
    ):
        with mrcfile.new(p, overwrite=True) as mrc:
            mrc.set_data(np.zeros((3, 8, 4096), np.int16))
            mrc.voxel_size = size
        note = anisotropic_pixel_note(p)
        assert (
            (note is None) if expected is None else (note is not None and note.endswith("check the header"))
        )
        assert expected is None or note.startswith(str(p)[: -len("s.mrc")] + expected), (size, note)


def test_a_header_announcing_more_sections_than_the_file_holds_is_refused(tmp_path):
    data = np.zeros((3, 8, 10), np.int16)
    p = tmp_path / "s.mrc"
    with mrcfile.new(p) as mrc:
        mrc.set_data(data)
        mrc.set_extended_header(np.zeros(64, np.uint8))  # the data start after it
    assert read_stack_header(p)[0] == 3
    raw = bytearray(p.read_bytes())
    raw[8:12] = np.int32(4).tobytes()  # nz: 4 sections announced, 3 held
    p.write_bytes(bytes(raw))
    announced = r"s\.mrc: the header says 4 sections of 10 x 8 \(int16\) but the file holds 3"
    with pytest.raises(ValueError, match=announced):
        read_stack_header(p)


@pytest.mark.parametrize("field, value", [(0, 9), (4, 7), (8, 2)])  # nx 10 -> 9, ny 8 -> 7, nz 3 -> 2
def test_a_header_announcing_less_than_the_file_holds_is_refused(tmp_path, field, value):
    """A header whose nx, ny or nz is smaller than the data's would read every image sheared (or
    lose views) without a word (audit: a garbage tomogram, exit 0): the whole columns, rows or
    sections left over are refused; bytes after the data that no dimension explains are not."""
    p = tmp_path / "s.mrc"
    with mrcfile.new(p) as mrc:
        mrc.set_data(np.zeros((3, 8, 10), np.float32))
    raw = bytearray(p.read_bytes())
    raw[field : field + 4] = np.int32(value).tobytes()
    p.write_bytes(bytes(raw))
    with pytest.raises(
        ValueError, match=r"s\.mrc: the file holds \d+ bytes more than the header's .* wrong header"
    ):
        read_stack_header(p)
    with mrcfile.new(p, overwrite=True) as mrc:
        mrc.set_data(np.zeros((3, 8, 10), np.float32))
    p.write_bytes(p.read_bytes() + bytes(36))  # trailing bytes: not a column, row or section
    assert read_stack_header(p)[:3] == (3, 8, 10)


def test_bad_input_files(tmp_path):
    txt = tmp_path / "notes.mrc"
    txt.write_text("this is not an MRC file\n" * 80)
    for fn in (read_stack_header, read_stack):
        with pytest.raises(ValueError, match="notes.mrc"):
            fn(txt)
        with pytest.raises(ValueError, match="missing.mrc.*no such file"):
            fn(tmp_path / "missing.mrc")


@pytest.mark.parametrize(
    "case, message",
    [
        ("tilts", "view count mismatch"),
        ("xf", "view count mismatch"),
        ("thickness", "thickness"),
        ("nan_stack", "non-finite"),
        ("nan_xf", "non-finite"),
        ("huge_stack", "the tomogram is not finite"),  # finite pixels that overflow float32
        ("huge_xf", r"view\(s\) \[2\] have a shift or scale beyond 1e\+30"),
        ("tiny_xf", r"view\(s\) \[3\] have a shift or scale beyond 1e\+30"),  # its inverse's
        ("out_shape", "expected"),
        ("non_mrc", "not a readable MRC file"),
    ],
)
def test_bad_input_no_output_file(tmp_path, aligned_case, case, message):
    stack, A, D = aligned_case
    stack = stack[:, :8].copy()
    args = dict(stack=stack, xf_A=A, xf_shift=D, tilts_deg=TRUE_TILTS, thickness=THICK)
    shape = (THICK, 8, NX)
    if case == "tilts":
        args["tilts_deg"] = TRUE_TILTS[:-1]
    elif case == "xf":
        args["xf_A"] = A[:-2]
    elif case == "thickness":
        args["thickness"] = 0
    elif case == "nan_stack":
        stack[5, 3, 4] = np.nan
    elif case == "nan_xf":
        args["xf_shift"] = D.copy()
        args["xf_shift"][2, 1] = np.inf
    elif case == "huge_stack":
        stack[5, 2:6, 4:20] = 3e38
    elif case == "huge_xf":
        args["xf_shift"] = D.copy()
        args["xf_shift"][2, 0] = 1e300
    elif case == "tiny_xf":
        args["xf_A"] = A.copy()
        args["xf_A"][3] = 1e-35 * np.eye(2)
    elif case == "out_shape":
        shape = (THICK, 8, NX + 1)
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.mrc").write_text("not an MRC file\n" * 80)
    path = tmp_path / "bad.mrc"
    with pytest.raises(ValueError, match=message):
        with create_volume(path, shape, 1.0) as out:
            if case == "non_mrc":
                args["stack"] = read_stack(src / "notes.mrc")
            reconstruct(**args, out=out)
    assert os.listdir(tmp_path) == ["in"]


def test_volume_label_is_written_and_checked(tmp_path):
    label = "lmalign_jax reconstruct: thickness 300 bin 4 filter shepp-logan radial 0.35 0.05"
    with create_volume(tmp_path / "v.mrc", (2, 3, 4), 1.0, label=label) as out:
        out[:] = 1.0
    assert label in read_labels(tmp_path / "v.mrc")
    for bad in ("x" * 81, "tab\there", "\u00c5ngstr\u00f6m"):
        with pytest.raises(ValueError, match="an MRC label is at most 80 printable ASCII characters"):
            with create_volume(tmp_path / "w.mrc", (2, 3, 4), 1.0, label=bad):
                pass
    assert sorted(os.listdir(tmp_path)) == ["v.mrc"]


def test_import_leaves_jax_config_alone():
    code = "import jax, lmalign_jax.recon, lmalign_jax.io.mrc; assert not jax.config.jax_enable_x64"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_ENABLE_X64": "0"})


def test_backprojection_chunk_keeps_every_views_indices_within_their_budget():
    """Thin slabs of wide images (a small --memory) do not get the larger chunks' index memory."""
    from lmalign_jax.recon import _kernels as k

    # 2k x 64 rows, 61 views: the 8 MiB accumulator (16 slices), indices 16 MiB
    assert k.choose_z_chunk(256, 2048, 64, n_views=61) == 16
    # 4k x 8 rows: 8 MiB would be 64 slices (128 MB of indices); the index budget gives 8, the
    # 2 MiB floor 16
    assert k.choose_z_chunk(256, 4096, 8) == 64
    assert k.choose_z_chunk(256, 4096, 8, n_views=61) == 16
    assert 8 * 61 * 16 * 4096 <= 2 * k.BACKPROJECT_INDEX_BYTES


def test_the_slice_count_divides_whole_pixels_as_imods_tilt():
    """NZ = thickness / bin rounded down, as tilt divides THICKNESS by IMAGEBINNED (Python's round
    made --thickness 5 --bin 2 two slices and 7 four; audit), at least one; every reconstructor
    takes it."""
    from lmalign_jax.recon.fbp import slice_count

    assert [slice_count(t, 2) for t in (1, 2, 3, 4, 5, 6, 7, 8)] == [1, 1, 1, 2, 2, 3, 3, 4]
    assert slice_count(10, 4) == 2 and slice_count(11.9, 4) == 2 and slice_count(0.1, 1) == 1
    assert slice_count(300, 1) == 300 and slice_count(299.9999999999, 1) == 300 and slice_count(301, 3) == 100
