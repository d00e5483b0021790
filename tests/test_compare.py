"""Model comparison: the model that made the data wins on BIC and on the leave-out residual."""

import json

import numpy as np
import pytest

from lmalign_jax import simulate
from lmalign_jax.analysis.compare import (
    DEFAULT_MODELS,
    ModelComparison,
    ModelRow,
    bic,
    compare_models,
    leave_out_folds,
)
from lmalign_jax.solve import LMConfig

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
    named = compare_models(obs, ("imod",), leave_out=False, view_names=[f"tilt {v}" for v in range(31)])
    assert "(tilt 0: 3 of 4)" in named.to_text()
    with pytest.raises(ValueError, match="view_names has 2 names for 31 views"):
        compare_models(obs, ("imod",), view_names=["a", "b"])
    assert "best by BIC: jou;" in text and "not fitted: imod" in text
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["best_by_bic"] == "jou" and [r["underdetermined"] for r in d["rows"]] == [False, True]
    # with imod alone there is no best model at all, nor a base for local alignment
    alone = compare_models(obs, ("imod", "local"), leave_out=False)
    assert alone.best_by_bic is None and alone.best_by_leave_out is None and alone.local is None
    assert "no determined rigid model to stand on (imod: underdetermined" in alone.to_text()
    assert "(no model is ranked: each is underdetermined, did not converge or failed)" in alone.to_text()


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


def _row(model, status, bic, n_free, effective=float("nan"), errors=None, n_observed=63, rss=5.0):
    """A table row as compare_models makes it, with the numbers that decide the ranking."""
    nan = float("nan")
    return ModelRow(
        model, status, n_free, n_observed, rss, 0.2, 0.2, bic, nan, nan, 0, nan, nan, nan, 1.0,
        effective_parameters=effective, leave_out_errors=errors,
    )  # fmt: skip


STOPPED = "stopped at the iteration limit before converging"


def _table(*rows, leave_out=False):
    return ModelComparison(rows, {}, rows[0].model, 5, 0, np.full((21, 3), -1), leave_out=leave_out)


def test_a_fit_that_did_not_converge_is_never_ranked():
    """warp stopped at the iteration limit with a BIC lower than jou's (m3 of the audit: 233 free,
    119 effective, for 126 coordinates): it was named best by BIC and judged as a deformation."""
    c = _table(_row("jou", "converged", 129.2, 109, 109.0), _row("warp", STOPPED, 114.6, 233, 119.0))
    jou, warp = c.row("jou"), c.row("warp")
    assert warp.ok and not warp.converged and not warp.ranked and not warp.underdetermined
    assert jou.ranked and c.best_by_bic == "jou"
    assert warp.status_text == f"{STOPPED}; not ranked"
    text = c.to_text()
    print("\n" + text)
    assert "best by BIC: jou;" in text and "not ranked: warp (did not converge" in text
    warp_line = next(line for line in text.splitlines() if line.startswith("warp "))
    assert warp_line.split()[6:8] == ["114.6", "-"]  # no dBIC for a row that is not ranked
    (verdict,) = c.deformation_verdicts()
    assert not verdict["justified"] and verdict["text"] == f"warp over jou: not judged ({STOPPED})"
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["best_by_bic"] == "jou" and [r["ranked"] for r in d["rows"]] == [True, False]
    # nor is an unconverged rigid model the one deformation models are judged against
    c = _table(_row("jou", STOPPED, 129.2, 109), _row("warp", "converged", 140.0, 233, 119.0))
    assert c.best_by_bic == "warp" and c.deformation_verdicts() == []


def test_a_real_fit_stopped_at_the_iteration_limit_is_not_ranked(jou_data):
    c = compare_models(jou_data.observations, ("jou",), leave_out=False, config=LMConfig(max_iterations=1))
    jou = c.row("jou")
    assert jou.status == STOPPED and jou.ok and not jou.ranked and np.isfinite(jou.bic)
    assert c.best_by_bic is None and "(no model is ranked: each is underdetermined, did not converge" in (
        c.to_text()
    )


