"""``lmalign reconstruct --xf X --imod-com tilt.com``: an Etomo tilt command file's settings as the
options reconstruct would take (the same volume as those options given by hand), the command line
winning; options it cannot honour refused at their line, nothing written."""

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from helpers import bead_views, run_cli

from lmalign_jax.export.imod import write_xtilt
from lmalign_jax.io import write_tlt, write_xf

DATA = Path(__file__).parent / "data"
N, NZ = 64, 24
TILTS = np.linspace(-60.0, 60.0, 31)
COM = """# Command file to run Tilt
$tilt -StandardInput
InputProjections s.ali
OutputFile s.rec
IMAGEBINNED 1
FULLIMAGE 64 64
LOG 0.0
MODE 1
OFFSET 0.0
PERPENDICULAR
AdjustOrigin
RADIAL 0.35 0.05
SCALE 0.0 1000.0
SHIFT 0.0 0.0
SUBSETSTART 0 0
THICKNESS 24
TILTFILE s.tlt
XAXISTILT -7
XTILTFILE s.xtilt
EXCLUDELIST 1
ActionIfGPUFails 1,2
$if (-e ./savework) ./savework
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 31-view stack of beads with its unit .xf, .tlt, an .xtilt of zeros and tilt.com (COM)."""
    d = tmp_path_factory.mktemp("tiltcom")
    rng = np.random.default_rng(0)
    positions = rng.uniform(-20, 20, (TILTS.size, 6, 2))
    with mrcfile.new(d / "s.mrc") as m:
        m.set_data(bead_views(positions, N, 1.2))
    write_xf(d / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)))
    write_tlt(d / "s.tlt", TILTS)
    write_xtilt(d / "s.xtilt", np.zeros(TILTS.size))
    (d / "tilt.com").write_text(COM)
    return d


def volume(path) -> np.ndarray:
    with mrcfile.open(path) as m:
        return np.array(m.data)


def test_tilt_com_gives_the_volume_of_its_options_given_by_hand(folder):
    """The com's TILTFILE, XTILTFILE, XAXISTILT, EXCLUDELIST, THICKNESS, RADIAL and PERPENDICULAR
    (tilt's layout) as reconstruct's options: the same volume, bit for bit; SCALE and MODE
    named in a warning, LOG in another; a --thickness on the command line wins."""
    d = folder
    rc, out, err = run_cli(["reconstruct", d / "s.mrc", "--xf", d / "s.xf", "--imod-com", d / "tilt.com"])
    assert rc == 0, err
    assert "SCALE 0.0 1000.0, MODE 1 not applied" in err and err.count("warning") == 3, err
    # LOG is the logarithm of the projections, before back-projecting: not a change of scale (audit)
    assert "LOG 0.0 (line 7) not applied: tilt takes the logarithm of the projections" in err, err
    assert (
        "leaving out view 1 (" in out + err
        and "tilt.com EXCLUDELIST 1)" in out + err
        and "X-axis tilt 7.00 deg" in out + err
    )
    by_hand = ["--tlt", d / "s.tlt", "--xtilt", d / "s.xtilt", "--x-axis-tilt", -7, "--exclude", 1]
    # tilt's fall-off exp(-(df / 0.05)^2) without FalloffIsTrueSigma 1: a sigma of 0.05 / sqrt(2)
    by_hand += ["--thickness", NZ, "--radial", 0.35, repr(0.05 / math.sqrt(2)), "--layout", "imod-tilt"]
    rc, _, err = run_cli(["reconstruct", d / "s.mrc", "--xf", d / "s.xf", *by_hand, "--out", d / "hand.mrc"])
    assert rc == 0, err
    from_com = volume(d / "s.rec.mrc")
    assert from_com.shape == (N, NZ, N)  # tilt's layout: X, depth as rows, Y as sections
    np.testing.assert_array_equal(from_com, volume(d / "hand.mrc"))
    rc, _, err = run_cli(
        ["reconstruct", d / "s.mrc", "--xf", d / "s.xf", "--imod-com", d / "tilt.com", "--thickness", 16]
        + ["--layout", "zyx", "--out", d / "thin.mrc"]
    )
    assert rc == 0 and volume(d / "thin.mrc").shape == (16, N, N), err


