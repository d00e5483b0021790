"""`lmalign align --robust`, standard errors in the record, and `lmalign compare`."""

import json
import os
import stat

import numpy as np
import pytest
from test_cli import run_env


@pytest.fixture(scope="module")
def clicks(tmp_path_factory):
    """A 41-view series with 3% mis-clicks (same size as tests/test_align.py's)."""
    d = tmp_path_factory.mktemp("robust")
    rc, _, err = run_env(
        [
            "simulate",
            "--out-dir",
            d,
            "--prefix",
            "s",
            "--views",
            41,
            "--markers",
            24,
            "--outliers",
            0.03,
            "--seed",
            11,
        ]
    )
    assert rc == 0, err
    return d


def test_robust_align_flags_misclicks_and_reports_errors(clicks, tmp_path):
    args = [
        "align",
        clicks / "s.csv",
        "--tilts",
        clicks / "s.rawtlt",
        "--image-size",
        2048,
        2048,
        "--out-dir",
        tmp_path,
        "-q",
    ]
    rc, out, err = run_env([*args, "--robust", "tukey"])
    assert rc == 0, err
    record = json.loads((tmp_path / "s.json").read_text())
    truth = json.loads((clicks / "s_truth.json").read_text())
    assert record["options"]["robust"]["loss"] == "tukey"
    assert record["robust"]["n_rejected"] > 0
    assert "Standard errors (1 sigma)" in out
    fitted = [v for v in record["views"] if not v["excluded"]]
    tilt_se = np.array([v["standard_errors"]["tilt"] for v in fitted])
    assert np.all(tilt_se >= 0) and 0.005 < np.median(tilt_se) < 0.2
    # mis-clicks dominate both figures; left out, each point predicts worse than fitted
    assert record["summary"]["leave_one_out_rms_px"] > record["summary"]["rms_residual_px"]
    assert truth["noise_px"] == 0.5

    rc, out, err = run_env([*args, "--no-errors", "--prefix", "plain"])
    assert rc == 0, err
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert "standard_errors" not in plain["views"][0]
    assert "robust" not in plain


def test_compare_prints_table_and_writes_json(clicks, tmp_path):
    out_json = tmp_path / "cmp.json"
    rc, out, err = run_env(
        [
            "compare",
            clicks / "s.csv",
            "--tilts",
            clicks / "s.rawtlt",
            "--image-size",
            2048,
            2048,
            "--models",
            "jou,imod",
            "--folds",
            3,
            "--json",
            out_json,
        ]
    )
    assert rc == 0, err
    assert "best by BIC" in out and "leave-out" in out
    table = json.loads(out_json.read_text())
    assert json.dumps(table)  # valid JSON


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--models", "jou,wobble"], r"--models: unknown model\(s\) wobble"),
        (["--folds", 1], "--folds must be between 2 and 1000000, got 1"),
        # more folds than points ran for minutes, holding out nothing in most folds (audit)
        (["--folds", 100000], r"--folds 100000 is more than the \d+ points fitted"),
        # local settings without 'local' were ignored; a bad one named no option (audit)
        (["--models", "jou", "--patch-size", 0, 0], r"--patch-size goes with 'local' in --models"),
        (["--models", "jou,local", "--patch-size", 0, 0], r"--patch-size: patch size must be positive"),
        # numpy's own message named no option, after the first fit (audit)
        (["--seed", -1], r"--seed must be an integer from 0 to 2\^63 - 1, got -1"),
        # refused only after the series was read and "fitting jou, jou" printed (audit)
        (["--models", "jou,warp,jou"], r"--models: jou listed twice"),
    ],
)
def test_compare_bad_options(clicks, tmp_path, extra, message):
    rc, _, err = run_env(
        [
            "compare",
            clicks / "s.csv",
            "--tilts",
            clicks / "s.rawtlt",
            "--image-size",
            2048,
            2048,
            "--json",
            tmp_path / "c.json",
            *extra,
        ]
    )
    assert rc == 2
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "c.json").exists()


def test_robust_bad_option(clicks, tmp_path):
    rc, _, err = run_env(
        [
            "align",
            clicks / "s.csv",
            "--tilts",
            clicks / "s.rawtlt",
            "--image-size",
            2048,
            2048,
            "--out-dir",
            tmp_path,
            "--robust",
            "median",
        ]
    )
    assert rc == 2
    assert "invalid choice: 'median'" in err
    assert not list(tmp_path.iterdir())


def _compare_args(clicks, *extra):
    return ["compare", clicks / "s.csv", "--tilts", clicks / "s.rawtlt", "--image-size", 2048, 2048, *extra]


