"""`lmalign align`: options that cannot work are refused before any tracking or solving (exit 2,
one line naming align's own option, nothing written), and ``--reconstruct`` with a marker file
reconstructs from ``--stack``.

The series is `simulate --stack`'s default (41 views of 256 x 256 px, 12 beads), as in
tests/test_cli_reconstruct.py, so the solver is compiled once for both in one session.
"""

from __future__ import annotations

import re
import shutil

import mrcfile
import numpy as np
import pytest
from helpers import run_cli, write_with_nan_pixel

THICKNESS = 32


def run(args):
    return run_cli(args, no_cache=True)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    rc, _, err = run(["simulate", "--out-dir", d, "--prefix", "s", "--stack", "--seed", 5])
    assert rc == 0, err
    with mrcfile.open(d / "s.mrc") as mrc:
        data = np.array(mrc.data)
    with mrcfile.new(d / "line.mrc") as mrc:  # one row per view: no tomogram can be made of it
        mrc.set_data(data[:, :1, :])
    return d


def refused(args, out, pattern):
    """``lmalign align *args --out-dir out``: exit 2 in one line matching ``pattern``, at once (no
    tracking, no solve) and with nothing written; returns the message."""
    rc, stdout, err = run(["align", *args, "--out-dir", out, "--no-figure"])
    assert rc == 2, (rc, err)
    assert err.startswith("lmalign: error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert "tracking beads" not in err and "aligning" not in err and stdout == ""
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return err


def test_warp_model_with_local_is_refused_before_tracking(sim, tmp_path):
    """--local with --model warp made a local.xf that 'reconstruct' refuses with the warp: with
    --reconstruct it failed after tracking, solving and writing; it is refused first, with or
    without --reconstruct, and the message says what to use instead."""
    stack = ["--tilts", sim / "s.rawtlt", "--model", "warp", "--local"]
    err = refused(
        [sim / "s.mrc", *stack, "--patch-size", 250, 250, "--reconstruct", THICKNESS],
        tmp_path / "a",
        r"--local does not combine with --model warp",
    )
    assert "--model warp alone" in err and "--local with a rigid model" in err
    refused([sim / "s.mrc", *stack], tmp_path / "b", r"--local does not combine with --model warp")
    refused(
        [sim / "s.csv", *stack, "--stack", sim / "s.mrc"],
        tmp_path / "c",
        r"--local does not combine with --model warp",
    )


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        # shape's per-view deformation, like warp's, cannot be applied with a local file: its local
        # alignment made the residual 13x worse and was reported as "0.0% lower" (audit)
        (["--model", "shape"], r"--local does not combine with --model shape"),
        # an increment the model lacks was ignored without a word (audit)
        (["--local-mode", "xstretch=free"], r"--local-mode: model 'jou' has no xstretch to refine locally"),
        # every increment fixed was refused only after the global solve (audit)
        (
            [*(a for n in ("rotation", "tilt", "scale") for a in ("--local-mode", f"{n}=fixed"))],
            r"--local-mode: every local increment of model 'jou' is fixed",
        ),
        (
            ["--model", "luther", "--local-mode", "rotation=fixed", "--local-mode", "tilt=fixed"],
            r"every local increment of model 'luther' is fixed",
        ),
    ],
)
def test_local_settings_that_cannot_work_are_refused_before_solving(sim, tmp_path, extra, pattern):
    refused([sim / "s.csv", "--tilts", sim / "s.rawtlt", "--local", *extra], tmp_path / "o", pattern)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (100000, r"--reconstruct 100000 is more than 16 times the 256 x 256 images"),
        (0, r"--reconstruct must be a positive number of \(unbinned\) pixels, got 0"),
        (-3, r"--reconstruct must be a positive number .* got -3"),
        ("nan", r"--reconstruct must be a positive number .* got nan"),
        (0.4, r"--reconstruct 0.4 gives less than one slice; the thickness is in unbinned pixels"),
    ],
)
def test_reconstruct_thickness_is_checked_first_and_named(sim, tmp_path, value, pattern):
    """The thickness bounds of the reconstruction, checked before tracking and named as align's
    --reconstruct (they named reconstruct's --thickness, after the alignment was written)."""
    err = refused(
        [sim / "s.mrc", "--tilts", sim / "s.rawtlt", "--reconstruct", value], tmp_path / "out", pattern
    )
    assert "--thickness" not in err


