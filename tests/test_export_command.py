"""``lmalign export`` (workflow.exporting, cli/export.py) and IMOD's extra files: every file
read back by its ecosystem's reader with the record's numbers, the align.log read by the
parsers RELION 5's IMOD importer uses, and bad input refused in one line with nothing written.

The alignment is a simulated series' truth written as a record (no solve), so every exported
number has an exact reference: the projection model's own positions."""

import json
from pathlib import Path

import alnfile
import jax.numpy as jnp
import numpy as np
import pytest
import starfile
from cryoet_alignment.io.cryoet_data_portal import Alignment

from lmalign_jax import AlignmentResult, get_model, simulate
from lmalign_jax.cli import main
from lmalign_jax.core.result import fit_image_transforms
from lmalign_jax.export import ViewGeometry, aretomo_parameters, relion_parameters
from lmalign_jax.export.imod import filled_marker_set, read_xtilt, read_zfac, write_xtilt
from lmalign_jax.export.imod_log import AlignLog, format_align_log
from lmalign_jax.io import InputError, MarkerSet, read_tilts, read_xf, write_markers_csv, write_resid
from lmalign_jax.io.imod_local import read_local_xf
from lmalign_jax.io.imod_model import read_imod_model, write_imod_model
from lmalign_jax.report import build_record, expand_to_file_views, read_record, record_to_json

IMAGE = (1024, 900)
PIXEL_A = 2.17
ROTATION = 85.0
LOGS = Path(__file__).resolve().parent / "data" / "imod-logs"


def model_project(result: AlignmentResult, xyz) -> np.ndarray:
    """(n_views, m, 2) positions by the result's projection model, centred pixels."""
    m = get_model(result.model)
    out = m.project(jnp.asarray(result.views.T[:, :, None]), jnp.asarray(np.asarray(xyz).T[:, None, :]))
    return np.asarray(out).transpose(1, 2, 0)


def solved_record(folder, model="jou", extra=None, seed=1, ids=tuple(range(3, 10))):
    """A simulated series (with gaps) solved exactly, as a result and as a record on disk
    (``TS_01.json`` beside its marker file ``TS_01.csv``, markers numbered ``ids``): the truth's
    views and markers, the xf fitted by the package's own code (core.result.fit_image_transforms)."""
    s = simulate(
        n_views=15,
        n_markers=7,
        image_size=IMAGE,
        rotation_deg=ROTATION,
        seed=seed,
        scale_jitter=0.0,
        missing_fraction=0.2,
        model=model,
        extra=extra,
    )
    obs = s.observations
    m = get_model(model)
    views = np.array(s.views)
    projection = jnp.asarray(views.T[:, :, None]), jnp.asarray(s.markers.T[:, None, :])
    predicted = np.asarray(m.project(*projection)).transpose(1, 2, 0).astype(np.float64)
    tilt = views[:, m.index("tilt")]
    x, y, z = s.markers.T
    aligned = np.stack(
        [x * np.cos(tilt)[:, None] + z * np.sin(tilt)[:, None], np.broadcast_to(y, predicted.shape[:2])], -1
    )
    result = AlignmentResult(
        model=model,
        observations=obs,
        views=views,
        markers=s.markers,
        residuals=np.where(obs.mask[..., None], predicted - obs.centered_xy, np.nan),
        stages=(),
        status="converged",
        n_free=len(m.parameters) * 15 + 3 * 7,
        rotation_estimated_deg=None,
        xf=fit_image_transforms(predicted, aligned),
    )
    # default ids not 1..m: contour ids must survive
    write_markers_csv(folder / "TS_01.csv", MarkerSet(obs.xy, obs.mask, ids))
    record = build_record(
        result,
        expand_to_file_views(result, np.arange(15), obs.tilts_deg),
        marker_ids=ids,
        inputs={
            "markers": str(folder / "TS_01.csv"),
            "tilts": "TS_01.rawtlt",
            "image_size": list(IMAGE),
            "pixel_size_A": None,
            "excluded_by_user": [],
        },
        options={"model": model, "rotation_deg": ROTATION},
    )
    (folder / "TS_01.json").write_text(record_to_json(record))
    return result, record, ids


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A jou alignment's record, and ``lmalign export --to all`` run on it."""
    folder = tmp_path_factory.mktemp("export")
    result, record, ids = solved_record(folder)
    out = folder / "out"
    argv = ["export", str(folder / "TS_01.json"), "--to", "all", "--pixel-size", str(PIXEL_A)]
    code = main([*argv, "--out-dir", str(out)])
    return {"result": result, "folder": folder, "out": out, "code": code, "ids": ids, "record": record}


def test_export_all_writes_every_file_and_they_read_back_with_the_records_numbers(written):
    out, result = written["out"], written["result"]
    assert written["code"] == 0
    names = {p.name for p in out.iterdir()}
    assert names == {
        "TS_01.xf", "TS_01.tlt", "TS_01.xtilt", "TS_01_nogaps.fid", "TS_01_erase.fid", "align.log",
        "TS_01.aln", "TS_01.star", "TS_01_portal.json",
    }  # fmt: skip
    assert not (out / "TS_01.tltxf").exists()  # equals the .xf: we align the raw images
    assert not (out / "TS_01.zfac").exists()  # jou has no stretch
    a, d = read_xf(out / "TS_01.xf")
    np.testing.assert_allclose(a, result.xf[:, :, :2], rtol=0, atol=5.1e-8)  # 4f12.7
    np.testing.assert_allclose(d, result.xf[:, :, 2], rtol=0, atol=5.1e-4)  # 2f12.3
    np.testing.assert_allclose(read_tilts(out / "TS_01.tlt"), result.tilts_deg, rtol=0, atol=5.1e-4)
    np.testing.assert_array_equal(read_xtilt(out / "TS_01.xtilt"), np.zeros(15))
    geometry = ViewGeometry.from_result(result)
    relion = relion_parameters(geometry, PIXEL_A)
    table = starfile.read(out / "TS_01.star", always_dict=True)["TS_01"]
    for name, values in relion.items():
        np.testing.assert_allclose(table[name].to_numpy(), values, rtol=0, atol=5.1e-7)
    aln = alnfile.read(out / "TS_01.aln")
    expected = aretomo_parameters(geometry)
    np.testing.assert_allclose(aln["rot"].to_numpy(), expected["ROT"], rtol=0, atol=5.1e-5)
    np.testing.assert_allclose(aln["tilt"].to_numpy(), expected["TILT"], rtol=0, atol=5.1e-3)
    portal = Alignment.from_file(str(out / "TS_01_portal.json"))
    sections = portal.per_section_alignment_parameters
    np.testing.assert_allclose([p.tilt_angle for p in sections], result.tilts_deg, rtol=0, atol=1e-12)
    np.testing.assert_allclose([p.x_offset for p in sections], expected["TX"], rtol=0, atol=1e-9)


