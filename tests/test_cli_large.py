"""`lmalign align` at the size that once failed after the solve: 150 views x 1,500 markers (about
200,000 points), 8k x 8k images, per-view shifts of thousands of pixels, marker ids past IMOD's
i5 contour field, read from a model2point ``contour x y view`` text file. Every output is read
back by the project's readers and checked against the input and the known truth.

Two in-process runs share one JAX compilation: the default run without the figure (standard
errors included), then one with the figure (standard errors skipped to save time). The tilt-axis
angle is given (``--rotation``, as IMOD's RotationAngle): estimated from these tracks it came out
180 degrees off for one seed in three (an equally good fit; not what this file tests).
Tolerances: over seeds 4-6 the centred tilt error was 0.003 deg RMS and the largest rotation
error 0.0012 deg; the bounds below leave more than 15x room.
"""

import json

import numpy as np
import pytest
from helpers import run_cli

from lmalign_jax import io, simulate

N_VIEWS, N_MARKERS, SIZE = 150, 1_500, 8192
IDS = tuple(67 * k for k in range(1, N_MARKERS + 1))  # up to 100,500: wider than fid.xyz's i5
NOISE_PX = 0.5
ROTATION_DEG = -12.0  # simulate()'s default axis (each view jittered by 0.2 deg)


