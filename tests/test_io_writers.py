"""Every text writer at every valid size and value: the text is IMOD's Fortran layout where numbers
fit, one blank before any number that does not, and the project's readers read it all back.

Oracles: ``fortran_field`` (IMOD's field, or the promised widening) written here field by field,
and ``float('%.Df' % v)``, the exact value a reader must get back from a D-decimal field.
"""

import errno
import os

import numpy as np
import pytest
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmalign_jax.io import (
    MarkerSet,
    atomic_write,
    read_fid_xyz,
    read_markers,
    read_resid,
    read_tilts,
    read_xf,
    write_fid_xyz,
    write_markers_csv,
    write_model2point,
    write_resid,
    write_tlt,
    write_xf,
)
from lmalign_jax.io.outputs import OutputSet

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values at the edges of every field width used (10^k and just below, both signs) and far past.
EDGES = sorted(
    {
        s * e
        for s in (1.0, -1.0)
        for k in range(0, 13)
        for e in (10.0**k, 10.0**k - 0.004, 10.0**k - 0.0051, 10.0**k - 4e-8)
    }
    | {0.0, -0.0, 5e-9, -5e-9}
)
finite = st.one_of(
    st.sampled_from(EDGES), st.floats(allow_nan=False, allow_infinity=False), st.floats(-20_000.0, 20_000.0)
)


def fortran_field(value, width: int, decimals: int | None, first: bool) -> str:
    """One field as IMOD's Fortran writes it (``iW`` or ``fW.D``) when the number fits with a
    blank before it (or fits at all, for the first field of a line); otherwise, the rule the
    writers promise: the number with exactly one blank before it (none first on a line)."""
    text = f"{value:{width}d}" if decimals is None else f"{value:{width}.{decimals}f}"
    if len(text) <= width and (first or text.startswith(" ")):
        return text
    return ("" if first else " ") + text.strip()


def as_read(values, decimals: int) -> np.ndarray:
    """What a reader must get back from ``values`` written with ``decimals`` decimals."""
    return np.array([float(f"{v:.{decimals}f}") for v in np.ravel(values)]).reshape(np.shape(values))


# ---------------------------------------------------------------- .xf


@PROPERTY
@given(values=st.lists(st.lists(finite, min_size=6, max_size=6), min_size=1, max_size=12))
def test_xf_any_values(tmp_path_factory, values):
    v = np.array(values)
    path = tmp_path_factory.mktemp("xf") / "a.xf"
    write_xf(path, v[:, :4].reshape(-1, 2, 2), v[:, 4:])
    expected = "".join(
        "".join(fortran_field(x, 12, 7, j == 0) for j, x in enumerate(row[:4]))
        + fortran_field(row[4], 12, 3, False)
        + fortran_field(row[5], 12, 3, False)
        + "\n"
        for row in v
    )
    assert path.read_text() == expected
    A, d = read_xf(path)
    np.testing.assert_array_equal(A.reshape(-1, 4), as_read(v[:, :4], 7))
    np.testing.assert_array_equal(d, as_read(v[:, 4:], 3))


def test_xf_thousand_views_any_rotation_and_large_shifts(tmp_path):
    """1,000 views, the axis at any angle (both signs), shifts of thousands of pixels."""
    rng = np.random.default_rng(0)
    angle = np.radians(rng.uniform(-180, 180, 1000))
    scale = rng.uniform(0.5, 2.0, 1000)
    A = scale[:, None, None] * np.stack(
        [np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], -1
    ).reshape(-1, 2, 2)
    d = rng.uniform(-9000, 9000, (1000, 2))
    write_xf(tmp_path / "a.xf", A, d)
    lines = (tmp_path / "a.xf").read_text().splitlines()
    assert len(lines) == 1000 and {len(ln) for ln in lines} == {72}  # all within IMOD's columns
    A2, d2 = read_xf(tmp_path / "a.xf")
    np.testing.assert_allclose(A2, A, atol=5e-8)
    np.testing.assert_allclose(d2, d, atol=5e-4)


# ---------------------------------------------------------------- .resid


