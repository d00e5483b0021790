"""IMOD alignment text files: .xf, .resid, fid.xyz (real IMOD answer sets and round trips)."""

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from lmalign_jax.io import (
    InputError,
    read_fid_xyz,
    read_resid,
    read_tilts,
    read_xf,
    resid_to_markers,
    write_fid_xyz,
    write_resid,
    write_xf,
)

DATA = Path(__file__).parent / "data"
FS = DATA / "format-samples"
PKG = Path(str(files("lmalign_jax").joinpath("data")))
BB, MZ = PKG / "imod-bb", PKG / "imod-midzone2"


def write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------- .xf


@pytest.mark.parametrize(
    "path, n",
    [
        (FS / "cryoet-alignment_imod_1" / "tilt_1.xf", 59),
        (FS / "etomofiles_TS_001" / "TS_001.xf", 40),
        (DATA / "empiar10164-ts01" / "xf_file.xf", 41),
        (BB / "BBa.xf", 61),
        (BB / "BBa.tltxf", 61),
        (MZ / "midzone2a.xf", 81),
        (MZ / "midzone2b.tltxf", 79),
    ],
)
def test_real_xf(path, n, tmp_path):
    A, d = read_xf(path)
    assert A.shape == (n, 2, 2) and d.shape == (n, 2)
    det = np.linalg.det(A)
    assert np.all((det > 0.8) & (det < 1.25))
    # Writing back reproduces IMOD's file byte for byte.
    write_xf(tmp_path / "out.xf", A, d)
    assert (tmp_path / "out.xf").read_text() == path.read_text()


def test_xf_values_and_rotation():
    A, d = read_xf(FS / "cryoet-alignment_imod_1" / "tilt_1.xf")
    np.testing.assert_array_equal(A[0], [[-0.1813379, -0.9834202], [0.9834202, -0.1813379]])
    np.testing.assert_array_equal(d[0], [-58.170, 69.816])
    # TS_01: the xf rotates by minus the ~85 degree tilt-axis angle.
    A, _ = read_xf(DATA / "empiar10164-ts01" / "xf_file.xf")
    angle = np.degrees(np.arctan2(A[:, 1, 0], A[:, 0, 0]))
    assert np.all(np.abs(angle + 85) < 1.5)


def test_xf_round_trip_random(tmp_path):
    rng = np.random.default_rng(1)
    A = rng.uniform(-1.5, 1.5, (7, 2, 2))
    d = rng.uniform(-900, 900, (7, 2))
    write_xf(tmp_path / "r.xf", A, d)
    line = (tmp_path / "r.xf").read_text().splitlines()[0]
    assert len(line) == 72
    A2, d2 = read_xf(tmp_path / "r.xf")
    np.testing.assert_allclose(A2, A, atol=5e-8)
    np.testing.assert_allclose(d2, d, atol=5e-4)


def test_xf_fixed_columns_fallback(tmp_path):
    # DX fills its f12.3 field and runs into A22, as Fortran output can.
    p = write(tmp_path / "g.xf", "   1.0000000   0.0000000   0.0000000   1.0000000-1234567.125       2.500\n")
    A, d = read_xf(p)
    np.testing.assert_array_equal(A[0], np.eye(2))
    np.testing.assert_array_equal(d[0], [-1234567.125, 2.5])


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"g.xf: no transforms"),
        ("1 0 0 1 0\n", r"g.xf:1: expected 6 values \(A11 A12 A21 A22 DX DY\), got 5"),
        ("1 0 0 1 0 0 7\n", r"g.xf:1: expected 6 values \(A11 A12 A21 A22 DX DY\), got 7"),
        ("1 0 0 1 0 0\n\n1 0 0 1 0 0\n", r"g.xf:2: blank line inside the data"),
        ("1 0 0 1 0 0\n1 0 0 x 0 0\n", r"g.xf:2: A22 is not a number: 'x'"),
        ("1 0 0 1 0 ********\n", r"g.xf:1: DY is not a number: '\*\*\*\*\*\*\*\*'"),
    ],
)
def test_xf_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_xf(write(tmp_path / "g.xf", text))


