"""The lmalign command line, end to end on synthetic data with known truth, and bad input.

Every alignment here has the demo's size (61 fitted views x 30 markers), so JAX compiles the
solver once for the whole module (and for tests/test_cli_demo.py in the same session).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_at_noise_floor, summary_floor_fit
from helpers import run_cli as run

from lmalign_jax import cli, compiled_cache, io
from lmalign_jax.workflow import fitting, read_series, select_views

EXCLUDE = "5,63"  # 1-based: an inner view and the last one; 63 - 2 = 61 views are fitted
OUTPUTS = {"sim.xf", "sim.tlt", "sim.resid", "sim.xyz", "sim.json", "sim.png"}


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")


def run_env(args):
    """``run`` with the CLI's caches off, the environment left as it was. (It deleted the switch
    afterwards: called from a module fixture, before any test's monkeypatch, that turned the
    caches on for the rest of the worker, in the user's cache folder shared by both workers; a
    dry run then hung in a computation loaded from it and crashed reading JAX's cache.)"""
    return run(args, no_cache=True)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """`lmalign simulate` (63 views, 30 markers) plus a marker seen in one view only."""
    d = tmp_path_factory.mktemp("sim")
    rc, out, err = run_env(["simulate", "--out-dir", d, "--prefix", "sim", "--views", 63, "--seed", 3])
    assert rc == 0, err
    assert {p.name for p in d.iterdir()} == {"sim.csv", "sim.rawtlt", "sim_truth.json"}
    assert "lmalign align" in out
    with open(d / "sim.csv", "a") as f:
        f.write("99,10,1000.0,1000.0\n")  # a marker seen in a single view: dropped with a warning
    return d


def sim_align_args(sim, *extra) -> list:
    """``lmalign align`` of the simulated series (EXCLUDE left out), then ``extra``."""
    return [
        "align",
        sim / "sim.csv",
        "--tilts",
        sim / "sim.rawtlt",
        "--image-size",
        2048,
        2048,
        "--exclude",
        EXCLUDE,
        *extra,
    ]


@pytest.fixture(scope="module")
def aligned(sim, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("aligned")
    rc, out, err = run_env(sim_align_args(sim, "--out-dir", out_dir))
    return rc, out, err, out_dir


def test_align_writes_every_output(aligned):
    rc, out, err, d = aligned
    assert rc == 0, err
    assert {p.name for p in d.iterdir()} == OUTPUTS
    assert "Residual error mean and sd:" in out
    assert "points with the largest residuals" in out
    assert "excluded: transform interpolated" in out
    assert "dropped 1 marker(s) seen in fewer than 2 fitted views (ids 99)" in err
    assert "stage joint" in err  # stage-by-stage progress on stderr


def test_xf_and_tlt_layouts(aligned, sim):
    d = aligned[3]
    xf_lines = (d / "sim.xf").read_text().splitlines()
    assert len(xf_lines) == 63  # one line per input view, excluded ones included
    for line in xf_lines:
        assert len(line) == 72
        fields = [line[k : k + 12] for k in range(0, 72, 12)]
        assert all(re.fullmatch(r" *-?\d+\.\d{7}", f) for f in fields[:4]), line
        assert all(re.fullmatch(r" *-?\d+\.\d{3}", f) for f in fields[4:]), line
    tilts = io.read_tilts(d / "sim.tlt")
    nominal = io.read_tilts(sim / "sim.rawtlt")
    assert tilts.size == 63
    # excluded views (1-based 5 and 63) keep their nominal tilt
    np.testing.assert_allclose(tilts[[4, 62]], nominal[[4, 62]], atol=1e-3)


def test_views_left_out_of_the_fit_get_no_relion_row(aligned, tmp_path):
    """RELION's star, like the .aln and Portal files, holds only the fitted views: excluded tilt
    images' transforms are interpolated, and RELION's own exclusion removes their rows. With
    RELION's imported star, the rows of the excluded views are removed and the others kept."""
    import pandas as pd
    import starfile

    record = aligned[3] / "sim.json"
    rc, out, err = run(["export", record, "--to", "relion", "--pixel-size", 10, "--out-dir", tmp_path / "a"])
    assert rc == 0, err
    table = starfile.read(tmp_path / "a" / "sim.star", always_dict=True)["sim"]
    nominal = np.array([v["nominal_tilt_deg"] for v in json.loads(record.read_text())["views"]])
    kept = np.setdiff1d(np.arange(63), [4, 62])
    np.testing.assert_allclose(table["rlnTomoNominalStageTiltAngle"], nominal[kept], atol=1e-6)

    imported = pd.DataFrame(
        {"rlnMicrographMovieName": [f"m{k}.tif" for k in range(63)], "rlnTomoNominalStageTiltAngle": nominal}
    )
    starfile.write({"sim": imported}, tmp_path / "imported.star")
    argv = ["export", record, "--to", "relion", "--pixel-size", 10, "--out-dir", tmp_path / "b"]
    rc, out, err = run([*argv, "--relion-tilt-series", tmp_path / "imported.star"])
    assert rc == 0, err
    table = starfile.read(tmp_path / "b" / "sim.star", always_dict=True)["sim"]
    assert list(table["rlnMicrographMovieName"]) == [f"m{k}.tif" for k in kept]


def test_align_export_checks_the_folder_first_and_records_its_pixel_size(sim, tmp_path):
    """``align --export imod`` into a folder holding another series' align.log is refused before
    the solve, nothing written (audit: refused after it, the record saying exit 0); --pixel-size
    goes into the record, so a later ``export --to relion`` needs it no more."""
    base = sim_align_args(sim)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "align.log").write_text("  OutputTiltFile = TS_99.tlt\n")
    rc, out, err = run([*base, "--out-dir", shared, "--export", "imod", "--no-figure"])
    assert rc == 2 and "align.log belongs to another tilt series (TS_99.tlt)" in err and "stage" not in err, (
        err
    )
    assert sorted(p.name for p in shared.iterdir()) == ["align.log"]
    rc, out, err = run(
        [*base, "--out-dir", tmp_path / "p", "--pixel-size", 2.5, "--no-figure", "--no-errors"]
    )
    assert rc == 0, err
    record = json.loads((tmp_path / "p" / "sim.json").read_text())
    assert record["inputs"]["pixel_size_A"] == 2.5
    # the axis estimated from the tracks is known up to 180 degrees: the other hand is named (audit)
    rot = record["options"]["rotation_deg"]
    other = rot - 180 if rot > 0 else rot + 180
    assert f"estimated from the tracks ({rot:.1f} deg): {other:.1f} deg fits the points as well" in err, err
    rc, out, err = run([*base, "--out-dir", tmp_path / "q", "--rotation", rot, "--no-figure", "--no-errors"])
    assert rc == 0 and "estimated from the tracks" not in err, err
    rc, out, err = run(["export", tmp_path / "p" / "sim.json", "--to", "relion", "--out-dir", tmp_path / "r"])
    assert rc == 0 and (tmp_path / "r" / "sim.star").exists(), err


