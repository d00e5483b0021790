"""`lmalign batch --share rotation` (lmalign_jax.analysis.shared_constant and
workflow.shared_constant) on a simulated batch with a known shared tilt axis and one series whose
axis is 5 degrees off (a wrong mdoc): the shared axis is recovered within its standard error, the
wrong series is flagged and left out, and the shared value is the optimum of a direct joint solve.

One module-scoped batch (5 series x 21 views x 10 markers) serves every test; the first pass and
the fixed-rotation pass compile once each and are reused by the direct joint solve.
"""

import json

import numpy as np
import pytest
from helpers import run_cli as run

import lmalign_jax as lm
from lmalign_jax import io
from lmalign_jax.analysis.shared_constant import combine, series_estimate
from lmalign_jax.batch import align_batch

TRUE_ROTATION = -12.0
#: The series simulated with its axis OFF_BY degrees from the others (a wrong mdoc).
WRONG, OFF_BY = "s3", 5.0
NAMES = [f"s{i}" for i in range(5)]
SIZE = (1024, 1024)


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")


def _write_series(folder, name, series):
    obs = series.observations
    ids = tuple(range(1, obs.n_markers + 1))
    markers = io.MarkerSet(xy=obs.xy, mask=obs.mask, marker_ids=ids, image_size=SIZE)
    io.write_markers_csv(folder / f"{name}.csv", markers)
    io.write_tlt(folder / f"{name}.rawtlt", obs.tilts_deg)
    return f"{name}.csv {name}.rawtlt {SIZE[0]} {SIZE[1]}\n"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("share")
    sims = {
        name: lm.simulate(
            n_views=21,
            n_markers=10,
            image_size=SIZE,
            rotation_deg=TRUE_ROTATION + (OFF_BY if name == WRONG else 0.0),
            rotation_jitter_deg=0.0,
            seed=20 + i,
        )
        for i, name in enumerate(NAMES)
    }
    (folder / "list.txt").write_text("".join(_write_series(folder, n, s) for n, s in sims.items()))
    out = folder / "out"
    args = ["batch", folder / "list.txt", "--out-dir", out, "--no-figure", "--no-errors"]
    rc, stdout, err = run([*args, "--share", "rotation", "--rotation-mode", "shared"])
    assert rc == 0, err
    summary = json.loads((out / "batch_summary.json").read_text())
    return {"folder": folder, "out": out, "stdout": stdout, "shared": summary["shared"], "sims": sims}


def test_recovers_the_shared_axis_and_flags_the_wrong_series(batch):
    shared = batch["shared"]
    rows = {r["series"]: r for r in shared["series"]}
    assert shared["disagreeing"] == [WRONG] and rows[WRONG]["verdict"] == "disagrees"
    assert all(rows[n]["verdict"] == "kept" for n in NAMES if n != WRONG)
    # the shared value from the 4 kept series, within 3.5 of its predicted standard errors of the truth
    assert shared["se"] > 0 and abs(shared["value"] - TRUE_ROTATION) < 3.5 * shared["se"], shared
    # each kept series' own standard error is honest: sum of z^2 about the truth is chi^2 with 4 dof
    chi2 = sum(((rows[n]["estimate"] - TRUE_ROTATION) / rows[n]["se"]) ** 2 for n in NAMES if n != WRONG)
    assert chi2 < 18.5  # P(chi^2_4 > 18.5) = 0.001
    # the wrong series: its own estimate is its own (wrong) axis, and it is far outside the others
    assert abs(rows[WRONG]["estimate"] - (TRUE_ROTATION + OFF_BY)) < 4 * rows[WRONG]["se"]
    assert rows[WRONG]["z"] > 20 and all(abs(rows[n]["z"]) < shared["k"] for n in NAMES if n != WRONG)
    assert "disagrees" in batch["stdout"] and f"Shared rotation: {shared['value']:.3f}" in batch["stdout"]
    tsv = (batch["out"] / "batch_summary_shared.tsv").read_text().splitlines()
    columns = ["estimate_deg", "se_deg", "difference_deg", "z"]
    assert tsv[0].split("\t") == ["series", *(f"rotation_{c}" for c in columns), "verdict"]
    assert [line.split("\t")[-1] for line in tsv[1:]] == [rows[n]["verdict"] for n in NAMES]