def blocks_of_views(lengths, n_views):
    """Views of consecutive fiducial blocks, each strictly increasing and starting at or below the
    view the block before ended on (how the reader tells the blocks apart)."""
    blocks = []
    for i, k in enumerate(lengths):
        b = np.sort(np.random.default_rng(i).choice(n_views, k, replace=False))
        if blocks:
            b[0] = min(b[0], blocks[-1][-1])
        blocks.append(b)
    return blocks


@PROPERTY
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    n_views=st.sampled_from([6, 61, 1000, 12345]),
    data=st.data(),
)
def test_resid_any_values(tmp_path_factory, lengths, n_views, data):
    blocks = blocks_of_views(lengths, n_views)
    view = np.concatenate(blocks)
    n = view.size
    xy = np.array(data.draw(st.lists(st.tuples(finite, finite), min_size=n, max_size=n)))
    res = np.array(data.draw(st.lists(st.tuples(finite, finite), min_size=n, max_size=n)))
    path = tmp_path_factory.mktemp("resid") / "r.resid"
    write_resid(path, xy, view, res)
    rows = "".join(
        fortran_field(x, 10, 2, True)
        + fortran_field(y, 10, 2, False)
        + fortran_field(int(v), 5, None, False)
        + fortran_field(dx, 8, 2, False)
        + fortran_field(dy, 8, 2, False)
        + "\n"
        for (x, y), v, (dx, dy) in zip(xy, view, res, strict=True)
    )
    assert path.read_text() == f"{n:6d} residuals\n" + rows
    if n_views > 10_000:
        return  # the reader refuses view indices from 10,000 (MAX_VIEWS); the text is still right
    t = read_resid(path)
    np.testing.assert_array_equal(t.view, view)
    np.testing.assert_array_equal(t.marker, np.repeat(np.arange(len(blocks)), [b.size for b in blocks]))
    np.testing.assert_array_equal(t.xy, as_read(xy, 2))
    np.testing.assert_array_equal(t.residual, as_read(res, 2))


def test_resid_equals_fortran_fields_or_widens_by_one_blank(tmp_path):
    """At the edge of every field and past it: IMOD's 2f10.2,i5,2f8.2 columns, then one blank."""
    xy = np.array([[-9999.994, 0.004], [12.345, 99999.994], [-100000.0, 1000000.0], [-1e9, 1e12]])
    res = np.array([[-99.994, 999.994], [0.125, -0.135], [-1000.0, 10000.0], [1e6, -1e6]])
    view = np.array([0, 9999, 10000, 123456])
    write_resid(tmp_path / "r.resid", xy, view, res)
    lines = (tmp_path / "r.resid").read_text().splitlines()
    assert lines[1] == "  -9999.99      0.00    0  -99.99  999.99"  # IMOD's own columns
    assert lines[3] == "-100000.00 1000000.00 10000 -1000.00 10000.00"  # all but the first widened


def test_resid_large(tmp_path):
    """61 views x 5,000 markers (the 305,000 rows that failed before; 16k images shifted by
    thousands of px) read back."""
    n_views, n_markers = 61, 5_000
    rng = np.random.default_rng(1)
    view = np.tile(np.arange(n_views), n_markers)
    xy = rng.uniform(-5000, 21_000, (view.size, 2))
    res = rng.normal(0, 2, (view.size, 2))
    write_resid(tmp_path / "r.resid", xy, view, res)
    t = read_resid(tmp_path / "r.resid")
    assert t.n_markers == n_markers and t.xy.shape == (n_views * n_markers, 2)
    np.testing.assert_array_equal(t.view, view)
    np.testing.assert_allclose(t.xy, xy, atol=5e-3)
    np.testing.assert_allclose(t.residual, res, atol=5e-3)


# ---------------------------------------------------------------- fid.xyz


