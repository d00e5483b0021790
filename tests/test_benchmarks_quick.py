"""The benchmark suite runs end to end (``python -m benchmarks --quick``) and writes a sane report.

Timings are recorded by the benchmarks, never judged here: this only guards against the script
rotting (API drift, a peer's interface changing) and checks that every solve reached the noise
floor. Takes about a minute or two on 2 cores.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("scipy")
pytest.importorskip("optax")
pytest.importorskip("skimage")
try:  # optional peer (the "bench" extra); the runner reports it as skipped when missing
    import optimistix  # noqa: F401

    HAVE_OPTIMISTIX = True
except ImportError:
    HAVE_OPTIMISTIX = False


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)]
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.with_suffix(".md").exists()
    assert "| solver |" in proc.stdout  # the markdown tables were printed
    return json.loads(out.read_text())


def test_report_has_every_section(report):
    meta = report["meta"]
    for key in ("date", "cpu_model", "cpu_count", "jax_devices", "device_kind", "versions"):
        assert key in meta
    for pkg in ("python", "jax", "numpy", "scipy", "optax"):
        assert meta["versions"][pkg]
    assert "optimistix" in meta["versions"]  # optional (the bench extra): None when not installed
    for section in ("paper", "peers", "scaling", "recon", "checks"):
        assert section in report, section


def test_paper_tables(report):
    datasets = report["paper"]["datasets"]
    assert set(datasets) == {"a", "b"}
    assert datasets["a"]["n_views"] == 107 and datasets["a"]["n_markers"] == 6
    assert datasets["a"]["missing_fraction"] == 0
    assert datasets["b"]["n_markers"] == 30 and 2700 <= datasets["b"]["n_obs"] <= 3100
    for d in datasets.values():
        assert set(d["configs"]) == {
            "paper-style, with initial",
            "paper-style, without initial",
            "full, with initial",
            "full, without initial",
        }
        for c in d["configs"].values():
            assert c["status"] == "converged"
            assert [s["stage"] for s in c["stage_reports"]] == c["stages"]
            assert all(s["seconds_steady"] > 0 and s["iterations"] >= 1 for s in c["stage_reports"])
        # the joint stage reaches the least-squares optimum: never above the paper-style answer
        assert (
            d["configs"]["full, with initial"]["rms_px"]
            <= d["configs"]["paper-style, with initial"]["rms_px"] + 1e-9
        )


def test_peers_agree_with_ours(report):
    d = report["peers"]["datasets"]["a"]
    rows = {r["solver"]: r for r in d["solvers"]}
    ours = rows["lmalign_jax (ours)"]
    assert ours["status"] == "converged"
    names = [
        "scipy trf + FD jac_sparsity",
        "scipy trf + exact sparse J",
        "scipy lm (MINPACK)",
        "optax lbfgs",
        "scipy L-BFGS-B",
    ]
    if HAVE_OPTIMISTIX:
        names.append("optimistix LevenbergMarquardt")
    for name in names:
        r = rows[name]
        assert "skipped" not in r, name
        assert {"first_call_s", "steady_s", "iterations", "time_ratio_vs_ours"} <= set(r)
        # same problem, same start, same gauge: every solver should land on the same minimum
        assert abs(r["cost_excess_vs_ours"]) < 1e-6, (name, r["cost_excess_vs_ours"])
    assert d["align_end_to_end"]["steady_s"] > 0


def test_scaling_rows(report):
    rows = report["scaling"]["rows"]
    assert [r["n_markers"] for r in rows] == [300]
    for r in rows:
        assert r["n_obs"] == 61 * r["n_markers"]
        assert r["status"] == "converged"
        assert r["first_call_peak_rss_mb"] > 0 and r["us_per_obs_steady"] > 0
        assert "steady_s" in r["scipy_trf"]
        assert abs(r["scipy_trf"]["rms_px"] - r["ours_joint"]["rms_px"]) < 1e-6 * r["ours_joint"]["rms_px"]


def test_recon_section(report):
    methods = [r["method"] for r in report["recon"]["results"]]
    assert any("fbp_2d" in m for m in methods) and any("skimage" in m for m in methods)
    assert report["recon"]["corr_skimage"] > 0.95


def test_our_rms_is_at_the_noise_floor(report):
    """Within 4 standard deviations of sigma sqrt(1 - n_free / (2 N_obs)), the sd being
    1 / sqrt(2 dof) (tests/helpers.FloorFit). The quick mode's problems are small (sd 0.4-2.6%):
    this guards against gross failures; tests/test_align.py pools fits to resolve a 1% excess."""
    checks = report["checks"]
    assert len(checks) >= 6
    assert sum(c["ratio_sd"] <= 0.01 for c in checks) >= 3
    bad = [c for c in checks if not c["ok"]]
    assert not bad, bad
    for c in checks:
        assert abs(c["ratio_to_floor"] - 1) < 4 * c["ratio_sd"], c
