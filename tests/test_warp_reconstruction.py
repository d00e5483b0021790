"""Reconstruction through a deformation model's per-view warp (``--model warp``): the sampled
positions are the warp model's own projection, a zero warp is the rigid back-projection, and
beads drawn where a known warp puts them come out in place and sharper than with the rigid
part only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import peak_values

from lmalign_jax.core.local_apply import local_sampling
from lmalign_jax.models import get_model
from lmalign_jax.models.warp import WARP_LENGTH_PX
from lmalign_jax.recon import warp_backprojection as wb
from lmalign_jax.recon.local_backprojection import LocalSampling, reconstruct_local
from lmalign_jax.simulation.phantom import locate_peaks

N, NZ, SIGMA = 96, 24, 1.2
TILTS = np.linspace(-60.0, 60.0, 31)
BEADS = np.array(
    [[-30.0, -30, 5], [30, -28, -6], [-28, 30, 0], [30, 30, 7], [0, 0, -4], [12, -34, 6], [-36, 4, 3]]
)
UNIT = np.tile(np.eye(2), (TILTS.size, 1, 1))


def known_warp() -> np.ndarray:
    """(V, 6) coefficients swinging with the tilt (sin 3t, which no shift of a bead in 3-D mimics): up
    to ~3 px at the beads (|u|, |v| <= 40)."""
    pattern = np.array([1500.0, -800.0, 600.0, 700.0, 1200.0, -900.0])
    return np.sin(np.radians(3 * TILTS))[:, None] * pattern[None, :]


def sampling(coef) -> wb.WarpSampling:
    return wb.WarpSampling(UNIT, np.zeros((TILTS.size, 2)), TILTS, coef)


def test_the_sampled_positions_are_the_warp_models_projection():
    assert wb.WARP_LENGTH_PX == WARP_LENGTH_PX
    model = get_model("warp")
    coef = known_warp()
    views = np.column_stack(
        [np.ones(TILTS.size), np.zeros(TILTS.size), np.radians(TILTS), np.zeros((TILTS.size, 2)), coef]
    )
    with jax.enable_x64(True):
        project = jax.vmap(jax.vmap(model.project, in_axes=(None, 0)), in_axes=(0, None))
        expected = np.asarray(project(jnp.asarray(views), jnp.asarray(BEADS)))  # (V, beads, 2)
    x, y, z = (BEADS[:, i][None, None, :] for i in range(3))
    col, row = wb._positions(sampling(coef), x, y, z, 1)
    np.testing.assert_allclose(np.stack([col[:, 0, 0], row[:, 0, 0]], -1), expected, atol=1e-9)
    assert 2.0 < np.abs(expected - project_rigid()).max() < 6.0


def project_rigid():
    t = np.radians(TILTS)[:, None]
    return np.stack(
        [
            BEADS[None, :, 0] * np.cos(t) + BEADS[None, :, 2] * np.sin(t),
            np.broadcast_to(BEADS[:, 1], (TILTS.size, len(BEADS))),
        ],
        -1,
    )


@pytest.fixture(scope="module")
def stack():
    x, y, z = (BEADS[:, i][None, None, :] for i in range(3))
    col, row = wb._positions(sampling(known_warp()), x, y, z, 1)
    c = np.arange(N) + 0.5 - N / 2
    dx = c[None, None, :, None] - col[:, 0, 0][:, None, None, :]
    dy = c[None, :, None, None] - row[:, 0, 0][:, None, None, :]
    return np.exp(-(dx**2 + dy**2) / (2 * SIGMA**2)).sum(axis=-1).astype(np.float32)


def test_a_zero_warp_is_the_rigid_back_projection(stack):
    shifts = np.zeros((TILTS.size, 2))
    rigid = wb.reconstruct_warp(stack, UNIT, shifts, TILTS, sampling(np.zeros((TILTS.size, 6))), NZ)
    glob = reconstruct_local(
        stack, UNIT, shifts, TILTS, LocalSampling(*local_sampling(None, TILTS, (N, N))), NZ
    )
    np.testing.assert_allclose(rigid, glob, rtol=0, atol=1e-5 * np.abs(glob).max())


def test_beads_are_in_place_and_sharper_with_the_warp(stack):
    shifts = np.zeros((TILTS.size, 2))
    warped = wb.reconstruct_warp(stack, UNIT, shifts, TILTS, sampling(known_warp()), NZ, memory_bytes=300_000)
    rigid = wb.reconstruct_warp(stack, UNIT, shifts, TILTS, sampling(np.zeros((TILTS.size, 6))), NZ)
    found_w, dist_w = locate_peaks(warped, BEADS)
    found_r, dist_r = locate_peaks(rigid, BEADS)
    peak = peak_values
    print("distance warp", dist_w.round(2), "rigid", dist_r.round(2))
    assert np.all(dist_w < 0.5)
    assert np.mean(dist_r) > 2 * np.mean(dist_w)
    assert np.mean(peak(warped, found_w)) > 1.1 * np.mean(peak(rigid, found_r))


def test_a_warp_models_record_samples_the_measured_points(tmp_path):
    """lmalign align --model warp, then the record's per-view warp (what reconstruct applies):
    the solved markers sampled through it land on the measured points (mapped by the .xf) to
    the noise, and through the rigid part alone they miss by the warp."""
    import csv

    from helpers import align_observations

    from lmalign_jax import simulate
    from lmalign_jax.workflow.alignment_inputs import read_alignment_json

    series = simulate(n_views=21, n_markers=24, warp_px=15.0, noise_px=0.3, seed=2)
    obs = series.observations
    path = align_observations(obs, tmp_path, "--model", "warp")
    alignment = read_alignment_json(str(path))
    assert alignment.warp is not None and np.abs(alignment.warp.coefficients).max() > 1
    import json

    record = json.loads(path.read_text())
    xyz = {m["id"]: (m["x"], m["y"], m["z"]) for m in record["markers"]}
    nx, ny = record["inputs"]["image_size"]
    rigid = wb.WarpSampling(
        np.tile(np.eye(2), (21, 1, 1)), np.zeros((21, 2)), alignment.warp.tilts_deg, np.zeros((21, 6))
    )
    errors = {"warp": [], "rigid": []}
    with open(tmp_path / "s.csv") as f:
        for row in csv.DictReader(f):
            v, m = int(row["view"]), int(row["marker"])
            if m not in xyz:
                continue
            raw = np.array([float(row["x"]) - nx / 2, float(row["y"]) - ny / 2])
            aligned = alignment.xf_A[v] @ raw + alignment.xf_shift[v]
            x, y, z = (np.array([[[c]]]) for c in xyz[m])
            for name, s in (("warp", alignment.warp), ("rigid", rigid)):
                col, r = wb._positions(s, x, y, z, 1)
                errors[name].append(np.array([col[v, 0, 0, 0], r[v, 0, 0, 0]]) - aligned)
    rms = {k: float(np.sqrt(np.mean(np.square(e)))) for k, e in errors.items()}
    print(rms, record["summary"]["rms_residual_px"])
    assert rms["warp"] < 1.2 * record["summary"]["rms_residual_px"]
    assert rms["rigid"] > 2 * rms["warp"]


def test_reconstruct_to_file_applies_a_records_warp(stack, tmp_path):
    """The command's path: an alignment carrying a warp streams it into the MRC (any layout);
    with --local it is refused in one line."""
    import mrcfile

    from lmalign_jax.workflow.alignment_inputs import Alignment
    from lmalign_jax.workflow.reconstruction import UsageError, reconstruct_to_file

    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(stack)
    shifts = np.zeros((TILTS.size, 2))
    alignment = Alignment(
        UNIT, shifts, TILTS, "w.json", "w.json", "w.json", (N, N), warp=sampling(known_warp())
    )
    reconstruct_to_file(str(tmp_path / "s.mrc"), alignment, str(tmp_path / "w.mrc"), thickness=NZ, quiet=True)
    expected = wb.reconstruct_warp(stack, UNIT, shifts, TILTS, sampling(known_warp()), NZ)
    with mrcfile.open(tmp_path / "w.mrc") as m:
        np.testing.assert_allclose(m.data, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    with pytest.raises(UsageError, match="does not combine with --local"):
        reconstruct_to_file(
            str(tmp_path / "s.mrc"), alignment, str(tmp_path / "x.mrc"), thickness=NZ, local_path="l.xf"
        )
    assert not (tmp_path / "x.mrc").exists()