def test_write_xf_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"need A \(n, 2, 2\)"):
        write_xf(tmp_path / "a.xf", np.zeros((3, 2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        write_xf(tmp_path / "a.xf", np.full((1, 2, 2), np.nan), np.zeros((1, 2)))
    assert not (tmp_path / "a.xf").exists()


def test_write_xf_widens_only_fields_that_overflow(tmp_path):
    """A shift of 10^9 px widens its field by the digits it needs (one blank before it); the
    other fields and the other lines keep IMOD's 4f12.7,2f12.3 columns."""
    write_xf(tmp_path / "a.xf", np.tile(np.eye(2), (2, 1, 1)), [[1e9, -2.5], [3.0, 4.0]])
    first, second = (tmp_path / "a.xf").read_text().splitlines()
    assert first == "   1.0000000   0.0000000   0.0000000   1.0000000 1000000000.000      -2.500"
    assert second == "   1.0000000   0.0000000   0.0000000   1.0000000       3.000       4.000"
    A, d = read_xf(tmp_path / "a.xf")
    np.testing.assert_array_equal(d, [[1e9, -2.5], [3.0, 4.0]])


# ---------------------------------------------------------------- .resid


@pytest.mark.parametrize(
    "path, n_points, n_fid, n_views, n_missing",
    [
        (BB / "BBa.resid", 1403, 23, 61, 0),
        (BB / "BBb.resid", 1403, 23, 61, 0),
        (MZ / "midzone2a.resid", 3793, 47, 81, 14),
        (MZ / "midzone2b.resid", 3713, 47, 79, 0),
    ],
)
def test_real_resid(path, n_points, n_fid, n_views, n_missing):
    t = read_resid(path)
    assert t.xy.shape == (n_points, 2) and t.residual.shape == (n_points, 2)
    assert t.view.shape == t.marker.shape == (n_points,)
    assert t.n_markers == n_fid and t.view.min() == 0 and t.view.max() == n_views - 1
    fid = read_fid_xyz(path.with_name(path.stem + "fid.xyz"))
    assert fid.xyz.shape == (n_fid, 3)
    m = resid_to_markers(t, fid.image_size)
    assert m.xy.shape == (n_views, n_fid, 2)
    assert m.n_views * m.n_markers - m.n_observations == n_missing
    assert m.marker_ids == tuple(fid.point)
    assert m.image_size == fid.image_size


def test_bba_values_and_mean_residual():
    t = read_resid(BB / "BBa.resid")
    np.testing.assert_array_equal(t.xy[0], [281.19, 236.96])
    np.testing.assert_array_equal(t.residual[2], [-0.29, -0.32])
    assert t.view[:3].tolist() == [0, 1, 2] and t.marker[-1] == 22
    assert abs(np.linalg.norm(t.residual, axis=1).mean() - 0.31) < 0.01  # SOURCE.md: 0.31 px
    assert read_tilts(BB / "BBa.tlt").shape == (61,)


def test_resid_to_markers_options():
    t = read_resid(MZ / "midzone2a.resid")
    m = resid_to_markers(t, (1950, 1024), n_views=90, pixel_size=4.0)
    assert m.n_views == 90 and m.pixel_size == 4.0 and not m.mask[81:].any()
    with pytest.raises(InputError, match=r"<resid table>: view index 10 out of range for n_views=10"):
        resid_to_markers(t, None, n_views=10)


@pytest.mark.parametrize("path", [BB / "BBa.resid", MZ / "midzone2a.resid"])
def test_resid_byte_round_trip(path, tmp_path):
    t = read_resid(path)
    write_resid(tmp_path / "r.resid", t.xy, t.view, t.residual)
    assert (tmp_path / "r.resid").read_text() == path.read_text()


def test_resid_round_trip_random(tmp_path):
    rng = np.random.default_rng(2)
    view = np.concatenate([np.arange(0, 10), np.arange(2, 8), np.arange(0, 10, 3)])
    xy = rng.uniform(0, 4000, (len(view), 2))
    res = rng.normal(0, 1, (len(view), 2))
    write_resid(tmp_path / "r.resid", xy, view, res)
    t = read_resid(tmp_path / "r.resid")
    np.testing.assert_array_equal(t.view, view)
    np.testing.assert_array_equal(t.marker, [0] * 10 + [1] * 6 + [2] * 4)
    np.testing.assert_allclose(t.xy, xy, atol=5e-3)
    np.testing.assert_allclose(t.residual, res, atol=5e-3)


def fortran_field(value, width: int, decimals: int | None, first: bool) -> str:
    """One field as IMOD's Fortran writes it (``iW`` or ``fW.D``) when the number fits with a
    blank before it (or fits at all, for the first field of a line); otherwise, the rule the
    writers promise: the number with exactly one blank before it."""
    text = f"{value:{width}d}" if decimals is None else f"{value:{width}.{decimals}f}"
    if len(text) <= width and (first or text.startswith(" ")):
        return text
    return ("" if first else " ") + text.strip()


def test_write_resid_equals_fortran_fields_or_widens_by_one_blank(tmp_path):
    """Field by field: Fortran's 2f10.2,i5,2f8.2 text where a number fits, the number after one
    blank where it does not (at the edges of every field, and far past them)."""
    xy = np.array([[-9999.994, 0.004], [12.345, 99999.994], [-100000.0, 1000000.0], [-1e9, 1e12]])
    res = np.array([[-99.994, 999.994], [0.125, -0.135], [-1000.0, 10000.0], [1e6, -1e6]])
    view = np.array([0, 9999, 10000, 123456])
    write_resid(tmp_path / "r.resid", xy, view, res)
    rows = "".join(
        fortran_field(x, 10, 2, True)
        + fortran_field(y, 10, 2, False)
        + fortran_field(int(v), 5, None, False)
        + fortran_field(dx, 8, 2, False)
        + fortran_field(dy, 8, 2, False)
        + "\n"
        for (x, y), v, (dx, dy) in zip(xy, view, res, strict=True)
    )
    text = (tmp_path / "r.resid").read_text()
    assert text == "     4 residuals\n" + rows
    assert text.splitlines()[1] == "  -9999.99      0.00    0  -99.99  999.99"  # IMOD's own columns
    assert (
        text.splitlines()[3] == "-100000.00 1000000.00 10000 -1000.00 10000.00"
    )  # all but the first widened


def test_resid_fixed_columns_fallback(tmp_path):
    p = write(
        tmp_path / "g.resid",
        "     2 residuals\n    100.00    200.00    3-1234.56   -0.50\n"
        "1234567.891234567.89    4    0.10    0.20\n",
    )
    t = read_resid(p)
    np.testing.assert_array_equal(t.residual[0], [-1234.56, -0.50])
    np.testing.assert_array_equal(t.xy[1], [1234567.89, 1234567.89])
    assert t.marker.tolist() == [0, 0]


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"g.resid:1: expected 'N residuals' on line 1"),
        ("3 points\n", r"g.resid:1: expected 'N residuals' on line 1, got '3 points'"),
        ("x residuals\n", r"g.resid:1: residual count is not an integer: 'x'"),
        ("2 residuals\n 1 2 0 0 0\n", r"g.resid: line 1 announces 2 residuals but 1 follow"),
        ("2 residuals\n 1 2 0 0 0\n\n 1 2 1 0 0\n", r"g.resid:3: blank line inside the data"),
        ("1 residuals\n 1 2 0 0\n", r"g.resid:2: expected 5 values \(X Y view dx dy\), got 4"),
        ("2 residuals\n 1 2 0 0\n 1 2 1 0 0 0\n", r"g.resid:2: expected 5 values \(X Y view dx dy\), got 4"),
        ("2 residuals\n 1 2 0 0 0\n 1 2 1 0 1_0\n", r"g.resid:3: dy is not a number: '1_0'"),
        ("2 residuals\n 1 2 0 0 0\n 1 2 \u0661 0 0\n", r"g.resid:3: view is not an integer"),
        ("1 residuals\n 1 2 -1 0 0\n", r"g.resid:2: negative view index -1"),
        ("1 residuals\n 1 2 10000 0 0\n", r"g.resid:2: view index 10000 exceeds the limit of 10000 views"),
        ("1 residuals\n 1 2 0.5 0 0\n", r"g.resid:2: view is not an integer: '0.5'"),
        ("1 residuals\n 1 2 0 0 nan\n", r"g.resid:2: dy is not finite: 'nan'"),
    ],
)
def test_resid_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_resid(write(tmp_path / "g.resid", text))


