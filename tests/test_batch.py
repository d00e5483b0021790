"""Batched alignment (lmalign_jax.batch.runner) against align() one series at a time, and `lmalign batch`.

The series are small and share one bucket (padded to 21 views x 10 markers), so each kernel compiles once
for the module (and for tests/test_distributed.py in the same session).
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import run_cli as run

import lmalign_jax as lm
from lmalign_jax import cli
from lmalign_jax.batch import align_batch, bucket_shape
from lmalign_jax.workflow.batch_series import RESUMED

#: (views, markers, seed): two shapes padded to one bucket.
SERIES = [(21, 10, 0), (21, 10, 1), (19, 9, 2)]
#: The third series starts 10 degrees off its tilt axis: it needs more iterations.
ROTATIONS = [None, None, -2.0]


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")


@pytest.fixture(scope="module")
def series():
    return [
        lm.simulate(n_views=v, n_markers=m, missing_fraction=0.1, seed=s).observations for v, m, s in SERIES
    ]


@pytest.fixture(scope="module")
def individual(series):
    return [lm.align(obs, rotation_deg=r) for obs, r in zip(series, ROTATIONS, strict=True)]


#: Batched and individual solves agree up to the last L-M step at the optimum, whose cost change
#: (~1e-13 relative) is at the rounding level of the cost's sum: whether it is taken depends on
#: rounding, which padding changes. That step moves parameters by ~1e-7 px (pixels and radians
#: x 1e3); a padding error would move them by orders of magnitude more.
SAME_ATOL = 1e-6


def assert_same(batched, single, atol=SAME_ATOL):
    assert batched.status == single.status == "converged"
    for name in ("views", "markers", "xf"):
        np.testing.assert_allclose(
            getattr(batched, name), getattr(single, name), rtol=0, atol=atol, err_msg=name
        )
    np.testing.assert_allclose(batched.residuals, single.residuals, rtol=0, atol=atol)
    assert batched.n_free == single.n_free
    assert batched.rotation_estimated_deg == single.rotation_estimated_deg
    assert [s.name for s in batched.stages] == [s.name for s in single.stages]
    assert batched.rms_residual_px == pytest.approx(single.rms_residual_px, abs=1e-10)
    assert batched.model is single.model
    for name in ("modes", "stages", "dtype", "config", "ref_view"):
        assert getattr(batched.settings, name) == getattr(single.settings, name), name


@pytest.mark.parametrize("width", [1, 3], ids=["sequential", "vmap"])
def test_batched_equals_individual(series, individual, width):
    events = []
    results = align_batch(
        series, rotation_deg=ROTATIONS, vmap_width=width, progress=lambda *e: events.append(e)
    )
    for batched, single in zip(results, individual, strict=True):
        assert_same(batched, single)
        assert batched.settings.bucket == (21, 10)  # the bucket's largest member
    # one vmap group: the series that needed more iterations did not change the others
    first_stage = [r.stages[0].iterations for r in results]
    assert len(set(first_stage)) > 1, first_stage
    assert [single.stages[0].iterations for single in individual] == first_stage
    assert {e[1] for e in events} == {"initial", "main", "tilt", "joint", "done"}
    assert sum(e[1] == "done" for e in events) == len(series)


def test_bad_series_fail_alone(series, individual):
    results = align_batch(
        [series[0], "not observations", series[1], series[2]],
        rotation_deg=[None, None, None, -2.0],
        ref_view=[None, None, 99, None],
    )
    assert isinstance(results[1], TypeError) and "series 1 is a str, not Observations" in str(results[1])
    assert isinstance(results[2], ValueError) and str(results[2]) == "ref_view 99 is outside 0..20"
    assert_same(results[0], individual[0])
    assert_same(results[3], individual[2])


def test_failed_stage_stops_that_series_only(series):
    """max_iterations=1: every stage stops early; the result says so, as align() does."""
    config = lm.LMConfig(max_iterations=1)
    batched = align_batch(series[:1], config=config, stages=("main",))[0]
    single = lm.align(series[0], config=config, stages=("main",))
    assert batched.status == single.status == "stopped at the iteration limit before converging"
    np.testing.assert_allclose(batched.views, single.views, rtol=0, atol=1e-8)


def test_numerical_failure_ends_that_series_at_its_stage(series, individual):
    """A NaN weight makes the first stage fail: the series reports that one stage and keeps its
    start values, as align() does, and its neighbour in the same call is unaffected."""
    weights = np.ones(series[1].mask.shape)
    weights[3, 2] = np.nan
    batched = align_batch(series[:2], weights=[None, weights])
    single = lm.align(series[1], weights=weights)
    assert single.status == batched[1].status and "fail" in single.status
    assert (
        [(s.name, s.status) for s in batched[1].stages]
        == [(s.name, s.status) for s in single.stages]
        == [("initial", single.status)]
    )
    np.testing.assert_allclose(batched[1].views, single.views, rtol=0, atol=1e-10)
    np.testing.assert_allclose(batched[1].markers, single.markers, rtol=0, atol=1e-10)
    assert_same(batched[0], individual[0])


def test_shared_and_grouped_parameters_carry_across_stages(series):
    """Global slots (one rotation, grouped scales) through the stages of one kernel call equal
    align()'s stage-by-stage solves."""
    modes = {"rotation": "shared", "scale": "group:5"}
    batched = align_batch(series[:2], modes=modes)
    for b, obs in zip(batched, series[:2], strict=True):
        single = lm.align(obs, modes=modes)
        assert_same(b, single)
        assert np.ptp(b.views[:, 1]) == 0.0


