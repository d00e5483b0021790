"""Model comparison: the model that made the data wins on BIC and on the leave-out residual."""

import json

import numpy as np
import pytest

from lmalign_jax import simulate
from lmalign_jax.analysis.compare import DEFAULT_MODELS, ModelComparison, bic, compare_models, leave_out_folds

# One problem size for every comparison: each model compiles once.
SIZE = dict(n_views=31, n_markers=20)
STRETCH_SKEW = dict(model="imod", extra={"xstretch": (0, 0.01), "skew": (0, 0.01)})


@pytest.fixture(scope="module")
def jou_data():
    return simulate(**SIZE, seed=0)


@pytest.fixture(scope="module")
def jou_comparison(jou_data):
    return compare_models(jou_data.observations)


@pytest.fixture(scope="module", params=[0, 2])
def imod_comparison(request):
    return compare_models(simulate(**SIZE, seed=request.param, **STRETCH_SKEW).observations)


def test_richer_models_do_not_win_on_jou_data(jou_comparison):
    c = jou_comparison
    print("\n" + c.to_text())
    assert isinstance(c, ModelComparison) and c.models == DEFAULT_MODELS
    jou = c.row("jou")
    for richer in ("luther", "imod"):
        assert c.row(richer).bic > jou.bic + 10
        assert c.row(richer).leave_out_rms_px > jou.leave_out_rms_px
    assert c.best_by_bic == c.best_by_leave_out == "jou"
    # all fit the data about equally well in-sample: richer models only lower the RMS a little
    assert c.row("imod").rms_residual_px <= jou.rms_residual_px < 1.05 * c.row("imod").rms_residual_px


def test_imod_wins_on_stretched_and_skewed_data(imod_comparison):
    c = imod_comparison
    print("\n" + c.to_text())
    assert c.best_by_bic == c.best_by_leave_out == "imod"
    imod = c.row("imod")
    assert imod.leave_out_rms_px < 0.8 * min(c.row(m).leave_out_rms_px for m in ("jou", "luther", "diez"))
    assert imod.rms_residual_px < 0.5  # at the noise floor; jou is not
    assert c.row("jou").rms_residual_px > 1.0


def test_diez_is_reported_not_crashed(jou_comparison):
    diez = jou_comparison.row("diez")
    assert diez.status in ("converged", "stopped at the iteration limit before converging")
    assert diez.rms_residual_px > 5.0  # no shift term: the 15 px shifts cannot be fitted
    assert "no shift term" in diez.note
    assert "note: diez: no shift term" in jou_comparison.to_text()


def test_table_numbers(jou_data, jou_comparison):
    c = jou_comparison
    obs = jou_data.observations
    n = 2 * obs.n_observed
    for row in c.rows:
        result = c.results[row.model]
        r = result.residuals[obs.mask]
        rss = float(np.sum(r * r))
        assert row.n_free == result.n_free and row.n_observed == obs.n_observed
        assert row.bic == pytest.approx(n * np.log(rss / n) + result.n_free * np.log(n))
        assert row.rms_residual_px == pytest.approx(result.rms_residual_px)
        assert row.mean_residual_px == pytest.approx(result.mean_residual_px)
        assert row.leave_out_rms_px > row.rms_residual_px  # predicting is harder than fitting
        assert row.n_held_out == int((c.fold_of >= 0).sum())
    assert c.reference == "jou"
    assert c.row("jou").max_rotation_diff_deg == 0.0 and c.row("jou").max_tilt_diff_deg == 0.0
    imod = c.row("imod")
    drot = c.results["imod"].rotation_deg - c.results["jou"].rotation_deg
    assert imod.max_rotation_diff_deg == pytest.approx(np.max(np.abs(drot)))
    assert 0 < imod.max_tilt_diff_deg < 0.5  # the same data: the models agree on the tilts
    table = c.format_table()
    assert len(table.splitlines()) == 1 + len(DEFAULT_MODELS)
    assert all(m in table for m in DEFAULT_MODELS)
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["best_by_bic"] == "jou" and [r["model"] for r in d["rows"]] == list(DEFAULT_MODELS)
    assert d["rows"][3]["bic"] == pytest.approx(imod.bic)


def test_bic_helper():
    assert bic(100.0, 200, 10) == pytest.approx(200 * np.log(0.5) + 10 * np.log(200))
    assert np.isnan(bic(0.0, 200, 10))


def test_leave_out_folds(jou_data):
    mask = jou_data.observations.mask.copy()
    mask[:20, 0] = False  # a marker seen in few views
    fold_of = leave_out_folds(mask, folds=5, seed=3)
    assert (fold_of[~mask] == -1).all()
    assert np.array_equal(fold_of, leave_out_folds(mask, folds=5, seed=3))
    assert not np.array_equal(fold_of, leave_out_folds(mask, folds=5, seed=4))
    for f in range(5):
        held = fold_of == f
        assert 0.15 < held.sum() / mask.sum() <= 0.2 + 1e-9
        train = mask & ~held
        assert (train.sum(axis=0) >= 3).all() and (train.sum(axis=1) >= 5).all()
    assert (fold_of[:, 0] >= 0).sum() <= 5 * (mask[:, 0].sum() - 3)


