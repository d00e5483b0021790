"""Bad input around a local alignment file (``reconstruct --local``, tilt.com's LOCALFILE): a file with
a pixel size on a stack without one, a grid that the pixel rescaling shrinks into a corner, blank
and missing lines, and tilt.com's THICKNESS and file names; each named (file, line, problem) and,
where refused, nothing written."""

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from helpers import run_cli

from lmalign_jax.io import InputError, write_tlt, write_xf
from lmalign_jax.io.imod_local import LocalAlignment, check_local_grid, read_local_xf, write_local_xf

LOCAL = Path(__file__).resolve().parent / "data" / "imod-local"
N, NZ = 64, 16
TILTS = np.linspace(-60.0, 60.0, 31)
#: Lines of one patch block of 31 views (no X tilts, no z factors): 4 lines of delta tilts, 31 transforms.
BLOCK = 4 + 31


def _local(pixel: float, views: int = TILTS.size) -> LocalAlignment:
    """A 2 x 2 grid over the N px image (centres at 16 and 48), small varied transforms."""
    rng = np.random.default_rng(3)
    xf = np.tile(np.eye(2, 3), (4, views, 1, 1))
    xf[..., 2] = np.round(rng.normal(0, 0.5, (4, views, 2)), 2)
    return LocalAlignment((2, 2), (16, 16), (32, 32), pixel, np.round(rng.normal(0, 0.2, (4, views)), 2), xf)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """s.mrc (10 A pixels) and nopx.mrc (no pixel size): the same 31 views of N x N px; their unit
    .xf and .tlt."""
    d = tmp_path_factory.mktemp("localinput")
    views = np.random.default_rng(0).random((TILTS.size, N, N), dtype=np.float32)
    with mrcfile.new(d / "s.mrc") as m:
        m.set_data(views)
        m.voxel_size = 10.0
    with mrcfile.new(d / "nopx.mrc") as m:
        m.set_data(views)
    write_xf(d / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)))
    write_tlt(d / "s.tlt", TILTS)
    return d


def _reconstruct(folder, stack, local, out):
    args = ["reconstruct", folder / stack, "--xf", folder / "s.xf", "--tlt", folder / "s.tlt"]
    return run_cli([*args, "--thickness", NZ, "--local", local, "--out", out])


def _volume(path) -> np.ndarray:
    with mrcfile.open(path) as m:
        return np.array(m.data)


def test_a_local_pixel_size_on_a_stack_without_one_is_named_and_applied_unscaled(folder, tmp_path):
    """A file made for 20 A pixels on a stack whose header has no pixel size cannot be scaled to it:
    the warning names the file and its pixel size, and the file is applied as written (the volume
    of the same file with no pixel size in its header)."""
    write_local_xf(tmp_path / "l20.xf", _local(20.0))
    write_local_xf(tmp_path / "l0.xf", _local(0.0))
    rc, _, err = _reconstruct(folder, "nopx.mrc", tmp_path / "l20.xf", tmp_path / "a.mrc")
    assert rc == 0, err
    said = [line for line in err.splitlines() if "l20.xf" in line and "warning" in line]
    assert len(said) == 1, err
    assert "made for 20 A pixels, but the stack's header has no pixel size" in said[0]
    assert "cannot be scaled to the stack" in said[0] and "applied as written" in said[0]
    assert "scaled by" not in err
    rc, _, err = _reconstruct(folder, "nopx.mrc", tmp_path / "l0.xf", tmp_path / "b.mrc")
    assert rc == 0 and "l0.xf: made for" not in err, err
    np.testing.assert_array_equal(_volume(tmp_path / "a.mrc"), _volume(tmp_path / "b.mrc"))


