"""`lmalign demo`: the whole job on the built-in synthetic example, compared with its truth."""

import contextlib
import io as _io
import json
import re

import mrcfile
import numpy as np
import pytest
from helpers import assert_at_noise_floor, summary_floor_fit

from lmalign_jax import cli


def test_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["demo", "--out-dir", str(tmp_path), "--quiet"])
    assert rc == 0, err.getvalue()
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "demo_input.csv",
        "demo_input.rawtlt",
        "demo_input_truth.json",
        "demo.xf",
        "demo.tlt",
        "demo.resid",
        "demo.xyz",
        "demo.json",
        "demo.png",
        "demo_tomo.csv",
        "demo_tomo.rawtlt",
        "demo_tomo_truth.json",
        "demo_tomo.mrc",
        "demo_tomo_truth.xf",
        "demo_tomo_truth.tlt",
        "demo_tomo.xf",
        "demo_tomo.tlt",
        "demo.rec.mrc",
    }
    text = out.getvalue()
    assert "Compared with the known truth of the synthetic series:" in text
    assert "Residual error mean and sd:" in text
    record = json.loads((tmp_path / "demo.json").read_text())
    truth = record["truth"]
    assert truth["model_error_px"] < 0.3  # projections within the 0.5 px noise
    assert abs(truth["rotation_mean_error_deg"]) < 0.1
    assert truth["tilt_rms_error_deg"] < 0.1
    assert_at_noise_floor(summary_floor_fit(record["summary"], 0.5))  # the demo's 0.5 px noise, within 4 sd
    assert record["inputs"]["n_views"] == 61 and record["inputs"]["n_markers"] == 30
    assert record["options"]["command"][:2] == ["lmalign", "demo"]
    # the reconstruction part: every bead within a voxel of where the solved alignment puts it
    m = re.search(
        r"beads at their expected voxels \(the solved marker positions\): max distance ([0-9.]+) voxel", text
    )
    assert m and float(m.group(1)) < 0.5, text
    m = re.search(r"beads vs their true positions .*: max distance ([0-9.]+) voxel", text)
    assert m and float(m.group(1)) < 0.5, text
    with mrcfile.open(tmp_path / "demo.rec.mrc") as mrc:
        assert mrc.data.shape == (64, 256, 256) and mrc.data.dtype == np.float32
        assert float(mrc.voxel_size.x) == pytest.approx(10.0)