def test_bucket_shape_and_option_errors(series):
    assert bucket_shape(107, 30) == (112, 32)
    assert bucket_shape(107, 30, 16) == (112, 32)
    assert bucket_shape(107, 30, (10, 5)) == (110, 30)
    assert bucket_shape(107, 30, "exact") == (107, 30)
    with pytest.raises(
        ValueError,
        match=r"bucket must be a positive int, a pair of positive ints, 'exact' or 'max', got \(0, 8\)",
    ):
        align_batch(series, bucket=(0, 8))
    with pytest.raises(
        ValueError, match="parameter 'tilt': align_batch takes the modes free, fixed, shared, group:N and"
    ):
        align_batch(series, modes={"tilt": np.zeros(21, int)})
    with pytest.raises(ValueError, match="unknown stage 'final'"):
        align_batch(series, stages=("final",))
    with pytest.raises(ValueError, match="rotation_deg has 2 entries for 3 series"):
        align_batch(series, rotation_deg=[1.0, 2.0])
    cpu = jax.devices("cpu")[0]
    with pytest.raises(ValueError, match="vmap_width=2 over 2 CPU devices hangs"):
        align_batch(series, devices=[cpu, cpu], vmap_width=2)
    assert align_batch([]) == []


def test_sharded_over_two_cpu_devices_equals_align():
    """Two host devices (XLA_FLAGS) in a fresh process: the batch is split with shard_map."""
    script = textwrap.dedent(
        """
        import json, numpy as np, jax
        import lmalign_jax as lm
        from lmalign_jax.batch import align_batch
        obs = [lm.simulate(n_views=21, n_markers=10, missing_fraction=0.1, seed=s).observations
               for s in range(3)]
        batched = align_batch(obs, batch_size=2)
        single = [lm.align(o) for o in obs]
        diff = max(float(np.abs(b.views - s.views).max() + np.abs(b.markers - s.markers).max())
                   for b, s in zip(batched, single))
        print(json.dumps({"devices": len(jax.devices()), "status": [r.status for r in batched],
                          "diff": diff}))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    assert report["status"] == ["converged"] * 3
    assert report["diff"] < SAME_ATOL


# --------------------------------------------------------------------------- the command


def make_series_files(folder: Path, seeds=(0, 1)) -> None:
    """`lmalign simulate` files s<seed>.csv/.rawtlt (21 views x 10 markers, 2048 px images)."""
    for seed in seeds:
        rc, _, err = run(
            [
                "simulate",
                "--out-dir",
                folder,
                "--prefix",
                f"s{seed}",
                "--views",
                21,
                "--markers",
                10,
                "--missing",
                0.1,
                "--seed",
                seed,
            ]
        )
        assert rc == 0, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    make_series_files(d)
    bad = (d / "s0.csv").read_text() + "3,7,12.5,oops\n"
    (d / "corrupt.csv").write_text(bad)
    (d / "corrupt.rawtlt").write_text((d / "s0.rawtlt").read_text())
    (d / "list.txt").write_text(
        "# markers tilts [nx ny]\n"
        "s0.csv s0.rawtlt 2048 2048\n"
        "corrupt.csv corrupt.rawtlt 2048 2048\n"
        "s1.csv s1.rawtlt 2048 2048   # a comment\n"
        "missing.csv s1.rawtlt 2048 2048\n"
        "s1.csv\n"
        "s0.csv s0.rawtlt 2048\n"
        "s1.csv s1.rawtlt\n"
    )
    return d


def read_tsv(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_cli_batch_list_reports_bad_series_and_aligns_the_rest(files, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = run(["batch", files / "list.txt", "--out-dir", out, "--no-figure"])
    assert rc == 2, err  # some inputs were bad
    rows = {r["series"]: r for r in read_tsv(out / "batch_summary.tsv")}
    assert list(rows) == ["s0", "corrupt", "s1", "missing", "line6", "s0_2", "s1_2"]
    assert rows["s0_2"]["detail"].endswith(
        "list.txt:7: one number after TILTS (2048): give the image size as NX NY, or a STACK file"
    )
    assert rows["s0"]["status"] == rows["s1"]["status"] == "converged"
    bad_line = len((files / "corrupt.csv").read_text().splitlines())
    assert rows["corrupt"]["status"] == "bad input"
    assert rows["corrupt"]["detail"].endswith(f"corrupt.csv:{bad_line}: y is not a number: 'oops'")
    # named with the list's line (audit: the file alone)
    assert re.search(r"list\.txt:\d+: markers file .*missing\.csv not found$", rows["missing"]["detail"])
    assert rows["line6"]["detail"].endswith(
        "list.txt:6: expected 'MARKERS TILTS [NX NY] [STACK] [exclude=LIST] [rotation=DEG]', got 1 fields"
    )
    # a CSV does not record the image size: the advice is the batch's, not align's --stack
    assert rows["s1_2"]["detail"].endswith(
        "s1.csv: image size unknown (the marker file does not record it): give NX NY after TILTS "
        "on the series' line of a list file, a STACK column, or --image-size NX NY for every series"
    )
    assert {p.name for p in (out / "s0").iterdir()} == {"s0.xf", "s0.tlt", "s0.resid", "s0.xyz", "s0.json"}
    assert not (out / "corrupt").exists()
    assert "2 converged, 0 failed, 5 bad input" in stdout
    assert "lmalign: [" in err and "corrupt: bad input" in err
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["exit_code"] == 2 and [s["series"] for s in summary["series"]] == list(rows)
    assert (out / "batch_summary.txt").read_text() in stdout

    # the same outputs as `lmalign align` on that series (to the precision of the files)
    rc, _, err = run(
        [
            "align",
            files / "s1.csv",
            "--tilts",
            files / "s1.rawtlt",
            "--image-size",
            2048,
            2048,
            "--out-dir",
            tmp_path / "single",
            "--quiet",
        ]
    )
    assert rc == 0, err
    for suffix in (".xf", ".tlt", ".xyz", ".resid"):
        ours, theirs = ((d / f"s1{suffix}").read_text().split() for d in (out / "s1", tmp_path / "single"))
        assert len(ours) == len(theirs), suffix
        for a, b in zip(ours, theirs, strict=True):
            assert a == b or abs(float(a) - float(b)) < 2e-6, (suffix, a, b)
    record = json.loads((out / "s1" / "s1.json").read_text())
    single = json.loads((tmp_path / "single" / "s1.json").read_text())
    assert record["summary"]["rms_residual_px"] == pytest.approx(
        single["summary"]["rms_residual_px"], abs=1e-9
    )
    # and the same standard errors and leave-one-out residuals
    assert record["summary"]["leave_one_out_rms_px"] == pytest.approx(
        single["summary"]["leave_one_out_rms_px"], rel=1e-6
    )
    for ours, theirs in zip(record["views"], single["views"], strict=True):
        assert ours["standard_errors"] == pytest.approx(theirs["standard_errors"], rel=1e-5, abs=1e-12)
    for ours, theirs in zip(record["markers"], single["markers"], strict=True):
        assert ours["standard_errors"] == pytest.approx(theirs["standard_errors"], rel=1e-5)
    # and the same view covariances and misregistration section (what `lmalign misregistration` reads)
    for ours, theirs in zip(record["views"], single["views"], strict=True):
        assert np.allclose(
            ours["parameter_covariance"], theirs["parameter_covariance"], rtol=1e-5, atol=1e-14
        )
    assert record["misregistration"]["at_centre_px"] == pytest.approx(
        single["misregistration"]["at_centre_px"], rel=1e-5
    )


def test_cli_batch_in_a_fresh_process_uses_one_device_per_core(files, tmp_path):
    """`lmalign batch` as a command makes one CPU device per core before JAX starts; the series
    are sharded over them, two writer processes draw the figures, and the outputs equal the
    in-process (one device, no writer processes) run's."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", LMALIGN_NO_COMPILATION_CACHE="1")
    (files / "two.txt").write_text("s0.csv s0.rawtlt 2048 2048\ns1.csv s1.rawtlt 2048 2048\n")
    out = tmp_path / "fresh"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmalign_jax",
            "batch",
            files / "two.txt",
            "--out-dir",
            out,
            "--writers",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    cores = len(os.sched_getaffinity(0))
    assert len(json.loads((out / "batch_summary.json").read_text())["devices"]) == cores
    rc, _, err = run(["batch", files / "two.txt", "--out-dir", tmp_path / "here", "--no-figure", "--quiet"])
    assert rc == 0, err
    for name in ("s0", "s1"):
        assert (out / name / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not (tmp_path / "here" / name / f"{name}.png").exists()
        ours, theirs = ((d / name / f"{name}.xf").read_text().split() for d in (out, tmp_path / "here"))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a == b or abs(float(a) - float(b)) < 2e-6, (name, a, b)


def test_cli_batch_folder_with_figures_and_a_failed_alignment(files, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("s0.csv", "s0.rawtlt", "s1.csv"):  # s1 has no tilt file
        (folder / name).write_text((files / name).read_text())
    out = tmp_path / "out"
    rc, stdout, err = run(
        ["batch", folder, "--out-dir", out, "--layout", "prefix", "--image-size", 2048, 2048, "--quiet"]
    )
    assert rc == 2, err
    assert {p.name for p in out.iterdir()} >= {"s0.xf", "s0.png", "s0.json", "batch_summary.tsv"}
    rows = {r["series"]: r for r in read_tsv(out / "batch_summary.tsv")}
    assert "no tilt file beside it (s1.rawtlt, s1.tlt, s1.mdoc)" in rows["s1"]["detail"]

    (folder / "s1.csv").unlink()  # now only s0, which cannot converge in one iteration
    rc, stdout, err = run(
        [
            "batch",
            folder,
            "--out-dir",
            tmp_path / "out2",
            "--image-size",
            2048,
            2048,
            "--max-iterations",
            1,
            "--no-figure",
        ]
    )
    assert rc == 1, err
    assert "0 converged, 1 failed, 0 bad input" in stdout
    assert {p.name for p in (tmp_path / "out2" / "s0").iterdir()} == {"s0.json"}


def test_cli_batch_usage_errors(tmp_path):
    rc, _, err = run(["batch", tmp_path / "nothing.txt"])
    assert rc == 2 and "nothing.txt: file or folder not found" in err
    rc, _, err = run(["batch", tmp_path])
    assert (
        rc == 2
        and (
            "no marker files (.fid, .mod, .csv, .pt) in this folder; "
            "name .txt and .resid marker files in a list file "
            "(MARKERS TILTS [NX NY] [STACK] [exclude=LIST] [rotation=DEG] per line)"
        )
        in err
    )
    rc, _, err = run(["batch", tmp_path, "--writers", 0])
    assert rc == 2 and "--writers must be at least 1, got 0" in err
    # --worst -5 listed 247 'worst points' of a 227-point series, some of them null (audit); huge
    # counts overflowed (exit 3)
    for option, value, low in (
        ("--worst", -5, 0),
        ("--max-iterations", 2**31, 1),
        ("--batch-size", 10**20, 1),
    ):
        rc, _, err = run(["batch", tmp_path, option, value])
        assert rc == 2 and f"{option} must be between {low} and 1000000, got {value}" in err, err
    rc, _, err = run(["batch", tmp_path, "--image-size", "nan", "inf"])  # passed, then every series failed
    assert rc == 2 and "--image-size must be two whole numbers of pixels, 1 to 1000000, got nan inf" in err
    rc, _, err = run(["batch", tmp_path, "--reconstruct", 0])
    assert (
        rc == 2
        and "--reconstruct needs the tomogram thickness, a positive number of (unbinned) pixels, got 0" in err
    )
    rc, _, err = run(["batch", tmp_path, "--reconstruct", 64, "--bin", 0])
    assert rc == 2 and "--bin must be at least 1, got 0" in err
    rc, _, err = run(["batch", tmp_path, "--jobs", 2, "--scheduler", "tcp://127.0.0.1:1"])
    assert rc == 2 and "give --jobs or --scheduler, not both" in err
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    rc, _, err = run(["batch", tmp_path / "empty.txt"])
    assert rc == 2 and "the list names no series" in err


def test_cli_batch_resume_keeps_what_an_earlier_run_finished(files, tmp_path):
    """--resume: a series aligned before from the same files with the same options keeps its
    outputs; one whose outputs are incomplete, whose inputs changed since, or that was aligned
    with other options is aligned again."""
    (tmp_path / "two.txt").write_text(
        f"{files / 's0.csv'} {files / 's0.rawtlt'} 2048 2048\n"
        f"{files / 's1.csv'} {files / 's1.rawtlt'} 2048 2048\n"
    )
    out = tmp_path / "out"

    def resume(*extra):
        rc, stdout, err = run(
            ["batch", tmp_path / "two.txt", "--out-dir", out, "--no-figure", "--resume", *extra]
        )
        assert rc == 0, err
        return {r["series"]: r["detail"] for r in read_tsv(out / "batch_summary.tsv")}, stdout, err

    assert resume()[0] == {"s0": "converged", "s1": "converged"}  # nothing to keep yet
    record = out / "s0" / "s0.json"
    made = record.stat().st_mtime_ns
    (out / "s1" / "s1.xf").unlink()  # as if the run had stopped while writing s1
    details, stdout, err = resume()
    assert details == {"s0": RESUMED, "s1": "converged"} and record.stat().st_mtime_ns == made
    assert f"s0: converged: {RESUMED}" in err and RESUMED in stdout and (out / "s1" / "s1.xf").exists()
    # emptied, or cut short by a line: not whole, aligned again (an empty .xf was kept; audit)
    for name, cut in (("s1.xf", lambda t: ""), ("s1.tlt", lambda t: "".join(t.splitlines(True)[:-1]))):
        path = out / "s1" / name
        path.write_text(cut(path.read_text()))
        assert resume()[0] == {"s0": RESUMED, "s1": "converged"}, name
    assert resume()[0] == {"s0": RESUMED, "s1": RESUMED}
    assert resume("--no-errors")[0] == {"s0": RESUMED, "s1": RESUMED}  # more than asked for is kept
    assert resume("--no-errors", "--max-iterations", 150)[0] == {
        "s0": "converged",
        "s1": "converged",
    }  # other options
    assert resume("--max-iterations", 150)[0] == {
        "s0": "converged",
        "s1": "converged",
    }  # now with the standard errors
    assert resume("--max-iterations", 150)[0] == {"s0": RESUMED, "s1": RESUMED}
    assert json.loads(record.read_text())["options"]["max_iterations"] == 150
    later = (out / "s1" / "s1.json").stat().st_mtime_ns + 10**10
    os.utime(files / "s1.rawtlt", ns=(later, later))  # an input file changed after its outputs were written
    assert resume("--max-iterations", 150)[0] == {"s0": RESUMED, "s1": "converged"}


def test_cli_batch_list_line_options_are_those_of_align(files, tmp_path):
    """exclude= and rotation= on a list line act as `lmalign align --exclude --rotation` for that
    series; malformed ones are that line's bad input; --resume compares them."""
    s0, t0, s1, t1 = files / "s0.csv", files / "s0.rawtlt", files / "s1.csv", files / "s1.rawtlt"
    lines = [
        f"{s0} {t0} 2048 2048 exclude=1-2,21 rotation=3.5",
        f"{s1} {t1} rotation=oops 2048 2048",
        f"{s1} {t1} 2048 2048 exclude=30",
        f"{s1} {t1} exclude=1 2048 2048 exclude=2",
        f"{s1} {t1} 2048 2048 exclude=",
    ]
    listing = tmp_path / "opts.txt"
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc, _, err = run(["batch", listing, "--out-dir", out, "--no-figure"])
    assert rc == 2, err
    rows = {r["series"]: r["detail"] for r in read_tsv(out / "batch_summary.tsv")}
    assert rows == {
        "s0": "converged",
        "s1": f"{listing}:2: rotation=oops is not an angle in degrees",
        "s1_2": f"{listing}:3: exclude=30: view 30 is outside 1..21 (views count from 1, as in IMOD)",
        "s1_3": f"{listing}:4: exclude= given twice",
        "s1_4": f"{listing}:5: exclude= names no views (e.g. exclude=1-3,40; views count from 1)",
    }
    record = json.loads((out / "s0" / "s0.json").read_text())
    assert (
        record["inputs"]["excluded_by_user"] == [1, 2, 21]
        and record["inputs"]["image_size_source"] == f"NX NY on {listing}:1"
    )
    assert (
        record["options"]["rotation_deg"] == 3.5
        and record["options"]["rotation_source"] == f"rotation= on {listing}:1"
    )

    rc, _, err = run(
        [
            "align",
            s0,
            "--tilts",
            t0,
            "--image-size",
            2048,
            2048,
            "--exclude",
            "1-2,21",
            "--rotation",
            3.5,
            "--out-dir",
            tmp_path / "single",
            "--quiet",
            "--no-figure",
        ]
    )
    assert rc == 0, err
    for suffix in (".xf", ".tlt", ".resid"):
        ours, theirs = ((d / f"s0{suffix}").read_text().split() for d in (out / "s0", tmp_path / "single"))
        assert len(ours) == len(theirs) and all(
            a == b or abs(float(a) - float(b)) < 2e-6 for a, b in zip(ours, theirs, strict=True)
        ), suffix

    listing.write_text(lines[0] + "\n")
    rc, _, err = run(["batch", listing, "--out-dir", out, "--no-figure", "--resume"])
    assert rc == 0 and read_tsv(out / "batch_summary.tsv")[0]["detail"] == RESUMED, err
    for changed in (
        lines[0].replace("rotation=3.5", "rotation=4"),
        lines[0].replace("exclude=1-2,21", "exclude=1-2"),
    ):
        listing.write_text(changed + "\n")
        rc, _, err = run(["batch", listing, "--out-dir", out, "--no-figure", "--resume"])
        assert rc == 0 and read_tsv(out / "batch_summary.tsv")[0]["detail"] == "converged", (changed, err)


def test_cli_batch_interrupted_says_what_is_written_and_resumes(files, tmp_path, monkeypatch):
    """Ctrl-C after the first series: exit 130, no summary, a message saying how many series are
    written; --resume then keeps that one and aligns the other."""
    (tmp_path / "two.txt").write_text(
        f"{files / 's0.csv'} {files / 's0.rawtlt'} 2048 2048\n"
        f"{files / 's1.csv'} {files / 's1.rawtlt'} 2048 2048\n"
    )
    real = cli.batch.align_and_write

    def stopped_after_one(prepared, options, **kwargs):
        real(prepared[:1], options, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.batch, "align_and_write", stopped_after_one)
    args = ["batch", tmp_path / "two.txt", "--out-dir", tmp_path / "out", "--no-figure"]
    rc, out, err = run(args)
    assert (
        rc == 130
        and "lmalign: interrupted; 1 of 2 series have their outputs written, no summary; "
        "the same command with --resume"
        in err
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s0"]

    # both written, the second's outcome never back (a worker stopped between): counted all the same
    # (inputs copied: another test of this module dates s1.rawtlt in the future)
    for name in ("s0.csv", "s0.rawtlt", "s1.csv", "s1.rawtlt"):
        (tmp_path / name).write_bytes((files / name).read_bytes())
    (tmp_path / "copies.txt").write_text("s0.csv s0.rawtlt 2048 2048\ns1.csv s1.rawtlt 2048 2048\n")

    def outcome_lost(prepared, options, **kwargs):
        kept = kwargs.pop("on_outcome", None)
        real(prepared, options, **kwargs, on_outcome=lambda o: kept(o) if o.series == "s0" else None)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.batch, "align_and_write", outcome_lost)
    rc, out, err = run(["batch", tmp_path / "copies.txt", "--out-dir", tmp_path / "lost", "--no-figure"])
    assert rc == 130 and "interrupted; 2 of 2 series have their outputs written" in err, err
    monkeypatch.setattr(cli.batch, "align_and_write", real)
    rc, out, err = run([*args, "--resume"])
    assert rc == 0, err
    assert {r["series"]: r["detail"] for r in read_tsv(tmp_path / "out" / "batch_summary.tsv")} == {
        "s0": RESUMED,
        "s1": "converged",
    }


def test_cli_batch_robust_fit_is_that_of_align(files, tmp_path):
    """--robust: each series' reweighted fit, started from its batched answer, gives the outputs
    and robust report of `lmalign align --robust`; --resume tells robust settings apart."""
    (d := tmp_path / "in").mkdir()
    rows = (files / "s1.csv").read_text().splitlines()
    rows[5] = ",".join(
        [*rows[5].split(",")[:2], *(str(float(v) + 9.0) for v in rows[5].split(",")[2:])]
    )  # a mis-click, 9 px off
    (d / "s1.csv").write_text("\n".join(rows) + "\n")
    (d / "s1.rawtlt").write_bytes((files / "s1.rawtlt").read_bytes())
    out = tmp_path / "out"
    args = ["batch", d, "--out-dir", out, "--image-size", 2048, 2048, "--no-figure", "--robust", "tukey"]
    rc, _, err = run(args)
    assert rc == 0, err
    rc, _, err = run(
        [
            "align",
            d / "s1.csv",
            "--tilts",
            d / "s1.rawtlt",
            "--image-size",
            2048,
            2048,
            "--robust",
            "tukey",
            "--out-dir",
            tmp_path / "single",
            "--quiet",
            "--no-figure",
        ]
    )
    assert rc == 0, err
    ours, theirs = (
        json.loads((where / "s1.json").read_text()) for where in (out / "s1", tmp_path / "single")
    )
    assert ours["options"]["robust"] == theirs["options"]["robust"] == {"loss": "tukey", "group_size": 10}
    assert ours["robust"]["n_rejected"] == theirs["robust"]["n_rejected"] >= 1
    assert [(r["n_rejected"], r["status"]) for r in ours["robust"]["rounds"]] == [
        (r["n_rejected"], r["status"]) for r in theirs["robust"]["rounds"]
    ]
    assert [r["rms_residual_px"] for r in ours["robust"]["rounds"]] == pytest.approx(
        [r["rms_residual_px"] for r in theirs["robust"]["rounds"]], rel=1e-7
    )
    assert ours["summary"]["rms_residual_px"] == pytest.approx(theirs["summary"]["rms_residual_px"], rel=1e-7)
    for suffix in (".xf", ".tlt"):
        a, b = ((where / f"s1{suffix}").read_text().split() for where in (out / "s1", tmp_path / "single"))
        assert all(x == y or abs(float(x) - float(y)) < 2e-6 for x, y in zip(a, b, strict=True)), suffix
    rc, _, err = run([*args, "--resume"])
    assert rc == 0 and read_tsv(out / "batch_summary.tsv")[0]["detail"] == RESUMED, err
    rc, _, err = run([*args[:-1], "huber", "--resume"])
    assert rc == 0 and read_tsv(out / "batch_summary.tsv")[0]["detail"] == "converged", err
    rc, _, err = run([*args, "--robust-group-size", 0])
    assert rc == 2 and "--robust-group-size must be at least 1, got 0" in err


def test_cli_batch_refuses_an_output_folder_that_is_a_file(files, tmp_path):
    """Checked before any series is read or aligned: nothing is written, exit 2."""
    (tmp_path / "taken").write_text("")
    rc, out, err = run(["batch", files / "list.txt", "--out-dir", tmp_path / "taken" / "sub", "--no-figure"])
    assert (
        rc == 2
        and f"--out-dir {tmp_path / 'taken' / 'sub'}: {tmp_path / 'taken'} exists and is not a folder" in err
    )
    assert out == "" and "aligning" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_cli_batch_resume_keeps_a_raw_stack_series_without_tracking_it_again(tmp_path):
    """A series given as a raw stack is tracked, then aligned; --resume keeps both when the stack,
    tilts and tracking options are those of the earlier run, and tracks again when they are not."""
    d = tmp_path / "in"
    simulate = ["simulate", "--out-dir", d, "--prefix", "r", "--stack", "--views", 21, "--markers", 8]
    rc, _, err = run([*simulate, "--image-size", 192, 192, "--seed", 0])
    assert rc == 0, err
    (d / "r.csv").unlink()  # the stack and its tilts only: tracked first
    out = tmp_path / "out"

    def resume(*extra):
        rc, _, err = run(["batch", d, "--out-dir", out, "--no-figure", "--quiet", "--resume", *extra])
        assert rc == 0, err
        return next(r["detail"] for r in read_tsv(out / "batch_summary.tsv"))

    assert resume() == "converged"
    fid = out / "r" / "r.fid"
    made = fid.stat().st_mtime_ns
    assert resume() == RESUMED and fid.stat().st_mtime_ns == made
    assert resume("--target-beads", 8) == "converged" and fid.stat().st_mtime_ns != made
    assert json.loads((out / "r" / "r_track.json").read_text())["settings"]["target_beads"] == 8


def test_batch_reconstructs_what_reconstruct_alignment_applies(tmp_path):
    """--model shape --reconstruct: the tomogram is the one `lmalign reconstruct --alignment` makes
    from the record (the shape applied position by position), not a reconstruction with the
    record's transforms alone (what batch made before, unlike the single command)."""
    import mrcfile

    from lmalign_jax.workflow.alignment_inputs import read_alignment_json

    d = tmp_path / "in"
    rc, _, err = run(["simulate", "--out-dir", d, "--prefix", "r0", "--stack", "--seed", 0])
    assert rc == 0, err
    out = tmp_path / "out"
    args = ["--reconstruct", 32, "--bin", 2, "--model", "shape", "--no-figure", "--quiet"]
    rc, _, err = run(["batch", d, "--out-dir", out, *args])
    assert rc == 0, err
    record = out / "r0" / "r0.json"
    assert read_alignment_json(str(record)).shape is not None
    for extra, name in ((["--alignment", record], "single.mrc"), (["--xf", out / "r0" / "r0.xf"], "xf.mrc")):
        if "--xf" in extra:
            extra += ["--tlt", out / "r0" / "r0.tlt"]
        rc, _, err = run(
            [
                "reconstruct",
                d / "r0.mrc",
                *extra,
                "--thickness",
                32,
                "--bin",
                2,
                "--out",
                tmp_path / name,
                "-q",
            ]
        )
        assert rc == 0, err
    with (
        mrcfile.open(out / "r0" / "r0.rec.mrc") as a,
        mrcfile.open(tmp_path / "single.mrc") as b,
        mrcfile.open(tmp_path / "xf.mrc") as c,
    ):
        np.testing.assert_array_equal(a.data, b.data)
        assert np.abs(a.data - c.data).max() > 1e-3 * np.abs(c.data).max()


def test_cli_batch_reconstructs_each_series_from_its_stack(tmp_path):
    """--reconstruct: each aligned series' tomogram from the stack beside its markers (or the
    list's STACK column) equals `lmalign reconstruct --alignment NAME.json`; a series without a
    stack, or with a stack of the wrong length, is bad input and the others complete."""
    import mrcfile

    d = tmp_path / "in"
    for seed in (0, 1):  # 41 views of 256 x 256 px, 12 beads: r<seed>.csv .rawtlt .mrc
        rc, _, err = run(["simulate", "--out-dir", d, "--prefix", f"r{seed}", "--stack", "--seed", seed])
        assert rc == 0, err
    for suffix in (".csv", ".rawtlt"):  # r2: markers and tilts but no stack
        (d / f"r2{suffix}").write_bytes((d / f"r0{suffix}").read_bytes())
    out = tmp_path / "out"
    rc, stdout, err = run(
        ["batch", d, "--out-dir", out, "--reconstruct", 32, "--bin", 2, "--no-figure", "--quiet"]
    )
    assert rc == 2, err
    rows = {r["series"]: r for r in read_tsv(out / "batch_summary.tsv")}
    assert rows["r0"]["status"] == rows["r1"]["status"] == "converged"
    assert rows["r2"]["status"] == "bad input"
    assert rows["r2"]["detail"].endswith(
        "r2.csv: no stack to reconstruct beside it (r2.st, r2.mrc); "
        "name it in a list file: MARKERS TILTS [NX NY] STACK"
    )
    summary = json.loads((out / "batch_summary.json").read_text())
    assert any(o.endswith("r1.rec.mrc") for o in summary["series"][1]["outputs"])

    rc, _, err = run(
        [
            "reconstruct",
            d / "r0.mrc",
            "--alignment",
            out / "r0" / "r0.json",
            "--thickness",
            32,
            "--bin",
            2,
            "--out",
            tmp_path / "single.rec.mrc",
            "--quiet",
        ]
    )
    assert rc == 0, err
    with mrcfile.open(out / "r0" / "r0.rec.mrc") as a, mrcfile.open(tmp_path / "single.rec.mrc") as b:
        assert a.data.shape == (16, 128, 128) and float(np.std(a.data)) > 0
        np.testing.assert_array_equal(a.data, b.data)
        assert "lmalign_jax reconstruct: thickness 32 bin 2 filter ramp" in [
            str(t).strip() for t in b.get_labels()
        ]

    # --resume keeps tomograms made with the same settings and remakes those made otherwise
    tomogram = out / "r0" / "r0.rec.mrc"
    made = tomogram.stat().st_mtime_ns
    rc, _, err = run(
        ["batch", d, "--out-dir", out, "--reconstruct", 32, "--bin", 2, "--no-figure", "--quiet", "--resume"]
    )
    rows = {r["series"]: r for r in read_tsv(out / "batch_summary.tsv")}
    assert (
        rc == 2
        and rows["r0"]["detail"] == rows["r1"]["detail"] == RESUMED
        and tomogram.stat().st_mtime_ns == made
    )
    rc, _, err = run(
        ["batch", d, "--out-dir", out, "--reconstruct", 32, "--bin", 4, "--no-figure", "--quiet", "--resume"]
    )
    rows = {r["series"]: r for r in read_tsv(out / "batch_summary.tsv")}
    assert rc == 2 and rows["r0"]["status"] == "converged" and rows["r0"]["detail"] != RESUMED
    with mrcfile.open(tomogram) as a:
        assert a.data.shape == (8, 64, 64)

    # a list file names the stacks; one has a section too few
    with mrcfile.open(d / "r1.mrc") as mrc:
        data = np.array(mrc.data)
    with mrcfile.new(d / "short.mrc") as mrc:
        mrc.set_data(data[:40])
    data[3, 10, 10] = np.nan
    with mrcfile.new(d / "nan.mrc") as mrc, pytest.warns(RuntimeWarning, match="NaN"):
        mrc.set_data(data)
    (d / "stacks.txt").write_text(
        "r0.csv r0.rawtlt r0.mrc\nr1.csv r1.rawtlt 256 256 short.mrc\nr1.csv r1.rawtlt nan.mrc\n"
    )
    rc, _, err = run(
        [
            "batch",
            d / "stacks.txt",
            "--out-dir",
            tmp_path / "out2",
            "--reconstruct",
            32,
            "--bin",
            2,
            "--no-figure",
            "--quiet",
        ]
    )
    assert rc == 2, err
    rows = {r["series"]: r for r in read_tsv(tmp_path / "out2" / "batch_summary.tsv")}
    assert rows["r0"]["status"] == "converged" and (tmp_path / "out2" / "r0" / "r0.rec.mrc").exists()
    assert rows["r1"]["status"] == "bad input"
    assert rows["r1"]["detail"].endswith(
        "short.mrc: the stack has 40 sections but " + str(d / "r1.rawtlt") + " has 41 tilt angles"
    )
    assert not (tmp_path / "out2" / "r1").exists()
    # a stack that fails while reconstructing: aligned (its outputs are there), no tomogram, exit 1 for it
    assert rows["r1_2"]["status"] == "failed" and rows["r1_2"]["exit_code"] == "1"
    assert "aligned, but the reconstruction failed: cannot reconstruct" in rows["r1_2"]["detail"]
    assert rows["r1_2"]["detail"].endswith(
        "stack view 4 (section 3 counting from 0) contains non-finite values"
    )
    assert (tmp_path / "out2" / "r1_2" / "r1_2.xf").exists() and not (
        tmp_path / "out2" / "r1_2" / "r1_2.rec.mrc"
    ).exists()

    # the tomogram would overwrite the stack it is made from
    (d / "r0.rec.mrc").write_bytes((d / "r0.mrc").read_bytes())
    (d / "clash.txt").write_text("r0.csv r0.rawtlt r0.rec.mrc\n")
    rc, _, err = run(
        [
            "batch",
            d / "clash.txt",
            "--out-dir",
            d,
            "--layout",
            "prefix",
            "--reconstruct",
            32,
            "--no-figure",
            "--quiet",
        ]
    )
    assert rc == 2, err
    rows = read_tsv(d / "batch_summary.tsv")
    assert (
        rows[0]["detail"]
        == f"output {d / 'r0.rec.mrc'} would overwrite an input file; choose another --out-dir"
    )


def test_cli_batch_a_crashing_series_is_an_internal_error(files, tmp_path, monkeypatch):
    """A series whose solve raised (a bug, not a bad input nor a solve that did not converge)
    is reported as an internal error, exit status 3, and the batch still writes its summary."""
    from lmalign_jax.workflow import batch_series

    def crash(observations, **kwargs):
        return [RuntimeError("boom") for _ in observations]

    monkeypatch.setattr(batch_series, "align_batch", crash)
    (tmp_path / "one.txt").write_text(f"{files / 's0.csv'} {files / 's0.rawtlt'} 2048 2048\n")
    rc, out, err = run(["batch", tmp_path / "one.txt", "--out-dir", tmp_path / "out", "--no-figure"])
    assert rc == 3, err
    row = json.loads((tmp_path / "out" / "batch_summary.json").read_text())["series"][0]
    assert (row["status"], row["exit_code"]) == ("internal error", 3) and "RuntimeError: boom" in row[
        "detail"
    ]
    assert "0 converged, 0 failed, 0 bad input, 1 internal error" in out


def test_series_names_stay_unique_and_off_the_summary(tmp_path):
    """Outputs are named after the series. A second ts1 became ts1_2 while a real ts1_2 followed,
    so one result was lost and the summary showed ts1_2 twice (audit); a series named
    batch_summary had its .json overwritten by the summary's with --layout prefix."""
    from lmalign_jax.workflow.batch_list import SUMMARY_NAME, read_list

    listing = tmp_path / "list.txt"
    names = ["ts1", "ts1", "ts1_2", "ts1", SUMMARY_NAME, "ts1_3"]
    listing.write_text("".join(f"{n}.csv {n}.rawtlt\n" for n in names))
    got = [s.name for s in read_list(str(listing))]
    assert got == ["ts1", "ts1_4", "ts1_2", "ts1_5", f"{SUMMARY_NAME}_2", "ts1_3"]
    assert len(set(got)) == len(got)


def test_list_line_sizes_and_rotations_out_of_range_are_that_lines_bad_input(tmp_path):
    """A size of 1e308 on a list line overflowed into 'rotation_deg must be finite, got nan', and
    rotation=1e308 was reported as --rotation, naming no list line (audit)."""
    from lmalign_jax.workflow.batch_list import read_list

    listing = tmp_path / "list.txt"
    listing.write_text(
        "a.csv a.rawtlt 2048 2048 rotation=1e308\nb.csv b.rawtlt 1e308 1e308\nc.csv c.rawtlt 2048 2048\n"
        "c.csv c.rawtlt 2048 2048 rotaton=5\nd.csv c.rawtlt\n"
    )
    for name in ("c.csv", "c.rawtlt"):
        (tmp_path / name).write_text("")
    specs = read_list(str(listing))
    assert (
        specs[0].problem == f"{listing}:1: rotation=1e308 is not a tilt-axis angle within -360..360 degrees"
    )
    assert specs[1].problem == (
        f"{listing}:2: image size 1e308 1e308 is not two whole numbers of pixels, 1 to 1000000"
    )
    assert specs[2].problem is None and specs[2].image_size == (2048.0, 2048.0)
    # a misspelt option was taken for a STACK path, and a missing file named no line (audit)
    assert specs[3].problem == f"{listing}:4: unknown option rotaton= (a line takes exclude=, rotation=)"
    assert specs[4].problem == f"{listing}:5: markers file {tmp_path / 'd.csv'} not found"


def test_a_list_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    """Bytes that are not UTF-8 were replaced, and the series then reported 'file not found'
    under a garbled name (audit); the marker and tilt readers name the line, and so does this."""
    from lmalign_jax.io.errors import InputError
    from lmalign_jax.workflow.batch_list import read_list

    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a.csv a.rawtlt 2048 2048\r\n\xff\xfe bad\r\n")
    with pytest.raises(InputError, match=r"list\.txt:2: not UTF-8 text \(byte 0xff\)"):
        read_list(str(listing))
    listing.write_bytes(b"\xef\xbb\xbfa.csv a.rawtlt 2048 2048\r\nb.csv b.rawtlt 1024 1024\r\n")  # BOM, CRLF
    assert [(s.name, s.image_size) for s in read_list(str(listing))] == [
        ("a", (2048.0, 2048.0)),
        ("b", (1024.0, 1024.0)),
    ]


def test_a_series_warning_names_its_series(files, tmp_path):
    """Among many series, 'view(s) 1 have fewer than the 3 markers ...' did not say whose (audit)."""
    from lmalign_jax.workflow.batch_list import SeriesSpec
    from lmalign_jax.workflow.batch_series import prepare
    from lmalign_jax.workflow.settings import AlignSettings

    rows = (files / "s0.csv").read_text().splitlines()
    first_view = [r for r in rows[1:] if r.split(",")[1] == "0"]
    kept = [rows[0]] + [r for r in rows[1:] if r not in first_view[2:]]  # view 1 keeps 2 markers
    (tmp_path / "thin.csv").write_text("\n".join(kept) + "\n")
    spec = SeriesSpec(
        "thin", str(tmp_path / "thin.csv"), str(files / "s0.rawtlt"), image_size=(2048.0, 2048.0)
    )
    said = []
    prepare(spec, out_dir=str(tmp_path / "out"), warn=said.append, settings=AlignSettings())
    assert said and all(text.startswith("thin: ") for text in said), said
    assert any("view(s) 1 (1-based) have fewer than the 3 markers" in text for text in said), said
