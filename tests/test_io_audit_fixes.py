"""Audit fixes: 8-bit MRC stacks read by IMOD's signed/unsigned rule, the z-factor reader's
messages, and an --out name too long for the file system refused before any work."""

import os
import struct

import mrcfile
import numpy as np
import pytest
from helpers import run_cli

from lmalign_jax.cli.common import UsageError, check_output_file
from lmalign_jax.export.imod import read_zfac
from lmalign_jax.io import InputError
from lmalign_jax.io.mrc import read_stack, read_stack_streamed

IMOD_STAMP = 1146047817  # IMOD's mrc_format.txt: imodStamp, header bytes 152-155


def _write_bytes_stack(path, values: np.ndarray, *, stamp: int, flags: int, dmin: float, dmax: float):
    """A mode-0 MRC file holding ``values``' bytes, with imodStamp/imodFlags and the header's
    min/max written straight into the header bytes (offsets 152, 156, 76, 80; little-endian)."""
    with mrcfile.new(path, data=values.view(np.int8), overwrite=True) as mrc:
        mrc.voxel_size = 10.0
    with open(path, "r+b") as f:
        f.seek(76)
        f.write(struct.pack("<fff", dmin, dmax, (dmin + dmax) / 2))
        f.seek(152)
        f.write(struct.pack("<ii", stamp, flags))
    with mrcfile.open(path, permissive=False) as mrc:  # a valid MRC file, mode 0, our bytes
        assert int(mrc.header.mode) == 0
        assert mrc.data.tobytes() == values.tobytes()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A 5-view simulated stack with its true .xf/.tlt, and its images as bytes 40..240."""
    d = tmp_path_factory.mktemp("sim")
    rc, _, err = run_cli(["simulate", "--out-dir", d, "--stack", "--views", "5"])
    assert rc == 0, err
    with mrcfile.open(d / "synthetic.mrc") as mrc:
        images = np.asarray(mrc.data, dtype=np.float64)
    # bright field: a bright background (240) with dark beads (down to 40)
    scaled = 240 - 200 * (images - images.min()) / (images.max() - images.min())
    values = np.round(scaled).astype(np.uint8)
    assert values.min() == 40 and values.max() == 240 and np.mean(values >= 128) > 0.5
    return d, values


@pytest.mark.parametrize(
    "stamp, dmin, dmax",
    [(IMOD_STAMP, 40.0, 240.0), (IMOD_STAMP, -128.0, 127.0), (0, 40.0, 240.0), (0, 0.0, 0.0)],
    ids=["imod-stamp", "imod-stamp-signed-minmax", "no-stamp", "no-stamp-no-stats"],
)
def test_mode0_without_signed_flag_reads_unsigned(tmp_path, simulated, stamp, dmin, dmax):
    _, values = simulated
    path = tmp_path / "bytes.mrc"
    _write_bytes_stack(path, values, stamp=stamp, flags=0, dmin=dmin, dmax=dmax)
    for data in (read_stack(path), read_stack(path, mmap=False)):
        assert data.dtype == np.uint8
        np.testing.assert_array_equal(data, values)
    streamed = read_stack_streamed(path)
    np.testing.assert_array_equal(np.stack([streamed[v] for v in range(len(streamed))]), values)


def test_mode0_with_imod_signed_flag_reads_signed(tmp_path, simulated):
    _, values = simulated
    path = tmp_path / "signed.mrc"
    # IMOD's flag decides over the header's min/max (which here would say unsigned)
    _write_bytes_stack(path, values, stamp=IMOD_STAMP, flags=1, dmin=40.0, dmax=240.0)
    for data in (read_stack(path), read_stack(path, mmap=False)):
        assert data.dtype == np.int8
        np.testing.assert_array_equal(data.astype(np.int16), values.astype(np.int16) - 256 * (values >= 128))
        assert np.all(data[values == 240] == -16) and np.all(data[values == 40] == 40)


def test_mode0_mrc2014_signed_without_stamp_reads_signed(tmp_path):
    """A file written as signed int8 by mrcfile (no IMOD stamp, header min < 0 and max < 128):
    IMOD's min/max rule reads it signed, as written."""
    signed = np.arange(-100, 100, dtype=np.int8).reshape(2, 10, 10)
    path = tmp_path / "int8.mrc"
    with mrcfile.new(path, data=signed):
        pass
    data = read_stack(path)
    assert data.dtype == np.int8
    np.testing.assert_array_equal(data, signed)


def test_mode0_stack_reconstructs_as_its_float_copy(tmp_path, simulated):
    d, values = simulated
    byte_stack, float_stack = tmp_path / "bytes.mrc", tmp_path / "float.mrc"
    _write_bytes_stack(byte_stack, values, stamp=IMOD_STAMP, flags=0, dmin=40.0, dmax=240.0)
    with mrcfile.new(float_stack, data=values.astype(np.float32)) as mrc:
        mrc.voxel_size = 10.0
    volumes = []
    for stack in (byte_stack, float_stack):
        out = tmp_path / (stack.stem + ".rec.mrc")
        args = ["reconstruct", stack, "--xf", d / "synthetic_truth.xf", "--tlt", d / "synthetic_truth.tlt"]
        rc, _, err = run_cli([*args, "--thickness", "10", "--out", out, "--quiet"])
        assert rc == 0, err
        with mrcfile.open(out) as mrc:
            volumes.append(np.array(mrc.data))
    scale = float(np.max(np.abs(volumes[1])))
    assert scale > 0
    np.testing.assert_allclose(volumes[0], volumes[1], rtol=0, atol=1e-5 * scale)


