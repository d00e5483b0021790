"""``lmalign align --imod-com align.com``: an Etomo tiltalign command file's options as align's.

Known truth: the options Etomo wrote for IMOD's BBa set (tests/data/imod-com), mapped as
tiltalign's sources define them (XStretchOption 3 is blocks, SkewOption 3 linear); the angle
offset checked on a simulated series whose tilts are known.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, run_cli

from lmalign_jax.cli._main import build_parser
from lmalign_jax.cli.imod_com import apply_tiltalign_com
from lmalign_jax.io.errors import InputError
from lmalign_jax.io.imod_com import read_tiltalign_com

COM = Path(__file__).parent / "data" / "imod-com" / "aligna.com"
BBA = [DATA / "imod-bb/BBa.resid", "--tilts", DATA / "imod-bb/BBa.tlt", "--image-size", "512", "512"]


def parsed(*extra, com=COM):
    args = build_parser().parse_args(["align", *map(str, BBA), "--imod-com", str(com), *map(str, extra)])
    apply_tiltalign_com(args)
    return args


def test_the_tiltalign_section_is_read_with_its_line_numbers():
    options = read_tiltalign_com(COM)
    assert options["RotationAngle"][0].value == "-12.5" and options["RotationAngle"][0].line == 21
    assert options["TargetPatchSizeXandY"][0].value == "700, 700"
    assert options["ShiftZFromOriginal"][0].value == ""  # a flag
    assert "InputFile1" not in options  # the next command's ($xfproduct)


def test_etomos_bba_options_become_aligns():
    args = parsed("--model", "imod")
    assert args.rotation == -12.5 and args.angle_offset == -0.03 and args.exclude == "1"
    assert (args.rotation_mode, args.tilt_mode, args.scale_mode) == ("free", "linear:5", "free")
    assert sorted(args.mode) == ["skew=linear:11", "xstretch=group:7"]  # XStretchOption 3: blocks
    assert args.surfaces == 2 and args.local and args.local_markers == "fixed"
    assert args.patch_size == [700, 700] and args.patch_overlap == 0.5 and args.min_fids == "8,3"
    assert sorted(args.local_mode) == [
        "rotation=linear:6",
        "scale=linear:7",
        "skew=linear:11",
        "tilt=linear:6",
        "xstretch=group:7",
    ]


def test_the_command_line_wins():
    args = parsed("--model", "imod", "--tilt-mode", "free", "--mode", "skew=fixed", "--rotation", "-11")
    assert args.tilt_mode == "free" and args.rotation == -11.0
    assert sorted(args.mode) == ["skew=fixed", "xstretch=group:7"]
    assert args.tilts == str(DATA / "imod-bb/BBa.tlt")  # not the file's BBa.rawtlt


def write_com_at(folder, *lines):
    """A copy of COM's options with ``lines`` in place of its own of the same names, written
    next to a temporary folder's name under /tmp (relative paths stay COM's)."""
    import tempfile

    names = {line.split()[0] for line in lines}
    body = [ln for ln in COM.read_text().splitlines() if not ln.split() or ln.split()[0] not in names]
    at = body.index("$tiltalign -StandardInput") + 1
    body[at:at] = list(lines)
    path = Path(tempfile.mkdtemp()) / "align.com"
    path.write_text("\n".join(body) + "\n")
    return path


def write_com(tmp_path, *lines, header="$tiltalign -StandardInput"):
    path = tmp_path / "align.com"
    path.write_text("\n".join(["# a test", header, *lines, "$b3dcopy -p a b"]) + "\n")
    return path


@pytest.mark.parametrize(
    "lines, line, message",
    [
        (["TiltOption 7", "TiltDefaultGrouping 5"], 3, "TiltOption 7: not supported; use 0, 1, 2, 5, 6"),
        (["RotOption 3"], 3, "RotOption 3 groups views: RotDefaultGrouping must give a group size >= 1"),
        (["RotOption x"], 3, "RotOption: expected a whole number, got 'x'"),
        (
            ["XStretchOption 3", "XStretchDefaultGrouping 7"],
            3,
            "asks for xstretch, which model 'jou' has not",
        ),
        (["SeparateGroup 1-5"], 3, "SeparateGroup: separate view groups are not supported"),
        (["MagNondefaultGroup 1,5,2"], 3, "MagNondefaultGroup: groupings per view range are not supported"),
        (["BeamTiltOption 1"], 3, "BeamTiltOption 1: not supported (only 0)"),
        (["LocalAlignments 1", "MinSizeOrOverlapXandY 0.5,0.3"], 4, "one overlap for X and Y, in [0, 1)"),
        # found by an audit: each was read wrongly or crashed
        (
            ["LocalAlignments 1", "TargetPatchSizeXandY nan,nan"],
            4,
            "expected 2 whole number(s), got 'nan,nan'",
        ),
        (["LocalAlignments 1", "MinFidsTotalAndEachSurface 8.7,3"], 4, "expected 2 whole number(s)"),
        (["LocalAlignments 2"], 3, "LocalAlignments: expected 0 or 1 (or the name alone), got '2'"),
        (["RotOption 1", "RotOption -1"], 4, "RotOption is given twice (lines 3 and 4)"),
        (["FixedOrInitialBeamTilt 2"], 3, "a beam tilt is not supported"),
        (["RobustFitting", "KFactorScaling 2"], 4, "KFactorScaling: only 1"),
        (["ExcludeList 5-2"], 3, "ExcludeList 5-2: range '5-2' runs backwards"),
        (["RotationAngle 720"], 3, "RotationAngle 720: must be a tilt-axis angle within"),
        (["SurfacesToAnalyze 3"], 3, "SurfacesToAnalyze: expected 0, 1 or 2, got 3"),
        (["CompOption 1"], 3, "CompOption 1: not supported (only 0)"),
        (["LocalAlignments", "NumberOfLocalPatchesXandY 5,5"], 4, "give the patch size instead"),
        (
            ["LocalAlignments", "MinSizeOrOverlapXandY 300,300"],
            4,
            "minimum patch sizes (values > 1) are not read",
        ),
        (["LocalAlignments", "TargetPatchSizeXandY 0,700"], 4, "TargetPatchSizeXandY: sizes must be >= 1 px"),
        (["LocalAlignments", "FixXYZCoordinates yes"], 4, "FixXYZCoordinates: expected 0 or 1"),
    ],
)
def test_options_it_cannot_honour_are_named_with_their_line(tmp_path, lines, line, message):
    com = write_com(tmp_path, *lines)
    with pytest.raises(InputError) as caught:
        parsed(com=com)
    assert caught.value.line == line and message in str(caught.value)
    rc, _, err = run_cli(["align", *map(str, BBA), "--imod-com", str(com), "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and f"{com}:{line}:" in err and message in err and not (tmp_path / "o").exists()


def test_a_file_without_a_tilt_file_asks_for_one(tmp_path):
    com = tmp_path / "align.com"
    com.write_text("$tiltalign -StandardInput\nRotOption 1\n")
    args = build_parser().parse_args(["align", str(BBA[0]), "--imod-com", str(com)])
    with pytest.raises(InputError, match="no TiltFile: give the tilt angles with --tilts"):
        apply_tiltalign_com(args)
    com.write_text("$tiltalign -StandardInput\nTiltFile\n")
    args = build_parser().parse_args(["align", str(BBA[0]), "--imod-com", str(com)])
    with pytest.raises(InputError, match="TiltFile: no file name") as caught:
        apply_tiltalign_com(args)
    assert caught.value.line == 2


def test_options_with_no_counterpart_are_listed_as_not_used(tmp_path):
    com = write_com(tmp_path, "ImageOriginXandY 10,10", "Frobnicate 1")
    rc, _, err = run_cli(["align", *map(str, BBA), "--imod-com", str(com), "--out-dir", str(tmp_path / "o")])
    assert rc == 0, err
    assert f"{com}: not used: ImageOriginXandY (line 3), Frobnicate (line 4)" in err


def test_an_angle_offset_past_90_degrees_is_refused_before_anything_is_done(tmp_path):
    """Also for a raw stack, which would be tracked first (its tracking files were left behind)."""
    rc, _, err = run_cli(["align", *map(str, BBA), "--angle-offset", "40", "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "--angle-offset 40: takes view 1's tilt to 105.06 degrees, outside -90..90" in err
    simulate = ["simulate", "--out-dir", tmp_path, "--views", "11", "--markers", "8", "--stack"]
    rc, _, err = run_cli([*simulate, "--image-size", "256", "256"])
    assert rc == 0, err
    rc, _, err = run_cli(
        ["align", str(tmp_path / "synthetic.mrc"), "--tilts", str(tmp_path / "synthetic.rawtlt")]
        + ["--angle-offset", "40", "--out-dir", str(tmp_path / "s")]
    )
    assert rc == 2 and "--angle-offset 40: takes view 11's tilt to 100 degrees" in err
    assert not (tmp_path / "s").exists()


def test_a_file_without_tiltalign_options_is_refused(tmp_path):
    with pytest.raises(InputError, match="no '\\$tiltalign' command"):
        read_tiltalign_com(write_com(tmp_path, "x 1", header="$newstack -StandardInput"))
    with pytest.raises(InputError, match="old sequential input"):
        read_tiltalign_com(write_com(tmp_path, "BBa.fid", header="$tiltalign"))
    with pytest.raises(InputError, match="options on the \\$tiltalign line itself are not read"):
        read_tiltalign_com(
            write_com(tmp_path, "TiltOption 0", header="$tiltalign -StandardInput -RotOption -1")
        )


def test_a_list_of_views_takes_spaces_as_imods_lists_do():
    """'ExcludeList 1 3' is views 1 and 3 (it was read as view 13)."""
    args = parsed("--model", "imod", com=write_com_at(COM.parent, "ExcludeList 1 3"))
    assert args.exclude == "1 3"
    from lmalign_jax.workflow import parse_view_list

    assert parse_view_list(args.exclude, 61) == [0, 2] and parse_view_list("1-3,5 7", 10) == [0, 1, 2, 4, 6]


def test_no_local_turns_the_files_local_alignment_off():
    args = parsed("--model", "imod", "--no-local")
    assert args.local is False and args.patch_size is None and args.local_mode is None


def test_the_angle_offset_is_added_to_the_tilts(tmp_path):
    """AngleOffset shifts every nominal tilt. A common tilt change is an exact symmetry (the
    specimen turned about the tilt axis) and the gauge holds the reference view's tilt at its
    nominal value, so the fit is the same and every written tilt moves by the offset, to the
    solver's tolerance; the record says where the offset came from."""
    rc, _, err = run_cli(
        ["simulate", "--out-dir", tmp_path, "--seed", "3", "--views", "31", "--markers", "15"]
    )
    assert rc == 0, err
    com = write_com(tmp_path, "TiltFile synthetic.rawtlt", "AngleOffset 4.0", "RotOption -1", "TiltOption 2")
    args = [tmp_path / "synthetic.csv", "--imod-com", com, "--image-size", "2048", "2048", "--no-figure"]
    for name, extra in (("plain", ["--angle-offset", "0"]), ("offset", [])):
        rc, _, err = run_cli(["align", *map(str, args), "--out-dir", str(tmp_path / name), *extra])
        assert rc == 0, err
    plain = np.loadtxt(tmp_path / "plain" / "synthetic.tlt")
    shifted = np.loadtxt(tmp_path / "offset" / "synthetic.tlt")
    np.testing.assert_allclose(shifted - plain, 4.0, atol=2e-3)  # the .tlt's 3 decimals
    record = json.loads((tmp_path / "offset" / "synthetic.json").read_text())
    assert record["inputs"]["tilt_offset_deg"] == 4.0
    assert record["inputs"]["tilt_offset_source"] == f"{com}:4 AngleOffset (IMOD's)"
    assert record["options"]["modes"]["rotation"] == "shared"