def test_align_log_excludes_every_view_left_out_of_the_fit(sim, tmp_path):
    """align.log's ExcludeList names the views --exclude left out and those without markers (audit:
    only the first; the .aln's DarkFrame lines and the .star leave out both)."""
    rows = (sim / "sim.csv").read_text().splitlines()
    kept = [r for r in rows if r.split(",")[1:2] != ["9"]]  # view 10 (1-based) loses its points
    (tmp_path / "gap.csv").write_text("\n".join(kept) + "\n")
    argv = ["align", tmp_path / "gap.csv", "--tilts", sim / "sim.rawtlt", "--image-size", 2048, 2048]
    rc, out, err = run(
        [*argv, "--exclude", EXCLUDE, "--out-dir", tmp_path / "o", "--export", "imod", "--no-figure"]
    )
    assert rc == 0, err
    text = (tmp_path / "o" / "align.log").read_text()
    entries = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in text.splitlines()) if _}
    assert entries["ExcludeList"] == "5,10,63", entries


def test_recovers_truth(aligned, sim):
    d = aligned[3]
    truth = json.loads((sim / "sim_truth.json").read_text())
    kept = np.setdiff1d(np.arange(63), [4, 62])
    true_tilt = np.array([v["tilt"] for v in truth["views"]])
    true_rot = np.array([v["rotation"] for v in truth["views"]])
    tilts = io.read_tilts(d / "sim.tlt")
    dt = tilts[kept] - true_tilt[kept]
    assert np.sqrt(np.mean((dt - dt.mean()) ** 2)) < 0.1  # a common tilt offset is a gauge freedom
    a, _ = io.read_xf(d / "sim.xf")
    alpha = np.degrees(np.arctan2(-a[:, 1, 0], a[:, 0, 0]))  # A = R(-alpha) / s
    assert np.max(np.abs(alpha[kept] - true_rot[kept])) < 0.15