# ---------------------------------------------------------------- read_zfac


def test_read_zfac_messages_match_the_text_readers(tmp_path):
    binary = tmp_path / "bad.zfac"
    binary.write_bytes(b"0.1 0.2\n\xff\xfe\x00\x01\n")
    cases = [
        (binary, f"{binary}:2: not UTF-8 text (byte 0xff)"),
        (tmp_path, f"{tmp_path}: is a directory, not a file"),
        (tmp_path / "missing.zfac", f"{tmp_path / 'missing.zfac'}: file not found"),
    ]
    for path, message in cases:
        with pytest.raises(InputError) as info:
            read_zfac(path)
        assert str(info.value) == message
        assert "Error" not in str(info.value)


def test_reconstruct_with_binary_zfac_is_one_line(tmp_path, simulated):
    d, _ = simulated
    zfac = tmp_path / "bad.zfac"
    zfac.write_bytes(b"\xff" * 10)
    args = ["reconstruct", d / "synthetic.mrc", "--xf", d / "synthetic_truth.xf"]
    args += ["--tlt", d / "synthetic_truth.tlt", "--zfac", zfac, "--thickness", "10"]
    rc, _, err = run_cli([*args, "--out", tmp_path / "r.mrc"])
    assert rc == 2
    assert err.strip() == f"lmalign: error: {zfac}:1: not UTF-8 text (byte 0xff)"
    assert not (tmp_path / "r.mrc").exists()


# ---------------------------------------------------------------- --out name too long


def _name_max(folder) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def test_reconstruct_refuses_too_long_out_before_work(tmp_path, simulated):
    d, _ = simulated
    if _name_max(tmp_path) >= 304:
        pytest.skip("this file system takes 304-byte names")
    out = tmp_path / ("a" * 300 + ".mrc")
    args = ["reconstruct", d / "synthetic.mrc", "--xf", d / "synthetic_truth.xf"]
    args += ["--tlt", d / "synthetic_truth.tlt", "--thickness", "10", "--out", out]
    rc, stdout, err = run_cli(args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmalign: error: --out ")
    assert "304 bytes" in lines[0] and ".tmp" not in lines[0]
    assert "reconstructing" not in err and stdout == ""  # refused before any work
    assert os.listdir(tmp_path) == []


def test_any_name_the_file_system_takes_is_written_through_its_temporary_file(tmp_path):
    """Temporary names cut the name to 64 characters: 60 four-byte characters + .mrc (244 bytes,
    a name the file system takes) made a 258-byte temporary name that it did not (review). They
    are now cut to 64 bytes on a character boundary, so every name that fits is written; a name
    too long itself is still refused up front."""
    from lmalign_jax.io import atomic_write
    from lmalign_jax.io.atomic import short_name, temporary_prefix
    from lmalign_jax.io.outputs import OutputSet

    if _name_max(tmp_path) != 255:
        pytest.skip("the names below are sized for a 255-byte limit")
    name = "\U0001f600" * 60 + ".mrc"  # 244 bytes
    prefix = temporary_prefix(name)
    assert (
        len(os.fsencode(prefix)) <= 66 and name.startswith(prefix[1:-1]) and prefix[1:-1] == "\U0001f600" * 16
    )
    assert short_name("abc") == "abc" and short_name("\u00e9" * 40) == "\u00e9" * 32
    check_output_file(str(tmp_path / name), (), "--out", "tomo.rec.mrc")
    with atomic_write(tmp_path / name, "wb") as f:
        f.write(b"x")
    out = OutputSet(str(tmp_path / "o"), "\U0001f600" * 61)  # a staging folder for such a prefix
    with out:
        out.write_text(".txt", "y")
        out.commit()
    assert (tmp_path / name).read_bytes() == b"x" and len(os.listdir(tmp_path / "o")) == 1
    too_long = tmp_path / ("\U0001f600" * 63 + ".mrc")  # 256 bytes
    with pytest.raises(UsageError, match=r"^--out .*: the file name is 256 bytes, longer than the 255"):
        check_output_file(str(too_long), (), "--out", "tomo.rec.mrc")


def test_an_aln_that_cannot_be_read_is_worded_as_the_other_text_readers(tmp_path):
    """read_aln said 'cannot read the AreTomo alignment (UnicodeDecodeError: ...)'; it now says
    what the other text readers say."""
    from lmalign_jax.export.aretomo import read_aln
    from lmalign_jax.io import InputError

    binary = tmp_path / "b.aln"
    binary.write_bytes(b"# AreTomo Alignment / Priims bprmMn \n\xff\xfe\n")
    for path, message in (
        (binary, r"b\.aln:2: not UTF-8 text \(byte 0xff\)$"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing.aln", "file not found"),
    ):
        with pytest.raises(InputError, match=message):
            read_aln(path)