def test_filled_model_keeps_measured_points_and_fills_gaps_with_the_model_projection(written):
    """Read back by imodmodel (via the package's reader): one contour per marker with its id,
    a point on every view; measured points as measured, the others where the projection model
    puts the solved marker (float32 model file: ~1e-4 px at 1000 px)."""
    result = written["result"]
    obs = result.observations
    assert not obs.mask.all()  # the series has gaps to fill
    filled = read_imod_model(written["out"] / "TS_01_nogaps.fid")
    assert filled.marker_ids == written["ids"] and filled.mask.all() and filled.image_size == IMAGE
    projected = model_project(result, result.markers) + obs.center
    expected = np.where(obs.mask[..., None], obs.xy, projected)
    np.testing.assert_allclose(filled.xy, expected, rtol=0, atol=2e-4)
    erase = read_imod_model(written["out"] / "TS_01_erase.fid")
    # the aligned stack: the xf applied to the model's projection, about the image centre
    aligned = (
        np.einsum("nij,nmj->nmi", result.xf[:, :, :2], projected - obs.center) + result.xf[:, None, :, 2]
    )
    np.testing.assert_allclose(erase.xy, aligned + obs.center, rtol=0, atol=2e-4)
    # and there a marker's y is the same in every view (MODEL.md): the test can fail
    assert np.ptp(erase.xy[:, :, 1], axis=0).max() < 1e-3


def _first_value(path, key):
    """yet_another_imod_wrapper.utils.etomo's rule: the number after the last '=' of the first
    line containing ``key`` (re-derived, as RELION 5's IMOD importer calls it)."""
    for line in Path(path).read_text().splitlines():
        if key in line:
            return float(line.strip().split("=")[-1])
    return None


def _importer_zrot(xf_path, rotation_angle):
    """RELION 5's IMOD importer: atan2(-A21, A11), negated when -RotationAngle is closer."""
    a, _ = read_xf(xf_path)
    theta = np.degrees(np.arctan2(-a[:, 1, 0], a[:, 0, 0]))
    if np.abs(-rotation_angle - theta).sum() < np.abs(rotation_angle - theta).sum():
        theta = -theta
    return theta


def test_align_log_is_read_as_tiltalign_s_by_relions_imod_importer(written):
    out, result = written["out"], written["result"]
    log = out / "align.log"
    assert _first_value(log, "RotationAngle =") == ROTATION
    assert _first_value(log, "AngleOffset =") == 0.0
    zrot = _importer_zrot(out / "TS_01.xf", _first_value(log, "RotationAngle ="))
    np.testing.assert_allclose(
        zrot, relion_parameters(ViewGeometry.from_result(result), 1.0)["rlnTomoZRot"], atol=1e-5
    )
    # the same parsers on a real tiltalign log (EMPIAR-10164 TS_01): they are not vacuous
    assert _first_value(LOGS / "220728_TS_01_align.log", "RotationAngle =") == 85.0
    assert _first_value(LOGS / "220728_TS_01_align.log", "AngleOffset =") == 9.02
    text = log.read_text()
    mean, sd = (float(t) for t in text.split("Residual error mean and sd:")[1].split()[:2])
    record = written["record"]["summary"]
    assert mean == pytest.approx(record["mean_residual_px"], abs=5e-4)
    assert sd == pytest.approx(record["sd_residual_px"], abs=5e-4)


def _view_rows(text):
    """The per-view table as tiltalign's fixed columns (i4, 2f10.1, f10.2, 2f10.4, 2f10.2)."""
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(" view   rotation    tilt"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cuts = [0, 4, 14, 24, 34, 44, 54, 64, 74]
        rows.append([float(line[i:j]) for i, j in zip(cuts[:-1], cuts[1:], strict=True)])
    return np.array(rows)


def test_view_table_has_tiltalign_s_columns(written):
    """Sliced at the columns of a real log, our table gives the record's views; the real
    log's table slices the same way (41 views minus 1 excluded)."""
    ours = _view_rows((written["out"] / "align.log").read_text())
    result = written["result"]
    np.testing.assert_array_equal(ours[:, 0], np.arange(1, 16))
    np.testing.assert_allclose(ours[:, 2], result.tilts_deg, atol=0.051)
    np.testing.assert_allclose(ours[:, 1], result.rotation_deg, atol=0.051)
    np.testing.assert_allclose(ours[:, 4], result.parameter("scale"), atol=5.1e-5)
    real = _view_rows((LOGS / "220728_TS_01_align.log").read_text())
    assert real.shape == (40, 8) and real[0, 0] == 2 and real[-1, 2] == 69.0


def test_surface_lines_go_after_the_residual_summary():
    log = AlignLog(
        entries=(("RotationAngle", "1.00"),),
        view_numbers=np.array([1, 2]),
        rotation_deg=np.zeros(2),
        tilt_deg=np.array([-30.0, 30.0]),
        delta_tilt_deg=np.zeros(2),
        magnification=np.ones(2),
        dmag=np.zeros(2),
        skew_deg=np.zeros(2),
        view_mean_residual_px=np.array([0.1, np.nan]),
        contour_numbers=np.array([4]),
        markers_xyz=np.array([[1.0, 2.0, 3.0]]),
        marker_mean_residual_px=np.array([0.2]),
        n_points=4,
        n_unknowns=3,
        residual_mean_px=0.25,
        residual_sd_px=0.05,
    )
    lines = format_align_log(
        log, surface_lines=[" SURFACE ANALYSIS:", " Total tilt angle change =  1.5"]
    ).splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith(" Residual error mean and sd:"))
    assert lines[k + 2 : k + 4] == [" SURFACE ANALYSIS:", " Total tilt angle change =  1.5"]
    assert " SURFACE" not in format_align_log(log)


