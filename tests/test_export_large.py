"""Every exporter at the extremes: ``lmalign export --to all`` on a record of 151 views x 10,000
markers, 8k images, shifts of thousands of pixels, marker ids up to 169,994 (IMOD contour numbers,
so each model holds 170,000 contours, most of them empty placeholders that keep the ids), a model
whose z scales differently (luther's mag_z, so a ``.zfac``) and an 8 x 8 local alignment beside
the record (so ``.aln`` local rows). Every file is read back by its reader: the package's own
(IMOD models, ``.xf``, ``.tlt``, ``.xtilt``, ``.zfac``, ``local.xf``), alnfile, starfile and
cryoet-alignment, with the record's numbers to each layout's printed precision.

The record is a simulated series' truth written as a record (no solve: ``build_record`` of an
``AlignmentResult`` holding the true views and markers); each marker is seen in 6 consecutive
views (60,000 points), so the filled model fills 1.45 million gaps. Before this test the IMOD
model writer took ~30 s per model here and the reader ~23 s (one pydantic object per contour);
imodmodel's own full parser still takes ~80 s on these files, so the models are read by the
package's reader, whose headers imodmodel parses and validates.
"""

import json

import alnfile
import jax.numpy as jnp
import numpy as np
import pytest
import starfile
from cryoet_alignment.io.cryoet_data_portal import Alignment
from helpers import run_cli

from lmalign_jax import AlignmentResult, Observations, get_model, simulate
from lmalign_jax.core.result import fit_image_transforms
from lmalign_jax.export import ViewGeometry, aretomo_parameters, relion_parameters
from lmalign_jax.export.aretomo import aretomo_local_rows
from lmalign_jax.export.imod import aligned_positions, read_xtilt, read_zfac
from lmalign_jax.io import MarkerSet, read_tilts, read_xf, write_markers_csv
from lmalign_jax.io.imod_local import LocalAlignment, read_local_xf, write_local_xf
from lmalign_jax.io.imod_model import read_imod_model
from lmalign_jax.report import build_record, expand_to_file_views, read_record, record_to_json
from lmalign_jax.workflow.exporting import z_factors

N_VIEWS, N_MARKERS, SIZE, PIXEL_A = 151, 10_000, 8192, 1.1
IDS = tuple(100_001 + 7 * k for k in range(N_MARKERS))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_large")
    s = simulate(
        n_views=N_VIEWS,
        n_markers=N_MARKERS,
        image_size=(SIZE, SIZE),
        shift_px=2500.0,
        model="luther",
        extra={"mag_z": (1.0, 0.02)},
        seed=2,
    )
    rng = np.random.default_rng(0)
    first = rng.integers(0, N_VIEWS - 5, N_MARKERS)
    mask = np.zeros((N_VIEWS, N_MARKERS), bool)
    for k in range(6):
        mask[first + k, np.arange(N_MARKERS)] = True
    obs = Observations(
        np.where(mask[..., None], s.observations.xy, np.nan), mask, s.observations.tilts_deg, (SIZE, SIZE)
    )
    m = get_model("luther")
    views = np.asarray(s.views)
    predicted = m.project(jnp.asarray(views.T[:, :, None]), jnp.asarray(s.markers.T[:, None, :]))
    predicted = np.asarray(predicted).transpose(1, 2, 0).astype(np.float64)
    tilt = views[:, m.index("tilt")][:, None]
    x, y, z = s.markers.T
    ideal = np.stack([x * np.cos(tilt) + z * np.sin(tilt), np.broadcast_to(y, predicted.shape[:2])], -1)
    result = AlignmentResult(
        model="luther",
        observations=obs,
        views=views,
        markers=s.markers,
        residuals=np.where(mask[..., None], predicted - obs.centered_xy, np.nan),
        stages=(),
        status="converged",
        n_free=len(m.parameters) * N_VIEWS + 3 * N_MARKERS,
        rotation_estimated_deg=None,
        xf=fit_image_transforms(predicted, ideal),
    )
    write_markers_csv(folder / "big.csv", MarkerSet(obs.xy, obs.mask, IDS))
    record = build_record(
        result,
        expand_to_file_views(result, np.arange(N_VIEWS), obs.tilts_deg),
        marker_ids=IDS,
        inputs={
            "markers": str(folder / "big.csv"),
            "tilts": "big.rawtlt",
            "image_size": [SIZE, SIZE],
            "pixel_size_A": PIXEL_A,
            "excluded_by_user": [],
        },
        options={"model": "luther", "rotation_deg": -12.0},
    )
    (folder / "big.json").write_text(record_to_json(record))
    xf = np.concatenate(
        [
            np.eye(2) + 1e-3 * rng.standard_normal((64, N_VIEWS, 2, 2)),
            rng.normal(0, 3.0, (64, N_VIEWS, 2, 1)),
        ],
        -1,
    )
    local = LocalAlignment((8, 8), (500, 500), (1000, 1000), PIXEL_A, rng.normal(0, 0.3, (64, N_VIEWS)), xf)
    write_local_xf(folder / "biglocal.xf", local)
    out = folder / "out"
    argv = ["export", folder / "big.json", "--to", "all", "--local", folder / "biglocal.xf", "--out-dir", out]
    code, stdout, err = run_cli(argv)
    assert code == 0, err
    assert read_local_xf(out / "biglocal.xf", N_VIEWS).n_patches == (8, 8)  # Plocal.xf, the file given
    assert np.abs(result.xf[:, :, 2]).max() > 3000  # shifts of thousands of pixels
    record = read_record(str(folder / "big.json"))
    return {"out": out, "result": result, "record": record, "obs": obs, "predicted": predicted}