def test_write_resid_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"need xy \(n, 2\)"):
        write_resid(tmp_path / "r.resid", np.zeros((2, 2)), [0], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-negative integers"):
        write_resid(tmp_path / "r.resid", np.zeros((1, 2)), [-1], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="finite"):
        write_resid(tmp_path / "r.resid", np.full((1, 2), np.inf), [0], np.zeros((1, 2)))
    assert not (tmp_path / "r.resid").exists()


# ---------------------------------------------------------------- fid.xyz


def test_real_fid_xyz():
    f = read_fid_xyz(BB / "BBafid.xyz")
    assert f.xyz.shape == (23, 3) and f.pixel_size == 20.2 and f.image_size == (512, 512)
    np.testing.assert_array_equal(f.xyz[0], [244.50, 242.64, 46.24])
    assert f.point.tolist() == list(range(1, 24))
    assert f.contour[:5].tolist() == [1, 2, 3, 5, 6] and set(f.object.tolist()) == {1}
    g = read_fid_xyz(MZ / "midzone2afid.xyz")
    assert g.xyz.shape == (47, 3) and g.pixel_size == 1.0 and g.image_size == (1950, 1024)


@pytest.mark.parametrize(
    "path", [BB / "BBafid.xyz", BB / "BBbfid.xyz", MZ / "midzone2afid.xyz", MZ / "midzone2bfid.xyz"]
)
def test_fid_xyz_byte_round_trip(path, tmp_path):
    f = read_fid_xyz(path)
    write_fid_xyz(tmp_path / "f.xyz", f.xyz, f.contour, f.pixel_size, f.image_size, objects=f.object)
    assert (tmp_path / "f.xyz").read_text() == path.read_text()


def test_fid_xyz_round_trip_defaults(tmp_path):
    xyz = np.array([[1.0, 2.0, -3.0], [400.125, 500.5, 60.0]])
    write_fid_xyz(tmp_path / "f.xyz", xyz, [4, 9], None, (100, 200))
    f = read_fid_xyz(tmp_path / "f.xyz")
    np.testing.assert_allclose(f.xyz, xyz, atol=5e-3)
    assert f.contour.tolist() == [4, 9] and f.object.tolist() == [1, 1] and f.point.tolist() == [1, 2]
    assert f.pixel_size == 1.0 and f.image_size == (100, 200)


def test_fid_xyz_without_header(tmp_path):
    f = read_fid_xyz(write(tmp_path / "f.xyz", "   1    1.00    2.00    3.00      1    1\n"))
    assert f.pixel_size is None and f.image_size is None


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"f.xyz: no fiducial points"),
        ("   1 1 2 3 1\n", r"f.xyz:1: expected 6 values \(# X Y Z obj cont\), got 5"),
        ("   1 1 2 3 1 1 Pix: abc Dim: 5 5\n", r"f.xyz:1: Pix: is not a number: 'abc'"),
        ("   1 1 2 3 1 1 Pix: 1.0 Dim: 5\n", r"f.xyz:1: expected 'Dim: nx ny', got '5'"),
        ("   1 1 2 3 1 1 Pix: 1.0 Dim: 0 5\n", r"f.xyz:1: image size must be positive, got \(0, 5\)"),
        (
            "   1 1 2 3 1 1\n   2 1 2 3 1 1 Pix: 1 Dim: 2 2\n",
            r"f.xyz:2: expected 6 values \(# X Y Z obj cont\), got 11",
        ),
        ("   1 1 2 nan 1 1\n", r"f.xyz:1: Z is not finite: 'nan'"),
        ("   1 1 2 3 1 x\n", r"f.xyz:1: contour is not an integer: 'x'"),
    ],
)
def test_fid_xyz_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_fid_xyz(write(tmp_path / "f.xyz", text))


