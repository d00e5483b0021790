"""report.py on a hand-made jou alignment (numpy only: no solve, no JAX compilation)."""

import json

import matplotlib
import numpy as np
import pytest

from lmalign_jax import AlignmentResult, Observations, StageReport
from lmalign_jax.io.errors import InputError
from lmalign_jax.report import (
    RECORD_VERSION,
    aligned_model_xy,
    build_record,
    expand_to_file_views,
    format_summary,
    interpolate_transforms,
    read_record,
    record_to_json,
    render_figure,
)
from lmalign_jax.report.figure import (
    MAX_ARROWS,
    MAX_TRACK_POINTS,
    arrow_sample,
    track_sample,
)

SIZE = (800.0, 600.0)


def rot(a):
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def jou_xf(views):
    """IMOD transforms of jou views (s, alpha, t, dx, dy): A = R(-alpha) / s, D = -A d."""
    a = np.stack([rot(-v[1]) / v[0] for v in views])
    d = -np.einsum("vij,vj->vi", a, views[:, 3:5])
    return np.concatenate([a, d[:, :, None]], axis=2)


def make_result(n_views=7, n_markers=5, seed=0):
    """An exact jou alignment of noise-free points, with made-up residuals for the report."""
    rng = np.random.default_rng(seed)
    tilts = np.linspace(-30, 30, n_views)
    views = np.column_stack(
        [
            1 + 0.01 * rng.standard_normal(n_views),
            np.radians(-10 + 0.2 * rng.standard_normal(n_views)),
            np.radians(tilts + 0.1 * rng.standard_normal(n_views)),
            rng.normal(0, 5, n_views),
            rng.normal(0, 5, n_views),
        ]
    )
    markers = rng.uniform(-150, 150, (n_markers, 3))
    proj = np.stack([markers[:, 0] * np.cos(t) + markers[:, 2] * np.sin(t) for t in views[:, 2]])
    flat = np.stack([proj, np.broadcast_to(markers[:, 1], proj.shape)], axis=-1)
    xy = (
        np.einsum("v,vij,vmj->vmi", views[:, 0], np.stack([rot(a) for a in views[:, 1]]), flat)
        + views[:, None, 3:5]
    )
    mask = np.ones((n_views, n_markers), dtype=bool)
    mask[0, 0] = False
    obs = Observations(xy + np.array(SIZE) / 2, mask, tilts, SIZE)
    residuals = np.where(mask[..., None], 0.3 * rng.standard_normal(xy.shape), np.nan)
    residuals[3, 2] = [2.0, -1.5]  # the worst point
    stages = (
        StageReport("main", 5, 4, 0.5, "converged", 0.3, 40),
        StageReport("joint", 3, 3, 0.2, "converged", 0.29, 45),
    )
    return AlignmentResult(
        "jou", obs, views, markers, residuals, stages, "converged", 45, -10.1, jou_xf(views)
    )


@pytest.fixture(scope="module")
def report():
    """The fitted views are file views 0, 1, 3, 4, 5, 7, 8 out of 9 (2 and 6 excluded)."""
    result = make_result()
    view_index = np.array([0, 1, 3, 4, 5, 7, 8])
    nominal = np.full(9, np.nan)
    nominal[view_index] = result.observations.tilts_deg
    nominal[[2, 6]] = [-17.0, 22.0]
    fv = expand_to_file_views(result, view_index, nominal)
    inputs = {
        "markers": "m.csv",
        "markers_format": "CSV",
        "tilts": "t.tlt",
        "n_markers": 5,
        "n_views": 9,
        "image_size": list(SIZE),
        "image_size_source": "--image-size",
        "excluded_views": [3, 7],
    }
    options = {
        "model": "jou",
        "modes": {"scale": "free"},
        "rotation_deg": -10.1,
        "rotation_source": "estimated",
    }
    record = build_record(
        result,
        fv,
        marker_ids=[11, 12, 13, 14, 15],
        inputs=inputs,
        options=options,
        n_worst=4,
        software={"name": "lmalign_jax", "version": "x"},
    )
    return result, fv, record


def test_interpolate_transforms_rotation_scale_shift():
    xf = np.zeros((2, 2, 3))
    xf[0, :, :2], xf[0, :, 2] = rot(np.radians(-10)) * 1.0, [0, 0]
    xf[1, :, :2], xf[1, :, 2] = rot(np.radians(-12)) * 1.02, [4, -2]
    got = interpolate_transforms(xf, [10.0, -10.0], [0.0, 5.0, 40.0, -40.0])
    np.testing.assert_allclose(got[0, :, :2], rot(np.radians(-11)) * 1.01, atol=1e-12)
    np.testing.assert_allclose(got[0, :, 2], [2, -1])
    np.testing.assert_allclose(got[1, :, 2], [1, -0.5])
    np.testing.assert_allclose(got[2], xf[0])  # beyond the known range: nearest copied
    np.testing.assert_allclose(got[3], xf[1])


