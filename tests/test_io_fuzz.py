"""Property tests: every parser either parses or raises InputError, whatever the input.

Inputs: arbitrary text, arbitrary bytes, token soup shaped like the formats, truncations and
one-byte corruptions of valid files.
"""

import tempfile
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmalign_jax.io import (
    InputError,
    MarkerSet,
    read_fid_xyz,
    read_imod_model,
    read_markers,
    read_markers_csv,
    read_mdoc,
    read_model2point,
    read_pytom_markers,
    read_resid,
    read_tilts,
    read_xf,
    write_imod_model,
)

DATA = Path(__file__).parent / "data"
PKG = Path(str(files("lmalign_jax").joinpath("data")))

CSV = b"marker,view,x,y\n1,0,10.5,20.25\n1,1,11.5,21.25\n2,0,100,200\n2,2,101,202\n"
M2P = (
    b"     1     10.000     20.000    0.00\n"
    b"     1     11.000     21.000    1.00\n"
    b"     3     30.000     40.000    2.00\n"
)
M2P5 = b"1 1 10 20 0\n1 2 11 21 1\n2 1 5 6 3.00\n"


def _fid_sample() -> bytes:
    xy = np.array([[[10.0, 20.0], [30.0, 40.0]], [[11.0, 21.0], [np.nan, np.nan]]])
    m = MarkerSet(xy=xy, mask=np.isfinite(xy[..., 0]), marker_ids=(1, 3), image_size=(64, 64), pixel_size=3.0)
    with tempfile.TemporaryDirectory() as d:
        write_imod_model(Path(d) / "s.fid", m)
        return (Path(d) / "s.fid").read_bytes()


FID = _fid_sample()
PYTOM = (DATA / "pytom-empiar10064" / "tutorial_markerfiles" / "tomogram_000_markerfile.txt").read_bytes()

# (id, parser, extension, a valid sample)
PARSERS = [
    ("markers-csv", read_markers, ".csv", CSV),
    ("markers-txt-m2p", read_markers, ".txt", M2P),
    ("markers-txt-pytom", read_markers, ".txt", PYTOM),
    ("markers-pt", read_markers, ".pt", M2P5),
    ("markers-fid", read_markers, ".fid", FID),
    ("csv", read_markers_csv, ".csv", CSV),
    ("model2point", read_model2point, ".pt", M2P),
    ("pytom", read_pytom_markers, ".txt", PYTOM),
    ("imod-model", read_imod_model, ".mod", FID),
    (
        "tilts",
        read_tilts,
        ".tlt",
        (DATA / "format-samples" / "etomofiles_TS_001" / "TS_001.tlt").read_bytes(),
    ),
    ("mdoc", read_mdoc, ".mdoc", (DATA / "empiar10164-ts01" / "TS_01.mrc.mdoc").read_bytes()),
    ("xf", read_xf, ".xf", (DATA / "format-samples" / "cryoet-alignment_imod_1" / "tilt_1.xf").read_bytes()),
    ("resid", read_resid, ".resid", (PKG / "imod-bb" / "BBa.resid").read_bytes()),
    ("fid-xyz", read_fid_xyz, ".xyz", (PKG / "imod-midzone2" / "midzone2afid.xyz").read_bytes()),
]
IDS = [p[0] for p in PARSERS]

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TOKENS = [
    "0",
    "1",
    "2",
    "-1",
    "-1.00",
    "3.00",
    "0.5",
    "1e5",
    "1e999",
    "nan",
    "inf",
    "-0",
    "99999999999999999999",
    "1_0",
    "x",
    "",
    "#",
    "Pix:",
    "Dim:",
    "residuals",
    "=",
    ",",
    "TiltAngle",
    "ZValue",
    "[",
    "]",
    "\t",
    "\x00",
    "\u00e9",
    "\u0661",
    "********",
    "-1234.56-789.01",
]
LINES = [
    "marker,view,x,y",
    "# MarkerIndex",
    "# TiltAngle (degrees)",
    "     3 residuals",
    "[ZValue = 0]",
    "[ZValue = 1]",
    "[ZValue = 99999999999999999999]",
    "[ZValue = -2]",
    "TiltAngle = 5",
    "TiltAngle = -3.0",
    "[T = Tilt axis angle = 85.3, binning = 4]",
    "PixelSpacing = 5.4",
    "ImageSize = 924 958",
    "ImageSize = 0 x",
    "[MontSection = 0]",
    "   1    244.50    242.64     46.24      1    1 Pix:    20.20000 Dim:   512   512",
    "    281.19    236.96    0   -0.20    0.17",
    "   0.9787406  -0.1898027   0.1861717   0.9824202     -20.199       1.220",
    "  0  -60.000  1113.10   241.50",
    "  0  -60.000  -1.00  -1.00",
    "1,0,1.5,2.5",
    "1,0,1.5,2.5",
    "  65.06",
]

token_line = st.builds(
    lambda toks, sep: sep.join(toks),
    st.lists(st.sampled_from(TOKENS), max_size=7),
    st.sampled_from([" ", ",", "  ", "\t", ""]),
)
soup = st.builds(
    lambda lines, nl: nl.join(lines) + nl,
    st.lists(st.one_of(st.sampled_from(LINES), token_line), max_size=12),
    st.sampled_from(["\n", "\r\n"]),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def check(parser, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        parser(path)
    except InputError as e:
        assert str(e).startswith(str(path))


@pytest.mark.parametrize("name, parser, ext, sample", PARSERS, ids=IDS)
def test_valid_sample_parses(workdir, name, parser, ext, sample):
    path = workdir / f"{name}{ext}"
    path.write_bytes(sample)
    parser(path)


@pytest.mark.parametrize("name, parser, ext, sample", PARSERS, ids=IDS)
@FUZZ
@given(text=st.text(max_size=400))
def test_arbitrary_text(workdir, name, parser, ext, sample, text):
    check(parser, workdir / f"{name}{ext}", text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("name, parser, ext, sample", PARSERS, ids=IDS)
@FUZZ
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes(workdir, name, parser, ext, sample, data):
    check(parser, workdir / f"{name}{ext}", data)


@pytest.mark.parametrize("name, parser, ext, sample", PARSERS, ids=IDS)
@FUZZ
@given(text=soup)
def test_format_shaped_text(workdir, name, parser, ext, sample, text):
    check(parser, workdir / f"{name}{ext}", text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("name, parser, ext, sample", PARSERS, ids=IDS)
@FUZZ
@given(frac=st.floats(0.0, 1.0))
def test_truncated_valid_file(workdir, name, parser, ext, sample, frac):
    check(parser, workdir / f"{name}{ext}", sample[: int(frac * len(sample))])


@pytest.mark.parametrize("name, parser, ext, sample", PARSERS, ids=IDS)
@FUZZ
@given(frac=st.floats(0.0, 1.0, exclude_max=True), value=st.integers(0, 255), tail=st.booleans())
def test_corrupted_valid_file(workdir, name, parser, ext, sample, frac, value, tail):
    data = bytearray(sample)
    data[int(frac * len(data))] = value
    if tail:  # also cut after the corrupted byte
        data = data[: int(frac * len(data)) + 1]
    check(parser, workdir / f"{name}{ext}", bytes(data))
