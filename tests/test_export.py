"""Exports (lmalign_jax.export): conventions checked by projecting known 3-D points, and every
writer read back by its ecosystem's reader (starfile, alnfile, cryoet-alignment)."""

import ast
import json
from pathlib import Path

import alnfile
import jax.numpy as jnp
import numpy as np
import pytest
import starfile
from cryoet_alignment.io.cryoet_data_portal import Alignment
from cryoet_alignment.io.imod import ImodAlignment

from lmalign_jax import AlignmentResult, get_model, simulate
from lmalign_jax.core.local_apply import project_through_local
from lmalign_jax.core.result import fit_image_transforms
from lmalign_jax.export import (
    ViewGeometry,
    aretomo_parameters,
    aretomo_project,
    decompose_xf,
    our_project,
    portal_alignment,
    read_aln,
    read_xtilt,
    relion_parameters,
    relion_project,
    unrepresented_px,
    write_aln,
    write_portal_json,
    write_relion_tilt_series,
    write_relion_tomograms,
    write_xtilt,
)
from lmalign_jax.export.aretomo import aretomo_local_rows
from lmalign_jax.io import InputError, read_tilts, read_xf, write_tlt, write_xf
from lmalign_jax.io.imod_local import LocalAlignment

SAMPLES = Path(__file__).resolve().parent / "data" / "format-samples"
PIXEL_A = 2.17
IMAGE = (1024, 900)


def solved_from_truth(rotation_deg: float, unit_scale: bool = True, seed: int = 0) -> AlignmentResult:
    """An AlignmentResult whose parameters are a simulated series' truth: views and markers from
    the simulation, xf fitted by the package's own code (core.result.fit_image_transforms)."""
    s = simulate(
        n_views=15,
        n_markers=7,
        image_size=IMAGE,
        rotation_deg=rotation_deg,
        seed=seed,
        scale_jitter=0.0 if unit_scale else 0.01,
    )
    m = get_model("jou")
    views = np.array(s.views)
    predicted = np.asarray(m.project(jnp.asarray(views.T[:, :, None]), jnp.asarray(s.markers.T[:, None, :])))
    predicted = predicted.transpose(1, 2, 0)
    tilt = views[:, m.index("tilt")]
    x, y, z = s.markers.T
    aligned = np.stack(
        [x * np.cos(tilt)[:, None] + z * np.sin(tilt)[:, None], np.broadcast_to(y, predicted.shape[:2])], -1
    )
    obs = s.observations
    residuals = np.where(obs.mask[..., None], predicted - obs.centered_xy, np.nan)
    return AlignmentResult(
        model="jou",
        observations=obs,
        views=views,
        markers=s.markers,
        residuals=residuals,
        stages=(),
        status="converged",
        n_free=0,
        rotation_estimated_deg=None,
        xf=fit_image_transforms(predicted, aligned),
    )


def model_project(result: AlignmentResult, xyz) -> np.ndarray:
    """(n_views, m, 2) positions of ``xyz`` by the result's projection model, centred pixels."""
    m = get_model(result.model)
    out = m.project(jnp.asarray(result.views.T[:, :, None]), jnp.asarray(np.asarray(xyz).T[:, None, :]))
    return np.asarray(out).transpose(1, 2, 0)


