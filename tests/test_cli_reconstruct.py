"""`lmalign reconstruct` end to end: simulate --stack -> align -> reconstruct, and bad input.

The series is `simulate --stack`'s default (41 views of 256 x 256 px, 12 beads, the demo's size,
so the solver is compiled once with tests/test_cli_demo.py in the same session).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from test_cli import _no_persistent_cache, run  # noqa: F401 (an autouse fixture)

from lmalign_jax import io
from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf
from lmalign_jax.simulation.phantom import fit_similarity, locate_peaks

THICKNESS = 64
SEED = 5


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """simulate --stack, then align its markers on the stack's header."""
    d = tmp_path_factory.mktemp("stack")
    mp = pytest.MonkeyPatch()
    mp.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")
    try:
        rc, out, err = run(["simulate", "--out-dir", d, "--prefix", "s", "--stack", "--seed", SEED])
        assert rc == 0, err
        assert {p.name for p in d.iterdir()} == {
            "s.csv",
            "s.rawtlt",
            "s_truth.json",
            "s.mrc",
            "s_truth.xf",
            "s_truth.tlt",
        }
        assert f"lmalign reconstruct {d / 's.mrc'} --alignment {d / 's.json'} --thickness {THICKNESS}" in out
        rc, out, err = run(
            ["align", d / "s.csv", "--tilts", d / "s.rawtlt", "--stack", d / "s.mrc", "--out-dir", d, "-q"]
        )
        assert rc == 0, err
    finally:
        mp.undo()
    truth = json.loads((d / "s_truth.json").read_text())
    record = json.loads((d / "s.json").read_text())
    return {
        "dir": d,
        "truth": np.array([[m["x"], m["y"], m["z"]] for m in truth["markers"]]),
        "solved": np.array([[m["x"], m["y"], m["z"]] for m in record["markers"]]),
    }


def read_volume(path):
    with mrcfile.open(path) as mrc:
        return np.array(mrc.data), float(mrc.voxel_size.x), float(mrc.voxel_size.z)


def test_simulated_stack(series):
    d = series["dir"]
    with mrcfile.open(d / "s.mrc") as mrc:
        assert mrc.data.shape == (41, 256, 256) and mrc.data.dtype == np.float32
        assert float(mrc.voxel_size.x) == pytest.approx(10.0)
        assert float(mrc.data.max()) > 3.0  # beads: sqrt(2 pi) * 1.5 * density 1 at their centres
    a, shifts = io.read_xf(d / "s_truth.xf")
    assert a.shape == (41, 2, 2) and io.read_tilts(d / "s_truth.tlt").shape == (41,)


def test_reconstruct_with_xf_and_tlt(series):
    d = series["dir"]
    out = d / "xf.rec.mrc"
    rc, stdout, err = run(
        [
            "reconstruct",
            d / "s.mrc",
            "--xf",
            d / "s.xf",
            "--tlt",
            d / "s.tlt",
            "--thickness",
            THICKNESS,
            "--out",
            out,
        ]
    )
    assert rc == 0, err
    assert "64 x 256 x 256 voxels" in stdout and f"Wrote {out}" in stdout
    vol, vx, vz = read_volume(out)
    assert (
        vol.shape == (64, 256, 256)
        and vol.dtype == np.float32
        and vx == pytest.approx(10.0)
        and vz == pytest.approx(10.0)
    )
    # every bead where the solved alignment puts it, and (gauge removed) where the truth does
    found, dist = locate_peaks(vol, series["solved"])
    assert dist.max() < 1.0, dist
    truth_in_frame = fit_similarity(series["truth"], series["solved"])
    err_truth = np.linalg.norm(found - truth_in_frame, axis=1)
    assert err_truth.max() < 1.0, err_truth
    print(f"xf/tlt: max {dist.max():.3f} voxel from the solved markers, {err_truth.max():.3f} from the truth")