def test_full_disk_is_found_before_tracking_and_names_aligns_options(sim, tmp_path, monkeypatch):
    """No room for the tomogram: said before any work, in units that show the sizes, with
    align's options (it named reconstruct's --out and --bin)."""
    full = shutil._ntuple_diskusage(10**12, 10**12 - 10**5, 10**5)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: full)
    err = refused(
        [sim / "s.mrc", "--tilts", sim / "s.rawtlt", "--reconstruct", THICKNESS],
        tmp_path / "new" / "out",
        r"s\.rec\.mrc: the tomogram \(32 x 256 x 256 voxels, NZ x NY x NX\) needs 8\.39 MB but .* has only "
        r"100\.00 kB free; choose another folder \(--out-dir\) or a smaller --reconstruct$",
    )
    assert "--bin" not in err and "--out " not in err and "GB" not in err


def test_reconstruct_needs_a_stack_and_one_that_can_be_reconstructed(sim, tmp_path):
    markers = [sim / "s.csv", "--tilts", sim / "s.rawtlt", "--image-size", 256, 256]
    refused(
        [*markers, "--reconstruct", THICKNESS],
        tmp_path / "a",
        r"--reconstruct needs the raw stack: give it as MARKERS \(to track it first\) or, with a marker "
        r"file, as --stack STACK\.mrc",
    )
    refused(
        [sim / "s.csv", "--tilts", sim / "s.rawtlt", "--stack", sim / "line.mrc", "--reconstruct", THICKNESS],
        tmp_path / "b",
        r"line\.mrc: its 256 x 1 pixel images are too small to reconstruct",
    )
    refused(
        [sim / "s.csv", "--tilts", sim / "s.rawtlt", "--stack", tmp_path / "nope.mrc", "--reconstruct", 32],
        tmp_path / "c",
        r"nope\.mrc: no such file",
    )


def test_bad_solver_options_are_refused_before_tracking(sim, tmp_path):
    """--mode and --max-iterations were read only after the stack was tracked."""
    stack = [sim / "s.mrc", "--tilts", sim / "s.rawtlt"]
    refused([*stack, "--mode", "foo=free"], tmp_path / "a", r"--mode: model 'jou' has no parameter 'foo'")
    refused(
        [*stack, "--max-iterations", 0],
        tmp_path / "b",
        r"--max-iterations must be between 1 and 1000000, got 0",
    )
    # local settings without --local were ignored (audit)
    refused(
        [*stack, "--patch-overlap", 0.3],
        tmp_path / "c",
        r"--patch-overlap goes with --local \(local alignment",
    )


def test_exclude_and_overwrites_are_refused_before_tracking(sim, tmp_path):
    """--exclude, and outputs that would overwrite an input, were checked only once the stack was
    tracked: exit 2 with the tracking's files left behind (audit)."""
    stack = [sim / "s.mrc", "--tilts", sim / "s.rawtlt"]
    refused([*stack, "--exclude", "5-x"], tmp_path / "a", r"--exclude: '5-x' is not a view number")
    refused([*stack, "--exclude", "50"], tmp_path / "b", r"--exclude: view 50 is outside 1..41")
    # every view left out: the tracked .fid was blamed for having no markers
    refused([*stack, "--exclude", "1-41"], tmp_path / "c", r"--exclude 1-41: leaves none of the 41 views")
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(sim / "s.mrc", folder / "s.mrc")
    shutil.copy(sim / "s.rawtlt", folder / "s.tlt")  # the .tlt align writes
    rc, out, err = run(["align", folder / "s.mrc", "--tilts", folder / "s.tlt", "--out-dir", folder])
    assert rc == 2 and re.search(r"output .*s\.tlt would overwrite an input file", err), err
    assert sorted(p.name for p in folder.iterdir()) == ["s.mrc", "s.tlt"] and "tracking" not in err