@pytest.mark.parametrize("pixel, span", [(1.0, "x 1.6..4.8, y 1.6..4.8"), (1e-5, "x 1.6e-05..4.8e-05")])
def test_a_grid_rescaled_into_a_corner_is_refused(folder, tmp_path, pixel, span):
    """A header pixel of 1 (IMOD's for a model without a pixel size) on a stack of 10 A pixels puts
    the patch centres at 1.6-4.8 px of the 64 px image (1e-5: all at ~0): every centre is inside,
    yet the grid is not this stack's. Refused, naming the file, both pixel sizes and the fix."""
    write_local_xf(tmp_path / "l.xf", _local(pixel))
    rc, out, err = _reconstruct(folder, "s.mrc", tmp_path / "l.xf", tmp_path / "t.mrc")
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"lmalign: error: {tmp_path / 'l.xf'}:1: grid does not match the stack"), err
    assert (
        f"patch centres span {span}" in err and f"rescaled by header pixel {pixel:g} / stack pixel 10" in err
    )
    assert "under 10% of the 64 x 64 image in x and in y" in err
    assert f"made for {pixel:g} A pixels, not this stack's 10 A" in err
    assert "LOCALSCALE" in err and "--local file written for this stack" in err
    assert not (tmp_path / "t.mrc").exists() and "Wrote" not in out