def test_filled_model_fills_only_fitted_views():
    s = simulate(n_views=5, n_markers=3, image_size=IMAGE, seed=0)
    geometry = ViewGeometry(np.tile(np.eye(2, 3), (5, 1, 1)), s.observations.tilts_deg, None, IMAGE)
    fitted = np.array([True, True, False, True, True])
    filled = filled_marker_set(geometry, s.markers, (1, 2, 3), None, fitted)
    np.testing.assert_array_equal(filled.mask, np.broadcast_to(fitted[:, None], (5, 3)))


def test_xtilt_writer_widens_angles_its_f7_2_field_cannot_hold(tmp_path):
    values = np.array([0.0, -0.01, 12345.678, -1e6])
    write_xtilt(tmp_path / "a.xtilt", values)
    np.testing.assert_allclose(read_xtilt(tmp_path / "a.xtilt"), values, rtol=0, atol=5.1e-3)
    assert (tmp_path / "a.xtilt").read_text().splitlines()[:2] == ["   0.00", "  -0.01"]


# ------------------------------------------------------------------ bad input


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "case, problem",
    [
        ("missing", "file not found"),
        ("corrupt", "not valid JSON"),
        ("unknown", "unknown target 'imod2'"),
        ("no-pixel", "RELION needs the pixel size"),
        ("bad-markers", "nope.csv"),
        (
            "spaced-prefix",
            "RELION names the tilt series by the output prefix, 'TS 01', which is not one word",
        ),
        ("star-without-relion", "--relion-tilt-series is the STAR file the RELION export fills"),
        ("huge-tilt", "view 3: tilt angle 1e+300 degrees is outside -90..90"),
        ("not-a-record", "not an lmalign alignment record (no 'views' list)"),
    ],
)
def test_bad_input_gets_one_line_exit_2_and_nothing_written(written, tmp_path, capsys, case, problem):
    folder = written["folder"]
    good = str(folder / "TS_01.json")
    out = tmp_path / "out"
    argv = {
        "missing": ["export", str(tmp_path / "none.json"), "--to", "imod"],
        "corrupt": ["export", str(tmp_path / "bad.json"), "--to", "imod"],
        "unknown": ["export", good, "--to", "imod2"],
        "no-pixel": ["export", good, "--to", "imod,relion"],
        "bad-markers": ["export", good, "--to", "imod", "--markers", str(tmp_path / "nope.csv")],
        "spaced-prefix": ["export", good, "--to", "relion", "--pixel-size", "2", "--prefix", "TS 01"],
        "star-without-relion": ["export", good, "--to", "portal", "--relion-tilt-series", "none.star"],
        "huge-tilt": ["export", str(tmp_path / "huge.json"), "--to", "imod,aretomo"],
        "not-a-record": ["export", str(tmp_path / "empty.json"), "--to", "imod"],
    }[case]
    (tmp_path / "bad.json").write_text('{"views": [1, 2')
    (tmp_path / "empty.json").write_text("{}")
    record = json.loads((folder / "TS_01.json").read_text())
    record["views"][3]["tilt_deg"] = 1e300
    (tmp_path / "huge.json").write_text(json.dumps(record))
    code, err = _run(capsys, [*argv, "--out-dir", str(out)])
    assert code == 2 and len(err) == 1 and err[0].startswith("lmalign: error:") and problem in err[0], err
    assert "--xf" not in err[0]  # export has no such option (reconstruct's hint)
    assert not out.exists() or not list(out.iterdir())


def test_export_refuses_another_series_align_log(written, tmp_path, capsys):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "align.log").write_text("  OutputTiltFile = TS_99.tlt\n")
    code, err = _run(
        capsys, ["export", str(written["folder"] / "TS_01.json"), "--to", "imod", "--out-dir", str(out)]
    )
    assert code == 2 and "another tilt series" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["align.log"]


def test_record_reader_gives_the_export_what_it_needs(written):
    record = read_record(str(written["folder"] / "TS_01.json"))
    assert record.markers is not None and record.views is not None and record.pixel_size_A is None
    np.testing.assert_array_equal(record.markers.ids, written["ids"])
    np.testing.assert_allclose(record.markers.xyz, written["result"].markers, rtol=0, atol=0)
    with pytest.raises(InputError):
        read_record(str(written["folder"] / "missing.json"))
    json.dumps(written["record"]["summary"])