def test_reconstruct_from_the_stack_of_a_marker_file(sim, tmp_path):
    """align MARKERS --stack S --reconstruct NZ (refused before: "needs a raw stack as MARKERS")
    writes the tomogram from S, reported in reconstruct's voxel order with the axes named."""
    out = tmp_path / "out"
    args = ["align", sim / "s.csv", "--tilts", sim / "s.rawtlt", "--stack", sim / "s.mrc"]
    rc, stdout, err = run(
        [*args, "--reconstruct", THICKNESS, "--out-dir", out, "-q", "--no-figure", "--no-errors"]
    )
    assert rc == 0, err
    rec = out / "s.rec.mrc"
    assert f"Wrote {rec} ({THICKNESS} x 256 x 256 voxels, NZ x NY x NX," in stdout
    with mrcfile.open(rec) as mrc:
        volume = np.array(mrc.data)
    assert volume.shape == (THICKNESS, 256, 256) and np.all(np.isfinite(volume)) and volume.std() > 0
    again = ["reconstruct", sim / "s.mrc", "--alignment", out / "s.json", "--thickness", THICKNESS]
    rc, stdout, err = run([*again, "--out", tmp_path / "same.mrc", "-q"])
    assert rc == 0, err
    with mrcfile.open(tmp_path / "same.mrc") as mrc:
        np.testing.assert_array_equal(np.array(mrc.data), volume)


@pytest.mark.parametrize("command", ["align", "track", "simulate"])
@pytest.mark.parametrize("prefix", ["a/b", "..", "."])
def test_a_prefix_with_a_folder_is_refused_when_parsed(sim, tmp_path, command, prefix):
    """--prefix names files inside --out-dir: a folder part, . or .. was an internal error (exit 3),
    for track only after the tracking had run (audit)."""
    args = {
        "align": [sim / "s.csv", "--tilts", sim / "s.rawtlt"],
        "track": [sim / "s.mrc", "--tilts", sim / "s.rawtlt"],
        "simulate": [],
    }[command]
    rc, _, err = run([command, *args, "--prefix", prefix, "--out-dir", tmp_path / "o"])
    assert rc == 2 and "argument --prefix: expected a file-name stem without a folder" in err, err
    assert not (tmp_path / "o").exists()


def test_markers_in_one_plane_that_exhaust_the_iterations_get_a_hint(tmp_path):
    """A specimen of thickness 0 leaves the tilts' spread undetermined: the joint stage crawls to
    its iteration limit (exit 1); the message says why that may be and what to do."""
    rc, _, err = run(
        ["simulate", "--out-dir", tmp_path, "--seed", 6, "--views", 31, "--markers", 30, "--thickness", 0]
    )
    assert rc == 0, err
    args = ["align", tmp_path / "synthetic.csv", "--tilts", tmp_path / "synthetic.rawtlt"]
    opts = ["--image-size", 2048, 2048, "--no-figure", "--no-errors", "--max-iterations", 30]
    rc, _, err = run([*args, *opts, "--out-dir", tmp_path / "o"])
    assert rc == 1, err
    assert "if the markers lie nearly in one plane" in err and "--tilt-mode fixed" in err
    rc, _, err = run([*args, *opts, "--tilt-mode", "fixed", "--out-dir", tmp_path / "f"])
    assert rc == 0, err


