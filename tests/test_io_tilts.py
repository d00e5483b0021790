"""Tilt-angle files (.tlt/.rawtlt) and SerialEM .mdoc files."""

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from lmalign_jax.io import InputError, read_mdoc, read_tilts, write_tlt

DATA = Path(__file__).parent / "data"
FS = DATA / "format-samples"
MDOC = DATA / "empiar10164-ts01" / "TS_01.mrc.mdoc"
BB = Path(str(files("lmalign_jax").joinpath("data", "imod-bb")))


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "path, n, first, last",
    [
        (FS / "etomofiles_TS_001" / "TS_001.rawtlt", 40, -60.0, 56.99),
        (FS / "etomofiles_TS_001" / "TS_001.tlt", 40, -57.12, None),
        (FS / "cryoet-alignment_imod_1" / "tilt_1.tlt", 59, -52.24, None),
        (BB / "BBa.tlt", 61, 65.06, -55.12),
    ],
)
def test_real_tilt_files(path, n, first, last):
    t = read_tilts(path)
    assert t.shape == (n,) and t.dtype == np.float64
    assert t[0] == first
    if last is not None:
        assert t[-1] == last


def test_tlt_round_trip(tmp_path):
    t = np.array([-60.0, -0.0004, 1.2345, 58.99951, 120.5])
    write_tlt(tmp_path / "a.tlt", t)
    text = (tmp_path / "a.tlt").read_text()
    assert text.splitlines()[2] in ("    1.234", "    1.235")
    assert all(len(ln) == 9 for ln in text.splitlines())
    np.testing.assert_allclose(read_tilts(tmp_path / "a.tlt"), t, atol=5e-4)
    bb = read_tilts(BB / "BBa.tlt")
    write_tlt(tmp_path / "b.rawtlt", bb)
    np.testing.assert_array_equal(read_tilts(tmp_path / "b.rawtlt"), bb)


def test_tlt_trailing_blank_lines_ok(tmp_path):
    np.testing.assert_array_equal(read_tilts(write(tmp_path / "a.tlt", "1.5\r\n -2\n\n  \n")), [1.5, -2.0])


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"a.tlt: no tilt angles"),
        ("\n\n", r"a.tlt: no tilt angles"),
        ("1.0\n\n2.0\n", r"a.tlt:2: blank line before the last tilt angle"),
        ("1.0 2.0\n", r"a.tlt:1: expected one tilt angle per line, got 2 values"),
        ("1.0\nabc\n", r"a.tlt:2: tilt angle is not a number: 'abc'"),
        ("1.0\n-inf\n", r"a.tlt:2: tilt angle is not finite: '-inf'"),
    ],
)
def test_tlt_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_tilts(write(tmp_path / "a.tlt", text))


def test_tilts_extension_and_missing(tmp_path):
    with pytest.raises(
        InputError, match=r"a.txt: unsupported tilt-angle file \(extension '.txt'\); supported: .tlt, .rawtlt"
    ):
        read_tilts(write(tmp_path / "a.txt", "1\n"))
    with pytest.raises(InputError, match=r"none.tlt: file not found"):
        read_tilts(tmp_path / "none.tlt")


def test_write_tlt_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="non-empty 1-D"):
        write_tlt(tmp_path / "a.tlt", [])
    with pytest.raises(ValueError, match="finite"):
        write_tlt(tmp_path / "a.tlt", [1.0, np.nan])
    assert not (tmp_path / "a.tlt").exists()


# ---------------------------------------------------------------- mdoc


def test_real_mdoc():
    m = read_mdoc(MDOC)
    assert m.tilts_deg.shape == (41,) and m.z_values.shape == (41,)
    np.testing.assert_array_equal(m.z_values, np.arange(41))
    assert m.tilt_axis_angle_deg == 85.3
    assert m.pixel_size == 5.4 and m.image_size == (924, 958)
    assert (
        abs(m.tilts_deg[0]) < 0.01 and abs(m.tilts_deg[1] - 3.0) < 0.01 and abs(m.tilts_deg[2] + 3.0) < 0.01
    )
    np.testing.assert_allclose(np.sort(m.tilts_deg), np.arange(-60, 61, 3), atol=0.01)


MINI = """PixelSpacing = 2.5
ImageSize = 100 200

[T = SerialEM: test]

[T =     Tilt axis angle = -12.5, binning = 1]

[ZValue = 1]
TiltAngle = 3.0

[ZValue = 0]
TiltAngle = -3.0
"""