def test_aligned_points_match_xyz(aligned, sim):
    """The .xf applied to the measured points gives (x cos t + z sin t, y) of the .xyz markers."""
    d = aligned[3]
    record = json.loads((d / "sim.json").read_text())
    a, shifts = io.read_xf(d / "sim.xf")
    tilts = np.radians(io.read_tilts(d / "sim.tlt"))
    fid = io.read_fid_xyz(d / "sim.xyz")
    assert fid.image_size == (2048, 2048)
    markers = io.read_markers_csv(sim / "sim.csv")
    c = np.array([1024.0, 1024.0])
    row = {cid: k for k, cid in enumerate(fid.contour)}
    dev = []
    for j, mid in enumerate(markers.marker_ids):
        if mid not in row:
            assert mid == 99
            continue
        x, y, z = fid.xyz[row[mid]] - [1024.0, 1024.0, 0.0]
        for v in np.flatnonzero(markers.mask[:, j]):
            if v in (4, 62):
                continue
            p = a[v] @ (markers.xy[v, j] - c) + shifts[v]
            dev.append(p - [x * np.cos(tilts[v]) + z * np.sin(tilts[v]), y])
    dev = np.array(dev)
    rms = record["summary"]["rms_residual_px"]
    assert np.sqrt(np.mean(dev**2)) < 1.02 * rms + 0.01
    assert np.all(np.sqrt(np.mean(dev**2, axis=0)) < record["summary"]["mean_residual_px"])


def test_excluded_view_transform_is_interpolated(aligned):
    a, shifts = io.read_xf(aligned[3] / "sim.xf")
    # view 5 (index 4) lies between views 4 and 6: its matrix and shift are between theirs
    for got, lo, hi in ((a[4], a[3], a[5]), (shifts[4], shifts[3], shifts[5])):
        assert np.all(got >= np.minimum(lo, hi) - 2e-7) and np.all(got <= np.maximum(lo, hi) + 2e-7)
    # the last view has a neighbour on one side only: its transform is copied
    np.testing.assert_allclose(a[62], a[61], atol=2e-7)
    np.testing.assert_allclose(shifts[62], shifts[61], atol=2e-3)


def test_resid_file(aligned):
    d = aligned[3]
    table = io.read_resid(d / "sim.resid")
    record = json.loads((d / "sim.json").read_text())
    assert table.xy.shape[0] == record["summary"]["n_points"]
    assert table.n_markers == 30
    assert not np.isin(table.view, [4, 62]).any()
    rms = np.sqrt(np.mean(table.residual**2))
    assert rms == pytest.approx(record["summary"]["rms_residual_px"], abs=0.01)


def test_json_record(aligned):
    d = aligned[3]
    r = json.loads((d / "sim.json").read_text())
    assert r["software"]["name"] == "lmalign_jax" and r["software"]["version"]
    assert r["inputs"]["excluded_views"] == [5, 63]
    assert r["inputs"]["dropped_markers"] == [99]
    assert r["inputs"]["n_views"] == 63 and r["inputs"]["n_views_fitted"] == 61
    assert r["inputs"]["image_size_source"] == "--image-size"
    assert r["options"]["model"] == "jou" and r["options"]["rotation_source"].startswith("estimated")
    assert [s["name"] for s in r["stages"]] == ["initial", "main", "tilt", "joint"]
    assert all({"iterations", "seconds", "status", "rms_residual_px"} <= set(s) for s in r["stages"])
    s = r["summary"]
    assert s["status"] == "converged" and s["converged"] is True
    # 0.5 px noise per coordinate: the RMS residual sits at the noise floor (within 4 sd)
    assert_at_noise_floor(summary_floor_fit(s, 0.5))
    assert s["mean_residual_px"] > s["rms_residual_px"]
    assert (
        len(r["views"]) == 63 and r["views"][4]["excluded"] and r["views"][4]["parameters"]["scale"] is None
    )
    assert r["views"][0]["view_number"] == 1 and r["views"][0]["n_points"] > 0
    assert len(r["markers"]) == 30 and {"id", "x", "y", "z", "rms_residual_px"} <= set(r["markers"][0])
    assert len(r["worst_points"]) == 10
    lengths = [p["residual_px"] for p in r["worst_points"]]
    assert lengths == sorted(lengths, reverse=True)
    assert r["outputs"] == ["sim.xf", "sim.tlt", "sim.resid", "sim.xyz", "sim.json", "sim.png"]
    assert r["exit_code"] == 0