def test_reconstruct_with_alignment_json_binned(series):
    d = series["dir"]
    out = d / "json.rec.mrc"
    rc, stdout, err = run(
        [
            "reconstruct",
            d / "s.mrc",
            "--alignment",
            d / "s.json",
            "--thickness",
            THICKNESS,
            "--bin",
            2,
            "--filter",
            "shepp-logan",
            "--out",
            out,
        ]
    )
    assert rc == 0, err
    vol, vx, _ = read_volume(out)
    assert vol.shape == (32, 128, 128) and vx == pytest.approx(20.0)  # voxel = pixel size x bin
    found, dist = locate_peaks(vol, series["solved"], binning=2)
    assert dist.max() < 1.0, dist
    err_truth = np.linalg.norm(found - fit_similarity(series["truth"], series["solved"]), axis=1) / 2
    assert err_truth.max() < 1.0, err_truth
    print(
        f"json, bin 2: max {dist.max():.3f} voxel from the solved markers, "
        f"{err_truth.max():.3f} from the truth"
    )


def test_reconstruct_with_the_true_alignment_default_output(series):
    """The truth's own .xf/.tlt put every bead at its true position, no gauge to remove."""
    d = series["dir"]
    rc, stdout, err = run(
        [
            "reconstruct",
            d / "s.mrc",
            "--xf",
            d / "s_truth.xf",
            "--tlt",
            d / "s_truth.tlt",
            "--thickness",
            THICKNESS,
            "--radial",
            0.4,
            0.05,
            "-q",
        ]
    )
    assert rc == 0, err
    assert err == ""  # --quiet
    vol, _, _ = read_volume(d / "s.rec.mrc")  # the default output: <stack stem>.rec.mrc
    _, dist = locate_peaks(vol, series["truth"])
    assert dist.max() < 1.0, dist
    print(f"true alignment: max {dist.max():.3f} voxel from the true bead positions")


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad(series, tmp_path_factory):
    """Broken copies of the inputs, in a folder of their own."""
    d = tmp_path_factory.mktemp("bad")
    src = series["dir"]
    lines = (src / "s.xf").read_text().splitlines(keepends=True)
    (d / "short.xf").write_text("".join(lines[:-1]))
    tilts = (src / "s.tlt").read_text().splitlines(keepends=True)
    (d / "long.tlt").write_text("".join(tilts) + "61.0\n")
    (d / "one.tlt").write_text("   12.0\n" * len(tilts))  # every view at one tilt
    with mrcfile.open(src / "s.mrc") as mrc:
        data = np.array(mrc.data)
    with mrcfile.new(d / "fewer.mrc") as mrc:
        mrc.set_data(data[:40])
    with mrcfile.new(d / "small.mrc") as mrc:
        mrc.set_data(data[:, :128, :128])
    with mrcfile.new(d / "line.mrc") as mrc:  # one row: nothing --bin could fix
        mrc.set_data(data[:, :1, :])
    with mrcfile.new(d / "dot.mrc") as mrc:
        mrc.set_data(data[:, :1, :1])
    huge = data.copy()
    huge[5, 100:140, 100:140] = 3e38  # finite, but a float32 reconstruction overflows
    with mrcfile.new(d / "huge.mrc") as mrc, np.errstate(over="ignore"):  # the header's mean overflows
        mrc.set_data(huge)
        mrc.voxel_size = 10.0
    far = list(lines)
    far[2] = "   1.0000000   0.0000000   0.0000000   1.0000000     1e+300       0.000\n"
    (d / "far.xf").write_text("".join(far))
    flat = list(lines)
    flat[1] = "   1.0000000   2.0000000   0.5000000   1.0000000       0.000       0.000\n"
    (d / "flat.xf").write_text("".join(flat))
    # finite and not singular, but not an alignment of this stack (audit: the view added nothing)
    outside = list(lines)
    outside[4] = "   1.0000000   0.0000000   0.0000000   1.0000000     1e+09      -1e+09\n"
    (d / "outside.xf").write_text("".join(outside))
    zoomed = list(lines)
    zoomed[4] = "       1e+29   0.0000000   0.0000000       1e+29       0.000       0.000\n"
    (d / "zoomed.xf").write_text("".join(zoomed))
    os.mkfifo(d / "pipe")  # an output that is not a regular file (as /dev/null)
    shutil.copy(src / "s.csv", d / "markers.mrc")
    record = json.loads((src / "s.json").read_text())
    record["summary"]["converged"] = False
    record["summary"]["status"] = "stopped at the iteration limit"
    (d / "failed.json").write_text(json.dumps(record))
    record = json.loads((src / "s.json").read_text())
    record["views"][3]["xf"] = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0]
    (d / "flat.json").write_text(json.dumps(record))
    (d / "broken.json").write_text('{"views": [\n  {"xf": [1, 0, 0, 1, 0, 0]\n')
    nan = data.copy()
    nan[3, 7, 9] = np.nan
    with mrcfile.new(d / "nan.mrc") as mrc, pytest.warns(RuntimeWarning, match="NaN"):
        mrc.set_data(nan)
        mrc.voxel_size = 10.0
    with mrcfile.new(d / "one.mrc") as mrc:  # a single view
        mrc.set_data(data[:1, :64, :64])
    (d / "one.xf").write_text(lines[0])
    (d / "one_view.tlt").write_text("0.0\n")
    _local_files(d, len(tilts))
    return {"dir": d, "src": src}