@PROPERTY
@given(
    data=st.data(),
    m=st.integers(1, 8),
    first=st.sampled_from([1, 998, 9_998]),
    pix=st.one_of(st.none(), finite),
    size=st.tuples(st.integers(1, 10**7), st.integers(1, 10**7)),
)
def test_fid_xyz_any_values(tmp_path_factory, data, m, first, pix, size):
    """Drawn values on line 1 and on lines first+1..first+m (point numbers past i4's 9999)."""
    drawn = [0, *range(first, first + m)]
    xyz = np.zeros((first + m, 3))
    ids = np.arange(1, first + m + 1)
    objects = np.ones(first + m, dtype=np.int64)
    xyz[drawn] = data.draw(
        st.lists(st.tuples(finite, finite, finite), min_size=len(drawn), max_size=len(drawn))
    )
    ids[drawn] = data.draw(st.lists(st.integers(1, 10**9), min_size=len(drawn), max_size=len(drawn)))
    objects[drawn] = data.draw(st.lists(st.integers(1, 10**9), min_size=len(drawn), max_size=len(drawn)))
    path = tmp_path_factory.mktemp("fid") / "f.xyz"
    write_fid_xyz(path, xyz, ids, pix, size, objects=objects)
    lines = path.read_text().splitlines()
    p = 1.0 if pix is None else pix
    tail = (
        " Pix:"
        + fortran_field(p, 12, 5, False)
        + " Dim:"
        + fortran_field(size[0], 6, None, False)
        + fortran_field(size[1], 6, None, False)
    )
    for j in drawn:
        expected = (
            fortran_field(j + 1, 4, None, True)
            + "".join(fortran_field(v, 10, 2, False) for v in xyz[j])
            + fortran_field(int(objects[j]), 7, None, False)
            + fortran_field(int(ids[j]), 5, None, False)
        )
        assert lines[j] == expected + (tail if j == 0 else "")
    f = read_fid_xyz(path)
    np.testing.assert_array_equal(f.point, np.arange(1, m + first + 1))
    np.testing.assert_array_equal(f.xyz, as_read(xyz, 2))
    np.testing.assert_array_equal(f.contour, ids)
    np.testing.assert_array_equal(f.object, objects)
    assert f.pixel_size == float(f"{p:.5f}") and f.image_size == size


def test_fid_xyz_hundred_thousand_points(tmp_path):
    """Point numbers 1..100,000 (IMOD's i4 holds 1..9999), contours to 10^6: all read back."""
    m = 100_000
    rng = np.random.default_rng(2)
    xyz = rng.uniform(-3000, 19_000, (m, 3))
    ids = rng.choice(1_000_000, m, replace=False) + 1
    write_fid_xyz(tmp_path / "f.xyz", xyz, ids, 2.17, (16384, 16384))
    lines = (tmp_path / "f.xyz").read_text().splitlines()
    assert lines[999].startswith("1000 ") and lines[9999].startswith("10000 ")  # 1000 fills i4, as in IMOD
    f = read_fid_xyz(tmp_path / "f.xyz")
    np.testing.assert_array_equal(f.point, np.arange(1, m + 1))
    np.testing.assert_array_equal(f.contour, ids)
    np.testing.assert_allclose(f.xyz, xyz, atol=5e-3)
    assert f.pixel_size == 2.17 and f.image_size == (16384, 16384)


# ---------------------------------------------------------------- .tlt, marker text


@PROPERTY
@given(t=st.lists(finite, min_size=1, max_size=20))
def test_tlt_any_values(tmp_path_factory, t):
    path = tmp_path_factory.mktemp("tlt") / "a.tlt"
    write_tlt(path, t)
    assert path.read_text() == "".join(f"{v:9.3f}\n" for v in t)
    np.testing.assert_array_equal(read_tilts(path), as_read(t, 3))