def test_png_report(aligned):
    data = (aligned[3] / "sim.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000


def test_tilts_out_of_order_are_sorted_and_written_back(sim, aligned, tmp_path):
    """Shuffled views (a dose-symmetric file order) give the same answer, in file order."""
    perm = np.random.default_rng(0).permutation(63)  # new view k = old view perm[k]
    nominal = io.read_tilts(sim / "sim.rawtlt")
    io.write_tlt(tmp_path / "shuf.rawtlt", nominal[perm])
    inverse = np.argsort(perm)
    lines = (sim / "sim.csv").read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        m, v, x, y = line.split(",")
        rows.append(f"{m},{inverse[int(v)]},{x},{y}")
    (tmp_path / "shuf.csv").write_text("\n".join(rows) + "\n")
    excl = ",".join(str(inverse[v] + 1) for v in (4, 62))
    rc, out, err = run(
        [
            "align",
            tmp_path / "shuf.csv",
            "--tilts",
            tmp_path / "shuf.rawtlt",
            "--image-size",
            2048,
            2048,
            "--out-dir",
            tmp_path / "o",
            "--exclude",
            excl,
            "-q",
        ]
    )
    assert rc == 0, err
    assert (
        "tilt angles are not in order; views are fitted in order of tilt and written back in file order"
        in err
    )
    assert re.search(r"shuf\.rawtlt:\d+: tilt angles", err)
    ref_t = io.read_tilts(aligned[3] / "sim.tlt")
    ref_a, ref_d = io.read_xf(aligned[3] / "sim.xf")
    got_t = io.read_tilts(tmp_path / "o" / "shuf.tlt")
    got_a, got_d = io.read_xf(tmp_path / "o" / "shuf.xf")
    np.testing.assert_allclose(got_t, ref_t[perm], atol=2e-3)
    np.testing.assert_allclose(got_a, ref_a[perm], atol=2e-6)
    np.testing.assert_allclose(got_d, ref_d[perm], atol=2e-3)


def test_not_converged_writes_report_only(sim, tmp_path, monkeypatch):
    """A solve that stops early: exit 1, a message, .json and .png written, no .xf/.tlt."""
    import dataclasses

    real = fitting.align_observations  # the solve as the workflow calls it (lmalign_jax/workflow/fitting.py)

    def stopped(*a, **k):
        return dataclasses.replace(real(*a, **k), status="stopped at the iteration limit before converging")

    monkeypatch.setattr(fitting, "align_observations", stopped)
    rc, out, err = run(
        [
            "align",
            sim / "sim.csv",
            "--tilts",
            sim / "sim.rawtlt",
            "--image-size",
            2048,
            2048,
            "--out-dir",
            tmp_path,
            "--exclude",
            EXCLUDE,
            "--prefix",
            "bad",
            "-q",
        ]
    )
    assert rc == 1
    assert (
        "lmalign: error: alignment did not converge (stopped at the iteration limit before converging)" in err
    )
    assert {p.name for p in tmp_path.iterdir()} == {"bad.json", "bad.png"}
    record = json.loads((tmp_path / "bad.json").read_text())
    assert record["summary"]["converged"] is False and record["exit_code"] == 1
    assert "Status: stopped at the iteration limit" in out

    # the .xf/.tlt of an earlier run that did converge are left, and flagged as stale
    (tmp_path / "bad.xf").write_text("old\n")
    rc, out, err = run(
        [
            "align",
            sim / "sim.csv",
            "--tilts",
            sim / "sim.rawtlt",
            "--image-size",
            2048,
            2048,
            "--out-dir",
            tmp_path,
            "--exclude",
            EXCLUDE,
            "--prefix",
            "bad",
            "-q",
            "--no-figure",
        ]
    )
    assert rc == 1 and f"the report is in {tmp_path / 'bad.json'}, no .xf/.tlt written" in err
    assert (
        f"{tmp_path / 'bad.xf'}, {tmp_path / 'bad.png'} are from an earlier run and were not updated" in err
    )


def test_no_figure_writes_the_rest_and_flags_an_old_figure(sim, tmp_path):
    args = [
        "align",
        sim / "sim.csv",
        "--tilts",
        sim / "sim.rawtlt",
        "--image-size",
        2048,
        2048,
        "--out-dir",
        tmp_path,
        "-q",
        "--no-figure",
    ]
    rc, out, err = run(args)
    assert rc == 0, err
    names = {"sim.xf", "sim.tlt", "sim.resid", "sim.xyz", "sim.json"}
    assert {p.name for p in tmp_path.iterdir()} == names and "earlier run" not in err
    assert set(json.loads((tmp_path / "sim.json").read_text())["outputs"]) == names
    (tmp_path / "sim.png").write_bytes(b"an older report")
    rc, out, err = run(args)
    assert rc == 0 and f"{tmp_path / 'sim.png'} are from an earlier run and were not updated" in err


# --------------------------------------------------------------------------- bad input


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def files(tmp_path):
    """A valid small marker CSV (4 markers x 5 views, not in a row) and tilt file; the tests break
    one thing."""
    rows = ["marker,view,x,y"] + [
        f"{m},{v},{100 + 50 * m + 10 * v},{200 + 30 * m + 20 * m * m}" for m in range(1, 5) for v in range(5)
    ]
    return {
        "csv": write(tmp_path / "m.csv", "\n".join(rows) + "\n"),
        "tlt": write(tmp_path / "t.tlt", "\n".join(str(t) for t in (-20, -10, 0, 10, 20)) + "\n"),
        "out": tmp_path / "out",
        "dir": tmp_path,
    }


def align_args(files, markers=None, tilts=None, *extra, size=True):
    args = ["align", markers or files["csv"], "--tilts", tilts or files["tlt"], "--out-dir", files["out"]]
    return args + (["--image-size", 512, 512] if size else []) + list(extra)


def assert_bad(args, pattern, out_dir):
    rc, out, err = run(args)
    assert rc == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("lmalign: error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert not os.path.exists(out_dir) or not os.listdir(out_dir)
    return lines[0]


def test_missing_file(files):
    line = assert_bad(
        align_args(files, files["dir"] / "nope.csv"), r"nope\.csv: file not found", files["out"]
    )
    assert line.startswith("lmalign: error: ")


def test_missing_tilt_file(files):
    assert_bad(align_args(files, None, files["dir"] / "nope.tlt"), r"nope\.tlt: file not found", files["out"])


@pytest.mark.parametrize(
    "name, which, pattern",
    [
        ("m.xyz", "markers", r"m\.xyz: unsupported marker file \(extension '\.xyz'\); supported: .*\.resid"),
        (
            "t.txt",
            "tilts",
            r"t\.txt: unsupported tilt-angle file \(extension '\.txt'\); supported: \.tlt, \.rawtlt, \.mdoc",
        ),
    ],
)
def test_unknown_extension(files, name, which, pattern):
    path = write(files["dir"] / name, "1\n")
    args = align_args(files, path if which == "markers" else None, path if which == "tilts" else None)
    assert_bad(args, pattern, files["out"])


@pytest.mark.parametrize(
    "row, pattern",
    [
        ("2,3,abc,5", r"m\.csv:22: x is not a number: 'abc'"),
        ("2,3,nan,5", r"m\.csv:22: x is not finite: 'nan'"),
        ("2,3,10,5", r"m\.csv:22: duplicate point for marker 2 in view 3 \(first on line 10\)"),
        ("2,3,10", r"m\.csv:22: expected 4 comma-separated fields"),
    ],
)
def test_bad_marker_line(files, row, pattern):
    with open(files["csv"], "a") as f:
        f.write(row + "\n")
    assert_bad(align_args(files), pattern, files["out"])


def test_bad_tilt_line(files):
    write(files["tlt"], "-20\n-10\nzero\n10\n20\n")
    assert_bad(align_args(files), r"t\.tlt:3: tilt angle is not a number: 'zero'", files["out"])


def test_tilt_file_shorter_than_the_markers_views(files):
    """The tilt file is the one at fault when markers sit on views it has no angle for: the
    message names it, with its count of angles and the count the markers need."""
    with open(files["csv"], "a") as f:
        f.write("2,7,10,5\n")  # view 7 (0-based): 8 views needed, the tilt file has 5 angles
    pattern = (
        r"^lmalign: error: .*t\.tlt: has 5 tilt angles but the markers in .*m\.csv need 8 "
        r"\(a marker is on view 8, counting from 1\)"
    )
    assert_bad(align_args(files), pattern, files["out"])


def test_resid_view_beyond_tilt_file(files):
    resid = write(
        files["dir"] / "x.resid",
        "     3 residuals\n    100.00    200.00    0    0.10    0.10\n"
        "    110.00    200.00    1    0.10    0.10\n    120.00    200.00    9    0.10    0.10\n",
    )
    assert_bad(
        align_args(files, resid),
        r"t\.tlt: has 5 tilt angles but the markers in .*x\.resid need 10 ",
        files["out"],
    )


def test_an_unexpected_exception_is_an_internal_error_not_a_failed_alignment(files, monkeypatch):
    """Exit 1 means only "the solve did not converge"; a crash is exit 3, one line, no output."""

    def crash(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.delenv("LMALIGN_DEBUG", raising=False)
    monkeypatch.setattr(fitting, "align_observations", crash)
    rc, out, err = run(align_args(files))
    assert rc == cli.EXIT_INTERNAL == 3, err
    assert (
        err.splitlines()[-1]
        == "lmalign: error: internal error (RuntimeError: boom); set LMALIGN_DEBUG=1 for a traceback"
    )
    assert "converge" not in err and not os.path.exists(files["out"])


@pytest.mark.parametrize("command", ["align", "batch"])
def test_robust_alone_means_tukey(command):
    """As IMOD's RobustFitting: --robust alone is Tukey's bisquare; --robust LOSS picks another."""
    parse_cmd = lambda *extra: cli.build_parser().parse_args([command, "m.fid", *extra])  # noqa: E731
    assert parse_cmd().robust is None
    assert parse_cmd("--robust").robust == "tukey"
    assert parse_cmd("--robust", "huber").robust == "huber"
    assert parse_cmd("--robust=cauchy").robust == "cauchy"
    with pytest.raises(cli.UsageError, match="--robust: invalid choice: 'bogus'"):
        parse_cmd("--robust", "bogus")


@pytest.mark.parametrize("command", ["align", "batch", "reconstruct"])
def test_help_documents_the_internal_error_status(command):
    rc, out, _ = run([command, "--help"])
    assert rc == 0 and re.search(r"3 internal error", " ".join(out.split()))


def test_empty_inputs(files):
    write(files["csv"], "marker,view,x,y\n")
    assert_bad(align_args(files), r"m\.csv: no marker points", files["out"])
    write(files["tlt"], "")
    assert_bad(align_args(files), r"t\.tlt: no tilt angles", files["out"])


def test_image_size_missing(files):
    assert_bad(
        align_args(files, size=False),
        r"m\.csv: image size unknown \(the marker file does not record it\): "
        r"give --image-size NX NY or --stack",
        files["out"],
    )


def test_too_few_markers_after_dropping(files):
    # markers 3 and 4 are seen in view 0 only: dropped, leaving 2 markers
    rows = ["marker,view,x,y"] + [
        f"{m},{v},{100 + 50 * m + 10 * v},{200 + 30 * m}" for m in (1, 2) for v in range(5)
    ]
    rows += ["3,0,300,300", "4,0,320,310"]
    write(files["csv"], "\n".join(rows) + "\n")
    rc, out, err = run(align_args(files))
    assert rc == 2
    assert re.fullmatch(
        r"lmalign: error: .*m\.csv: only 2 marker\(s\) are seen in 2 or more of 5 usable view\(s\); "
        r"alignment needs at least 3 markers and 3 views \(dropped marker ids 3, 4\)\n",
        err,
    )
    assert not files["out"].exists()


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--exclude", "0"], r"--exclude: view 0 is outside 1\.\.5 \(views count from 1"),
        (["--exclude", "2-9"], r"--exclude: view 9 is outside 1\.\.5"),
        (["--exclude", "a-b"], r"--exclude: 'a-b' is not a view number or range"),
        (
            ["--rotation-mode", "sometimes"],
            r"--rotation-mode: unknown mode 'sometimes' for rotation; use free, fixed, shared, group:N or "
            r"linear:N",
        ),
        (["--mode", "foo=free"], r"--mode: model 'jou' has no parameter 'foo'"),
        (["--mode", "scale=group:0"], r"group:N or linear:N \(N views per group, a whole number >= 1\)"),
        (["--tilt-mode", "linear:0"], r"--tilt-mode: unknown mode 'linear:0' for tilt"),
        (
            ["--model", "luther", "--scale-mode", "fixed"],
            r"--scale-mode: model 'luther' has no parameter 'scale'",
        ),
        (["--mode", "tilt"], r"--mode: expected NAME=MODE"),
        (["--model", "nope"], r"argument --model: invalid choice: 'nope'"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
        (["--max-iterations", "0"], r"--max-iterations must be between 1 and 1000000, got 0"),
        # an int32 counter overflowed: exit 3 (audit)
        (
            ["--max-iterations", "2147483648"],
            r"--max-iterations must be between 1 and 1000000, got 2147483648",
        ),
        (["--worst", "-5"], r"--worst must be between 0 and 1000000, got -5"),
        (
            ["--image-size", "nan", "nan"],
            r"--image-size must be two whole numbers of pixels, 1 to 1000000",
        ),
        (["--image-size", "1e7", "1e7"], r"--image-size must be .* 1 to 1000000, got 1e\+07 1e\+07"),
        # audit: 512.5 centred the markers on 512.5 but wrote Dim 512; 1e-300 wrote Dim 0 (exit 0)
        (["--image-size", "512.5", "512"], r"--image-size must be two whole numbers .*, got 512.5 512"),
        (["--image-size", "1e-300", "512"], r"--image-size must be two whole numbers .*, got 1e-300 512"),
        (["--robust", "--robust-group-size", "0"], r"--robust-group-size must be at least 1, got 0"),
        # what --export needs is checked before anything is solved or written
        (["--export", "relion"], r"RELION needs the pixel size and no input gives one"),
        (["--export", "relion", "--prefix", "my beads"], r"output prefix, 'my beads', which is not one word"),
        (["--export", "aretomo", "--pixel-size", "-1"], r"--pixel-size must be a positive number"),
    ],
)
def test_bad_options(files, extra, pattern):
    assert_bad(align_args(files, None, None, *extra), pattern, files["out"])


def test_output_would_overwrite_input(files):
    write(files["dir"] / "m.tlt", "-20\n-10\n0\n10\n20\n")
    args = [
        "align",
        files["csv"],
        "--tilts",
        files["dir"] / "m.tlt",
        "--image-size",
        512,
        512,
        "--out-dir",
        files["dir"],
    ]
    before = sorted(os.listdir(files["dir"]))
    rc, _, err = run(args)
    assert rc == 2 and "m.tlt would overwrite an input file; choose another --prefix or --out-dir" in err
    assert sorted(os.listdir(files["dir"])) == before


def test_stack_with_wrong_number_of_sections(files):
    import mrcfile

    stack = files["dir"] / "s.mrc"
    with mrcfile.new(stack) as m:
        m.set_data(np.zeros((4, 16, 24), dtype=np.float32))
    assert_bad(
        align_args(files, None, None, "--stack", stack, size=False),
        r"s\.mrc: the stack has 4 sections but .*t\.tlt has 5 tilt angles",
        files["out"],
    )


def test_usage_errors():
    rc, _, err = run([])
    assert (
        rc == 2
        and err.strip()
        == "lmalign: error: choose a command: align, batch, compare, demo, export, find-beads, reconstruct, "
        "resident, simulate, track, uncertainty (see 'lmalign --help')"
    )
    rc, _, err = run(["align", "m.csv", "--image-size", "1"])
    assert rc == 2 and err.count("\n") == 1 and "expected 2 arguments" in err


# --------------------------------------------------------------------------- inputs without aligning


def parse(*args):
    return cli.build_parser().parse_args(["align", *map(str, args)])


def read_inputs(args):
    """The series that ``lmalign align`` with these options reads."""
    return read_series(
        args.markers,
        args.tilts,
        stack_path=args.stack,
        image_size=args.image_size,
        rotation_deg=args.rotation,
    )


def test_image_size_precedence_and_stack_header(files):
    import mrcfile

    stack = files["dir"] / "s.mrc"
    with mrcfile.new(stack) as m:
        m.set_data(np.zeros((5, 16, 24), dtype=np.float32))
    inp = read_inputs(parse(files["csv"], "--tilts", files["tlt"], "--stack", stack))
    assert inp.image_size == (24.0, 16.0) and inp.image_size_source.endswith("s.mrc header")
    inp = read_inputs(parse(files["csv"], "--tilts", files["tlt"], "--stack", stack, "--image-size", 24, 16))
    assert inp.image_size == (24.0, 16.0) and inp.image_size_source == "--image-size"
    # a size that contradicts the stack would give transforms that do not fit it
    with pytest.raises(cli.UsageError, match=r"the stack is 24 x 16 px but --image-size says 100"):
        read_inputs(parse(files["csv"], "--tilts", files["tlt"], "--stack", stack, "--image-size", 100, 50))


def test_mdoc_tilts_rotation_and_dose_symmetric_order(tmp_path):
    mdoc = Path(__file__).parent / "data" / "empiar10164-ts01" / "TS_01.mrc.mdoc"
    rows = ["marker,view,x,y"] + [
        f"{m},{v},{100 + 50 * m + v},{200 + 30 * m}" for m in range(1, 5) for v in range(41)
    ]
    csv = write(tmp_path / "m.csv", "\n".join(rows) + "\n")
    inp = read_inputs(parse(csv, "--tilts", mdoc))
    assert inp.rotation_deg == pytest.approx(85.3) and inp.rotation_source.endswith("tilt axis angle")
    assert inp.image_size == (924.0, 958.0) and inp.tilts_deg.size == 41
    assert read_inputs(parse(csv, "--tilts", mdoc, "--rotation", -3)).rotation_deg == -3.0
    sel = select_views(inp, [0])
    assert sel.sorted_by_tilt and 0 not in sel.view_index
    assert np.all(np.diff(inp.tilts_deg[sel.view_index]) >= 0)


def test_fid_header_gives_the_image_size(files):
    xy = np.random.default_rng(0).uniform(10, 500, (5, 4, 2))
    ms = io.MarkerSet(xy=xy, mask=np.ones((5, 4), dtype=bool), marker_ids=(1, 2, 3, 4), image_size=(640, 480))
    io.write_imod_model(files["dir"] / "m.fid", ms)
    inp = read_inputs(parse(files["dir"] / "m.fid", "--tilts", files["tlt"]))
    assert inp.image_size == (640.0, 480.0) and inp.image_size_source.endswith("m.fid header")
    assert inp.markers_format == "IMOD model" and inp.markers.n_markers == 4
    np.testing.assert_allclose(inp.markers.xy, xy, atol=1e-3)  # float32 in the binary model
    # a header past --image-size's bound is refused, naming the file (audit: 2^31 - 1 px aligned
    # with shifts of 5e8 px and NaN errors, exit 0), unless --image-size gives the size
    huge = io.MarkerSet(xy=xy, mask=ms.mask, marker_ids=ms.marker_ids, image_size=(2**31 - 1, 2**31 - 1))
    io.write_imod_model(files["dir"] / "huge.fid", huge)
    with pytest.raises(io.InputError, match=r"huge\.fid: the header gives an image size of 2147483647 x"):
        read_inputs(parse(files["dir"] / "huge.fid", "--tilts", files["tlt"]))
    inp = read_inputs(parse(files["dir"] / "huge.fid", "--tilts", files["tlt"], "--image-size", 640, 480))
    assert inp.image_size == (640.0, 480.0)


def test_pytom_markers_carry_their_tilts():
    pytom = Path(__file__).parent / "data" / "pytom-empiar10064"
    inp = read_inputs(parse(pytom / "mixedCTEM_tomo3_markerfile.txt", "--image-size", 3838, 3710))
    assert (
        inp.markers_format == "PyTom marker file" and inp.tilts_deg.size == 59 and inp.markers.n_markers == 8
    )
    np.testing.assert_allclose(inp.tilts_deg, io.read_tilts(pytom / "angles.tlt"))
    with pytest.raises(cli.UsageError, match="--tilts FILE is required"):
        read_inputs(parse(pytom / "angles.tlt", "--image-size", 10, 10))


def test_parse_view_list():
    assert cli.parse_view_list("1-3,40", 61) == [0, 1, 2, 39]
    assert cli.parse_view_list(" 2 , 2-3", 5) == [1, 2]


def test_compilation_cache_settings(monkeypatch, tmp_path):
    import jax

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.compilation_cache_dir() == str(tmp_path / "lmalign_jax" / "jax")
    assert cli.enable_compilation_cache() is None  # LMALIGN_NO_COMPILATION_CACHE is set (autouse fixture)
    monkeypatch.delenv("LMALIGN_NO_COMPILATION_CACHE")
    calls = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: calls.__setitem__(name, value))
    monkeypatch.setattr(compiled_cache, "enable", lambda folder: calls.__setitem__("exported", str(folder)))
    if jax.config.jax_compilation_cache_dir:
        pytest.skip("a compilation cache folder is already configured")
    assert cli.enable_compilation_cache() == str(tmp_path / "lmalign_jax" / "jax")
    assert calls["jax_compilation_cache_dir"] == str(tmp_path / "lmalign_jax" / "jax")
    assert calls["jax_persistent_cache_min_entry_size_bytes"] == 0
    assert (tmp_path / "lmalign_jax" / "jax").is_dir()
    assert calls["exported"] == str(tmp_path / "lmalign_jax" / "executables")  # compiled ones beside it


def test_python_m_help():
    """The one subprocess test: ``python -m lmalign_jax --help``."""
    p = subprocess.run(
        [sys.executable, "-m", "lmalign_jax", "--help"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    for word in ("align", "batch", "compare", "demo", "reconstruct", "simulate", "examples:"):
        assert word in p.stdout


@pytest.mark.parametrize(
    "command, words",
    [
        (
            "align",
            [
                "1-based like IMOD's ExcludeList",
                "examples:",
                "--rotation-mode",
                "Exit status: 0 success, 1 alignment did not converge, 2 bad input, 3 internal error",
            ],
        ),
        ("demo", ["example:", "--out-dir"]),
        ("simulate", ["example:", "--views", "--missing", "--seed"]),
    ],
)
def test_command_help(command, words):
    rc, out, _ = run([command, "--help"])
    assert rc == 0
    for w in words:
        assert w in out


def test_names_too_long_for_the_file_system_are_refused_before_the_solve(files):
    """A 300-byte folder name aligned first, then failed writing (audit); a prefix that fits
    every output name but not the staging folder's (prefix + 24 bytes) failed the same way."""
    long_dir = files["out"] / ("x" * 300)
    line = assert_bad(align_args(files, None, None, "--out-dir", long_dir), r"is 300 bytes, longer", long_dir)
    assert "aligning" not in line
    prefix = "p" * 240  # <prefix>.json is 245 bytes: fits
    rc, _, err = run(align_args(files, None, None, "--prefix", prefix, "--no-figure", "--no-errors", "-q"))
    assert rc == 0, err
    assert (files["out"] / f"{prefix}.json").exists()
    assert not [p for p in os.listdir(files["out"]) if p.startswith(".")]  # no staging left behind


def test_markers_in_a_row_are_refused(files):
    """Four markers on one line: the solve ended in a singular transform, exit 3 (found by the
    test above); they cannot give the markers' heights, and are now refused naming the file."""
    rows = ["marker,view,x,y"] + [
        f"{m},{v},{100 + 50 * m + 10 * v},{200 + 30 * m}" for m in range(1, 5) for v in range(5)
    ]
    row = write(files["dir"] / "row.csv", "\n".join(rows) + "\n")
    line = assert_bad(align_args(files, row), r"row\.csv: the 4 markers lie on one line", files["out"])
    assert "internal error" not in line