def test_etomos_own_tilt_com_of_the_bb_set_is_read(tmp_path):
    """IMOD's BB tilta.com (LOCALFILE, ZFACTORFILE, XTILTFILE, XAXISTILT 1.94, EXCLUDELIST 1,
    SUBSETSTART -19 -19) beside its files and a 512 px stack of its 61 views: reconstructed
    (binned 8 here for time) through its local file with its z factors and X-axis tilt."""
    import shutil

    for name in ("BBa.tlt", "BBa.xtilt", "BBa.xf"):
        shutil.copy(DATA.parent.parent / "lmalign_jax" / "data" / "imod-bb" / name, tmp_path / name)
    for name in ("BBalocal.xf", "BBa.zfac"):
        shutil.copy(DATA / "imod-local" / name, tmp_path / name)
    shutil.copy(DATA / "imod-com" / "tilta.com", tmp_path / "tilta.com")
    with mrcfile.new(tmp_path / "BBa.st") as m:
        m.set_data(np.random.default_rng(1).standard_normal((61, 512, 512)).astype(np.float32))
    args = [
        "reconstruct",
        tmp_path / "BBa.st",
        "--xf",
        tmp_path / "BBa.xf",
        "--imod-com",
        tmp_path / "tilta.com",
    ]
    rc, out, err = run_cli([*args, "--bin", 8, "--out", tmp_path / "BBa.rec"])
    assert rc == 0, err
    said = out + err
    assert "tilta.com EXCLUDELIST 1)" in said and "reconstructing 60 views" in said
    assert "local alignment" in said and "X-axis tilt" in said
    assert volume(tmp_path / "BBa.rec").shape == (512 // 8, 84 // 8, 512 // 8)


@pytest.mark.parametrize(
    "line, message",
    [
        ("OFFSET 0.0", "OFFSET 1.5: a tilt-angle or tilt-axis offset is not applied here"),
        ("SHIFT 0.0 0.0", "SHIFT 0 12: a shifted volume is not reconstructed here (only 0)"),
        ("THICKNESS 24", "THICKNESS -4: not a positive number of pixels"),
        ("EXCLUDELIST 1", "EXCLUDELIST 40: view 40 is outside 1..31"),
        ("FULLIMAGE 64 64", "FULLIMAGE 128 64: the stack"),
        ("XAXISTILT -7", "XAXISTILT 95: not within -90..90 degrees"),
        ("AdjustOrigin", "SLICE 0 10: a range of slices is not reconstructed here"),
        ("TILTFILE s.tlt", "no TILTFILE: give the tilt angles with --tlt"),
        ("RADIAL 0.35 0.05", "RADIAL 0.7 0.05: need 0 < cutoff <= 0.5"),
        ("MODE 1", "THICKNESS is given twice (lines"),
    ],
)
def test_options_it_cannot_honour_are_refused_at_their_line(folder, tmp_path, line, message):
    replacement = {
        "OFFSET 0.0": "OFFSET 1.5",
        "SHIFT 0.0 0.0": "SHIFT 0 12",
        "THICKNESS 24": "THICKNESS -4",
        "EXCLUDELIST 1": "EXCLUDELIST 40",
        "FULLIMAGE 64 64": "FULLIMAGE 128 64",
        "XAXISTILT -7": "XAXISTILT 95",
        "AdjustOrigin": "SLICE 0 10",
        "TILTFILE s.tlt": "",
        "RADIAL 0.35 0.05": "RADIAL 0.7 0.05",
        "MODE 1": "THICKNESS 30",
    }[line]
    text = COM.replace(line + "\n", replacement + "\n" if replacement else "")
    for name in ("s.mrc", "s.xf", "s.tlt", "s.xtilt"):
        (tmp_path / name).symlink_to(folder / name)
    (tmp_path / "tilt.com").write_text(text)
    rc, _, err = run_cli(
        ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--imod-com", tmp_path / "tilt.com"]
        + ["--out", tmp_path / "bad.mrc"]
    )
    assert rc == 2 and message in err and "tilt.com" in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad.mrc").exists()


def test_imod_com_goes_with_xf(folder, tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "old.com").write_text("$tilt\ns.ali\ns.rec\nTHICKNESS 24\nDONE\n")
    base = ["reconstruct", folder / "s.mrc", "--out", tmp_path / "bad.mrc"]
    for given, message in (
        (
            ["--alignment", tmp_path / "a.json", "--imod-com", folder / "tilt.com"],
            "--imod-com goes with --xf",
        ),
        (["--imod-com", folder / "tilt.com"], "--imod-com needs --xf"),
        (["--xf", folder / "s.xf", "--imod-com", tmp_path / "none.com"], "none.com: no such file"),
        (
            ["--xf", folder / "s.xf", "--imod-com", tmp_path / "old.com"],
            "old.com:1: tilt's old sequential input",
        ),
    ):
        rc, _, err = run_cli([*base, *given])
        assert rc == 2 and message in err and err.count("\n") == 1, (given, err)
    assert not (tmp_path / "bad.mrc").exists()


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("AdjustOrigin", "EXCLUDLIST 1-10", "EXCLUDLIST: not one of tilt's options that reconstruct knows"),
        (
            "AdjustOrigin",
            "FlatFilterFraction 0.5",
            "FlatFilterFraction 0.5: a flat filter is not applied here",
        ),
        ("SHIFT 0.0 0.0", "SHIFT 0 0 5", "SHIFT: expected 1 or 2 numbers"),
        ("AdjustOrigin", "FakeSIRTiterations 5000000", "FakeSIRTiterations 5000000: expected 0 to 1000000"),
        ("TILTFILE s.tlt", "TILTFILE nowhere.tlt", "TILTFILE nowhere.tlt: no such file"),
        ("$if (-e ./savework) ./savework", "$tilt -StandardInput\nTHICKNESS 40", "a second $tilt command"),
        ("AdjustOrigin", "PARALLEL", "PARALLEL: slices parallel to the specimen"),
    ],
)
def test_misspelt_and_malformed_options_are_refused_at_their_line(folder, tmp_path, old, new, message):
    """tilt refuses a name it does not know, so a misspelt option (which would have changed the
    tomogram) is refused here too, at its line; so are the ones reconstruct cannot honour."""
    for name in ("s.mrc", "s.xf", "s.tlt", "s.xtilt"):
        (tmp_path / name).symlink_to(folder / name)
    (tmp_path / "tilt.com").write_text(COM.replace(old, new))
    args = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--imod-com", tmp_path / "tilt.com"]
    rc, _, err = run_cli([*args, "--out", tmp_path / "bad.mrc"])
    assert rc == 2 and message in err and "tilt.com:" in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad.mrc").exists()


