"""`lmalign batch --share tilt-offset` on a simulated batch with a known stage tilt offset.

Every specimen is a slab with beads on both surfaces, turned about the tilt axis by the shared
offset D plus its own small slant (sd 0.3 deg, honest scatter between specimens); one series'
specimen is slanted 8 deg more (a lamella milled at an angle). A series' stage offset and its
specimen's slant are the same rotation of the specimen about the tilt axis (R_y(t + d) X =
R_y(t) R_y(d) X), so the slab is turned by D + slant and the tilts are the nominal ones. Its
true level offset is then D + slant + the mean of its random per-view tilt errors (the
alignment is reported in the frame whose tilts deviate from the nominal ones by zero on
average). Checked: each series' estimate against its own truth with its own standard error,
the shared value against the weighted truth of the kept series, the slanted series flagged
and the honest scatter not, the written .tlt of the kept series offset by the shared value.
"""

import json

import numpy as np
import pytest
from helpers import run_cli as run

import lmalign_jax as lm
from lmalign_jax import io

SHARED_OFFSET = 2.0
SLANT_SD = 0.3
ODD, ODD_EXTRA = "s2", 8.0
NAMES = [f"s{i}" for i in range(6)]
SIZE = (1024, 1024)
THICKNESS = 150.0
N_VIEWS, N_BEADS = 21, 16


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")


def _slab(rng, angle_deg: float) -> np.ndarray:
    """Beads (N_BEADS, 3) on the two surfaces of a level slab (2 px of z jitter), turned by
    ``angle_deg`` about the tilt axis (y): x' = x cos + z sin, z' = -x sin + z cos."""
    x = rng.uniform(-0.35, 0.35, N_BEADS) * SIZE[0]
    y = rng.uniform(-0.35, 0.35, N_BEADS) * SIZE[1]
    z = np.where(np.arange(N_BEADS) % 2 == 0, -0.5, 0.5) * THICKNESS + rng.normal(0.0, 2.0, N_BEADS)
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return np.column_stack([c * x + s * z, y, -s * x + c * z])


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("share_tilt")
    rng = np.random.default_rng(16)
    truth, lines = {}, []
    for i, name in enumerate(NAMES):
        slant = SLANT_SD * rng.standard_normal() + (ODD_EXTRA if name == ODD else 0.0)
        sim = lm.simulate(
            n_views=N_VIEWS,
            n_markers=N_BEADS,
            image_size=SIZE,
            markers=_slab(rng, SHARED_OFFSET + slant),
            seed=40 + i,
        )
        obs = sim.observations
        tilt_error = np.degrees(sim.views[:, 2]) - obs.tilts_deg  # jou: scale, rotation, tilt, dx, dy
        truth[name] = SHARED_OFFSET + slant + float(np.mean(tilt_error))
        ids = tuple(range(1, N_BEADS + 1))
        markers = io.MarkerSet(xy=obs.xy, mask=obs.mask, marker_ids=ids, image_size=SIZE)
        io.write_markers_csv(folder / f"{name}.csv", markers)
        io.write_tlt(folder / f"{name}.rawtlt", obs.tilts_deg)
        lines.append(f"{name}.csv {name}.rawtlt {SIZE[0]} {SIZE[1]}\n")
    (folder / "list.txt").write_text("".join(lines))
    out = folder / "out"
    args = ["batch", folder / "list.txt", "--out-dir", out, "--no-figure", "--no-errors"]
    rc, stdout, err = run([*args, "--share", "tilt-offset"])
    assert rc == 0, err
    summary = json.loads((out / "batch_summary.json").read_text())
    return {"folder": folder, "out": out, "stdout": stdout, "shared": summary["shared"], "truth": truth}


def test_recovers_the_shared_offset_and_flags_the_slanted_series(batch):
    shared, truth = batch["shared"], batch["truth"]
    rows = {r["series"]: r for r in shared["series"]}
    assert shared["constant"] == "tilt-offset" and shared["unit"] == "deg"
    assert shared["disagreeing"] == [ODD] and rows[ODD]["verdict"] == "disagrees"
    kept = [n for n in NAMES if n != ODD]
    assert all(rows[n]["verdict"] == "kept" for n in kept)
    # each series' level offset about its own truth, in its own standard errors: chi^2 with 6 dof
    chi2 = sum(((rows[n]["estimate"] - truth[n]) / rows[n]["se"]) ** 2 for n in NAMES)
    assert chi2 < 22.5  # P(chi^2_6 > 22.5) = 0.001
    # the shared value: the weighted mean of the kept series' truths, within 3.5 of its standard error
    w = np.array([rows[n]["se"] ** -2 for n in kept])
    weighted_truth = float(np.sum(w * np.array([truth[n] for n in kept])) / np.sum(w))
    assert abs(shared["value"] - weighted_truth) < 3.5 * shared["se"], shared
    # the honest slants (sd 0.3 deg, about twice the fits' errors) are between-series scatter, not outliers
    # (tau from 5 series can come out 0: then se_with_scatter equals se; over 12 batches the population
    # check below held with |z| <= 2.7 and no honest series was flagged)
    assert shared["se_with_scatter"] >= shared["se"]
    assert abs(shared["value"] - SHARED_OFFSET) < 3.5 * shared["se_with_scatter"]
    assert all(abs(rows[n]["z"]) < shared["k"] for n in kept)
    # the slanted series: its own estimate is its own slant, far outside the others
    assert abs(rows[ODD]["estimate"] - truth[ODD]) < 4 * rows[ODD]["se"] and rows[ODD]["z"] > 10
    assert f"Shared tilt-offset: {shared['value']:.3f}" in batch["stdout"]
    tsv = (batch["out"] / "batch_summary_shared.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[1] == "tilt-offset_estimate_deg"


def test_kept_series_carry_the_shared_offset_in_their_tilts(batch):
    value = batch["shared"]["value"]
    for name in NAMES:
        raw = np.loadtxt(batch["folder"] / f"{name}.rawtlt")
        tlt = np.loadtxt(batch["out"] / name / f"{name}.tlt")
        record = json.loads((batch["out"] / name / f"{name}.json").read_text())
        # the reporting frame: solved tilts deviate from the (offset) nominal ones by zero on average
        if name == ODD:
            assert abs(np.mean(tlt - raw)) < 2e-3 and "tilt_offset_deg" not in record["inputs"]
        else:
            assert abs(np.mean(tlt - raw) - value) < 2e-3
            assert record["inputs"]["tilt_offset_deg"] == pytest.approx(value)
            assert "--share tilt-offset" in record["inputs"]["tilt_offset_source"]


def test_mag_is_refused_with_the_reason_and_what_to_use(batch, tmp_path):
    rc, _, err = run(["batch", batch["folder"] / "list.txt", "--out-dir", tmp_path, "--share", "mag"])
    last = err.strip().splitlines()[-1]
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert last.startswith("lmalign: error: --share mag is not available: the scale is fixed to 1")
    assert "pixel size" in last and "shareable: rotation, tilt-offset" in last
    assert not any(tmp_path.iterdir())