def test_a_model_that_raises_gets_an_error_row(jou_data):
    # the mode applies to imod only (jou has no xstretch), and is invalid there
    c = compare_models(jou_data.observations, ("jou", "imod"), modes={"xstretch": "bogus"}, leave_out=False)
    assert c.row("jou").ok and c.row("jou").status == "converged"
    assert (
        c.row("imod").status.startswith("error: ValueError")
        and "unknown mode 'bogus'" in c.row("imod").status
    )
    assert not c.row("imod").ok and c.best_by_bic == "jou"
    assert np.isnan(c.row("jou").leave_out_rms_px) and c.best_by_leave_out is None
    assert "imod" in c.to_text()
    json.dumps(c.to_dict(), allow_nan=False)


def test_comma_separated_models_and_a_subset(jou_data):
    c = compare_models(jou_data.observations, "imod, jou", folds=4)
    assert c.models == ("imod", "jou") and c.reference == "imod" and c.folds == 4


def test_bad_input(jou_data):
    obs = jou_data.observations
    with pytest.raises(
        ValueError, match=r"unknown projection model\(s\) 'tomo3d'; choose from jou, luther, diez, imod"
    ):
        compare_models(obs, ("jou", "tomo3d"))
    with pytest.raises(ValueError, match="models is empty"):
        compare_models(obs, ())
    with pytest.raises(ValueError, match="models is empty"):
        compare_models(obs, "")
    with pytest.raises(ValueError, match="listed more than once"):
        compare_models(obs, ("jou", "imod", "jou"))
    with pytest.raises(ValueError, match="compare_models sets model itself"):
        compare_models(obs, model="jou")
    with pytest.raises(ValueError, match="compare_models sets weights itself"):
        compare_models(obs, weights=np.ones(obs.mask.shape))
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        compare_models(obs, folds=1)
    with pytest.raises(ValueError, match=r"modes name parameter\(s\) \['mag_q'\]"):
        compare_models(obs, modes={"mag_q": "free"})


# Few markers: 31 views x 3 markers give 186 coordinates, fewer than imod's free parameters.
FEW = dict(n_views=31, seed=0, **STRETCH_SKEW)


def test_an_underdetermined_model_is_marked_and_never_best():
    """imod fits 7 parameters of its own per view; 3 markers give each view 6 coordinates. Fitted,
    it passed through every point (RMS 0, a BIC far below jou's, 216 free parameters for 186
    coordinates); align() now refuses it, and the comparison marks it underdetermined, does not
    fit it, and jou is the best model."""
    obs = simulate(n_markers=3, **FEW).observations
    c = compare_models(obs, ("jou", "imod"), leave_out=False)
    print("\n" + c.to_text())
    jou, imod = c.row("jou"), c.row("imod")
    assert jou.ok and not jou.underdetermined and jou.rms_residual_px > 0.1
    assert imod.underdetermined and not imod.ok and not imod.ranked and c.results["imod"] is None
    assert np.isnan(imod.bic) and np.isfinite(jou.bic)
    assert c.best_by_bic == "jou" and c.reference == "jou"
    text = c.to_text()
    assert f"underdetermined: {obs.n_views} of {obs.n_views} views have fewer points than their own" in text
    assert "(view 0: 3 of 4)" in text
    assert "best by BIC: jou;" in text and "not fitted: imod" in text
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["best_by_bic"] == "jou" and [r["underdetermined"] for r in d["rows"]] == [False, True]
    # with imod alone there is no best model at all, nor a base for local alignment
    alone = compare_models(obs, ("imod", "local"), leave_out=False)
    assert alone.best_by_bic is None and alone.best_by_leave_out is None and alone.local is None
    assert "(no determined model answered: each is underdetermined or failed)" in alone.to_text()
    assert "no determined rigid model to stand on (imod: underdetermined" in alone.to_text()


def test_a_determined_model_is_ranked_and_a_fold_too_small_for_it_is_not():
    """6 markers: imod (225 free for 372 coordinates) is determined and wins on its stretched
    data; with 2 folds holding out half the points its training sets have fewer coordinates
    than parameters, so its leave-out residual is skipped, while jou's is not. Folds that leave
    a view fewer training points than its own parameters need skip the leave-out too."""
    obs = simulate(n_markers=6, **FEW).observations
    c = compare_models(obs, ("jou", "imod"), leave_out=False)
    print("\n" + c.to_text())
    assert not any(r.underdetermined for r in c.rows) and c.best_by_bic == "imod"
    assert "underdetermined" not in c.to_text()
    # with 1 training marker per view allowed, jou's folds would fit views to 1 or 2 points
    loose = compare_models(obs, ("jou",), folds=2, min_views_per_marker=2, min_markers_per_view=1)
    assert np.isnan(loose.row("jou").leave_out_rms_px) and loose.best_by_leave_out is None
    assert "training point(s), fewer than the 3 its own parameters need" in loose.row("jou").note
    halves = compare_models(obs, ("jou", "imod"), folds=2, min_views_per_marker=2, min_markers_per_view=3)
    print("\n" + halves.to_text())
    jou, imod = halves.row("jou"), halves.row("imod")
    held = max(int((halves.fold_of == f).sum()) for f in range(2))
    assert jou.n_free < 2 * (obs.n_observed - held) <= imod.n_free < 2 * obs.n_observed
    assert np.isfinite(jou.leave_out_rms_px) and np.isnan(imod.leave_out_rms_px)
    assert "leave-out skipped" in imod.note and halves.best_by_leave_out == "jou"
    assert halves.best_by_bic == "imod"  # determined on all the points: still ranked by BIC


def test_skipped_leave_out_says_so(jou_data):
    c = compare_models(jou_data.observations, ("jou",), leave_out=False)
    text = c.to_text()
    assert "leave-out: skipped" in text and "held out" not in text
    assert c.to_dict()["leave_out"] is False and c.to_dict()["n_held_out"] == 0