def test_mdoc_sorted_by_zvalue(tmp_path):
    m = read_mdoc(write(tmp_path / "a.mdoc", MINI))
    np.testing.assert_array_equal(m.tilts_deg, [-3.0, 3.0])
    np.testing.assert_array_equal(m.z_values, [0, 1])
    assert m.tilt_axis_angle_deg == -12.5 and m.pixel_size == 2.5 and m.image_size == (100, 200)


def test_mdoc_without_axis_and_header(tmp_path):
    m = read_mdoc(write(tmp_path / "a.mdoc", "[ZValue = 0]\nTiltAngle = 1\nPixelSpacing = 3\n"))
    assert m.tilt_axis_angle_deg is None and m.image_size is None and m.pixel_size == 3.0


@pytest.mark.parametrize(
    "text, match",
    [
        ("PixelSpacing = 1\n", r"a.mdoc: no '\[ZValue = ...\]' sections \(not a tilt-series mdoc\)"),
        ("junk line\n[ZValue = 0]\nTiltAngle = 1\n", r"a.mdoc:1: expected 'key = value', got 'junk line'"),
        (
            "[ZValue = 0]\nTiltAngle = 1\n[MontSection = 0]\n",
            r"a.mdoc: mixed ZValue/MontSection/FrameSet sections",
        ),
        (
            "[ZValue = 0]\nTiltAngle = 1\n[ZValue = 1]\nDefocus = 2\n",
            r"a.mdoc:3: section ZValue = 1 has no TiltAngle$",
        ),
        ("[ZValue = -1]\nTiltAngle = 1\n", r"a.mdoc:1: ZValue = -1 out of range"),
        ("[ZValue = 0]\nTiltAngle = nan\n", r"a.mdoc:2: TiltAngle is not finite: 'nan'$"),
        (
            "[ZValue = 0]\nTiltAngle = 1\n[ZValue = 0]\nTiltAngle = 2\n",
            r"a.mdoc:3: duplicate ZValue = 0 \(first on line 1\)",
        ),
        (
            "ImageSize = 0 10\n[ZValue = 0]\nTiltAngle = 1\n",
            r"a.mdoc:1: ImageSize must be two whole numbers of pixels, 1 to 1000000: '0 10'$",
        ),
        (  # audit: a size past the option's bound aligned with NaN errors and exit 0
            "ImageSize = 2147483647 2147483647\n[ZValue = 0]\nTiltAngle = 1\n",
            r"a.mdoc:1: ImageSize must be two whole numbers of pixels, 1 to 1000000: "
            r"'2147483647 2147483647'$",
        ),
        (
            "[T = Tilt axis angle = 1e999]\n[ZValue = 0]\nTiltAngle = 1\n",
            r"a.mdoc: tilt axis angle is not finite: '1e999'",
        ),
    ],
)
def test_mdoc_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_mdoc(write(tmp_path / "a.mdoc", text))


# A value mdocfile's models refuse: the line of that value, in words (not pydantic's dump).
REFUSED = MINI.replace("TiltAngle = -3.0", "TiltAngle = -3.0\nExposureTime = 1")  # ZValue 0: lines 11-13


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("TiltAngle = -3.0", "TiltAngle = abc", r"a.mdoc:12: TiltAngle is not a number: 'abc'$"),
        ("TiltAngle = -3.0", "TiltAngle =", r"a.mdoc:12: TiltAngle has no value$"),
        ("TiltAngle = 3.0", "TiltAngle = 1,5", r"a.mdoc:9: TiltAngle is not a number: '1,5'$"),
        (
            "ImageSize = 100 200",
            "ImageSize = 100",
            r"a.mdoc:2: ImageSize should be 2 whole numbers, got '100'$",
        ),
        (
            "ImageSize = 100 200",
            "ImageSize = 1 x",
            r"a.mdoc:2: ImageSize should be 2 whole numbers, got '1 x'$",
        ),
        ("PixelSpacing = 2.5", "PixelSpacing = x", r"a.mdoc:1: PixelSpacing is not a number: 'x'$"),
        ("[ZValue = 0]", "[ZValue = zero]", r"a.mdoc:11: ZValue is not a whole number: 'zero'$"),
        ("ExposureTime = 1", "ExposureTime = long", r"a.mdoc:13: ExposureTime is not a number: 'long'$"),
    ],
)
def test_mdoc_bad_value_names_its_line(tmp_path, old, new, match):
    assert old in REFUSED
    with pytest.raises(InputError, match=match) as e:
        read_mdoc(write(tmp_path / "a.mdoc", REFUSED.replace(old, new)))
    assert "validation" not in str(e.value).lower() and "\n" not in str(e.value)


def test_mdoc_missing(tmp_path):
    with pytest.raises(InputError, match=r"x.mdoc: file not found"):
        read_mdoc(tmp_path / "x.mdoc")