@pytest.mark.parametrize("case", ["folder", "under-a-file", "missing-folder", "the-input", "a-pipe"])
def test_compare_json_path_is_checked_before_any_fit(clicks, tmp_path, case):
    """... and a pipe (or device: /dev/null as root) is refused, not replaced by the atomic write's
    rename."""
    (tmp_path / "afile").write_text("not a folder\n")
    os.mkfifo(tmp_path / "pipe")
    path = {
        "a-pipe": tmp_path / "pipe",
        "folder": tmp_path,
        "under-a-file": tmp_path / "afile" / "x.json",
        "missing-folder": tmp_path / "nope" / "x.json",
        "the-input": clicks / "s.csv",
    }[case]
    problem = {
        "folder": "is a folder; give a file name such as",
        "under-a-file": f"{tmp_path / 'afile'} is a file, not a folder",
        "missing-folder": f"folder {tmp_path / 'nope'} does not exist",
        "the-input": "would overwrite the input",
        "a-pipe": "exists and is not a regular file (a device, pipe or socket",
    }[case]
    before = (clicks / "s.csv").read_text()
    rc, out, err = run_env(_compare_args(clicks, "--json", path))
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmalign: error: --json {path}") and problem in err, err
    assert "fitting" not in err and not out  # refused before any fit
    assert (clicks / "s.csv").read_text() == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)


def test_compare_no_leave_out_says_it_was_skipped(clicks):
    rc, out, err = run_env(_compare_args(clicks, "--models", "jou", "--no-leave-out"))
    assert rc == 0, err
    assert "leave-out: skipped" in out and "held out" not in out
    assert "best by leave-out residual: -" in out


def _few_markers(clicks, path, keep, views=None):
    """s.csv with only markers ``keep`` and below, in ``views`` (0-based as the CSV; all if None)."""
    lines = (clicks / "s.csv").read_text().splitlines()
    few = [lines[0]] + [
        line
        for line in lines[1:]
        if int(line.split(",")[0]) <= keep or (views is not None and int(line.split(",")[1]) not in views)
    ]
    path.write_text("\n".join(few) + "\n")
    return path


def test_compare_fits_the_models_the_data_determine_and_says_why_not_the_others(clicks, tmp_path):
    """Three markers of the series: every view has fewer points than imod's 7 own parameters per
    view need (4). The comparison was refused as a whole (telling the user to group or fix
    parameters, which compare cannot); now jou, whose 3 are met, is fitted and imod is marked not
    fitted. With imod alone, nothing can be fitted: the message names the model and its need.
    (A model with more free parameters than coordinates is marked and never best:
    tests/test_compare.py.)"""
    args = _compare_args(
        clicks, "--models", "imod,jou", "--no-leave-out", "--json", tmp_path / "c.json", "--exclude", "1"
    )
    args[1] = _few_markers(clicks, tmp_path / "m3.csv", 3)
    rc, out, err = run_env(args)
    assert rc == 0, err
    # the first short view is named as the file numbers it (view 1 is excluded), not as the
    # fit's index 0
    assert "not fitted: imod" in out and "imod         0" in out and "(view 2 (1-based): 3 of 4)" in out
    assert "group or fix" not in err
    table = json.loads((tmp_path / "c.json").read_text())
    assert table["best_by_bic"] == "jou" and [r["status"] for r in table["rows"]] == [
        "not fitted",
        "converged",
    ]
    args[args.index("imod,jou")] = "imod"
    (tmp_path / "c.json").unlink()
    rc, out, err = run_env(args)
    assert rc == 2 and not out, err
    assert err == (
        f"lmalign: error: {tmp_path / 'm3.csv'}: none of the models imod can be fitted: a view needs at "
        "least 4 markers for imod, and only 0 view(s) have 4 or more, with 0 marker(s) seen in 2 or more of "
        "them (a fit needs 3 markers and 3 views)\n"
    )
    assert not (tmp_path / "c.json").exists()


def test_compare_leaves_out_a_view_the_richest_model_cannot_determine(clicks, tmp_path):
    """One view with 3 markers: left out for every model (a warning says so, in compare's terms),
    and both are fitted on the others."""
    args = _compare_args(clicks, "--models", "jou,imod", "--no-leave-out")
    args[1] = _few_markers(clicks, tmp_path / "v.csv", 3, views={10})
    rc, out, err = run_env(args)
    assert rc == 0, err
    assert (
        "view(s) 11 (1-based) have fewer markers than some model fits parameters of its own there, and are "
        "left out of the comparison" in err
    )
    assert "--mode" not in err and "not fitted" not in out and "best by BIC: " in out
    assert "observations" in out and out.count("converged") == 2
