"""``lmalign export`` of hand-edited or malformed records (report.record.read_record,
workflow.exporting): each refused in one line naming the record and the field, exit 2, nothing
written; an output that would overwrite ``--local`` refused; a flattened record's X-axis tilt,
which only IMOD's files carry, warned about."""

import json
from pathlib import Path

import pytest
from helpers import run_cli as run

import lmalign_jax

BB = Path(lmalign_jax.__file__).resolve().parent / "data" / "imod-bb"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """BBa aligned as is (``plain/BBa.json``) and with --flatten (``flat/BBa.json``)."""
    folder = tmp_path_factory.mktemp("bad_records")
    for name, extra in (("plain", []), ("flat", ["--flatten"])):
        argv = ["align", BB / "BBa.resid", "--tilts", BB / "BBa.tlt", "--image-size", 512, 512]
        rc, _, err = run([*argv, "--out-dir", folder / name, "--no-figure", "-q", *extra])
        assert rc == 0, err
    return folder


def _edited(records, tmp_path, edit, source="plain") -> Path:
    record = json.loads((records / source / "BBa.json").read_text())
    edit(record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    return path


def _set(section, key, value):
    return lambda r: r[section].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "source", "message"),
    [
        (_set("inputs", "markers", 123), "plain", "inputs.markers must be a file name (a string), got 123"),
        (
            _set("summary", "rms_residual_px", "big"),
            "plain",
            "summary.rms_residual_px must be a finite number, got 'big'",
        ),
        (
            _set("summary", "mean_residual_px", [1]),
            "plain",
            "summary.mean_residual_px must be a finite number",
        ),
        (
            _set("inputs", "image_size", [1e308, 1e308]),
            "plain",
            "inputs.image_size must be two whole numbers of pixels, 1 to 1000000, got [1e+308, 1e+308]",
        ),
        (
            _set("surfaces", "tilt_angle_change_deg", 1e308),
            "flat",
            "surfaces.tilt_angle_change_deg 1e+308 puts view 1's tilt at 1e+308 degrees, outside -90..90",
        ),
        (
            lambda r: r["views"][3]["xf"].__setitem__(4, 1e200),
            "plain",
            "views[3].xf shift (1e+200, ",
        ),
        (
            lambda r: r["markers"][0].__setitem__("x", 1e300),
            "plain",
            "markers[0] at (1e+300, ",
        ),
        (lambda r: r.__setitem__("record_version", "1"), "plain", "record_version '1' is not an integer"),
        (
            _set("summary", "converged", False),
            "plain",
            "this alignment did not converge (summary.converged is false); there is nothing to export",
        ),
    ],
)
def test_a_bad_record_is_refused_naming_the_record_and_field(records, tmp_path, edit, source, message):
    path = _edited(records, tmp_path, edit, source)
    out = tmp_path / "out"
    rc, text, err = run(["export", path, "--to", "all", "--pixel-size", 2, "--out-dir", out])
    lines = err.strip().splitlines()
    assert rc == 2 and text == "" and len(lines) == 1, err
    assert lines[0].startswith(f"lmalign: error: {path}: ") and message in lines[0], err
    assert not out.exists()


def test_a_record_naming_no_marker_file_says_so(records, tmp_path):
    path = _edited(records, tmp_path, lambda r: r["inputs"].pop("markers"))
    rc, _, err = run(["export", path, "--to", "imod", "--out-dir", tmp_path / "out"])
    assert rc == 0, err
    assert f"{path} names no marker file: every point of bad_nogaps.fid is the solved projection" in err
    assert "None" not in err


def test_an_output_that_would_overwrite_the_local_file_is_refused(records, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    local = out / "Xlocal.xf"
    local.write_text("not touched\n")
    argv = ["export", records / "plain" / "BBa.json", "--to", "aretomo,imod", "--out-dir", out]
    rc, _, err = run([*argv, "--prefix", "Xlocal", "--local", local])
    assert rc == 2 and f"output {local} would overwrite an input file" in err, err
    assert local.read_text() == "not touched\n" and sorted(p.name for p in out.iterdir()) == ["Xlocal.xf"]


def test_a_tiny_pixel_size_is_refused(records, tmp_path):
    argv = ["export", records / "plain" / "BBa.json", "--to", "relion", "--out-dir", tmp_path / "out"]
    rc, _, err = run([*argv, "--pixel-size", 1e-300])
    assert rc == 2 and "pixel size 1e-300 A is under 0.01 A" in err, err
    assert not (tmp_path / "out").exists()


def test_the_targets_that_drop_a_flattened_x_axis_tilt_are_warned_about(records, tmp_path):
    record = json.loads((records / "flat" / "BBa.json").read_text())
    value = -record["surfaces"]["x_axis_tilt_deg"]  # the .xtilt's (export.imod.xtilt_file_value_deg)
    assert abs(value) > 0.5
    flat = records / "flat" / "BBa.json"
    rc, _, err = run(["export", flat, "--to", "all", "--pixel-size", 2, "--out-dir", tmp_path / "all"])
    assert rc == 0, err
    warning = [line for line in err.splitlines() if "X-axis tilt" in line]
    assert len(warning) == 1 and warning[0].startswith("lmalign: warning: "), err
    assert f"X-axis tilt of {value:.2f} deg" in warning[0]
    assert "aretomo (BBa.aln), relion (BBa.star), portal (BBa_portal.json) do not carry it" in warning[0]
    assert (tmp_path / "all" / "BBa.xtilt").read_text().split()[0] == f"{value:.2f}"
    rc, _, err = run(["export", flat, "--to", "imod", "--out-dir", tmp_path / "imod"])
    assert rc == 0 and "X-axis tilt" not in err, err
    plain = records / "plain" / "BBa.json"
    rc, _, err = run(["export", plain, "--to", "all", "--pixel-size", 2, "--out-dir", tmp_path / "plain"])
    assert rc == 0 and "X-axis tilt" not in err, err
    rc, text, _ = run(["export", "--help"])
    assert "X-axis tilt, which\n           the other targets do not carry" in text