def test_verdicts_without_leave_out_say_so_not_nan():
    """With leave_out=False the verdicts printed "leave-out squared error higher by nan +- nan"."""
    rows = (_row("jou", "converged", -226.6, 210, 210.0), _row("warp", "converged", -168.2, 394, 220.1))
    (verdict,) = _table(*rows).deformation_verdicts()
    assert verdict["text"] == (
        "warp over jou: not justified (BIC higher by 58.4, decisive against; leave-out skipped "
        "(--no-leave-out))"
    )
    many = {"n_observed": 2000}  # 4000 coordinates: BIC's asymptotics hold, and AICc agrees
    rows = (
        _row("jou", "converged", 100.0, 210, 210.0, **many),
        _row("warp", "converged", 50.0, 394, 220.1, **many, rss=4.0),
    )
    (verdict,) = _table(*rows).deformation_verdicts()
    assert (
        "warp over jou: justified by BIC alone (BIC lower by 50.0, decisive; leave-out skipped"
        in (verdict["text"])
    )
    assert not verdict["justified"] and verdict["justified_by_bic"]
    # near saturation (audit: 3 views, 60 coordinates, warp's 56 parameters fitted the noise to
    # 0.10 px of 0.5 and BIC called it decisive): the small-sample AICc must agree, and does not
    few = {"n_observed": 30}
    rows = (
        _row("jou", "converged", -2.9, 40, 40.0, **few, rss=30 * 2 * 0.2494**2),
        _row("warp", "converged", -66.8, 56, 50.0, **few, rss=30 * 2 * 0.1041**2),
    )
    (verdict,) = _table(*rows, leave_out=True).deformation_verdicts()
    assert verdict["text"].startswith("warp over jou: not justified (BIC lower by 63.9, decisive;"), verdict
    assert "60 coordinates for 56 parameters are too few for BIC" in verdict["text"]
    assert not verdict["justified_by_bic"]
    # leave-out run, but not for this model: no numbers either
    (verdict,) = _table(*rows, leave_out=True).deformation_verdicts()
    assert "leave-out not compared (see the notes)" in verdict["text"] and "nan" not in verdict["text"]
    # one held-out point: no standard error, said in words
    one = np.ones((1, 2))
    rows = (
        _row("jou", "converged", 100.0, 210, errors=one),
        _row("warp", "converged", 95.0, 394, errors=0 * one),
    )
    (verdict,) = _table(*rows, leave_out=True).deformation_verdicts()
    assert "lower by 1.0000 (one point: no standard error) px^2, not significant" in verdict["text"]


def test_a_deformation_model_is_judged_against_the_rigid_model_it_extends():
    """warp over imod was 'justified by BIC alone' on midzone2a with warp's RMS above imod's: the
    BIC gain was jou's fewer parameters than imod's, not the warp (audit). warp extends jou: it is
    judged against jou where jou is listed; against the best rigid model otherwise, said so; not
    at all, said so, when no rigid model is listed (no line was printed)."""
    many = {"n_observed": 2000}  # coordinates enough for BIC (the small-sample AICc agrees)
    jou = _row("jou", "converged", 120.0, 210, 210.0, **many)
    imod = _row("imod", "converged", 100.0, 300, 300.0, **many, rss=4.5)
    warp = _row("warp", "converged", 105.0, 394, 220.0, **many, rss=4.0)
    (verdict,) = _table(jou, imod, warp).deformation_verdicts()
    assert verdict["rigid"] == "jou" and verdict["justified_by_bic"] and verdict["delta_bic"] == -15.0
    (verdict,) = _table(imod, warp).deformation_verdicts()
    assert verdict["rigid"] == "imod" and verdict["text"].startswith(
        "warp over imod (which it does not extend: list jou to judge the deformation itself): not justified "
        "(BIC higher by 5.0, not decisive;"
    )
    text = _table(warp, _row("shape", "converged", 111.0, 300, 215.0)).to_text()
    assert (
        "deformation: warp, shape not judged: no rigid model in the table to judge them against (list jou"
        in text
    )


def test_local_without_leave_out_says_so_not_nan(jou_data):
    c = compare_models(jou_data.observations, ("jou", "local"), leave_out=False)
    text = c.to_text()
    print("\n" + text)
    assert c.local is not None and c.local.leave_out_skipped == "skipped (--no-leave-out)"
    assert "; leave-out skipped (--no-leave-out))" in c.local.text and "nan" not in text
    assert c.local.to_dict()["text"] == c.local.text