def test_relion_import_star_gets_the_alignment_columns(written, tmp_path):
    """--relion-tilt-series: RELION's imported STAR (acquisition order, its own columns) comes
    back with the five alignment columns of our views, matched by nominal tilt."""
    import pandas as pd

    result = written["result"]
    nominal = np.round(result.observations.tilts_deg, 2)
    order = np.random.default_rng(2).permutation(15)
    imported = pd.DataFrame(
        {
            "rlnMicrographMovieName": [f"frames/TS_01_{k:03d}.tif" for k in order],
            "rlnTomoNominalStageTiltAngle": nominal[order],
            "rlnMicrographPreExposure": 3.0 * np.arange(15),
        }
    )
    starfile.write({"TS_01": imported}, tmp_path / "TS_01.star")
    out = tmp_path / "out"
    argv = ["export", str(written["folder"] / "TS_01.json"), "--to", "relion", "--pixel-size", str(PIXEL_A)]
    assert main([*argv, "--relion-tilt-series", str(tmp_path / "TS_01.star"), "--out-dir", str(out)]) == 0
    table = starfile.read(out / "TS_01.star", always_dict=True)["TS_01"]
    assert list(table["rlnMicrographMovieName"]) == list(imported["rlnMicrographMovieName"])
    expected = relion_parameters(ViewGeometry.from_result(result), PIXEL_A)
    for name, values in expected.items():
        np.testing.assert_allclose(table[name].to_numpy(), values[order], rtol=0, atol=5.1e-7)


def test_relion_star_with_a_tilt_that_is_not_a_number_names_the_star_file(written, tmp_path, capsys):
    import pandas as pd

    nominal = np.round(written["result"].observations.tilts_deg, 2).astype(object)
    nominal[3] = "abc"
    starfile.write({"TS_01": pd.DataFrame({"rlnTomoNominalStageTiltAngle": nominal})}, tmp_path / "in.star")
    argv = ["export", str(written["folder"] / "TS_01.json"), "--to", "relion", "--pixel-size", "2"]
    out = tmp_path / "out"
    code, err = _run(
        capsys, [*argv, "--relion-tilt-series", str(tmp_path / "in.star"), "--out-dir", str(out)]
    )
    assert code == 2 and len(err) == 1, err
    assert (
        f"{tmp_path / 'in.star'}: tilt image 4: rlnTomoNominalStageTiltAngle is not a number: 'abc'" in err[0]
    )
    assert not out.exists() or not list(out.iterdir())


def test_relion_star_cut_short_is_refused_naming_the_row(written, tmp_path, capsys):
    """A STAR whose last row was cut mid-line (a truncated copy) reads with an empty cell: refused,
    naming the row and column (audit: the rows before it were exported, the rest of the series
    silently absent)."""
    import pandas as pd

    nominal = np.round(written["result"].observations.tilts_deg, 2)
    table = pd.DataFrame(
        {
            "rlnTomoNominalStageTiltAngle": nominal,
            "rlnMicrographName": [f"MotionCorr/job002/TS_01_{k:03d}.mrc" for k in range(15)],
        }
    )
    starfile.write({"TS_01": table}, tmp_path / "whole.star")
    text = (tmp_path / "whole.star").read_text()
    cut = text.index("TS_01_005.mrc")  # row 6 ends after its tilt angle
    (tmp_path / "cut.star").write_text(text[:cut].rstrip().rsplit(None, 1)[0] + " ")
    argv = ["export", str(written["folder"] / "TS_01.json"), "--to", "relion", "--pixel-size", "2"]
    out = tmp_path / "out"
    code, err = _run(
        capsys, [*argv, "--relion-tilt-series", str(tmp_path / "cut.star"), "--out-dir", str(out)]
    )
    assert code == 2 and len(err) == 1, err
    assert f"{tmp_path / 'cut.star'}: tilt image 6: no value for rlnMicrographName" in err[0], err
    assert not out.exists() or not list(out.iterdir())


def test_a_warp_records_export_warns_that_the_files_hold_its_rigid_part(tmp_path, capsys):
    warp = {f"warp_{c}": (0.0, 2.0) for c in ("u_uu", "u_uv", "u_vv", "v_uu", "v_uv", "v_vv")}
    solved_record(tmp_path, model="warp", extra=warp)
    code = main(["export", str(tmp_path / "TS_01.json"), "--to", "aretomo", "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "o" / "TS_01.aln").exists()
    assert "is a warp model's alignment (warp coefficients up to" in err and "rigid part only" in err
    (tmp_path / "jou").mkdir()
    solved_record(tmp_path / "jou")
    assert main(["export", str(tmp_path / "jou" / "TS_01.json"), "--to", "aretomo"]) == 0
    assert "warp" not in capsys.readouterr().err


def test_zfac_is_the_least_squares_height_correction_for_the_written_xf(tmp_path):
    """Luther's model scales z differently from x before the tilt, which no 2-D .xf can undo:
    the written .xf maps the solved markers to tilt's frame only up to a height-dependent error.
    The .zfac is tilt's correction z (xzfac, yzfac) fitted to that error by least squares
    (the error left is orthogonal to z in every view), and it lowers the RMS error."""
    result, _, _ = solved_record(tmp_path, "luther", extra={"mag_z": (1.0, 0.02)}, seed=4)
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "TS_01.json"), "--to", "imod", "--out-dir", str(out)]) == 0
    zfac = read_zfac(out / "TS_01.zfac")
    assert zfac.shape == (15, 2)
    xyz = result.markers
    projected = model_project(result, xyz)
    aligned = np.einsum("nij,nmj->nmi", result.xf[:, :, :2], projected) + result.xf[:, None, :, 2]
    t = np.radians(result.tilts_deg)[:, None]
    x, y, z = xyz[None, :, 0], xyz[None, :, 1], xyz[None, :, 2]
    plain = np.stack([x * np.cos(t) + z * np.sin(t), np.broadcast_to(y, t.shape[:1] + y.shape[1:])], -1)
    left = aligned - (plain + z[..., None] * zfac[:, None, :])
    # orthogonal to z (to the file's 7 decimals and float32 projections)
    assert np.abs(np.einsum("m,nmi->ni", xyz[:, 2], left)).max() < 1e-3 * np.sum(xyz[:, 2] ** 2) * 1e-3
    before, after = np.sqrt(np.mean((aligned - plain) ** 2)), np.sqrt(np.mean(left**2))
    assert before > 0.5 and after < 0.75 * before