def test_pip_forms_and_a_radial_filter_at_another_binning(folder, tmp_path):
    """PIP's 'Name=value' and a comment after the value are read as tilt reads them; RADIAL is in
    cycles per pixel of tilt's input binned by IMAGEBINNED, so at --bin 2 it doubles (0.35 0.05 ->
    0.5 0.1, the cutoff at most Nyquist; FalloffIsTrueSigma 1: the fall-off a sigma): the volume of
    --radial 0.5 0.1 given by hand."""
    text = COM.replace("THICKNESS 24", "THICKNESS=24").replace(
        "EXCLUDELIST 1", "EXCLUDELIST 1  # a dark view"
    )
    text = text.replace("RADIAL 0.35 0.05", "RADIAL 0.35 0.05\nFalloffIsTrueSigma 1")
    (tmp_path / "tilt.com").write_text(text)
    for name in ("s.mrc", "s.xf", "s.tlt", "s.xtilt"):
        (tmp_path / name).symlink_to(folder / name)
    args = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--imod-com", tmp_path / "tilt.com"]
    rc, out, err = run_cli([*args, "--bin", 2, "--out", tmp_path / "com.mrc"])
    assert rc == 0, err
    assert "RADIAL 0.35 0.05 (cycles/pixel at IMAGEBINNED 1) is --radial 0.5 0.1 at --bin 2" in out + err
    hand = ["--tlt", tmp_path / "s.tlt", "--xtilt", tmp_path / "s.xtilt", "--x-axis-tilt", -7, "--exclude", 1]
    hand += ["--thickness", NZ, "--radial", 0.5, 0.1, "--layout", "imod-tilt", "--bin", 2]
    rc, _, err = run_cli(
        ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", *hand, "--out", tmp_path / "h.mrc"]
    )
    assert rc == 0, err
    np.testing.assert_array_equal(volume(tmp_path / "com.mrc"), volume(tmp_path / "h.mrc"))