def test_kept_series_are_aligned_with_the_shared_axis(batch):
    value = batch["shared"]["value"]
    for name in NAMES:
        xf = np.loadtxt(batch["out"] / name / f"{name}.xf")
        # .xf: A = R(-alpha) / s, so alpha = atan2(-A21, A11) (MODEL.md); the file keeps 7 digits
        alpha = np.degrees(np.arctan2(-xf[:, 2], xf[:, 0]))
        if name == WRONG:
            assert abs(np.mean(alpha) - (TRUE_ROTATION + OFF_BY)) < 0.5
        else:
            np.testing.assert_allclose(alpha, value, atol=1e-4)


def test_shared_value_is_the_direct_joint_optimum(batch):
    """The inverse-variance combination against minimising sum_i P_i(R) (profile chi^2) directly."""
    kept = [batch["sims"][n].observations for n in NAMES if n != WRONG]
    own = align_batch(kept, modes={"rotation": "shared"})
    estimates = np.array([series_estimate(r) for r in own])
    sigma2 = np.array([r.sigma_px**2 for r in own])
    shared = combine(NAMES[:4], estimates[:, 0], estimates[:, 1])
    assert shared.kept.all()
    # the first-order joint optimum: weights 1/se^2
    w = 1.0 / estimates[:, 1] ** 2
    assert shared.value == pytest.approx(np.sum(w * estimates[:, 0]) / np.sum(w), abs=1e-12)
    # the profile of the joint cost, re-solving every series with R fixed, at R-hat and R-hat +- 2 SE
    step = 2 * shared.se
    trial = shared.value + step * np.array([-1.0, 0.0, 1.0])
    fixed = align_batch(kept * 3, modes={"rotation": "fixed"}, rotation_deg=list(np.repeat(trial, len(kept))))
    assert all(r.converged for r in fixed)
    cost = np.array([np.nansum(r.residuals**2) for r in fixed]).reshape(3, len(kept))
    profile = np.sum(cost / sigma2, axis=1)
    a, b, _ = np.polyfit(trial - shared.value, profile, 2)
    vertex = shared.value - b / (2 * a)
    assert abs(vertex - shared.value) < 0.01 * shared.se
    # and the joint cost's curvature is the combination's: P(R-hat +- SE) - P(R-hat) = 1
    assert a * shared.se**2 == pytest.approx(1.0, rel=0.05)


def test_bad_share_input_gives_a_clear_message(batch, tmp_path):
    listing = batch["folder"] / "list.txt"
    rc, _, err = run(["batch", listing, "--out-dir", tmp_path, "--share", "focus"])
    assert rc == 2 and "--share: invalid choice: 'focus'" in err
    rc, _, err = run(["batch", listing, "--out-dir", tmp_path, "--share", "rotation", "--resume"])
    assert rc == 2 and "--share and --resume cannot be combined" in err
    single = batch["folder"] / "single.txt"
    single.write_text(listing.read_text().splitlines()[0] + "\n")
    rc, _, err = run(["batch", single, "--out-dir", tmp_path, "--share", "rotation"])
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "lmalign: error: --share rotation needs at least two series to share it; the batch has 1 to align"
    )
    assert not any(tmp_path.iterdir())  # nothing written


def test_real_scatter_between_series_widens_the_test_instead_of_flagging_them():
    """Series whose axes truly scatter by tau = 0.1 deg, 5x their own errors: none is flagged (the
    leave-one-out test adds tau^2), the 5 deg one is, and the scatter is estimated."""
    rng = np.random.default_rng(7)
    n, tau, se = 12, 0.1, np.full(12, 0.02)
    estimates = TRUE_ROTATION + tau * rng.standard_normal(n) + se * rng.standard_normal(n)
    estimates[4] += OFF_BY
    names = [f"t{i}" for i in range(n)]
    shared = combine(names, estimates, se)
    assert shared.disagreeing == ["t4"] and shared.kept.sum() == n - 1
    # tau from 11 series: its relative standard error is about 1/sqrt(2 * 10), so within 3 of them
    assert shared.between_sd == pytest.approx(tau, rel=3 / np.sqrt(20))
    assert shared.se_with_scatter > 3 * shared.se
    assert abs(shared.value - TRUE_ROTATION) < 4 * shared.se_with_scatter
    # without the scatter term the same honest series would be called outliers
    z_no_tau = (estimates - shared.value) / se
    assert np.sum(np.abs(z_no_tau[shared.kept]) > shared.k) > 0
    with pytest.raises(ValueError, match="needs at least two series with an estimate; 1 of 2 have one"):
        combine(["a", "b"], [1.0, np.nan], [0.1, 0.1])