def _local_files(d, n_views):
    """Unit local alignment files (2 x 2 patches over 256 x 256 images) with one angle out of range."""
    unit = LocalAlignment(
        (2, 2),
        (64, 64),
        (128, 128),
        0.0,
        np.zeros((4, n_views)),
        np.broadcast_to([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], (4, n_views, 2, 3)).copy(),
        np.zeros((4, n_views)),
    )
    for name, field, patch, view, value in (
        ("dtilt", "delta_tilt_deg", 0, 3, 500.0),
        ("dtilt_edge", "delta_tilt_deg", 1, n_views - 1, 40.0),
        ("dxtilt", "delta_xtilt_deg", 2, 2, 1000.0),
    ):
        angles = getattr(unit, field).copy()
        angles[patch, view] = value
        write_local_xf(d / f"{name}.xf", dataclasses.replace(unit, **{field: angles}))


def _cases(b):
    s, d = b["src"], b["dir"]
    xf_tlt = ["--xf", s / "s.xf", "--tlt", s / "s.tlt"]
    return {
        "xf view count": (
            [s / "s.mrc", "--xf", d / "short.xf", "--tlt", s / "s.tlt"],
            r"short\.xf: has 40 transforms but the stack .*s\.mrc has 41 sections",
        ),
        "tlt view count": (
            [s / "s.mrc", "--xf", s / "s.xf", "--tlt", d / "long.tlt"],
            r"long\.tlt: has 42 tilt angles but the stack .*s\.mrc has 41 sections",
        ),
        "one tilt": (
            [s / "s.mrc", "--xf", s / "s.xf", "--tlt", d / "one.tlt"],
            r"one\.tlt: all 41 views are at tilt 12 degrees: a tomogram needs views at different tilts",
        ),
        "one tilt, SIRT": (  # SIRT accepted it (audit); FBP refused it without naming the file
            [s / "s.mrc", "--xf", s / "s.xf", "--tlt", d / "one.tlt", "--sirt", 2],
            r"one\.tlt: all 41 views are at tilt 12 degrees",
        ),
        "sirt huge": (  # ran until interrupted (audit); --sirtlike 1e20 was taken
            [s / "s.mrc", "--xf", s / "s.xf", "--tlt", s / "s.tlt", "--sirt", 3000000000],
            r"--sirt must be between 1 and 1000000, got 3000000000",
        ),
        "sirtlike huge": (
            [s / "s.mrc", "--xf", s / "s.xf", "--tlt", s / "s.tlt", "--sirtlike", 10**20],
            r"--sirtlike must be between 1 and 1000000, got 100000000000000000000",
        ),
        "stack view count": (
            [d / "fewer.mrc", *xf_tlt],
            r"s\.xf: has 41 transforms but the stack .*fewer\.mrc has 40 sections",
        ),
        "json view count": (
            [d / "fewer.mrc", "--alignment", s / "s.json"],
            r"s\.json: has 41 transforms but the stack .*fewer\.mrc has 40 sections",
        ),
        "json image size": (
            [d / "small.mrc", "--alignment", s / "s.json"],
            r"small\.mrc: images are 128 x 128 pixels but the alignment .* was made for 256 x 256",
        ),
        "not MRC": ([d / "markers.mrc", *xf_tlt], r"markers\.mrc: not a readable MRC file"),
        "missing stack": ([d / "nope.mrc", *xf_tlt], r"nope\.mrc: no such file"),
        "missing xf": (
            [s / "s.mrc", "--xf", d / "nope.xf", "--tlt", s / "s.tlt"],
            r"nope\.xf: file not found",
        ),
        "missing json": ([s / "s.mrc", "--alignment", d / "nope.json"], r"nope\.json: file not found"),
        "broken json": ([s / "s.mrc", "--alignment", d / "broken.json"], r"broken\.json:3: not valid JSON"),
        "failed json": (
            [s / "s.mrc", "--alignment", d / "failed.json"],
            r"failed\.json: this alignment did not converge",
        ),
        "thickness 0": (
            [s / "s.mrc", *xf_tlt, "--thickness", 0],
            r"--thickness must be a positive number of \(unbinned\) pixels, got 0",
        ),
        "thickness < 0": (
            [s / "s.mrc", *xf_tlt, "--thickness", -5],
            r"--thickness must be a positive number .* got -5",
        ),
        "bin 0": ([s / "s.mrc", *xf_tlt, "--bin", 0], r"--bin must be at least 1, got 0"),
        "bin too large": (
            [s / "s.mrc", *xf_tlt, "--bin", 300],
            r"--bin 300 is larger than the 256 x 256 images",
        ),
        "thickness absurd": (
            [s / "s.mrc", *xf_tlt, "--thickness", 100000],
            r"--thickness 100000 is more than 16 times the 256 x 256 images",
        ),
        "thickness under one slice": (
            [s / "s.mrc", *xf_tlt, "--thickness", 3, "--bin", 4],
            r"--thickness 3 with --bin 4 gives less than one slice",
        ),
        "bin absurd": (
            [s / "s.mrc", *xf_tlt, "--bin", 100],
            r"--bin 100 leaves 2 x 2 pixels of the 256 x 256 images; use a smaller --bin \(at most 64\)",
        ),
        "sirt with sirtlike": (
            [s / "s.mrc", *xf_tlt, "--sirt", 5, "--sirtlike", 5],
            r"--sirt replaces the FBP filter",
        ),
        "sirt with filter": (
            [s / "s.mrc", *xf_tlt, "--sirt", 2, "--filter", "hann"],
            r"--sirt replaces the FBP filter; it does not combine with --filter \(SIRT has no filter: drop "
            r"it, or drop --sirt\)",
        ),
        "sirt with filter and radial": (
            [s / "s.mrc", *xf_tlt, "--sirt", 2, "--filter", "ramp", "--radial", 0.3, 0.05],
            r"does not combine with --filter or --radial",
        ),
        "view put outside the field": (
            [s / "s.mrc", "--xf", d / "outside.xf", "--tlt", s / "s.tlt"],
            r"outside\.xf:5: the shift \(1e\+09, -1e\+09\) px puts the whole view outside the 256 x 256 px",
        ),
        "view scaled 1e29 times": (
            [s / "s.mrc", "--xf", d / "zoomed.xf", "--tlt", s / "s.tlt"],
            r"zoomed\.xf:5: the transform scales the view by 1e\+29: not an alignment",
        ),
        "stack of one row": (
            [d / "line.mrc", *xf_tlt],
            r"line\.mrc: its 256 x 1 pixel images are too small to reconstruct \(a tomogram needs at least "
            r"4 x 4\)$",
        ),
        "stack of one pixel": (
            [d / "dot.mrc", *xf_tlt, "--bin", 2],
            r"dot\.mrc: its 1 x 1 pixel images are too small",
        ),
        "positivity without sirt": ([s / "s.mrc", *xf_tlt, "--positivity"], r"--positivity goes with --sirt"),
        "memory": ([s / "s.mrc", *xf_tlt, "--memory", 0], r"--memory must be a positive number of GB"),
        "memory infinite": ([s / "s.mrc", *xf_tlt, "--memory", "inf"], r"--memory must be a positive number"),
        "local tolerance": (
            [s / "s.mrc", *xf_tlt, "--local-tolerance", -0.1],
            r"--local-tolerance must be 0 \(exact reads\) or a positive number of pixels up to 1, got -0.1",
        ),
        "local tolerance past a pixel": (
            [s / "s.mrc", *xf_tlt, "--local", s / "s.xf", "--local-tolerance", 1e9],
            r"--local-tolerance must be .* up to 1, got 1e\+09 \(a read farther from its voxel's position "
            r"blurs the tomogram; the default is 0.1\)",
        ),
        "local tolerance without sheets": (
            [s / "s.mrc", *xf_tlt, "--local-tolerance", 0.5],
            r"--local-tolerance goes with a reconstruction read through sheets: --local, --zfac, "
            r"--xtilt/--x-axis-tilt or an --alignment record \(none was given\)",
        ),
        "radial": (
            [s / "s.mrc", *xf_tlt, "--radial", 0.9, 0.05],
            r"--radial CUTOFF FALLOFF: need 0 < CUTOFF <= 0.5 .* got 0.9 0.05",
        ),
        "both alignments": (
            [s / "s.mrc", *xf_tlt, "--alignment", s / "s.json"],
            r"give either --alignment FILE.json or --xf FILE --tlt FILE, not both",
        ),
        "no alignment": ([s / "s.mrc"], r"the alignment is required"),
        "xf without tlt": ([s / "s.mrc", "--xf", s / "s.xf"], r"--xf and --tlt go together"),
        "overwrite input": ([s / "s.mrc", *xf_tlt, "--out", s / "s.mrc"], r"would overwrite the input"),
        "no output folder": (
            [s / "s.mrc", *xf_tlt, "--out", d / "no" / "t.mrc"],
            r"folder .* does not exist",
        ),
        "empty output": ([s / "s.mrc", *xf_tlt, "--out", ""], r"--out is empty; give a file name"),
        "output a pipe": (
            [s / "s.mrc", *xf_tlt, "--out", d / "pipe"],
            r"--out \S*pipe exists and is not a regular file \(a device, pipe or socket",
        ),
        "huge pixels": (
            [d / "huge.mrc", *xf_tlt, "-q"],  # found as the tomogram is made, after the progress note
            r"cannot reconstruct .*huge\.mrc with .*: the tomogram is not finite from row \d+ on",
        ),
        "xf shift absurd": (
            [s / "s.mrc", "--xf", d / "far.xf", "--tlt", s / "s.tlt"],
            r"far\.xf:3: a shift or matrix entry of 1e\+300 is not an alignment$",
        ),
        "json singular": (
            [s / "s.mrc", "--alignment", d / "flat.json"],
            r"flat\.json: view 3: the matrix is singular \(determinant 0\): it maps the view onto a line",
        ),
        "nan pixels": (
            [d / "nan.mrc", *xf_tlt, "-q"],
            r"cannot reconstruct .*nan\.mrc with .*: stack view 4 \(section 3 counting from 0\) contains "
            r"non-finite values$",
        ),
        "one view": (
            [d / "one.mrc", "--xf", d / "one.xf", "--tlt", d / "one_view.tlt"],
            r"one\.mrc: has 1 view: a tomogram needs views at two or more different tilts$",
        ),
        "local tilt absurd": (
            [s / "s.mrc", *xf_tlt, "--local", d / "dtilt.xf"],
            r"dtilt\.xf: local tilt of patch 0 \(x 0, y 0\), view 4 is -?[\d.]+ \+ delta 500 = [\d.]+ "
            r"degrees, outside -90\.\.90$",
        ),
        "local tilt beyond 90": (
            [s / "s.mrc", *xf_tlt, "--local", d / "dtilt_edge.xf"],
            r"dtilt_edge\.xf: local tilt of patch 1 \(x 1, y 0\), view 41 is [\d.]+ \+ delta 40 = "
            r"1\d\d[\d.]* degrees, outside -90\.\.90$",
        ),
        "local x-tilt absurd": (
            [s / "s.mrc", *xf_tlt, "--local", d / "dxtilt.xf"],
            r"dxtilt\.xf: delta X-axis tilt of patch 2 \(x 0, y 1\), view 3 is 1000 degrees, "
            r"outside -90\.\.90$",
        ),
        "xf singular": (
            [s / "s.mrc", "--xf", d / "flat.xf", "--tlt", s / "s.tlt"],
            r"flat\.xf:2: the matrix is singular \(determinant 0\): it maps the view onto a line or a point$",
        ),
    }