@pytest.mark.parametrize(
    "option",
    [
        ["--noise", "nan"],
        ["--rotation", "nan"],
        ["--shift", "inf"],
        ["--thickness", "nan"],
        ["--missing", "nan"],
        ["--outliers", "inf"],
        ["--pixel-size", "inf"],
        ["--tilt-range", "-60", "nan"],
        ["--tilt-range", "inf", "60"],
        ["--stack", "--realistic", "--dose", "nan"],
        ["--stack", "--realistic", "--bead-diameter", "inf"],
        ["--stack", "--realistic", "--close-pairs", "nan"],
        ["--stack", "--realistic", "--background", "inf"],
    ],
)
def test_simulate_refuses_a_number_option_that_is_not_finite(tmp_path, option):
    """NaN or inf in a number option was an internal error (exit 3) after the simulation (audit)."""
    flag = next(o for o in option if o.startswith("--") and o not in ("--stack", "--realistic"))
    rc, out, err = run(["simulate", "--out-dir", tmp_path / "o", *option])
    assert rc == 2 and not out, err
    assert err.startswith(f"lmalign: error: {flag} must be a finite number, got ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--tilt-range", -95, 95], "--tilt-range must lie between -90 and 90 degrees, exclusive"),
        (["--tilt-range", -60, 90], "--tilt-range must lie between -90 and 90 degrees, exclusive"),
        (["--tilt-range", -89.9996, 60], "--tilt-range must lie between -90 and 90 degrees"),  # -90.000
        (["--noise", 1e308], "--noise 1e+308 is more than 10 image sizes (20480 px)"),
        (["--shift", 1e308], "--shift 1e+308 is more than 10 image sizes"),
        (["--thickness", 1e308], "--thickness 1e+308 is more than 10 image sizes"),
        (["--shift", 15000], "simulated point(s) fall more than 10 image sizes from the 2048 x 2048 image"),
        (["--tilt-range", 0, 0], "--tilt-range MIN and MAX must differ: 21 views all at 0 degrees leave the"),
        (["--tilt-range", 30, 30.0004], "--tilt-range MIN and MAX must differ: 21 views all at 30 degrees"),
        # audit: 10 million markers ran out of memory (killed); 100,000 views wrote a series that
        # align refuses; an image size of 0 was reported as a --noise problem
        (
            ["--markers", 10_000_000],
            "--views 21 x --markers 10000000: align takes at most 10000 views and 20,",
        ),
        (["--views", 100_000], "--views 100000 x --markers 8: align takes at most 10000 views"),
        (["--image-size", 0, 0], "--image-size must be two whole numbers of pixels, 1 to 1000000, got 0 0"),
    ],
)
def test_simulate_refuses_a_series_align_would_refuse(tmp_path, option, message):
    """A tilt of +-90 or beyond, points far outside the image, and every view at one tilt (as the
    .rawtlt writes it) are what align refuses: simulate wrote them (exit 0), or failed on an
    overflow (exit 3)."""
    rc, out, err = run(["simulate", "--out-dir", tmp_path / "o", "--views", 21, "--markers", 8, *option])
    assert rc == 2 and not out and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_simulate_refuses_a_stack_the_disk_cannot_hold(tmp_path, monkeypatch):
    """The stack is written sparse: a full disk would show only part-way through."""
    import shutil

    from lmalign_jax.io import mrc_volume

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(mrc_volume.shutil, "disk_usage", lambda _: usage._replace(free=21 * 64 * 64 * 4 - 1))
    rc, out, err = run(
        ["simulate", "--out-dir", tmp_path / "o", "--stack", "--views", 21, "--image-size", 64, 64]
    )
    assert rc == 2 and not out and not (tmp_path / "o").exists(), err
    assert "synthetic.mrc: the stack (21 x 64 x 64 pixels, views x NY x NX) needs " in err
    assert "choose another --out-dir, a smaller --image-size or fewer --views" in err


def test_simulate_tilts_just_inside_90_are_read_back(tmp_path):
    from lmalign_jax.io import read_tilts
    from lmalign_jax.io.tilts import check_tilt_range

    rc, _, err = run(["simulate", "--out-dir", tmp_path, "--views", 21, "--tilt-range", -89.999, 89.9994])
    assert rc == 0, err
    tilts = read_tilts(tmp_path / "synthetic.rawtlt")
    assert tilts[0] == -89.999 and tilts[-1] == 89.999
    check_tilt_range(tilts, tmp_path / "synthetic.rawtlt", lines=True)  # align's own check: no error