def _result_from_truth(model: str, extra=None, seed: int = 4):
    """A result whose views and markers are a simulated series' truth, with the transforms
    computed as align() computes them (core.result.result_from_solution)."""
    from lmalign_jax.core import AlignmentSettings
    from lmalign_jax.core.result import result_from_solution

    s = simulate(n_views=41, n_markers=30, image_size=(2048, 2048), model=model, extra=extra, seed=seed)
    m = get_model(model)
    views = np.asarray(s.views)
    predicted = np.asarray(m.project(jnp.asarray(views.T[:, :, None]), jnp.asarray(s.markers.T[:, None, :])))
    predicted = predicted.transpose(1, 2, 0).astype(np.float64)
    result = result_from_solution(
        m, s.observations, views, s.markers, predicted, stages=(), status="converged", n_free=0,
        rotation_estimated_deg=None, settings=AlignmentSettings(),
    )  # fmt: skip
    t = views[:, m.index("tilt")][:, None]
    x, y, z = (s.markers[None, :, k] for k in range(3))
    plain = np.stack([x * np.cos(t) + z * np.sin(t), np.broadcast_to(y, predicted.shape[:2])], -1)
    return result, predicted, plain


def test_xf_and_zfac_are_computed_together_as_tiltalign_does(tmp_path):
    """Luther's z scaled apart from x: the .xf from the projection's x, y columns and the .zfac
    from its z column put every marker exactly where tilt's (x cos t + z sin t + xz z, y + yz z)
    does (the least-squares .xf with its least-squares .zfac left 0.13 px RMS); jou's .xf is the
    least-squares one and needs no z factors; a projection that is not affine keeps the
    least-squares .xf."""
    from lmalign_jax.core.result import fit_image_transforms, image_transforms
    from lmalign_jax.workflow.exporting import z_factors

    result, predicted, plain = _result_from_truth("luther", {"mag_z": (1.0, 0.02)})
    record = build_record(
        result,
        expand_to_file_views(result, np.arange(41), result.observations.tilts_deg),
        marker_ids=tuple(range(1, 31)),
        inputs={"image_size": [2048, 2048]},
        options={"model": "luther"},
    )
    (tmp_path / "l.json").write_text(record_to_json(record))
    zfac = z_factors(read_record(str(tmp_path / "l.json")))
    z = result.markers[None, :, 2, None]
    aligned = np.einsum("vij,vmj->vmi", result.xf[:, :, :2], predicted) + result.xf[:, None, :, 2]
    assert np.abs(zfac).max() > 0.01
    np.testing.assert_allclose(aligned, plain + z * zfac[:, None, :], rtol=0, atol=1e-6)
    least = fit_image_transforms(predicted, plain)
    left = np.einsum("vij,vmj->vmi", least[:, :, :2], predicted) + least[:, None, :, 2] - plain
    z_fit = np.einsum("m,vmi->vi", z[0, :, 0], left) / np.sum(z**2)
    assert np.sqrt(np.mean((left - z * z_fit[:, None, :]) ** 2)) > 0.05  # what the exact pair removes

    jou, predicted, plain = _result_from_truth("jou")
    np.testing.assert_allclose(jou.xf, fit_image_transforms(predicted, plain), rtol=0, atol=1e-9)
    warped = predicted + 1e-6 * predicted[..., ::-1] ** 2  # ~4 px at the corners: not affine
    np.testing.assert_array_equal(
        image_transforms(warped, plain, jou.markers, np.radians(jou.tilts_deg)),
        fit_image_transforms(warped, plain),
    )


def test_a_shift_far_outside_the_image_is_refused_naming_the_view(written, tmp_path, capsys):
    """A hand-edited shift of 1e9 px (more than 10 image sizes) is refused in one line naming the
    record and the view, nothing written; one within reach (its columns: test_export) is exported."""
    record = json.loads((written["folder"] / "TS_01.json").read_text())
    record["views"][3]["xf"][4] = 1e9
    (tmp_path / "far.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    code, err = _run(
        capsys, ["export", str(tmp_path / "far.json"), "--to", "imod,aretomo", "--out-dir", str(out)]
    )
    assert code == 2 and len(err) == 1 and "far.json: views[3].xf shift (1e+09" in err[0], err
    assert "more than 10 image sizes (10240 px)" in err[0] and not out.exists()
    record["views"][3]["xf"][4] = 9000.0
    (tmp_path / "far.json").write_text(json.dumps(record))
    code, err = _run(
        capsys, ["export", str(tmp_path / "far.json"), "--to", "imod,aretomo", "--out-dir", str(out)]
    )
    assert code == 0, err
    a, d = read_xf(out / "far.xf")
    assert d[3, 0] == 9000.0
    far = read_record(str(tmp_path / "far.json"))
    expected = aretomo_parameters(ViewGeometry(far.xf, far.tilts_deg, None, IMAGE))
    np.testing.assert_allclose(alnfile.read(out / "far.aln")["tx"], expected["TX"], rtol=1e-9, atol=1e-3)