CASES = [
    "xf view count",
    "tlt view count",
    "one tilt",
    "one tilt, SIRT",
    "sirt huge",
    "sirtlike huge",
    "stack view count",
    "json view count",
    "json image size",
    "not MRC",
    "missing stack",
    "missing xf",
    "missing json",
    "broken json",
    "failed json",
    "thickness 0",
    "thickness < 0",
    "bin 0",
    "bin too large",
    "thickness absurd",
    "thickness under one slice",
    "bin absurd",
    "sirt with sirtlike",
    "sirt with filter",
    "sirt with filter and radial",
    "view put outside the field",
    "view scaled 1e29 times",
    "stack of one row",
    "stack of one pixel",
    "positivity without sirt",
    "memory",
    "memory infinite",
    "local tolerance",
    "local tolerance past a pixel",
    "local tolerance without sheets",
    "radial",
    "both alignments",
    "no alignment",
    "xf without tlt",
    "overwrite input",
    "no output folder",
    "empty output",
    "output a pipe",
    "huge pixels",
    "xf shift absurd",
    "xf singular",
    "json singular",
    "nan pixels",
    "one view",
    "local tilt absurd",
    "local tilt beyond 90",
    "local x-tilt absurd",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(bad, case, tmp_path):
    args, pattern = _cases(bad)[case]
    out = tmp_path / "t.rec.mrc"
    if "--out" not in args:
        args = [*args, "--out", out]
    if "--thickness" not in args:
        args = [*args, "--thickness", THICKNESS]
    before = sorted(p.name for p in bad["src"].iterdir())
    rc, stdout, err = run(["reconstruct", *args])
    assert rc == 2, (rc, err)
    assert err.count("\n") == 1 and err.startswith("lmalign: error: "), err
    assert re.search(pattern, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no output, no temporary file
    assert sorted(p.name for p in bad["src"].iterdir()) == before


def test_align_reconstruct_refuses_before_any_work(series, tmp_path):
    """align ... --reconstruct: a folder in the tomogram's place, or a stack whose images are not
    those the markers were picked on, is refused before anything is solved or written."""
    import mrcfile

    d = series["dir"]
    align = ["align", d / "s.csv", "--tilts", d / "s.rawtlt", "--reconstruct", THICKNESS, "-q", "--no-figure"]
    out = tmp_path / "out"
    (out / "s.rec.mrc").mkdir(parents=True)
    rc, _, err = run([*align, "--stack", d / "s.mrc", "--out-dir", out])
    assert rc == 2 and "the tomogram's path" in err and "is a folder" in err and ".tmp" not in err, err
    assert [p.name for p in out.iterdir()] == ["s.rec.mrc"]
    with mrcfile.open(d / "s.mrc", permissive=True) as mrc:
        half = mrc.data.reshape(mrc.data.shape[0], mrc.data.shape[1] // 2, 2, -1, 2).mean(axis=(2, 4))
    with mrcfile.new(tmp_path / "half.mrc") as mrc:
        mrc.set_data(half.astype(np.float32))
    # an IMOD model records the images its markers are on: the half-size stack is not them
    from lmalign_jax.io import MarkerSet, read_markers
    from lmalign_jax.io.imod_model import write_imod_model

    ms = read_markers(d / "s.csv")
    write_imod_model(tmp_path / "s.fid", MarkerSet(ms.xy, ms.mask, ms.marker_ids, image_size=(256, 256)))
    out = tmp_path / "out2"
    fid = ["align", tmp_path / "s.fid", *align[2:], "--stack", tmp_path / "half.mrc", "--out-dir", out]
    rc, _, err = run(fid)
    assert rc == 2 and "half.mrc: --reconstruct: images are 128 x 128 pixels but the markers" in err, err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_reconstruction_that_fails_after_the_alignment_is_in_the_record(series, tmp_path, monkeypatch):
    """What fails only while reconstructing (here: the stack's disk gone, simulated) leaves the
    alignment's files, and its record says the command failed and why (it said exit_code 0)."""
    import lmalign_jax.cli.track as track

    def fails(*args, **kwargs):
        raise io.InputError(str(series["dir"] / "s.mrc"), None, "cannot read view 7: input/output error")

    monkeypatch.setattr(track, "reconstruct_to_file", fails)
    d = series["dir"]
    out = tmp_path / "out"
    align = ["align", d / "s.csv", "--tilts", d / "s.rawtlt", "--reconstruct", THICKNESS, "-q", "--no-figure"]
    rc, _, err = run([*align, "--stack", d / "s.mrc", "--out-dir", out])
    assert rc == 2 and "cannot read view 7" in err, err
    record = json.loads((out / "s.json").read_text())
    assert record["exit_code"] == 2 and "cannot read view 7" in record["failed_after_alignment"]
    assert (out / "s.xf").exists() and not (out / "s.rec.mrc").exists()


def test_align_reconstruct_refuses_a_complex_stack_before_any_work(series, tmp_path):
    """A stack of complex numbers (an FFT) is refused from its header: align --reconstruct writes
    nothing, rather than an alignment and then an error for the tomogram."""
    d = series["dir"]
    with mrcfile.open(d / "s.mrc", permissive=True) as mrc:
        data = np.array(mrc.data)
    with mrcfile.new(tmp_path / "fft.mrc") as mrc:
        mrc.set_data(data.astype(np.complex64))
    out = tmp_path / "out"
    align = ["align", d / "s.csv", "--tilts", d / "s.rawtlt", "--reconstruct", THICKNESS, "-q", "--no-figure"]
    rc, _, err = run([*align, "--stack", tmp_path / "fft.mrc", "--out-dir", out])
    assert rc == 2 and err.count("\n") == 1, err
    assert re.search(r"fft\.mrc: complex MRC data \(mode 4\) is not an image stack$", err), err
    assert not out.exists() or list(out.iterdir()) == []


def test_every_case_is_listed():
    assert sorted(CASES) == sorted(_cases({"src": Path("s"), "dir": Path("d")}))


def test_error_keeps_an_existing_output(series, tmp_path):
    out = tmp_path / "t.rec.mrc"
    out.write_text("old")
    rc, _, err = run(
        [
            "reconstruct",
            series["dir"] / "s.mrc",
            "--xf",
            series["dir"] / "s.xf",
            "--tlt",
            tmp_path / "nope.tlt",
            "--thickness",
            THICKNESS,
            "--out",
            out,
        ]
    )
    assert rc == 2 and "nope.tlt: file not found" in err
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.rec.mrc"]


def test_layouts_memory_and_full_disk(series, tmp_path, monkeypatch):
    """--layout imod-tilt holds the default volume with y as sections and depth reversed as
    rows; --memory small enough for several passes changes nothing; a disk without room is
    named before anything is written."""
    d = series["dir"]
    base = ["reconstruct", d / "s.mrc", "--alignment", d / "s.json", "--thickness", THICKNESS, "--bin", 2]
    rc, _, err = run([*base, "--out", tmp_path / "zyx.mrc", "-q"])
    assert rc == 0, err
    rc, stdout, err = run(
        [*base, "--out", tmp_path / "tilt.mrc", "-q", "--layout", "imod-tilt", "--memory", 0.002]
    )
    assert rc == 0, err
    assert "128 x 32 x 128 voxels (X x Z rows x Y sections, tilt's layout" in stdout
    zyx, _, _ = read_volume(tmp_path / "zyx.mrc")
    tilt, _, _ = read_volume(tmp_path / "tilt.mrc")
    np.testing.assert_allclose(tilt, zyx[::-1].transpose(1, 0, 2), rtol=0, atol=2e-6 * np.abs(zyx).max())
    import shutil as _shutil

    full = _shutil._ntuple_diskusage(10**12, 10**12 - 10**5, 10**5)
    monkeypatch.setattr(_shutil, "disk_usage", lambda p: full)
    rc, _, err = run([*base, "--out", tmp_path / "full.mrc"])
    # sizes in units that show them (it said "needs 0.00 GB but ... only 0.00 GB free")
    assert rc == 2 and re.search(
        r"full\.mrc: the tomogram \(32 x 128 x 128 voxels, NZ x NY x NX\) needs 2\.10 MB but .* has only "
        r"100\.00 kB free; choose another folder \(--out\), a larger --bin or a smaller --thickness$",
        err.strip(),
    ), err
    full = _shutil._ntuple_diskusage(10**12, 10**12 - 500, 500)
    rc, _, err = run([*base, "--out", tmp_path / "full.mrc", "--bin", 32, "--thickness", 32])
    assert rc == 2 and "needs 1.28 kB but" in err and "only 500 bytes free" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tilt.mrc", "zyx.mrc"]


def test_reconstruct_help():
    rc, out, _ = run(["reconstruct", "--help"])
    assert rc == 0
    for word in (
        "examples:",
        "--xf",
        "--tlt",
        "--alignment",
        "--thickness",
        "--bin",
        "--filter",
        "--radial",
        "--out",
        "unbinned",
        "Exit status",
    ):
        assert word in out
    text = " ".join(out.split())
    assert "the file's own replace them and a file without any drops them, as tilt does" in text
    assert (
        "sharp bead peaks stay within 2% of the exact reads' with IMOD's local files; with one X-axis" in text
    )
    assert "sheets are read in the frame sheared by it, 2-6% below (one interpolation in depth)" in text
    assert (
        "costs them 3-12% (0.5-20 deg), and larger tolerances blur more (6-10% at 0.2-1 px); at most 1"
        in text
    )
    rc, _, err = run(["reconstruct", "s.mrc", "--xf", "a.xf", "--tlt", "a.tlt"])
    assert rc == 2 and "--thickness" in err and err.count("\n") == 1


def test_pixels_that_are_not_square_are_warned_of(series, tmp_path):
    """The tomogram's voxel size is the stack's x pixel size: a header whose y size differs says so
    (one warning), and the reconstruction goes on."""
    d = series["dir"]
    with mrcfile.open(d / "s.mrc") as mrc:
        data = np.array(mrc.data)
    with mrcfile.new(tmp_path / "a.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (2.0, 2.2, 2.0)
    out = tmp_path / "t.rec.mrc"
    args = ["--xf", d / "s.xf", "--tlt", d / "s.tlt", "--thickness", THICKNESS, "--bin", 4, "--out", out]
    rc, _, err = run(["reconstruct", tmp_path / "a.mrc", *args])
    assert rc == 0 and out.exists(), err
    warning = f"lmalign: warning: {tmp_path / 'a.mrc'}: the header's pixels are 2 x 2.2 A (x by y)"
    assert err.count(warning) == 1, err
    with mrcfile.open(out, header_only=True) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(8.0)  # the x size, binned 4


def test_check_stack_pixels_names_the_view_as_the_reconstruction_does(tmp_path):
    """check_stack_pixels (align --reconstruct, before solving) refuses a NaN or infinity with the
    1-based view the reconstruction names, and passes finite and integer stacks."""
    from lmalign_jax.io.errors import InputError
    from lmalign_jax.workflow.reconstruction import check_stack_pixels

    data = np.zeros((6, 8, 10), np.float32)
    with mrcfile.new(tmp_path / "ok.mrc") as mrc:
        mrc.set_data(data)
    check_stack_pixels(str(tmp_path / "ok.mrc"))
    with mrcfile.new(tmp_path / "int.mrc") as mrc:
        mrc.set_data(data.astype(np.int16))
    check_stack_pixels(str(tmp_path / "int.mrc"))
    for view, value in ((4, np.inf), (0, np.nan)):
        bad = data.copy()
        bad[view, 7, 9] = value
        path = tmp_path / f"bad{view}.mrc"
        with mrcfile.new(path) as mrc, pytest.warns(RuntimeWarning):
            mrc.set_data(bad)
        with pytest.raises(InputError) as e:
            check_stack_pixels(str(path))
        assert (
            e.value.problem
            == f"stack view {view + 1} (section {view} counting from 0) contains non-finite values"
        )
        assert str(e.value).startswith(f"{path}: ")


def test_a_local_file_that_kept_no_patch_reconstructs_as_the_global_alignment(series, tmp_path):
    """align --local writes unit transforms for patches that keep the global solution; a file of
    only those (the default test keeps none on rigid data) was read through sheets, whose second
    interpolation blurred the beads (peaks ~5% lower than the global reconstruction; audit). The
    file is now taken for what it is: the same volume as without it, and a note says so."""
    d = series["dir"]
    n_views = len(io.read_tilts(d / "s.tlt"))
    unit = LocalAlignment(
        (2, 2), (64, 64), (128, 128), 0.0, np.zeros((4, n_views)), np.tile(np.eye(2, 3), (4, n_views, 1, 1))
    )
    write_local_xf(tmp_path / "unitlocal.xf", unit)
    base = ["reconstruct", d / "s.mrc", "--xf", d / "s.xf", "--tlt", d / "s.tlt", "--thickness", THICKNESS]
    rc, _, err = run([*base, "--out", tmp_path / "global.mrc", "-q"])
    assert rc == 0, err
    rc, out, err = run([*base, "--out", tmp_path / "local.mrc", "--local", tmp_path / "unitlocal.xf"])
    assert rc == 0, err
    assert "every patch holds the global alignment; reconstructing with it alone" in out + err
    np.testing.assert_array_equal(
        read_volume(tmp_path / "local.mrc")[0], read_volume(tmp_path / "global.mrc")[0]
    )