@pytest.mark.parametrize("command", ["align", "compare"])
def test_a_tilt_file_with_every_view_at_one_tilt_is_refused(sim, tmp_path, command):
    """Views all at one tilt leave the markers' heights undetermined: align ended with NaN standard
    errors and exit 0 (audit); now the series is refused at once, naming the tilt file."""
    tlt = tmp_path / "flat.rawtlt"
    tlt.write_text("    0.000\n" * 41)
    message = f"lmalign: error: {tlt}: all 41 views are at tilt 0 degrees: the markers' heights (z) cannot "
    args = [sim / "s.csv", "--tilts", tlt, "--image-size", 256, 256]
    if command == "align":
        refused(args, tmp_path / "out", "^" + re.escape(message + "be determined from views at one tilt\n"))
        return
    rc, out, err = run(["compare", *args, "--models", "jou"])
    assert rc == 2 and not out and err.startswith(message) and err.count("\n") == 1, err


def test_a_patch_grid_too_large_is_refused_before_the_solve(sim, tmp_path):
    """--local --patch-size 1 1 was refused only after the global solve (audit); the grid over
    the measured markers is now checked first, with the same message."""
    args = [sim / "s.csv", "--tilts", sim / "s.rawtlt", "--stack", sim / "s.mrc", "--local"]
    err = refused([*args, "--patch-size", 1, 1], tmp_path / "a", r"--patch-size: a patch size of 1 x 1 px")
    assert "makes a grid of at least" in err and "patches over the markers" in err and "more than 2500" in err


def test_an_interrupt_after_tracking_says_which_files_stay(sim, tmp_path, monkeypatch):
    """Ctrl-C during the solve of 'align STACK' printed "no output written" while the tracking's
    files had been written (audit); and the .mdoc's rotation, handed on by tracking, was
    reported as --rotation."""
    from types import SimpleNamespace

    from lmalign_jax.cli import align as align_command

    seen = {}

    def interrupted(markers, tilts, settings, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    tracked = SimpleNamespace(written=["s.fid", "s.csv"], fid_path=str(tmp_path / "s.fid"), rotation_deg=85.0)
    monkeypatch.setattr(align_command, "track_for_align", lambda args: tracked)
    monkeypatch.setattr(align_command, "align_and_report", interrupted)
    rc, _, err = run(["align", sim / "s.mrc", "--tilts", sim / "s.rawtlt", "--out-dir", tmp_path / "o"])
    assert rc == 130
    assert (
        err == "lmalign: interrupted; kept what was finished before it: the tracking's files (s.fid, s.csv)\n"
    )
    assert seen["rotation_deg"] is None  # the alignment reads the .mdoc's and names it


def test_a_stack_with_nan_pixels_is_refused_before_the_solve(sim, tmp_path):
    """align --reconstruct on a stack with a NaN pixel solved and wrote the alignment (its record
    saying exit 0), then exited 2 (audit): the pixels are checked with the other inputs."""
    write_with_nan_pixel(sim / "s.mrc", tmp_path / "nan.mrc", 3)
    markers = [sim / "s.csv", "--tilts", sim / "s.rawtlt", "--reconstruct", THICKNESS]
    refused(
        [*markers, "--stack", tmp_path / "nan.mrc"],
        tmp_path / "o",
        r"nan\.mrc: stack view 4 \(section 3 counting from 0\) contains non-finite values$",
    )
    # as MARKERS, the tracking finds it, before anything is written
    rc, _, err = run(["align", tmp_path / "nan.mrc", *markers[1:], "--out-dir", tmp_path / "p"])
    assert rc == 2 and "nan.mrc: view 4 holds NaN or infinite values" in err and not (tmp_path / "p").exists()