def test_write_fid_xyz_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"need xyz \(m, 3\)"):
        write_fid_xyz(tmp_path / "f.xyz", np.zeros((2, 3)), [1], 1.0, (5, 5))
    with pytest.raises(ValueError, match="finite"):
        write_fid_xyz(tmp_path / "f.xyz", np.full((1, 3), np.nan), [1], 1.0, (5, 5))
    assert not (tmp_path / "f.xyz").exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("-30\n0\n95\n", r"t\.tlt:3: tilt angle 95 degrees is outside -90\.\.90"),
        ("-90\n0\n1000\n", r"t\.tlt:1: tilt angle -90 degrees is outside -90\.\.90 \(2 such angles\)"),
    ],
)
def test_tilts_outside_plus_minus_90_are_refused(tmp_path, text, match):
    """As tilts of a series (the workflow's reader); the format reader reads any finite value."""
    from lmalign_jax.workflow.series import read_tilt_file

    (tmp_path / "t.tlt").write_text(text)
    with pytest.raises(InputError, match=match):
        read_tilt_file(str(tmp_path / "t.tlt"))
    assert read_tilts(tmp_path / "t.tlt").size == 3


def test_tilts_just_inside_plus_minus_90_are_read(tmp_path):
    from lmalign_jax.workflow.series import read_tilt_file

    (tmp_path / "t.tlt").write_text("-89.99\n0\n89.99\n")
    assert read_tilt_file(str(tmp_path / "t.tlt"))[0].tolist() == [-89.99, 0.0, 89.99]