def test_export_writes_a_given_local_alignment_as_aln_local_rows(written, tmp_path, capsys):
    """--local FILE becomes the .aln's local rows, which alnfile reads back with the numbers of
    export.aretomo_local_rows (2 decimals); a ``<stem>local.xf`` beside a record that names no
    local alignment (another run's, solved against another global alignment: audit) is not used,
    with a warning naming it, by ``export`` nor ``align --export``; a local file for other views
    is refused in one line."""
    from argparse import Namespace

    from lmalign_jax.cli.export import export_after_align
    from lmalign_jax.export.aretomo import aretomo_local_rows
    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf

    (tmp_path / "TS_01.json").write_bytes((written["folder"] / "TS_01.json").read_bytes())
    rng = np.random.default_rng(3)
    xf = np.concatenate(
        [np.eye(2) + 1e-3 * rng.standard_normal((4, 15, 2, 2)), rng.normal(0, 2.0, (4, 15, 2, 1))], -1
    )
    local = LocalAlignment((2, 2), (300, 250), (400, 400), 0.0, rng.normal(0, 0.5, (4, 15)), xf)
    write_local_xf(tmp_path / "patches.xf", local)
    argv = ["export", str(tmp_path / "TS_01.json"), "--to", "aretomo", "--out-dir", str(tmp_path / "b")]
    code, err = _run(capsys, [*argv, "--local", str(tmp_path / "patches.xf")])
    assert code == 0, err
    record = read_record(str(tmp_path / "TS_01.json"))
    geometry = ViewGeometry(record.xf, record.tilts_deg, None, IMAGE)
    centres, shifts = aretomo_local_rows(geometry, read_local_xf(tmp_path / "patches.xf", 15))
    theirs = alnfile.read(tmp_path / "b" / "TS_01.aln", alignment_type="local")
    assert len(theirs) == 15 * 4
    np.testing.assert_allclose(theirs["center_x"], centres[..., 0].ravel(), rtol=0, atol=5.1e-3)
    np.testing.assert_allclose(theirs["shift_y"], shifts[..., 1].ravel(), rtol=0, atol=5.1e-3)
    assert np.abs(shifts).max() > 1  # a real correction was carried

    # another run's file beside a record without a local section: not used, and said so
    (tmp_path / "patches.xf").rename(tmp_path / "TS_01local.xf")
    code, err = _run(capsys, argv)
    assert code == 0 and not (tmp_path / "b" / "TS_01.aln").read_text().count("# Local Alignment")
    assert any(f"{tmp_path / 'TS_01local.xf'} is not used" in e and "--local FILE" in e for e in err), err
    args = Namespace(export="aretomo", out_dir=str(tmp_path), pixel_size=None)
    (tmp_path / "TS_01.csv").write_bytes((written["folder"] / "TS_01.csv").read_bytes())
    assert export_after_align(args, 0, str(tmp_path / "TS_01.csv"), "TS_01") == 0
    assert not (tmp_path / "TS_01.aln").read_text().count("# Local Alignment")

    code, err = _run(
        capsys, [*argv[:3], "relion", "--pixel-size", "2", "--local", str(tmp_path / "TS_01local.xf")]
    )
    assert code == 2 and err[-1].endswith("it needs --to aretomo or imod (or all)")
    other = LocalAlignment((2, 2), (300, 250), (400, 400), 0.0, np.zeros((4, 9)), np.zeros((4, 9, 2, 3)))
    write_local_xf(tmp_path / "other.xf", other)
    code, err = _run(capsys, [*argv, "--local", str(tmp_path / "other.xf")])
    assert code == 2 and len(err) == 1 and "other.xf" in err[0] and "9 views" in err[0], err


def test_export_checks_and_scales_a_local_file_as_reconstruct_does(written, tmp_path, capsys):
    """A local file is read as ``reconstruct --local`` reads it (audit: export took any values):
    one made for 1 A pixels exported at --pixel-size 2 has its grid and shifts halved, with a
    warning, in the .aln's rows and in the ``Plocal.xf`` written (which then says 2 A); one
    with a local tilt beyond 90 degrees is refused in one line, nothing written."""
    from lmalign_jax.export.aretomo import aretomo_local_rows
    from lmalign_jax.io.imod_local import LocalAlignment, scaled_to_stack, write_local_xf

    rng = np.random.default_rng(4)
    xf = np.concatenate(
        [np.eye(2) + 1e-3 * rng.standard_normal((4, 15, 2, 2)), rng.normal(0, 2.0, (4, 15, 2, 1))], -1
    )
    # made for 1 A pixels: patch centres 600 .. 1400 px there, 300 .. 700 at 2 A
    local = LocalAlignment((2, 2), (600, 500), (800, 800), 1.0, rng.normal(0, 0.5, (4, 15)), xf)
    write_local_xf(tmp_path / "fine.xf", local)
    record = str(written["folder"] / "TS_01.json")
    out = tmp_path / "out"
    argv = ["export", record, "--to", "imod,aretomo", "--pixel-size", "2", "--out-dir", str(out)]
    code, err = _run(capsys, [*argv, "--local", str(tmp_path / "fine.xf")])
    assert code == 0, err
    assert any("made for 1 A pixels, the record's are 2 A" in e and "scaled by 0.5" in e for e in err), err
    scaled = scaled_to_stack(read_local_xf(tmp_path / "fine.xf", 15), 2.0)
    copied = read_local_xf(out / "TS_01local.xf", 15)
    assert copied.pixel_size == 2.0 and copied.start == (300.0, 250.0) and copied.spacing == (400.0, 400.0)
    np.testing.assert_allclose(copied.transforms[..., 2], xf[..., 2] / 2, rtol=0, atol=5.1e-3)
    rec = read_record(record)
    _, shifts = aretomo_local_rows(ViewGeometry(rec.xf, rec.tilts_deg, None, IMAGE), scaled)
    theirs = alnfile.read(out / "TS_01.aln", alignment_type="local")
    np.testing.assert_allclose(theirs["shift_x"], shifts[..., 0].ravel(), rtol=0, atol=5.1e-3)

    bad = LocalAlignment(
        (2, 2),
        (300, 250),
        (400, 400),
        0.0,
        np.where(np.arange(15) == 4, 1e308, 0.0)[None] + np.zeros((4, 1)),
        xf,
    )
    write_local_xf(tmp_path / "bad.xf", bad)
    out2 = tmp_path / "out2"
    code, err = _run(capsys, [*argv[:-1], str(out2), "--local", str(tmp_path / "bad.xf")])
    assert code == 2 and len(err) == 1 and "bad.xf: local tilt of patch 0 (x 0, y 0), view 5" in err[0], err
    assert "outside -90..90" in err[0] and not out2.exists()