def run(args):
    """cli.main in-process without the persistent compilation cache: (exit status, stdout, stderr)."""
    return run_cli(args, no_cache=True)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The synthetic series, its marker and tilt files, and the markers as the CLI reads them."""
    d = tmp_path_factory.mktemp("large")
    s = simulate(
        n_views=N_VIEWS,
        n_markers=N_MARKERS,
        image_size=(SIZE, SIZE),
        shift_px=2000.0,
        missing_fraction=0.1,
        noise_px=NOISE_PX,
        rotation_deg=ROTATION_DEG,
        seed=4,
    )
    obs = s.observations
    io.write_model2point(
        d / "big.txt", io.MarkerSet(xy=np.asarray(obs.xy), mask=np.asarray(obs.mask), marker_ids=IDS)
    )
    io.write_tlt(d / "big.rawtlt", obs.tilts_deg)
    markers = io.read_markers(d / "big.txt")
    assert markers.marker_ids == IDS and markers.n_views == N_VIEWS
    shift = np.abs(markers.xy[markers.mask] - SIZE / 2).max()
    assert shift > 6000  # points thousands of pixels beyond the image centre
    return s, d, markers


@pytest.fixture(scope="module")
def aligned(series, tmp_path_factory):
    s, d, _ = series
    out_dir = tmp_path_factory.mktemp("out")
    rc, out, err = run(
        [
            "align",
            d / "big.txt",
            "--tilts",
            d / "big.rawtlt",
            "--image-size",
            SIZE,
            SIZE,
            "--rotation",
            ROTATION_DEG,
            "--out-dir",
            out_dir,
            "--no-figure",
            "-q",
        ]
    )
    if rc != 0:  # in full (an assertion's message is cut to a few lines)
        pytest.fail(f"align exited {rc}\n{err}\n{out[-3000:]}", pytrace=False)
    return out_dir, out, err


def test_every_output_written(aligned):
    out_dir, out, err = aligned
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "big.json",
        "big.resid",
        "big.tlt",
        "big.xf",
        "big.xyz",
    ]
    assert "Status: converged" in out and "Standard errors" in out


def test_json_record(aligned, series):
    markers = series[2]
    r = json.loads((aligned[0] / "big.json").read_text())
    assert r["inputs"]["n_markers"] == N_MARKERS and r["inputs"]["n_views_fitted"] == N_VIEWS
    assert r["inputs"]["n_points_in_file"] == markers.n_observations
    assert r["outputs"] == ["big.xf", "big.tlt", "big.resid", "big.xyz", "big.json"] and r["exit_code"] == 0
    s = r["summary"]
    assert s["converged"] and s["n_points"] == markers.n_observations
    # ~400,000 coordinates: the RMS residual sits at the noise floor to well under 1%
    assert s["rms_residual_px"] == pytest.approx(NOISE_PX * s["noise_floor_factor"], rel=0.01)
    assert len(r["views"]) == N_VIEWS and len(r["markers"]) == N_MARKERS
    assert [m["id"] for m in r["markers"]] == list(IDS)


def test_tlt_and_xf_recover_truth(aligned, series):
    s = series[0]
    tilts = io.read_tilts(aligned[0] / "big.tlt")
    assert tilts.shape == (N_VIEWS,)
    dt = tilts - s.true_tilts_deg
    assert np.sqrt(np.mean((dt - dt.mean()) ** 2)) < 0.05  # a common tilt offset is a gauge freedom
    a, shifts = io.read_xf(aligned[0] / "big.xf")
    assert a.shape == (N_VIEWS, 2, 2) and shifts.shape == (N_VIEWS, 2)
    alpha = np.degrees(np.arctan2(-a[:, 1, 0], a[:, 0, 0]))  # A = R(-alpha) / scale
    assert np.max(np.abs(alpha - s.true_rotation_deg)) < 0.05
    assert np.abs(shifts).max() > 1000  # the large shifts are undone


def test_xyz_file(aligned, series):
    fid = io.read_fid_xyz(aligned[0] / "big.xyz")
    np.testing.assert_array_equal(fid.point, np.arange(1, N_MARKERS + 1))  # past i4's 9999 is tested in io
    assert tuple(fid.contour) == IDS and set(fid.object) == {1}
    assert fid.image_size == (SIZE, SIZE) and fid.pixel_size == 1.0


def test_aligned_points_match_xyz(aligned, series):
    """The .xf applied to every measured point gives (x cos t + z sin t, y) of its .xyz marker
    to within the RMS residual: .xf, .tlt and .xyz agree with each other and with the input."""
    markers = series[2]
    d = aligned[0]
    a, shifts = io.read_xf(d / "big.xf")
    t = np.radians(io.read_tilts(d / "big.tlt"))
    xyz = io.read_fid_xyz(d / "big.xyz").xyz - [SIZE / 2, SIZE / 2, 0.0]
    v, m = np.nonzero(markers.mask)
    aligned_xy = np.einsum("nij,nj->ni", a[v], markers.xy[v, m] - SIZE / 2) + shifts[v]
    expected = np.column_stack([xyz[m, 0] * np.cos(t[v]) + xyz[m, 2] * np.sin(t[v]), xyz[m, 1]])
    rms = json.loads((d / "big.json").read_text())["summary"]["rms_residual_px"]
    assert np.sqrt(np.mean((aligned_xy - expected) ** 2)) < 1.02 * rms + 0.01


def test_resid_file(aligned, series):
    markers = series[2]
    table = io.read_resid(aligned[0] / "big.resid")
    m_idx, views, xy = markers.points()  # by marker, views increasing: IMOD's order
    assert table.n_markers == N_MARKERS
    np.testing.assert_array_equal(table.marker, m_idx)
    np.testing.assert_array_equal(table.view, views)
    np.testing.assert_allclose(table.xy, xy, atol=0.0051)  # 3-decimal input, 2-decimal output
    rms = json.loads((aligned[0] / "big.json").read_text())["summary"]["rms_residual_px"]
    assert np.sqrt(np.mean(table.residual**2)) == pytest.approx(rms, abs=0.005)


def test_with_figure(aligned, series, tmp_path):
    d = series[1]
    rc, out, err = run(
        [
            "align",
            d / "big.txt",
            "--tilts",
            d / "big.rawtlt",
            "--image-size",
            SIZE,
            SIZE,
            "--rotation",
            ROTATION_DEG,
            "--out-dir",
            tmp_path,
            "--no-errors",
            "-q",
        ]
    )
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.json",
        "big.png",
        "big.resid",
        "big.tlt",
        "big.xf",
        "big.xyz",
    ]
    assert (tmp_path / "big.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((tmp_path / "big.json").read_text())
    assert r["outputs"][-1] == "big.png"
    # the same data and solve: the same transforms as the run without the figure
    a1, d1 = io.read_xf(aligned[0] / "big.xf")
    a2, d2 = io.read_xf(tmp_path / "big.xf")
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(d1, d2)