@PROPERTY
@given(
    data=st.data(),
    n_views=st.integers(1, 4),
    ids=st.sets(st.integers(1, 10**6), min_size=1, max_size=5),
    with_object=st.booleans(),
)
def test_marker_text_any_values(tmp_path_factory, data, n_views, ids, with_object):
    """model2point with contour numbers to 10^6 (past i6) and any coordinates; CSV exactly."""
    ids = tuple(sorted(ids))
    xy = np.array(
        data.draw(st.lists(finite, min_size=n_views * len(ids) * 2, max_size=n_views * len(ids) * 2))
    )
    xy = xy.reshape(n_views, len(ids), 2)
    markers = MarkerSet(xy=xy, mask=np.ones(xy.shape[:2], bool), marker_ids=ids)
    folder = tmp_path_factory.mktemp("markers")
    write_model2point(folder / "m.pt", markers, with_object=with_object)
    back = read_markers(folder / "m.pt")
    assert back.marker_ids == ids and back.n_views == n_views
    np.testing.assert_array_equal(back.xy, as_read(xy, 3))
    write_markers_csv(folder / "m.csv", markers)
    back = read_markers(folder / "m.csv")
    assert back.marker_ids == ids
    np.testing.assert_array_equal(back.xy, xy)


def test_model2point_object_and_six_digit_contour_stay_apart(tmp_path):
    markers = MarkerSet(
        xy=np.array([[[1.0, 2.0], [3.0, 4.0]]]), mask=np.ones((1, 2), bool), marker_ids=(99_999, 100_000)
    )
    write_model2point(tmp_path / "m.pt", markers, with_object=True)
    assert (tmp_path / "m.pt").read_text().splitlines() == [
        "     1 99999       1.000       2.000    0.00",  # IMOD's 2i6 columns
        "     1 100000       3.000       4.000    0.00",  # was "     1100000"
    ]
    assert read_markers(tmp_path / "m.pt").marker_ids == (99_999, 100_000)


@pytest.mark.parametrize("rows", [0, 1, 65_536, 65_537])
def test_block_boundaries(tmp_path, rows):
    """Writing in 64k-row blocks loses or repeats no row at the block edges."""
    t = np.arange(max(rows, 1), dtype=float) / 8
    write_tlt(tmp_path / "a.tlt", t)
    np.testing.assert_array_equal(read_tilts(tmp_path / "a.tlt"), t)


# ---------------------------------------------------------------- a failing write names its file


def _disk_full():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_error_names_the_target_not_its_temporary(tmp_path):
    target = tmp_path / "m.csv"
    with pytest.raises(OSError) as e, atomic_write(target) as f:
        f.write("x")
        raise _disk_full()  # as f.write raises it: no file named
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(target))
    assert e.value.strerror == "cannot write: No space left on device"
    assert not list(tmp_path.iterdir())
    missing = tmp_path / "nope" / "m.csv"
    with pytest.raises(FileNotFoundError) as e, atomic_write(missing):
        pass
    assert e.value.filename == str(missing) and ".tmp" not in str(e.value)
    # an error about another file, met inside the block, is that file's
    with pytest.raises(FileNotFoundError) as e, atomic_write(target):
        open(tmp_path / "other.txt")
    assert e.value.filename == str(tmp_path / "other.txt")


def test_output_set_error_names_the_final_file(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    with pytest.raises(OSError) as e, OutputSet(folder, "run") as out:
        out.write_text(".json", "{}")
        write_tlt(out.stage(".tlt"), [1.0])  # through atomic_write, into the staging folder
        with open(out.stage(".xf"), "w"):
            raise _disk_full()
    assert e.value.filename == str(folder / "run.xf") and e.value.strerror.startswith("cannot write: ")
    assert not folder.exists()  # created for the set, removed again
    # a failed move into place names the final file too, and leaves the folder as it was
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "run.tlt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src, dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as e, OutputSet(tmp_path, "run") as out:
        out.write_text(".json", "{}")
        out.write_text(".tlt", "1\n")
        out.commit()
    assert e.value.filename == str(tmp_path / "run.tlt") and ".tmp" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_cli_full_disk_names_the_output_file(tmp_path, monkeypatch):
    def full(path, tilts):
        with open(path, "w") as f:
            f.write("1")
            raise _disk_full()

    monkeypatch.setattr("lmalign_jax.io.write_tlt", full)
    rc, out, err = run_cli(["simulate", "--out-dir", tmp_path / "d", "--views", 5, "--markers", 4])
    assert rc == 2 and not out
    assert (
        err
        == f"lmalign: error: {tmp_path / 'd' / 'synthetic.rawtlt'}: cannot write: No space left on device\n"
    )
    assert not (tmp_path / "d").exists()