def test_mdoc_tilts_outside_plus_minus_90_are_refused(tmp_path):
    from lmalign_jax.workflow.series import read_tilt_file

    path = tmp_path / "s.mdoc"
    path.write_text("[ZValue = 0]\nTiltAngle = -3.0\n\n[ZValue = 1]\nTiltAngle = 95.0\n")
    with pytest.raises(InputError, match=r"s\.mdoc: ZValue 1: tilt angle 95 degrees is outside -90\.\.90"):
        read_tilt_file(str(path))


def test_an_mdoc_line_that_is_not_key_equals_value_is_named(tmp_path):
    from lmalign_jax.io import read_mdoc

    path = tmp_path / "s.mdoc"
    path.write_text("[ZValue = 0]\nTiltAngle = -3.0 = 4\n\n[ZValue = 1]\nTiltAngle = 5.0\n")
    with pytest.raises(InputError, match=r"s\.mdoc:2: expected 'key = value', got 'TiltAngle = -3\.0 = 4'"):
        read_mdoc(path)


def test_an_empty_resid_names_its_file(tmp_path):
    from lmalign_jax.workflow.series import read_series

    (tmp_path / "z.resid").write_text("   0 residuals\n")
    (tmp_path / "z.tlt").write_text("-3\n0\n3\n")
    with pytest.raises(InputError, match=r"z\.resid: no marker points"):
        read_series(str(tmp_path / "z.resid"), str(tmp_path / "z.tlt"), image_size=(512, 512))