def test_imods_shipped_grids_pass_and_a_corner_grid_does_not():
    """IMOD's own local files on their stacks' sizes and pixel sizes (their headers' own, none, a
    stack binned by 2, and midzone2a's 1 A header against 2.5 A pixels, a spread of 21% of the
    image in x) still pass; the rule refuses only a grid that the rescaling shrinks to a spread under
    10% of the image in x and in y."""
    sizes = {"BBa": (512, 512), "BBb": (512, 512), "midzone2a": (1950, 1024), "midzone2b": (1024, 1950)}
    for name, size in sizes.items():
        path = LOCAL / f"{name}local.xf"
        local = read_local_xf(path)
        for pixel in (local.pixel_size, 0.0):
            check_local_grid(path, local, size, pixel)
        check_local_grid(path, local, (size[0] // 2, size[1] // 2), 2 * local.pixel_size)
    midzone = read_local_xf(LOCAL / "midzone2alocal.xf")
    check_local_grid("m.xf", midzone, (1950, 1024), 2.5)
    with pytest.raises(InputError, match=r"under 10% of the 1950 x 1024 image in x and in y") as e:
        check_local_grid("m.xf", midzone, (1950, 1024), 10.0)
    assert e.value.line == 1 and "made for 1 A pixels, not this stack's 10 A" in e.value.problem
    # without rescaling, a small grid is taken (markers clustered in a small field make one)
    tiny = dataclasses.replace(midzone, start=(900, 500), spacing=(5, 5))
    check_local_grid("m.xf", tiny, (1950, 1024))
    check_local_grid("m.xf", tiny, (1950, 1024), 1.0)


def _lines(tmp_path) -> list[str]:
    write_local_xf(tmp_path / "good.xf", _local(0.0))
    lines = (tmp_path / "good.xf").read_text().splitlines()
    assert len(lines) == 1 + 4 * BLOCK
    return lines


def test_a_blank_line_inside_a_block_is_named_at_its_line(folder, tmp_path):
    lines = _lines(tmp_path)
    bad = tmp_path / "blank.xf"
    for at, where in ((3, "delta tilts of patch 0 (x 0, y 0)"), (10, "transform of view 5 in patch 0")):
        bad.write_text("\n".join([*lines[: at - 1], "", *lines[at - 1 :]]) + "\n")
        with pytest.raises(InputError) as e:
            read_local_xf(bad, n_views=TILTS.size)
        assert e.value.line == at and f"blank line in the {where}" in e.value.problem, e.value
        with pytest.raises(InputError) as e:  # views not known: still the line, not the count
            read_local_xf(bad)
        assert e.value.line == at and "blank line" in e.value.problem, e.value
    rc, out, err = _reconstruct(folder, "s.mrc", bad, tmp_path / "t.mrc")
    assert rc == 2 and f"{bad}:10: blank line in the transform of view 5 in patch 0 (x 0, y 0)" in err, err
    assert not (tmp_path / "t.mrc").exists()


def test_a_file_cut_at_a_line_boundary_is_called_short(folder, tmp_path):
    """Cut after 112 of 140 lines, the file is 2 x 2 blocks of 25 views by its line count; with the
    alignment's 31 views known it is named 28 lines short (or made for 25 views); a cut that makes
    no whole blocks, short by its count; with the views not known, not a whole number of views."""
    lines = _lines(tmp_path)
    cut = tmp_path / "cut.xf"
    cut.write_text("\n".join(lines[: 1 + 112]) + "\n")
    message = (
        "grid does not match the alignment: 112 lines after the header, but 2 x 2 patches of 31 views "
        "need 140: the file is 28 lines short (truncated?), or holds 2 x 2 patches of 25 views"
    )
    with pytest.raises(InputError) as e:
        read_local_xf(cut, n_views=31)
    assert message in e.value.problem and e.value.line is None
    rc, out, err = _reconstruct(folder, "s.mrc", cut, tmp_path / "t.mrc")
    assert rc == 2 and f"{cut}: {message}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "t.mrc").exists()
    cut.write_text("\n".join(lines[: 1 + 99]) + "\n")
    with pytest.raises(InputError) as e:
        read_local_xf(cut, n_views=31)
    assert e.value.problem.endswith(
        "99 lines after the header, but 2 x 2 patches of 31 views need 140: the file is 41 lines short "
        "(truncated?)"
    )
    with pytest.raises(InputError) as e:
        read_local_xf(cut)
    assert (
        "99 lines after the header do not make 2 x 2 patch blocks of a whole number of views (21 views "
        "need 96, 22 views need 100): the file is truncated or has lines too many" in e.value.problem
    )
    cut.write_text("\n".join([*lines, *lines[-2:]]) + "\n")
    with pytest.raises(InputError, match=r"142 lines after the header, but .* need 140: 2 lines too many"):
        read_local_xf(cut, n_views=31)


COM = "$tilt -StandardInput\nTILTFILE s.tlt\n{line}\n"


@pytest.mark.parametrize("value", ["40.7", "1e3", "24.0"])
def test_a_thickness_not_written_as_an_integer_is_refused_at_its_line(folder, tmp_path, value):
    """tilt reads THICKNESS as an integer: 40.7 (was 40 slices), 1e3 (was 1000) and 24.0 are
    refused at their line, as IMAGEBINNED 1.5 is; nothing is written."""
    (tmp_path / "s.tlt").symlink_to(folder / "s.tlt")
    (tmp_path / "tilt.com").write_text(COM.format(line=f"THICKNESS {value}"))
    rc, out, err = run_cli(
        ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--imod-com", tmp_path / "tilt.com"]
        + ["--out", tmp_path / "t.mrc"]
    )
    assert rc == 2 and err.count("\n") == 1, err
    assert f"tilt.com:3: THICKNESS {value}: expected a whole number of pixels written as an integer" in err
    assert not (tmp_path / "t.mrc").exists()
    (tmp_path / "tilt.com").write_text(COM.format(line="THICKNESS 16"))
    rc, _, err = run_cli(
        ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--imod-com", tmp_path / "tilt.com"]
        + ["--out", tmp_path / "t.mrc", "-q"]
    )
    assert rc == 0 and _volume(tmp_path / "t.mrc").shape == (16, N, N), err


@pytest.mark.parametrize("name", ["LOCALFILE", "TILTFILE"])
def test_a_named_file_that_is_a_folder_is_called_a_folder(folder, tmp_path, name):
    (tmp_path / "s.tlt").symlink_to(folder / "s.tlt")
    (tmp_path / "adir").mkdir()
    text = "$tilt -StandardInput\nTHICKNESS 16\n" + (
        "TILTFILE adir\n" if name == "TILTFILE" else "TILTFILE s.tlt\nLOCALFILE adir\n"
    )
    (tmp_path / "tilt.com").write_text(text)
    base = ["reconstruct", folder / "s.mrc", "--xf", folder / "s.xf", "--out", tmp_path / "t.mrc"]
    rc, _, err = run_cli([*base, "--imod-com", tmp_path / "tilt.com"])
    line = 3 if name == "TILTFILE" else 4
    assert rc == 2 and f"tilt.com:{line}: {name} adir: a folder, not a file ({tmp_path / 'adir'})" in err, err
    assert "no such file" not in err
    rc, _, err = run_cli([*base, "--imod-com", tmp_path / "adir"])
    assert rc == 2 and f"{tmp_path / 'adir'}: a folder, not a file" in err, err
    assert not (tmp_path / "t.mrc").exists()


def test_a_grid_over_markers_the_alignment_turns_past_the_image_box_is_taken():
    """tiltalign lays its grid over the markers' solved (X, Y), their aligned positions at zero tilt:
    with the tilt axis at 78 deg on a 64 x 256 image they span the turned image, x from about -95 to
    160. Such a grid (what align --local wrote, refused by reconstruct and export before) is taken
    with the alignment's footprint; the same grid against the image's own box, and a grid far past
    the footprint, are refused."""
    from lmalign_jax.io.imod_local import aligned_footprint

    size = (64, 256)
    turn = np.radians(-78.0)
    a = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    xf = np.tile(np.concatenate([a, np.zeros((2, 1))], 1), (TILTS.size, 1, 1))
    low, high = aligned_footprint(xf, TILTS, size)
    np.testing.assert_allclose(low, [32 - 0.5 * (64 * abs(a[0, 0]) + 256 * abs(a[0, 1])), 0], atol=1e-9)
    np.testing.assert_allclose(high, [32 + 0.5 * (64 * abs(a[0, 0]) + 256 * abs(a[0, 1])), 256], atol=1e-9)
    n = TILTS.size
    grid = LocalAlignment(
        (4, 2), (-80.0, 100.0), (70.0, 60.0), 0.0, np.zeros((8, n)), np.tile(np.eye(2, 3), (8, n, 1, 1))
    )
    check_local_grid("turned.xf", grid, size, 0.0, (low, high))
    with pytest.raises(
        InputError, match=r"turned.xf:1: grid does not match the stack: .*the 64 x 256 image$"
    ):
        check_local_grid("turned.xf", grid, size)
    far = dataclasses.replace(grid, start=(-400.0, 100.0))
    with pytest.raises(
        InputError, match=r"farther than 0.5 of its size outside the 64 x 256 image \(as the "
    ):
        check_local_grid("far.xf", far, size, 0.0, (low, high))


def test_a_small_grid_made_for_the_unbinned_stack_is_taken_on_the_binned_one():
    """Markers clustered in 600 x 600 px of a 4096 px image (2.17 A): their grid, made for that
    stack, spreads over under 10% of it; on the stack binned by 2 (4.34 A) the rescaling halves
    it, which is right, and it is taken (it does not fit the binned image as written, so it is not
    a header's trap); the same small grid written for the binned stack with a 1 A header, which
    fits it as written, is refused."""
    n = TILTS.size
    unit = np.tile(np.eye(2, 3), (4, n, 1, 1))
    grid = LocalAlignment((2, 2), (1890.0, 1890.0), (240.0, 240.0), 2.17, np.zeros((4, n)), unit)
    check_local_grid("made.xf", grid, (4096, 4096), 2.17)
    check_local_grid("made.xf", grid, (2048, 2048), 4.34)
    trap = dataclasses.replace(grid, start=(945.0, 945.0), spacing=(120.0, 120.0), pixel_size=1.0)
    with pytest.raises(InputError, match=r"under 10% of the 2048 x 2048 image"):
        check_local_grid("trap.xf", trap, (2048, 2048), 4.34)