def test_expand_to_file_views(report):
    result, fv, _ = report
    assert fv.n_views == 9 and list(np.flatnonzero(fv.excluded)) == [2, 6]
    np.testing.assert_allclose(fv.tilts_deg[[2, 6]], [-17.0, 22.0])  # nominal for excluded views
    np.testing.assert_allclose(fv.tilts_deg[[0, 8]], result.tilts_deg[[0, 6]])
    assert np.isnan(fv.parameters["scale"][2]) and np.isfinite(fv.parameters["scale"][3])
    assert not fv.mask[2].any() and np.isnan(fv.residuals[6]).all()
    np.testing.assert_array_equal(fv.xf[3], result.xf[2])
    with pytest.raises(ValueError, match="distinct file view"):
        expand_to_file_views(result, [0, 0, 1, 2, 3, 4, 5], np.zeros(9))


def test_aligned_points_are_flat_for_an_exact_model(report):
    result, fv, record = report
    aligned, ideal = aligned_model_xy(fv, result.markers, result.observations.center)
    np.testing.assert_allclose(aligned[fv.mask], ideal[fv.mask], atol=1e-9)
    assert record["summary"]["aligned_check_rms_px"]["y"] < 1e-9


def test_record(report):
    result, _, record = report
    text = record_to_json(record)
    assert "NaN" not in text and "Infinity" not in text
    r = json.loads(text)
    assert (
        len(r["views"]) == 9 and r["views"][2]["excluded"] and r["views"][2]["parameters"]["rotation"] is None
    )
    assert r["views"][3]["view"] == 3 and r["views"][3]["view_number"] == 4
    assert r["views"][0]["n_points"] == 4 and r["views"][1]["n_points"] == 5
    worst = r["worst_points"][0]
    # result view 3 is file view 4; marker index 2 has id 13
    assert (worst["view"], worst["view_number"], worst["marker_id"]) == (4, 5, 13)
    assert worst["residual_px"] == pytest.approx(2.5)
    assert r["summary"]["mean_residual_px"] == pytest.approx(result.mean_residual_px)
    assert r["summary"]["rms_residual_px"] == pytest.approx(result.rms_residual_px)
    assert [m["id"] for m in r["markers"]] == [11, 12, 13, 14, 15] and r["markers"][0]["n_views"] == 6
    assert r["model"]["units"]["rotation"] == "deg" and r["model"]["units"]["dx"] == "px"
    assert r["stages"][1] == {
        "name": "joint",
        "iterations": 3,
        "accepted": 3,
        "seconds": 0.2,
        "status": "converged",
        "rms_residual_px": 0.29,
        "n_free": 45,
    }


def test_summary_text(report):
    _, _, record = report
    text = format_summary(record)
    s = record["summary"]
    assert (
        f" Residual error mean and sd: {s['mean_residual_px']:9.3f} {s['sd_residual_px']:9.3f}"
        f" {s['n_points']:>8d} points" in text
    )
    assert "    3   -17.00   -17.00      excluded: transform interpolated from neighbours" in text
    assert " view  nominal     tilt  deltilt  rotation     scale  points  mean resid" in text
    assert "4 points with the largest residuals" in text
    assert "       13      5" in text  # worst point: marker id 13 in view 5 (1-based)
    assert "2 excluded (views 3,7, 1-based)" in text
    assert "Status: converged" in text
    quiet = format_summary(record, per_view=False)
    assert "excluded: transform interpolated" not in quiet and "Residual error mean and sd:" in quiet


def test_figure_is_a_png_and_leaves_the_backend_alone(report):
    result, fv, record = report
    backend = matplotlib.get_backend()
    data = render_figure(result, fv, record, title="test")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend


def png_pixels(data: bytes) -> np.ndarray:
    """The decoded RGBA image of PNG bytes (rows, columns, 4), values in [0, 1]."""
    import io

    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_summary_prints_the_rotation_the_fit_started_from(report):
    _, _, record = report
    assert " Rotation: tilt axis -10.10 deg to start (estimated), solved mean" in format_summary(record)


def test_track_sample_keeps_every_marker_up_to_the_budget_then_an_even_subset():
    rng = np.random.default_rng(1)
    mask = rng.random((61, 5000)) < 0.9
    drawn, step = track_sample(mask, max_points=int(mask.sum()))
    assert step == 1 and drawn.size == 5000
    drawn, step = track_sample(mask, max_points=20_000)
    assert step > 1 and np.array_equal(drawn, np.arange(0, 5000, step))
    assert mask[:, drawn].sum() <= 20_000 < mask[:, :: step - 1].sum()  # the smallest step that fits
    assert track_sample(np.ones((61, 3), bool), max_points=10)[0].size == 1  # one marker even over budget