def test_bba_aligned_as_its_align_com_says(tmp_path):
    """The whole run from Etomo's file (with the model that has x-stretch and skew): view 1 left
    out, IMOD's groupings, the local alignment with Etomo's patches. The mean residual is that of
    IMOD's own BBa.resid (0.3129 px over its 1403 points) within 0.01 px, 2 standard errors of a
    mean of 1380 residuals of sd 0.18 px: the same model and groupings minimise the same squares."""
    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        [
            "align",
            *map(str, BBA),
            "--imod-com",
            str(COM),
            "--model",
            "imod",
            "--out-dir",
            str(out),
            "--no-figure",
        ]
    )
    assert rc == 0, err
    assert "not used" not in err
    record = json.loads((out / "BBa.json").read_text())
    assert record["inputs"]["excluded_views"] == [1] and record["inputs"]["tilt_offset_deg"] == -0.03
    modes = record["options"]["modes"]
    assert (modes["tilt"], modes["xstretch"], modes["skew"]) == ("linear:5", "group:7", "linear:11")
    assert record["local"]["options"]["modes"]["xstretch"] == "group:7"
    assert (out / "BBalocal.xf").exists() and "SURFACE ANALYSIS" in stdout
    mean = float(stdout.split("Residual error mean and sd:")[1].split()[0])
    assert abs(mean - 0.3129) < 0.01, mean