def test_imod_files_read_back_with_the_records_numbers(exported):
    out, record = exported["out"], exported["record"]
    a, d = read_xf(out / "big.xf")
    np.testing.assert_allclose(a, record.xf[:, :, :2], rtol=0, atol=5.1e-8)
    np.testing.assert_allclose(d, record.xf[:, :, 2], rtol=0, atol=5.1e-4)
    np.testing.assert_allclose(read_tilts(out / "big.tlt"), record.tilts_deg, rtol=0, atol=5.1e-4)
    np.testing.assert_array_equal(read_xtilt(out / "big.xtilt"), np.zeros(N_VIEWS))
    zfac = z_factors(record)
    assert np.abs(zfac).max() > 1e-3  # the stretch leaves a height-dependent part
    np.testing.assert_allclose(read_zfac(out / "big.zfac"), zfac, rtol=0, atol=5.1e-7)


def test_models_keep_every_id_and_position(exported):
    out, record, obs = exported["out"], exported["record"], exported["obs"]
    geometry = ViewGeometry(record.xf, record.tilts_deg, None, (SIZE, SIZE))
    filled = read_imod_model(out / "big_nogaps.fid")
    assert filled.marker_ids == IDS and filled.mask.all() and filled.n_views == N_VIEWS
    # measured points kept (float32 in the file), the rest the model's projection of the solved markers
    np.testing.assert_allclose(filled.xy[obs.mask], obs.xy[obs.mask], rtol=0, atol=1e-3)
    erase = read_imod_model(out / "big_erase.fid")
    assert erase.marker_ids == IDS and erase.mask.all() and erase.pixel_size == pytest.approx(PIXEL_A)
    # a luther record: its model's projection mapped by the .xf (tilt's formula alone, what the
    # erase model held, missed by up to 0.6 px here)
    xf = record.xf
    expected = np.einsum("vij,vmj->vmi", xf[:, :, :2], exported["predicted"]) + xf[:, None, :, 2] + SIZE / 2
    np.testing.assert_allclose(erase.xy, expected, rtol=0, atol=1e-3)
    assert np.abs(aligned_positions(geometry, record.markers.xyz) - expected).max() > 0.1
    assert np.abs(expected - SIZE / 2).max() > 2000


def test_align_log_lists_every_point_with_its_id(exported):
    text = (exported["out"] / "align.log").read_text()
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if "3-D point coordinates" in line) + 2
    rows = [line.split() for line in lines[start : start + N_MARKERS + 1]]
    assert not rows[-1]  # the table ends after the last marker
    table = np.array(rows[:-1], dtype=float)
    np.testing.assert_array_equal(table[:, 0], np.arange(1, N_MARKERS + 1))
    np.testing.assert_array_equal(table[:, 5], IDS)  # the contour column holds the ids past 100,000
    xyz = exported["record"].markers.xyz
    np.testing.assert_allclose(table[:, 1:4], xyz - xyz.mean(axis=0), rtol=0, atol=5.1e-3)  # centroid zero
    assert "Residual error mean and sd:" in text


def test_aln_star_and_portal_read_back_by_their_packages(exported):
    out, record = exported["out"], exported["record"]
    geometry = ViewGeometry(record.xf, record.tilts_deg, None, (SIZE, SIZE))
    expected = aretomo_parameters(geometry)
    aln = alnfile.read(out / "big.aln")
    assert len(aln) == N_VIEWS
    np.testing.assert_allclose(aln["tx"], expected["TX"], rtol=0, atol=5.1e-4)
    np.testing.assert_allclose(aln["ty"], expected["TY"], rtol=0, atol=5.1e-4)
    local = alnfile.read(out / "big.aln", alignment_type="local")
    centres, shifts = aretomo_local_rows(geometry, read_local_xf(out.parent / "biglocal.xf", N_VIEWS))
    assert len(local) == N_VIEWS * 64
    np.testing.assert_allclose(local["center_x"], centres[..., 0].ravel(), rtol=0, atol=5.1e-3)
    np.testing.assert_allclose(local["shift_x"], shifts[..., 0].ravel(), rtol=0, atol=5.1e-3)
    table = starfile.read(out / "big.star", always_dict=True)["big"]
    for name, values in relion_parameters(geometry, PIXEL_A).items():
        np.testing.assert_allclose(table[name].to_numpy(), values, rtol=0, atol=5.1e-7)
    portal = Alignment.from_file(str(out / "big_portal.json"))
    sections = portal.per_section_alignment_parameters
    assert len(sections) == N_VIEWS
    np.testing.assert_allclose([p.x_offset for p in sections], expected["TX"], rtol=0, atol=1e-9)
    assert json.loads((out / "big_portal.json").read_text())  # plain JSON