def test_arrow_sample_keeps_the_longest_residuals():
    lengths = np.random.default_rng(2).random(50_000)
    shown = arrow_sample(lengths, max_arrows=1000)
    assert shown.size == 1000 and np.array_equal(shown, np.unique(shown))
    assert set(np.argsort(lengths)[-200:]) <= set(shown.tolist())
    assert np.array_equal(arrow_sample(lengths[:1000], max_arrows=1000), np.arange(1000))


def test_figure_of_a_large_alignment_is_drawn_from_a_sample():
    """61 views x 5,000 markers (274,500 points): more than the panels draw, still a full image."""
    result = make_result(n_views=61, n_markers=5000, seed=3)
    fv = expand_to_file_views(result, np.arange(61), result.observations.tilts_deg)
    record = build_record(result, fv, marker_ids=list(range(5000)), inputs={}, options={}, n_worst=10)
    assert fv.mask.sum() > MAX_TRACK_POINTS and fv.mask.sum() > MAX_ARROWS
    pixels = png_pixels(render_figure(result, fv, record, title="large"))
    assert pixels.shape == (950, 1500, 4)
    drawn = np.any(pixels[..., :3] < 0.9, axis=-1)  # not white
    assert 0.05 < drawn.mean() < 0.6  # panels drawn, not blank, not one blot


def test_record_and_figure_carry_standard_errors(report):
    from lmalign_jax import Uncertainty

    result, fv, _ = report
    n_views = result.views.shape[0]
    views_se = np.full((n_views, 5), 1e-3)
    views_se[3] = 0.0  # the gauge-fixed reference view's entries
    errors = Uncertainty(
        "jou",
        views_se,
        np.full((5, 3), 0.2),
        0.3,
        np.where(
            result.observations.mask[..., None], np.full(result.observations.mask.shape + (2,), 0.5), np.nan
        ),
        np.full((n_views, 5), 0.4),
    )
    record = build_record(result, fv, marker_ids=[11, 12, 13, 14, 15], inputs={}, options={}, errors=errors)
    fitted = [v for v in record["views"] if not v["excluded"]]
    assert all("standard_errors" in v for v in fitted)
    assert not any("standard_errors" in v for v in record["views"] if v["excluded"])
    assert fitted[0]["standard_errors"]["tilt"] == pytest.approx(np.degrees(1e-3))
    assert fitted[3]["standard_errors"]["scale"] == 0.0
    assert record["markers"][2]["standard_errors"] == {"x": 0.2, "y": 0.2, "z": 0.2}
    assert record["summary"]["leave_one_out_rms_px"] == pytest.approx(0.5)
    assert record["worst_points"][0]["leave_one_out_residual_px"] == pytest.approx(np.hypot(0.5, 0.5))
    png = render_figure(result, fv, record, errors=errors)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_record_reads_back_what_was_written(report, tmp_path):
    """read_record is the inverse of record_to_json for everything the commands use again."""
    _, fv, record = report
    path = tmp_path / "a.json"
    path.write_text(record_to_json({**record, "outputs": ["a.xf", "a.json"], "exit_code": 0}))
    back = read_record(str(path))
    assert (
        back.record_version == RECORD_VERSION == record["record_version"]
        and back.converged
        and back.exit_code == 0
    )
    np.testing.assert_array_equal(back.xf, fv.xf)  # JSON keeps doubles exactly
    np.testing.assert_array_equal(back.tilts_deg, fv.tilts_deg)
    assert (
        back.image_size == SIZE
        and back.markers_path == "m.csv"
        and back.tilts_path == "t.tlt"
        and back.stack_path is None
    )
    assert back.options["rotation_source"] == "estimated" and back.outputs == ["a.xf", "a.json"]
    assert back.rms_residual_px == record["summary"]["rms_residual_px"] and not back.has_standard_errors


def test_record_reading_refuses_what_it_cannot_trust(report, tmp_path):
    _, _, record = report
    path = tmp_path / "a.json"
    path.write_text(record_to_json({**record, "record_version": RECORD_VERSION + 1}))
    with pytest.raises(InputError, match=rf"a.json: record_version {RECORD_VERSION + 1} is newer"):
        read_record(str(path))
    failed = {
        **record,
        "summary": {**record["summary"], "converged": False, "status": "failed: max iterations"},
    }
    failed["views"] = [{**v, "xf": None} for v in record["views"]]
    path.write_text(record_to_json(failed))
    back = read_record(str(path))  # a failed alignment reads, without transforms
    assert not back.converged and back.xf is None and back.status == "failed: max iterations"
    broken = {**record, "views": [{**record["views"][0], "xf": [1, 0, 0]}]}
    path.write_text(record_to_json(broken))
    with pytest.raises(InputError, match="view 0 has no valid 'xf'"):
        read_record(str(path))
    path.write_text("{")
    with pytest.raises(InputError, match=r"a.json:1: not valid JSON"):
        read_record(str(path))