def test_points(result: AlignmentResult) -> np.ndarray:
    """The solved markers plus the corners of a 300 px thick tomogram: (m, 3) pixels."""
    nx, ny = IMAGE
    corners = np.array(
        [[sx * nx / 2, sy * ny / 2, sz * 150.0] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )
    return np.vstack([result.markers, corners])


test_points.__test__ = False


# ------------------------------------------------------------------ conventions


@pytest.mark.parametrize("rotation_deg", [-12.0, 85.0, 178.0, -95.0])
def test_a_3d_point_projects_to_the_same_pixel_in_every_convention(rotation_deg):
    """Our model, our xf, RELION 5's projection formula with the exported parameters and
    AreTomo's with the exported .aln columns agree to float64 precision (1e-9 px here, on
    positions of ~1000 px), for tilt axes in every quadrant (atan2 branches)."""
    result = solved_from_truth(rotation_deg)
    geometry = ViewGeometry.from_result(result)
    xyz = test_points(result)
    ours = model_project(result, xyz)
    np.testing.assert_allclose(our_project(geometry, xyz), ours, rtol=0, atol=1e-9)
    relion = relion_parameters(geometry, PIXEL_A)
    np.testing.assert_allclose(relion_project(relion, PIXEL_A, xyz), ours, rtol=0, atol=1e-9)
    np.testing.assert_allclose(aretomo_project(aretomo_parameters(geometry), xyz), ours, rtol=0, atol=1e-9)
    # and the exported angles are the solved ones (ZRot = tilt-axis angle, YTilt = tilt)
    np.testing.assert_allclose(relion["rlnTomoZRot"], result.rotation_deg, rtol=0, atol=1e-9)
    np.testing.assert_allclose(relion["rlnTomoYTilt"], result.tilts_deg, rtol=0, atol=0)
    assert unrepresented_px(geometry).max() < 1e-9


def test_an_x_axis_tilt_goes_to_rlnTomoXTilt_and_rotates_before_the_tilt():
    """With an X-axis tilt, RELION's Rz Ry Rx X equals our A^-1 (P Ry Rx X - D)."""
    result = solved_from_truth(-12.0)
    x_tilt = np.linspace(-2.0, 3.0, result.xf.shape[0])
    geometry = ViewGeometry.from_result(result, x_tilt_deg=x_tilt)
    xyz = test_points(result)
    relion = relion_parameters(geometry, PIXEL_A)
    np.testing.assert_array_equal(relion["rlnTomoXTilt"], x_tilt)
    np.testing.assert_allclose(
        relion_project(relion, PIXEL_A, xyz), our_project(geometry, xyz), rtol=0, atol=1e-9
    )
    # a 1-degree X tilt moves a point 150 px above the centre by ~2.6 px in y: the test can fail
    flat = ViewGeometry.from_result(result)
    assert np.abs(our_project(geometry, xyz) - our_project(flat, xyz)).max() > 1.0


def test_magnification_is_measured_not_hidden():
    """RELION and AreTomo have no per-view scale. For the jou model A^-1 = s R(alpha), so the
    exported geometry errs by exactly |s - 1| times a point's distance from the centre:
    unrepresented_px gives that at the image corners, and bounds the error at every point."""
    result = solved_from_truth(-12.0, unit_scale=False)
    geometry = ViewGeometry.from_result(result)
    scale = result.parameter("scale")
    _, magnification, _ = decompose_xf(geometry.xf)
    np.testing.assert_allclose(magnification, scale, rtol=1e-12)
    half_diagonal = np.hypot(*IMAGE) / 2
    np.testing.assert_allclose(unrepresented_px(geometry), np.abs(scale - 1) * half_diagonal, rtol=1e-9)
    assert unrepresented_px(geometry).max() > 1.0  # scale jitter 0.01 over ~680 px
    nx, ny = IMAGE
    in_image = np.array([[sx * nx / 2, sy * ny / 2, 0.0] for sx in (-1, 1) for sy in (-1, 1)] + [[0, 0, 0]])
    error = np.linalg.norm(
        relion_project(relion_parameters(geometry, PIXEL_A), PIXEL_A, in_image)
        - model_project(result, in_image),
        axis=-1,
    )
    # aligned-frame corners of a tilted view lie inside the image corners, so the bound holds
    assert np.all(error <= unrepresented_px(geometry)[:, None] * (1 + 1e-9))


def test_relion_numbers_are_what_relions_imod_importer_derives_from_real_imod_files():
    """Real etomo files (teamtomo/etomofiles TS_001): our columns equal the conversion RELION 5's
    importer applies (align_tilt_series/imod/_utils.py with yet_another_imod_wrapper's XF:
    ZRot = atan2(-A21, A11), shift = -pinv(A) D, YTilt = .tlt, XTilt = 0), re-derived here with
    pinv, and cryoet-alignment's own IMOD -> RELION conversion of the same files."""
    stem = SAMPLES / "etomofiles_TS_001" / "TS_001"
    a, d = read_xf(f"{stem}.xf")
    tilts = read_tilts(f"{stem}.tlt")
    geometry = ViewGeometry(np.concatenate([a, d[:, :, None]], axis=2), tilts, None, (4096, 4096))
    ours = relion_parameters(geometry, PIXEL_A)
    importer_rot = np.degrees(np.arctan2(-a[:, 1, 0], a[:, 0, 0]))
    importer_shift = -np.squeeze(np.linalg.pinv(a) @ d[:, :, None], -1)
    np.testing.assert_allclose(ours["rlnTomoZRot"], importer_rot, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["rlnTomoXShiftAngst"] / PIXEL_A, importer_shift[:, 0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["rlnTomoYShiftAngst"] / PIXEL_A, importer_shift[:, 1], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours["rlnTomoYTilt"], tilts)
    np.testing.assert_array_equal(ours["rlnTomoXTilt"], 0.0)
    # cryoet-alignment uses A^T for A^-1: equal for these 7-decimal rotations to ~1e-6
    imod = ImodAlignment.read(xf_path=f"{stem}.xf", tlt_path=f"{stem}.tlt")
    theirs = Alignment.from_imod(imod).to_relion("TS_001", PIXEL_A)
    np.testing.assert_allclose([e.z_rot for e in theirs.entries], ours["rlnTomoZRot"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        [e.x_shift_angst for e in theirs.entries], ours["rlnTomoXShiftAngst"], rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(
        [e.y_shift_angst for e in theirs.entries], ours["rlnTomoYShiftAngst"], rtol=0, atol=1e-4
    )
    np.testing.assert_allclose([e.y_tilt for e in theirs.entries], tilts, rtol=0, atol=0)


@pytest.mark.parametrize("axis", ["BBa", "BBb"])
def test_real_imod_solution_projects_through_each_convention(axis):
    """IMOD's own answer (BB tutorial, binned to 512 px): its solved 3-D fiducials, sent through
    its .tltxf/.tlt by our convention, land on IMOD's projected positions (measured + residual,
    the .resid sign) well inside IMOD's mean residual (0.31 px); a sign or axis error would
    miss by tens of pixels. The RELION and AreTomo exports of the same files, which cannot
    hold IMOD's magnification and stretch, stay within unrepresented_px of ours."""
    from lmalign_jax.io import read_fid_xyz, read_resid

    stem = Path(__file__).resolve().parent.parent / "lmalign_jax" / "data" / "imod-bb" / axis
    a, d = read_xf(f"{stem}.tltxf")
    fid = read_fid_xyz(f"{stem}fid.xyz")
    table = read_resid(f"{stem}.resid")
    nx, ny = fid.image_size
    geometry = ViewGeometry(
        np.concatenate([a, d[:, :, None]], axis=2),
        read_tilts(f"{stem}.tlt"),
        read_xtilt(f"{stem}.xtilt") if Path(f"{stem}.xtilt").exists() else None,
        (nx, ny),
    )
    xyz = fid.xyz - [nx / 2, ny / 2, 0.0]
    view, marker = np.asarray(table.view), np.asarray(table.marker)
    imod = np.asarray(table.xy) + np.asarray(table.residual) - [nx / 2, ny / 2]
    ours = our_project(geometry, xyz)[view, marker]
    error = np.linalg.norm(ours - imod, axis=1)
    imod_mean_residual = np.linalg.norm(np.asarray(table.residual), axis=1).mean()
    assert error.mean() < 0.5 * imod_mean_residual and error.max() < 2 * imod_mean_residual
    bound = unrepresented_px(geometry)[view]
    assert bound.max() > 1.0  # IMOD solved magnification and stretch here
    for exported in (
        relion_project(relion_parameters(geometry, 20.2), 20.2, xyz),
        aretomo_project(aretomo_parameters(geometry), xyz),
    ):
        assert np.all(np.linalg.norm(exported[view, marker] - ours, axis=1) <= bound + 1e-9)


# ------------------------------------------------------------------ RELION STAR


def test_relion_star_files_read_back_by_starfile_and_by_cryoet_alignment(tmp_path):
    result = solved_from_truth(-12.0)
    geometry = ViewGeometry.from_result(result)
    expected = relion_parameters(geometry, PIXEL_A)
    (tmp_path / "tilt_series").mkdir()
    write_relion_tilt_series(
        tmp_path / "tilt_series" / "TS_01.star",
        geometry,
        PIXEL_A,
        "TS_01",
        nominal_tilts_deg=result.observations.tilts_deg,
    )
    write_relion_tomograms(
        tmp_path / "tomograms.star",
        [
            {
                "rlnTomoName": "TS_01",
                "rlnTomoTiltSeriesStarFile": "tilt_series/TS_01.star",
                "rlnTomoTiltSeriesPixelSize": PIXEL_A,
                "rlnTomoSizeX": IMAGE[0],
                "rlnTomoSizeY": IMAGE[1],
                "rlnTomoSizeZ": 300,
                "rlnVoltage": 300.0,
                "rlnSphericalAberration": 2.7,
                "rlnAmplitudeContrast": 0.1,
                "rlnTomoHand": -1,
            }
        ],
    )
    table = starfile.read(tmp_path / "tilt_series" / "TS_01.star", always_dict=True)["TS_01"]
    for name, values in expected.items():  # written as %.6f
        np.testing.assert_allclose(table[name].to_numpy(), values, rtol=0, atol=5.1e-7)
    np.testing.assert_allclose(
        table["rlnTomoNominalStageTiltAngle"], result.observations.tilts_deg, atol=5.1e-7
    )
    from cryoet_alignment.io.relion import RelionAlignment

    back = RelionAlignment.from_file(str(tmp_path / "tomograms.star"))
    assert back.pixel_size_a == pytest.approx(PIXEL_A)
    np.testing.assert_allclose([e.z_rot for e in back.entries], expected["rlnTomoZRot"], atol=5.1e-7)
    np.testing.assert_allclose(
        [e.x_shift_angst for e in back.entries], expected["rlnTomoXShiftAngst"], atol=5.1e-7
    )
    # RELION's formula on the numbers read back still lands on our projections (rounding only)
    xyz = test_points(result)
    reread = {name: table[name].to_numpy() for name in expected}
    np.testing.assert_allclose(
        relion_project(reread, PIXEL_A, xyz), model_project(result, xyz), rtol=0, atol=1e-4
    )


def test_relion_writers_refuse_what_relion_could_not_use(tmp_path):
    geometry = ViewGeometry.from_result(solved_from_truth(-12.0))
    with pytest.raises(ValueError, match="pixel size"):
        relion_parameters(geometry, 0.0)
    with pytest.raises(ValueError, match="tomo_name"):
        write_relion_tilt_series(tmp_path / "a.star", geometry, PIXEL_A, "two words")
    with pytest.raises(ValueError, match="lacks rlnVoltage"):
        write_relion_tomograms(
            tmp_path / "t.star",
            [
                {
                    "rlnTomoName": "x",
                    "rlnTomoTiltSeriesStarFile": "a",
                    "rlnTomoTiltSeriesPixelSize": 1,
                    "rlnTomoSizeX": 1,
                    "rlnTomoSizeY": 1,
                    "rlnTomoSizeZ": 1,
                }
            ],
        )
    assert not list(tmp_path.iterdir())  # nothing half-written


# ------------------------------------------------------------------ AreTomo .aln


def test_aln_written_here_reads_back_through_alnfile_with_the_same_numbers(tmp_path):
    result = solved_from_truth(85.0)
    geometry = ViewGeometry.from_result(result)
    path = tmp_path / "TS_01.aln"
    write_aln(path, geometry, excluded_views=[0, 14])
    theirs = alnfile.read(path)
    ours = read_aln(path)
    assert len(theirs) == 13 and ours.raw_size == (IMAGE[0], IMAGE[1], 15)
    np.testing.assert_array_equal(theirs["sec"], np.arange(13))
    np.testing.assert_array_equal(ours.sections, np.arange(1, 14))
    np.testing.assert_array_equal(ours.dark_sections, [0, 14])
    for column, values in (
        ("rot", ours.rotation_deg),
        ("gmag", ours.magnification),
        ("tx", ours.shift_px[:, 0]),
        ("ty", ours.shift_px[:, 1]),
        ("tilt", ours.tilts_deg),
    ):
        np.testing.assert_array_equal(theirs[column].to_numpy(), values)
    np.testing.assert_allclose(alnfile.df_to_xf(theirs), ours.xf, rtol=0, atol=1e-12)
    # the file holds our numbers to its printed precision
    expected = aretomo_parameters(geometry)
    kept = ours.sections
    np.testing.assert_allclose(ours.rotation_deg, expected["ROT"][kept], rtol=0, atol=5.1e-5)
    np.testing.assert_allclose(
        ours.shift_px, np.stack([expected["TX"], expected["TY"]], -1)[kept], rtol=0, atol=5.1e-4
    )
    np.testing.assert_allclose(ours.tilts_deg, expected["TILT"][kept], rtol=0, atol=5.1e-3)
    np.testing.assert_allclose(ours.dark_tilts_deg, geometry.tilts_deg[[0, 14]], rtol=0, atol=5.1e-3)


def synthetic_local(n_views: int, seed: int = 0) -> LocalAlignment:
    """A 3 x 2 IMOD local alignment: per patch and view a transform near the unit one (1e-3 of
    rotation/stretch, 2 px shifts), delta tilts (0.5 deg) and delta X-axis tilts (0.3 deg). The
    centres (150 + 350 i, 200 + 500 j) are even, so IMOD tilt's pixel rounding puts a point at a
    centre wholly in that patch (core.local_apply)."""
    rng = np.random.default_rng(seed)
    a = np.eye(2) + 1e-3 * rng.standard_normal((6, n_views, 2, 2))
    xf = np.concatenate([a, 2.0 * rng.standard_normal((6, n_views, 2, 1))], axis=-1)
    dt, dxt = 0.5 * rng.standard_normal((2, 6, n_views))
    return LocalAlignment((3, 2), (150, 200), (350, 500), 0.0, dt, xf, dxt)


def test_aln_local_rows_put_each_patch_centre_where_imods_tilt_puts_it(tmp_path):
    """CX + SX, CY + SY of every patch and view = the aligned-stack position IMOD's tilt gives the
    patch's centre at z = 0 (core.local_apply, checked on IMOD's real local files); CX, CY = the
    global projection; the rows read back through alnfile with those numbers (2 decimals)."""
    result = solved_from_truth(85.0)
    geometry = ViewGeometry.from_result(result)
    local = synthetic_local(geometry.n_views)
    centres, shifts = aretomo_local_rows(geometry, local)
    points = np.column_stack([local.centres - np.array(IMAGE) / 2.0, np.zeros(6)])
    tilt_puts = project_through_local(local, points, geometry.tilts_deg, IMAGE)  # (views, patches, 2)
    np.testing.assert_allclose(centres + shifts, tilt_puts, rtol=0, atol=1e-9)
    t = np.radians(geometry.tilts_deg)[:, None]
    np.testing.assert_allclose(centres[..., 0], points[None, :, 0] * np.cos(t), rtol=0, atol=1e-9)
    np.testing.assert_allclose(centres[..., 1], np.broadcast_to(points[:, 1], t.shape[:1] + (6,)), atol=1e-9)
    assert 0.5 < np.sqrt(np.mean(shifts[..., 0] ** 2)) < 20  # the patches do move the centres

    path = tmp_path / "TS_01.aln"
    write_aln(path, geometry, excluded_views=[0, 14], local=local)
    theirs = alnfile.read(path, alignment_type="local")
    kept = np.arange(1, 14)
    assert len(theirs) == 13 * 6 and read_aln(path).n_patches == 6
    np.testing.assert_array_equal(theirs["sec_idx"], np.repeat(np.arange(13), 6))
    np.testing.assert_array_equal(theirs["patch_idx"], np.tile(np.arange(6), 13))
    for column, values in (
        ("center_x", centres[kept, :, 0]),
        ("center_y", centres[kept, :, 1]),
        ("shift_x", shifts[kept, :, 0]),
        ("shift_y", shifts[kept, :, 1]),
    ):
        np.testing.assert_allclose(theirs[column].to_numpy(), values.ravel(), rtol=0, atol=5.1e-3)
    assert np.all(theirs["is_reliable"] == 1.0)
    np.testing.assert_array_equal(read_aln(path).local_rows, theirs.to_numpy(dtype=float))
    assert len(alnfile.read(path)) == 13  # the global rows are still read as before


def test_an_aln_read_back_is_an_initial_alignment_that_projects_like_ours(tmp_path):
    """Read as a start, the .aln geometry puts every point where our model does, up to the
    layout's rounding: TILT 0.005 deg and ROT 5e-5 deg over <= 700 px, TX/TY 5e-4 px."""
    result = solved_from_truth(-12.0)
    path = tmp_path / "TS_01.aln"
    write_aln(path, ViewGeometry.from_result(result))
    start = read_aln(path).geometry()
    xyz = test_points(result)
    radius = np.linalg.norm(xyz, axis=1).max()
    bound = radius * np.radians(0.005 + 5e-5) + 5e-4 * np.sqrt(2)
    error = np.abs(our_project(start, xyz) - model_project(result, xyz)).max()
    assert error <= bound
    assert bound < 0.1  # sub-pixel: a usable starting alignment


def test_real_aretomo3_sample_reads_like_alnfile():
    path = SAMPLES / "aretomo3_sample.aln"
    ours = read_aln(path)
    theirs = alnfile.read(path)
    assert ours.raw_size == (2032, 2032, 90) and ours.n_patches == 16
    np.testing.assert_array_equal(ours.dark_sections, [1, 2, 88, 89])
    np.testing.assert_array_equal(ours.dark_tilts_deg, [-66.0, -64.5, 66.0, 67.5])
    np.testing.assert_array_equal(ours.sections, [3, 4, 5, 6])  # SEC 1..4 over the kept sections 0, 3, 4, ...
    np.testing.assert_array_equal(ours.rotation_deg, theirs["rot"].to_numpy())
    np.testing.assert_array_equal(ours.tilts_deg, [-61.5, -60.0, -58.5, -57.0])
    np.testing.assert_array_equal(ours.shift_px, theirs[["tx", "ty"]].to_numpy())
    np.testing.assert_allclose(ours.xf, alnfile.df_to_xf(theirs), rtol=0, atol=1e-12)
    start = ours.by_section()  # a start for aligning the 90-section raw stack
    assert start["tilts_deg"].shape == (90,) and start["shift_px"].shape == (90, 2)
    np.testing.assert_array_equal(start["tilts_deg"][[1, 2, 3, 6, 88]], [-66.0, -64.5, -61.5, -57.0, 66.0])
    np.testing.assert_array_equal(start["shift_px"][4], [34.451, -8.599])
    assert np.isnan(start["rotation_deg"][[0, 1, 7]]).all() and np.isnan(start["tilts_deg"][[0, 7]]).all()


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("# RawSize = 10 10 3\n# SEC ROT\n0 1 1 0 0 1 1 1 0\n", 3, "expected 10 values"),
        ("# RawSize = 10 10 3\n# SEC ROT\n0 1 1 0 x 1 1 1 0 5\n", 3, "'x' is not a number"),
        ("# RawSize = 10 10 3\n# SEC ROT\n3 1 1 0 0 1 1 1 0 5\n", 3, "SEC 3 outside 0..2"),
        ("# RawSize = 10 10\n", 1, "expected 3 value"),
        ("0 1 1 0 0 1 1 1 0 5\n", 1, "before the '# SEC"),
        ("# SEC ROT\n0 1 1 0 0 1 1 1 0 5\n", None, "no '# RawSize"),
        ("# RawSize = 10 10 3\n# SEC ROT\n", None, "no global alignment rows"),
    ],
)
def test_bad_aln_files_get_one_line_naming_file_and_line(tmp_path, text, line, problem):
    path = tmp_path / "bad.aln"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        read_aln(path)
    assert info.value.line == line and info.value.path == str(path) and "\n" not in str(info.value)


def test_write_aln_refuses_what_the_layout_cannot_hold(tmp_path):
    result = solved_from_truth(-12.0)
    with pytest.raises(ValueError, match="X-axis tilt"):
        write_aln(tmp_path / "a.aln", ViewGeometry.from_result(result, x_tilt_deg=np.ones(15)))
    assert not list(tmp_path.iterdir())


def test_write_aln_widens_a_shift_its_column_cannot_hold(tmp_path):
    """A shift of 1e9 px overflows TX's f11.3: that field alone grows by one blank-separated
    column (io.fixed_width), the other rows keep AreTomo's layout, and alnfile reads it back."""
    result = solved_from_truth(-12.0)
    far = result.xf.copy()
    far[3, 0, 2] = 1e9
    geometry = ViewGeometry(far, result.tilts_deg, None, IMAGE)
    write_aln(tmp_path / "a.aln", geometry)
    theirs = alnfile.read(tmp_path / "a.aln")
    expected = aretomo_parameters(geometry)
    np.testing.assert_allclose(theirs["tx"], expected["TX"], rtol=1e-12, atol=1e-3)
    np.testing.assert_allclose(theirs["ty"], expected["TY"], rtol=1e-12, atol=1e-3)
    rows = (tmp_path / "a.aln").read_text().splitlines()[-15:]
    assert len({len(r) for i, r in enumerate(rows) if i != 3}) == 1 and len(rows[3]) > len(rows[0])


# ------------------------------------------------------------------ IMOD .xtilt, Data Portal JSON


def test_xtilt_round_trip_and_real_files(tmp_path):
    values = np.array([0.0, -0.01, 1.25, -12.5])
    write_xtilt(tmp_path / "a.xtilt", values)
    np.testing.assert_array_equal(read_xtilt(tmp_path / "a.xtilt"), values)
    assert (tmp_path / "a.xtilt").read_text().splitlines()[1] == "  -0.01"  # IMOD's f7.2
    real = SAMPLES / "etomofiles_TS_001" / "TS_001.xtilt"
    np.testing.assert_array_equal(read_xtilt(real), np.loadtxt(real))
    assert read_xtilt(real).shape == (40,) and read_xtilt(real)[0] == -0.01
    np.testing.assert_array_equal(
        read_xtilt(SAMPLES / "cryoet-alignment_imod_1" / "tilt_1.xtilt"), np.zeros(59)
    )
    (tmp_path / "bad.xtilt").write_text("0.0\n1.0 2.0\n")
    with pytest.raises(InputError, match=r"bad.xtilt:2: expected one X-axis tilt"):
        read_xtilt(tmp_path / "bad.xtilt")
    (tmp_path / "nan.xtilt").write_text("0.0\nnan\n")
    with pytest.raises(InputError, match=r"nan.xtilt:2: X-axis tilt angle is not finite"):
        read_xtilt(tmp_path / "nan.xtilt")


def _portal_sections(document):
    return [
        (p.z_index, p.tilt_angle, p.volume_x_rotation, np.array(p.in_plane_rotation), p.x_offset, p.y_offset)
        for p in document.per_section_alignment_parameters
    ]


def test_portal_json_equals_cryoet_alignments_conversion_of_our_imod_files(tmp_path):
    """Our direct writer and cryoet-alignment's IMOD -> portal conversion of the .xf/.tlt/.xtilt
    we write agree to the IMOD files' precision (xf 7 and 3 decimals, tlt 3 decimals)."""
    result = solved_from_truth(178.0)
    x_tilt = np.full(15, 0.5)
    geometry = ViewGeometry.from_result(result, x_tilt_deg=x_tilt)
    write_xf(tmp_path / "TS.xf", result.xf[:, :, :2], result.xf[:, :, 2])
    write_tlt(tmp_path / "TS.tlt", result.tilts_deg)
    write_xtilt(tmp_path / "TS.xtilt", x_tilt)
    theirs = Alignment.from_imod(ImodAlignment.read(base_name=str(tmp_path / "TS")))
    write_portal_json(tmp_path / "TS.json", geometry, excluded_views=[])
    ours = Alignment.from_file(str(tmp_path / "TS.json"))
    assert ours.alignment_type == theirs.alignment_type == "GLOBAL"
    for mine, other in zip(_portal_sections(ours), _portal_sections(theirs), strict=True):
        assert mine[0] == other[0]
        assert mine[1] == pytest.approx(other[1], abs=5.1e-4)
        assert mine[2] == other[2]
        np.testing.assert_allclose(mine[3], other[3], rtol=0, atol=2e-7)
        np.testing.assert_allclose(mine[4:], other[4:], rtol=0, atol=1e-3)
    # excluded views are left out, as the portal converter leaves out tilt.com's EXCLUDELIST2
    document = portal_alignment(geometry, excluded_views=[2, 5])
    assert [p["z_index"] for p in document["per_section_alignment_parameters"]] == [
        v for v in range(15) if v not in (2, 5)
    ]
    json.dumps(document)


def test_view_geometry_rejects_impossible_input():
    result = solved_from_truth(-12.0)
    with pytest.raises(ValueError, match=r"\(15,\)"):
        ViewGeometry(result.xf, result.tilts_deg[:3], None, IMAGE)
    singular = result.xf.copy()
    singular[0, :, :2] = 0
    with pytest.raises(ValueError, match="invertible"):
        ViewGeometry(singular, result.tilts_deg, None, IMAGE)
    with pytest.raises(ValueError, match="image_size"):
        ViewGeometry(result.xf, result.tilts_deg, None, (0, 10))


def test_export_is_numpy_only_and_sits_below_the_command_layer():
    """export/ reads results and writes files: no JAX, no solver, nothing above it."""
    forbidden = (
        "jax",
        "lmalign_jax.solve",
        "lmalign_jax.core",
        "lmalign_jax.models",
        "lmalign_jax.analysis",
        "lmalign_jax.report",
        "lmalign_jax.workflow",
        "lmalign_jax.cli",
    )
    package = Path(__file__).resolve().parent.parent / "lmalign_jax" / "export"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = {0: "", 1: "lmalign_jax.export.", 2: "lmalign_jax."}[node.level]
                names = [parent + (node.module or "")]
            else:
                continue
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), (
                    f"{path.name} imports {name}"
                )


def test_alignment_goes_into_the_tilt_series_star_relion_imported(tmp_path):
    """RELION's import lists tilt images in acquisition order with its own columns; rows are
    matched to our views by nominal tilt, alignment columns set, everything else kept."""
    import pandas as pd

    from lmalign_jax.export import add_alignment_to_relion_tilt_series

    result = solved_from_truth(-12.0)
    geometry = ViewGeometry.from_result(result)
    nominal = np.round(result.observations.tilts_deg, 2)
    order = np.random.default_rng(4).permutation(15)  # "acquisition order"
    imported = pd.DataFrame(
        {
            "rlnMicrographMovieName": [f"frames/TS_01_{k:03d}.tif" for k in order],
            "rlnTomoNominalStageTiltAngle": nominal[order],
            "rlnMicrographPreExposure": 3.0 * np.arange(15),
            "rlnTomoXTilt": np.zeros(15),  # present before: replaced
        }
    )
    starfile.write({"TS_01": imported}, tmp_path / "imported.star")
    add_alignment_to_relion_tilt_series(
        tmp_path / "imported.star", tmp_path / "aligned.star", geometry, PIXEL_A, nominal
    )
    table = starfile.read(tmp_path / "aligned.star", always_dict=True)["TS_01"]
    assert list(table["rlnMicrographMovieName"]) == list(imported["rlnMicrographMovieName"])
    np.testing.assert_allclose(table["rlnMicrographPreExposure"], 3.0 * np.arange(15))
    expected = relion_parameters(geometry, PIXEL_A)
    for name, values in expected.items():
        np.testing.assert_allclose(table[name].to_numpy(), values[order], rtol=0, atol=5.1e-7)
    # a tilt image the alignment does not have is named, and nothing is written
    starfile.write(
        {"TS_01": imported.assign(rlnTomoNominalStageTiltAngle=nominal[order] + 0.5)}, tmp_path / "odd.star"
    )
    with pytest.raises(InputError, match=r"odd.star: tilt image 1 \(nominal .*\) matches no view"):
        add_alignment_to_relion_tilt_series(
            tmp_path / "odd.star", tmp_path / "out.star", geometry, PIXEL_A, nominal
        )
    assert not (tmp_path / "out.star").exists()