def test_a_line_that_is_no_option_and_filters_under_sirt(folder, tmp_path):
    """A section line that is no 'Name value' is refused at its line (it raised AttributeError,
    exit 3); with --sirt the com's RADIAL is said to be unused, not dropped silently."""
    for name in ("s.mrc", "s.xf", "s.tlt", "s.xtilt"):
        (tmp_path / name).symlink_to(folder / name)
    args = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--imod-com", tmp_path / "tilt.com"]
    (tmp_path / "tilt.com").write_text(COM.replace("AdjustOrigin", "= 5"))
    rc, _, err = run_cli([*args, "--out", tmp_path / "bad.mrc"])
    assert rc == 2 and "tilt.com:11: expected 'Name value'" in err and err.count("\n") == 1, err
    (tmp_path / "tilt.com").write_text(COM)
    rc, out, err = run_cli([*args, "--sirt", 2, "--out", tmp_path / "sirt.mrc"])
    assert rc == 0 and "RADIAL not applied: --sirt has no filter" in out + err, err


def test_a_bare_local_takes_the_coms_localfile(folder, tmp_path):
    """``--imod-com tilt.com --local`` (no file): the com's LOCALFILE, the volume of --local FILE;
    a com without one is refused, naming it."""
    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf

    d = folder
    shifted = np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1))
    shifted[..., 2] = 0.5
    local = LocalAlignment((2, 2), (16.0, 16.0), (32.0, 32.0), 0.0, np.zeros((4, TILTS.size)), shifted)
    write_local_xf(tmp_path / "slocal.xf", local)
    for name in ("s.mrc", "s.xf", "s.tlt", "s.xtilt"):
        (tmp_path / name).symlink_to(d / name)
    (tmp_path / "tilt.com").write_text(COM.replace("EXCLUDELIST 1\n", "EXCLUDELIST 1\nLOCALFILE slocal.xf\n"))
    base = ["reconstruct", tmp_path / "s.mrc", "--xf", tmp_path / "s.xf", "--imod-com", tmp_path / "tilt.com"]
    rc, _, err = run_cli([*base, "--local", "--out", tmp_path / "bare.mrc"])
    assert rc == 0, err
    rc, _, err = run_cli([*base, "--local", tmp_path / "slocal.xf", "--out", tmp_path / "named.mrc"])
    assert rc == 0, err
    np.testing.assert_array_equal(volume(tmp_path / "bare.mrc"), volume(tmp_path / "named.mrc"))
    base[-1] = d / "tilt.com"
    rc, _, err = run_cli([*base, "--local", "--out", tmp_path / "none.mrc"])
    assert rc == 2 and f"--local: {d / 'tilt.com'} names no LOCALFILE; give --local FILE" in err, err
    assert not (tmp_path / "none.mrc").exists()