def test_rigid_targets_say_what_they_lose(written, tmp_path, capsys):
    """RELION, AreTomo and the Portal hold a rotation, tilt and shift per view (audit: a jou
    record's magnification was dropped without a word): a view whose .xf is a pure rotation
    loses nothing and nothing is said; magnified by 1% it loses 1% of the half-diagonal at the
    image corners, which the warning names with the view; the IMOD files are not lossy."""
    from lmalign_jax.workflow.export_warnings import geometry_drops

    record = json.loads((written["folder"] / "TS_01.json").read_text())
    for v in record["views"]:  # every view a pure rotation: nothing lost
        a = np.reshape(v["xf"][:4], (2, 2))
        u, _, vt = np.linalg.svd(a)
        v["xf"][:4] = list((u @ vt).ravel())
    (tmp_path / "rigid.json").write_text(json.dumps(record))
    argv = ["export", str(tmp_path / "rigid.json"), "--to", "relion,aretomo", "--pixel-size", "2"]
    code, err = _run(capsys, [*argv, "--out-dir", str(tmp_path / "a")])
    assert code == 0 and not [e for e in err if "hold each view's rotation" in e], err
    record["views"][6]["xf"][:4] = list(1.01 * np.reshape(record["views"][6]["xf"][:4], 4))
    (tmp_path / "rigid.json").write_text(json.dumps(record))
    code, err = _run(capsys, [*argv, "--out-dir", str(tmp_path / "b")])
    corner = 0.01 / 1.01 * np.hypot(*IMAGE) / 2  # the inverse maps the corner 1/1.01 as far
    said = [e for e in err if "aretomo, relion hold each view's rotation, tilt and shift only" in e]
    assert code == 0 and len(said) == 1, err
    assert f"magnification (up to {corner:.2f} px at the image corners, view 7" in said[0], said
    assert geometry_drops(read_record(str(tmp_path / "rigid.json")), ("imod",), "TS_01") is None


def test_align_export_adds_the_targets_beside_what_align_wrote(written, tmp_path):
    """``align --export`` after a converged alignment (exit 0): the targets, without writing
    .xf/.tlt again; a failed alignment (exit 1) exports nothing and keeps its status."""
    from argparse import Namespace

    from lmalign_jax.cli.export import export_after_align

    for name in ("TS_01.json", "TS_01.csv"):
        (tmp_path / name).write_bytes((written["folder"] / name).read_bytes())
    args = Namespace(
        export="aretomo,imod",
        prefix=None,
        markers=str(tmp_path / "TS_01.csv"),
        out_dir=str(tmp_path),
        pixel_size=None,
    )
    assert export_after_align(args, 1, args.markers, None) == 1 and sorted(
        p.name for p in tmp_path.iterdir()
    ) == [
        "TS_01.csv",
        "TS_01.json",
    ]
    assert export_after_align(args, 0, args.markers, None) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"TS_01.aln", "TS_01.xtilt", "TS_01_nogaps.fid", "align.log"} <= names
    assert "TS_01.xf" not in names  # align wrote it; export does not again


def _other_markers(written, tmp_path, case) -> Path:
    """A marker file that is not the record's, one way or another."""
    obs = written["result"].observations
    ids = written["ids"]
    path = tmp_path / ("other.fid" if case == "image-size" else "other.csv")
    if case == "other-series":  # another simulated series' points, where the record has points
        other = simulate(n_views=15, n_markers=7, image_size=IMAGE, rotation_deg=ROTATION, seed=9)
        xy = np.where(obs.mask[..., None], other.observations.xy, np.nan)
        write_markers_csv(path, MarkerSet(xy, obs.mask, ids))
    elif case == "more-views":
        xy = np.concatenate([obs.xy, obs.xy[:3]])
        write_markers_csv(path, MarkerSet(xy, np.concatenate([obs.mask, obs.mask[:3]]), ids))
    elif case == "missing-marker":
        write_markers_csv(path, MarkerSet(obs.xy[:, 1:], obs.mask[:, 1:], ids[1:]))
    elif case == "fewer-points":
        mask = obs.mask.copy()
        mask[np.flatnonzero(mask[:, 0])[:2], 0] = False
        write_markers_csv(path, MarkerSet(np.where(mask[..., None], obs.xy, np.nan), mask, ids))
    elif case == "shifted":  # the same points 20 px off: the same views, markers and counts
        write_markers_csv(path, MarkerSet(obs.xy + [20.0, 0.0], obs.mask, ids))
    elif case == "image-size":
        write_imod_model(path, MarkerSet(obs.xy, obs.mask, ids, image_size=(2048, 2048)))
    return path


@pytest.mark.parametrize(
    "case, problem",
    [
        ("other-series", "points lie a median"),
        ("more-views", "it has points on view 18 (counting from 1) but the record has 15 views"),
        ("missing-marker", "it lacks 1 of the record's 7 markers (ids 3)"),
        ("fewer-points", "points of the record's 7 markers on the 15 fitted views, the fit had"),
        ("shifted", "points lie a median "),
        ("image-size", "it is for a 2048 x 2048 image, the record for 1024 x 900"),
    ],
)
def test_markers_of_another_series_are_refused(written, tmp_path, capsys, case, problem):
    """--markers must be the points the record was fitted to: exit 2, one line naming the option,
    the file and the record, nothing written."""
    path = _other_markers(written, tmp_path, case)
    record = written["folder"] / "TS_01.json"
    out = tmp_path / "out"
    argv = ["export", str(record), "--to", "all", "--pixel-size", "2", "--markers", str(path)]
    code, err = _run(capsys, [*argv, "--out-dir", str(out)])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"lmalign: error: --markers {path} does not match the alignment {record}: ")
    assert problem in err[0], err[0]
    assert not out.exists()
    if case == "shifted":  # 20 px, give or take the noise
        median = float(err[0].split("median ")[1].split(" px")[0])
        assert 19 < median < 21 and "from where the record's solution puts them" in err[0]


@pytest.mark.parametrize("kind", ["csv", "fid", "resid"])
def test_the_records_own_points_are_accepted_as_csv_fid_and_resid(tmp_path, capsys, kind):
    """The points the record was fitted to, in each format a record is made from (a .resid numbers
    its markers 1..m), are kept as measured in the filled model."""
    result, _, ids = solved_record(tmp_path, ids=tuple(range(1, 8)))
    obs = result.observations
    path = tmp_path / f"TS_01_in.{kind}"
    if kind == "csv":
        write_markers_csv(path, MarkerSet(obs.xy, obs.mask, ids))
    elif kind == "fid":
        write_imod_model(path, MarkerSet(obs.xy, obs.mask, ids, image_size=IMAGE))
    else:
        view, marker = np.nonzero(obs.mask.T)[::-1]  # grouped by marker, views increasing
        write_resid(path, obs.xy[view, marker], view, np.zeros((view.size, 2)))
    out = tmp_path / "out"
    argv = ["export", str(tmp_path / "TS_01.json"), "--to", "imod", "--markers", str(path)]
    code, err = _run(capsys, [*argv, "--out-dir", str(out)])
    assert code == 0, err
    filled = read_imod_model(out / "TS_01_nogaps.fid")
    atol = 5.1e-3 if kind == "resid" else 2e-4  # the .resid's 2 decimals
    np.testing.assert_allclose(filled.xy[obs.mask], obs.xy[obs.mask], rtol=0, atol=atol)


def test_a_changed_marker_file_named_by_the_record_is_refused(tmp_path, capsys):
    """Without --markers the record's own marker file is read: edited since (here shifted by
    20 px), it no longer matches and the message names it and suggests --markers."""
    result, _, ids = solved_record(tmp_path)
    obs = result.observations
    write_markers_csv(tmp_path / "TS_01.csv", MarkerSet(obs.xy + [0.0, 20.0], obs.mask, ids))
    out = tmp_path / "out"
    code, err = _run(capsys, ["export", str(tmp_path / "TS_01.json"), "--to", "imod", "--out-dir", str(out)])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"lmalign: error: marker file {tmp_path / 'TS_01.csv'} (named by the record) ")
    assert "points lie a median" in err[0] and "give --markers" in err[0] and not out.exists()


def test_a_shape_records_export_says_the_files_hold_its_rigid_part(tmp_path, capsys):
    """align's warning said 'lmalign reconstruct --alignment' applies a shape model's deformation
    while the exports dropped it without a word (audit). The export now says so, as for warp; the
    record carries the shape to the reconstruction (tests/test_shape_reconstruction.py)."""
    from lmalign_jax.workflow.alignment_inputs import read_alignment_json

    shape = {name: (0.0, 2.0) for name in ("shrink", "dome_xx", "dome_xy", "dome_yy")}
    solved_record(tmp_path, model="shape", extra=shape)
    code = main(["export", str(tmp_path / "TS_01.json"), "--to", "aretomo", "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0 and "is a shape model's alignment (shape coefficients up to" in err
    assert "rigid part only; 'lmalign reconstruct --alignment' applies the shape" in err
    shape_views = read_alignment_json(str(tmp_path / "TS_01.json")).shape
    assert shape_views is not None and shape_views.fitted.all() and "dome_xx" in shape_views.parameters
    (tmp_path / "jou").mkdir()
    solved_record(tmp_path / "jou")
    assert read_alignment_json(str(tmp_path / "jou" / "TS_01.json")).shape is None


def test_a_flattened_records_erase_and_filled_models_follow_its_markers(tmp_path):
    """``export --to imod`` of an ``align --flatten`` record projected the solved markers through
    the flattened tilts, unturned: the erase model and the filled gaps were 26 px off (review). They
    now come from the record's own projection: in the aligned stack every marker is where tilt's
    formula puts it, turned by the tilt change, at the flattened tilts (an exact symmetry for jou)."""
    from helpers import align_observations, run_cli

    from lmalign_jax import simulate
    from lmalign_jax.io.imod_model import read_imod_model
    from lmalign_jax.report import read_record

    series = simulate(n_views=31, n_markers=25, seed=2, missing_fraction=0.2)
    path = align_observations(series.observations, tmp_path, "--flatten")
    rc, _, err = run_cli(["export", path, "--to", "imod", "--out-dir", tmp_path / "x"])
    assert rc == 0, err
    record = read_record(str(path))
    c = np.radians(record.surfaces["tilt_angle_change_deg"])
    assert abs(c) > 1e-3
    x, y, z = record.markers.xyz.T
    xt, zt = x * np.cos(c) - z * np.sin(c), x * np.sin(c) + z * np.cos(c)
    t = np.radians(record.tilts_deg)[:, None]
    ideal = (
        np.stack([xt * np.cos(t) + zt * np.sin(t), np.broadcast_to(y, t.shape[:1] + y.shape)], -1) + 1024.0
    )
    erase = read_imod_model(tmp_path / "x" / "s_erase.fid")
    np.testing.assert_allclose(erase.xy[erase.mask], ideal[erase.mask], rtol=0, atol=2e-3)
    # the filled gaps, mapped by the .xf, land there too
    filled = read_imod_model(tmp_path / "x" / "s_nogaps.fid")
    gaps = filled.mask & ~series.observations.mask
    assert gaps.any()
    xf = record.xf
    mapped = np.einsum("vij,vmj->vmi", xf[:, :, :2], filled.xy - 1024.0) + xf[:, None, :, 2] + 1024.0
    np.testing.assert_allclose(mapped[gaps], ideal[gaps], rtol=0, atol=2e-3)
