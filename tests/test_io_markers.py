"""MarkerSet, marker CSV, model2point text, the read_markers dispatcher, and PyTom marker files."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lmalign_jax.io import (
    InputError,
    MarkerSet,
    read_markers,
    read_markers_csv,
    read_model2point,
    read_pytom_markers,
    read_tilts,
    write_markers_csv,
    write_model2point,
)
from lmalign_jax.io.markerset import MAX_CELLS, MAX_VIEWS, build_marker_set

DATA = Path(__file__).parent / "data"
PYTOM = DATA / "pytom-empiar10064"


def make_set(n_views=5, ids=(1, 2, 4), seed=0, **kw):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, (n_views, len(ids), 2))
    mask = rng.uniform(size=(n_views, len(ids))) > 0.2
    mask[0] = True
    return MarkerSet(xy=xy, mask=mask, marker_ids=ids, source="test", **kw)


def write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------- MarkerSet


def test_markerset_normalises_and_freezes():
    m = make_set(image_size=(512, 256), pixel_size=2)
    assert m.xy.dtype == np.float64 and m.mask.dtype == bool
    assert np.all(np.isnan(m.xy[~m.mask])) and np.all(np.isfinite(m.xy[m.mask]))
    assert (m.n_views, m.n_markers) == (5, 3)
    assert m.image_size == (512, 256) and m.pixel_size == 2.0
    with pytest.raises(ValueError):
        m.xy[0, 0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.source = "x"
    mi, v, xy = m.points()
    assert len(mi) == m.n_observations
    assert np.all(np.diff(mi) >= 0)
    np.testing.assert_array_equal(xy, m.xy[v, mi])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(xy=np.zeros((2, 3))), "xy must have shape"),
        (dict(mask=np.ones((2, 3), dtype=int)), "mask must be a bool array"),
        (dict(mask=np.ones((2, 2), dtype=bool)), "does not match xy shape"),
        (dict(xy=np.full((2, 3, 2), np.nan)), "xy must be finite where mask is True"),
        (dict(marker_ids=(1, 2)), "2 marker_ids for 3 markers"),
        (dict(marker_ids=(1, 1, 2)), "marker_ids must be unique"),
        (dict(image_size=(0, 5)), "image_size must be two positive ints"),
        (dict(pixel_size=-1.0), "pixel_size must be positive"),
    ],
)
def test_markerset_validation(kw, match):
    args = dict(xy=np.zeros((2, 3, 2)), mask=np.ones((2, 3), dtype=bool), marker_ids=(1, 2, 3))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        MarkerSet(**args)


def test_builder_limits(tmp_path):
    p = tmp_path / "f.csv"
    with pytest.raises(InputError, match=f"view index {MAX_VIEWS} exceeds the limit of {MAX_VIEWS} views"):
        build_marker_set(p, [(1, MAX_VIEWS, 0.0, 0.0, 3)], source="")
    with pytest.raises(InputError, match=r"too large: 9999 views x \d+ markers"):
        build_marker_set(p, [(i, 9998, 0.0, 0.0, None) for i in range(MAX_CELLS // 9999 + 1)], source="")
    with pytest.raises(InputError, match=r"f.csv: the file has 59 views but n_views=10 was given"):
        build_marker_set(p, [(1, 0, 0.0, 0.0, 2)], source="", n_views=10, min_views=59)
    with pytest.raises(ValueError, match="n_views must be in 1.."):
        build_marker_set(p, [(1, 0, 0.0, 0.0, 2)], source="", n_views=0)


# ---------------------------------------------------------------- CSV


def test_csv_round_trip(tmp_path):
    m = make_set()
    write_markers_csv(tmp_path / "m.csv", m)
    r = read_markers(tmp_path / "m.csv")
    assert r.marker_ids == m.marker_ids
    np.testing.assert_array_equal(r.mask, m.mask)
    np.testing.assert_array_equal(r.xy[r.mask], m.xy[m.mask])  # repr() keeps every bit
    assert r.source == str(tmp_path / "m.csv")
    assert read_markers_csv(tmp_path / "m.csv", n_views=9).n_views == 9


def test_csv_reads_blank_lines_and_spaces(tmp_path):
    p = write(tmp_path / "m.csv", "marker,view,x,y\r\n 7, 2 , 1.5, 2.5\r\n\n3,0,4,5\n")
    m = read_markers(p)
    assert m.marker_ids == (3, 7) and m.n_views == 3
    np.testing.assert_array_equal(m.xy[2, 1], [1.5, 2.5])
    assert m.mask.sum() == 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"m.csv:1: CSV header must be 'marker,view,x,y', got an empty file"),
        ("x,y,marker,view\n", r"m.csv:1: CSV header must be 'marker,view,x,y', got 'x,y,marker,view'"),
        ("marker,view,x,y\n", r"m.csv: no marker points"),
        (
            "marker,view,x,y\n1,0,1.0\n",
            r"m.csv:2: expected 4 comma-separated fields \(marker,view,x,y\), got 3",
        ),
        ("marker,view,x,y\n1.5,0,1,2\n", r"m.csv:2: marker is not an integer: '1.5'"),
        ("marker,view,x,y\n1,99999999999999999999,1,2\n", r"m.csv:2: view is out of range"),
        ("marker,view,x,y\n1,0,abc,2\n", r"m.csv:2: x is not a number: 'abc'"),
        ("marker,view,x,y\n1,0,1,nan\n", r"m.csv:2: y is not finite: 'nan'"),
        ("marker,view,x,y\n1,0,1,1_0\n", r"m.csv:2: y is not a number: '1_0'"),
        ("marker,view,x,y\n1,0,1,inf\n", r"m.csv:2: y is not finite: 'inf'"),
        ("marker,view,x,y\n1,-1,1,2\n", r"m.csv:2: negative view index -1"),
        (
            "marker,view,x,y\n1,0,1,2\n2,0,1,2\n1,0,3,4\n",
            r"m.csv:4: duplicate point for marker 1 in view 0 \(first on line 2\)",
        ),
    ],
)
def test_csv_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_markers(write(tmp_path / "m.csv", text))


def test_csv_n_views_too_small(tmp_path):
    p = write(tmp_path / "m.csv", "marker,view,x,y\n1,0,1,2\n1,5,1,2\n")
    with pytest.raises(InputError, match=r"m.csv:3: view index 5 out of range for n_views=5"):
        read_markers(p, n_views=5)


def test_not_utf8(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(b"marker,view,x,y\n1,0,1,2\n\xff\xfe\n")
    with pytest.raises(InputError, match=r"m.csv:3: not UTF-8 text \(byte 0xff\)"):
        read_markers(p)


# ---------------------------------------------------------------- model2point


def test_model2point_round_trip(tmp_path):
    m = make_set(ids=(1, 2, 5, 11))
    for with_object in (False, True):
        p = tmp_path / f"m{with_object}.pt"
        write_model2point(p, m, with_object=with_object)
        first = p.read_text().splitlines()[0].split()
        assert len(first) == (5 if with_object else 4)
        r = read_markers(p)
        assert r.marker_ids == m.marker_ids
        np.testing.assert_array_equal(r.mask, m.mask)
        np.testing.assert_allclose(r.xy[r.mask], m.xy[m.mask], atol=5e-4)


def test_model2point_nonpositive_ids_become_sequential(tmp_path):
    m = make_set(ids=(0, 3, 9))
    write_model2point(tmp_path / "m.txt", m)
    assert read_model2point(tmp_path / "m.txt").marker_ids == (1, 2, 3)


def test_model2point_formats(tmp_path):
    p = write(
        tmp_path / "m.txt",
        "# model2point output\n\n  1  10.0 20.0 0.00\n  1  11.0 21.0 1.00  # comment\n"
        "  3  30.0 40.0 2.49\n  3  31.0 41.0 0.51\n",
    )
    m = read_model2point(p)
    assert m.marker_ids == (1, 3) and m.n_views == 3
    np.testing.assert_array_equal(m.mask, [[1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(m.xy[1, 1], [31.0, 41.0])


def test_model2point_objects_number_on(tmp_path):
    # object 1 has contours up to 3; object 2's contour 1 becomes marker 4.
    p = write(tmp_path / "m.txt", "1 1 1 1 0\n1 3 1 1 0\n2 1 5 5 0\n2 2 6 6 1\n")
    assert read_markers(p).marker_ids == (1, 3, 4, 5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("1 2 3\n", r"m.txt:1: expected 4 columns \(contour x y z\) or 5 \(object contour x y z\), got 3"),
        ("1 1 2 3 0\n1 2 3 0\n", r"m.txt:2: expected 5 columns as on line 1, got 4"),
        ("1.0 2 3 0\n", r"m.txt:1: contour is not an integer: '1.0'"),
        ("x 1 2 3 0\n", r"m.txt:1: object is not an integer: 'x'"),
        ("1 2 3 -1\n", r"m.txt:1: negative view index -1"),
        ("1 2 3 1e9\n", r"m.txt:1: z \(view index\) 1000000000.0 exceeds the limit of 10000 views"),
        ("1 2 3 0\n1 4 5 0.2\n", r"m.txt:2: duplicate point for marker 1 in view 0 \(first on line 1\)"),
        ("# nothing\n\n", r"m.txt: no marker points"),
    ],
)
def test_model2point_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_markers(write(tmp_path / "m.txt", text))


# ---------------------------------------------------------------- dispatcher


def test_dispatch_unknown_extension(tmp_path):
    with pytest.raises(
        InputError,
        match=r"m.xyz: unsupported marker file \(extension '.xyz'\); "
        r"supported: .csv, .fid, .mod, .pt, .txt",
    ):
        read_markers(write(tmp_path / "m.xyz", "1 2 3 4\n"))
    with pytest.raises(InputError, match=r"unsupported marker file \(no extension\)"):
        read_markers(tmp_path / "markers")


@pytest.mark.parametrize("name", ["m.csv", "m.txt", "m.pt", "m.fid", "m.mod"])
def test_dispatch_missing_file(tmp_path, name):
    with pytest.raises(InputError, match=rf"{name}: file not found$"):
        read_markers(tmp_path / name)


def test_unreadable_paths(tmp_path):
    (tmp_path / "f.csv").write_text("marker,view,x,y\n")
    with pytest.raises(InputError, match=r"f.csv/m.csv: cannot read file \(Not a directory\)"):
        read_markers(tmp_path / "f.csv" / "m.csv")
    with pytest.raises(InputError, match=r"invalid path \(embedded null byte\)"):
        read_markers(str(tmp_path / "a\0b.csv"))


def test_directory_is_input_error(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(InputError, match=r"d.csv: is a directory, not a file"):
        read_markers(tmp_path / "d.csv")


# ---------------------------------------------------------------- PyTom


def test_pytom_mixedctem_file():
    m, tilts = read_pytom_markers(PYTOM / "mixedCTEM_tomo3_markerfile.txt")
    assert m.xy.shape == (59, 8, 2) and m.mask.all()
    assert m.marker_ids == tuple(range(8))
    np.testing.assert_allclose(tilts, np.arange(-60, 57, 2))
    np.testing.assert_allclose(tilts, read_tilts(PYTOM / "angles.tlt"), atol=1e-3)
    np.testing.assert_array_equal(m.xy[0, 0], [1113.10, 241.50])
    assert m.image_size is None and m.pixel_size is None
    assert 200 < np.nanmin(m.xy) and np.nanmax(m.xy) < 3700
    # The dispatcher recognises the header and returns the same markers.
    d = read_markers(PYTOM / "mixedCTEM_tomo3_markerfile.txt")
    np.testing.assert_array_equal(d.xy, m.xy)


@pytest.mark.parametrize(
    "name, n_markers, n_views",
    [
        ("tomogram_000_markerfile.txt", 5, 58),
        ("tomogram_001_markerfile.txt", 5, 58),
        ("tomogram_002_markerfile.txt", 8, 59),
        ("tomogram_003_markerfile.txt", 8, 59),
    ],
)
def test_pytom_tutorial_files(name, n_markers, n_views):
    m, tilts = read_pytom_markers(PYTOM / "tutorial_markerfiles" / name)
    assert m.xy.shape == (n_views, n_markers, 2) and m.mask.all()
    assert np.all(np.diff(tilts) > 0)


HEADER = "# MarkerIndex \n# TiltAngle (degrees)\n# PositionX (px)\n# PositionY (px)\n# \n"


def test_pytom_missing_points_and_sorting(tmp_path):
    p = write(
        tmp_path / "p.txt",
        HEADER + "  0  2.000  10.0  20.0\n  0  -2.000  11.0  21.0\n"
        "  1  -2.000  -1.00  -1.00\n  1  2.000  30.0  40.0\n",
    )
    m, tilts = read_pytom_markers(p, n_views=3)
    np.testing.assert_array_equal(tilts, [-2.0, 2.0])
    assert m.n_views == 3
    np.testing.assert_array_equal(m.mask, [[1, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(m.xy[0, 0], [11.0, 21.0])


@pytest.mark.parametrize(
    "text, match",
    [
        ("0 1 2 3\n", r"p.txt: not a PyTom marker file \(no '# MarkerIndex' header\)"),
        (
            HEADER + "0 1 2\n",
            r"p.txt:6: expected 4 columns \(MarkerIndex TiltAngle PositionX PositionY\), got 3",
        ),
        (HEADER + "0.5 1 2 3\n", r"p.txt:6: MarkerIndex is not an integer: '0.5'"),
        (HEADER + "0 x 2 3\n", r"p.txt:6: TiltAngle is not a number: 'x'"),
        (HEADER + "0 1 nan 3\n", r"p.txt:6: PositionX is not finite: 'nan'"),
        # an angle a .tlt file would be refused for (audit: 120 aligned to a 13.5 px residual, exit 0)
        (HEADER + "0 1 2 3\n1 120 5 5\n", r"p.txt:7: TiltAngle 120 degrees is outside -90..90"),
        (HEADER + "0 -90 2 3\n", r"p.txt:6: TiltAngle -90 degrees is outside -90..90"),
        (HEADER, r"p.txt: no marker rows"),
        (HEADER + "0 1 -1 -1\n", r"p.txt: no marker points"),
        (
            HEADER + "0 1 5 5\n0 1.0001 6 6\n",
            r"p.txt:7: duplicate point for marker 0 in view 0 \(first on line 6\)",
        ),
    ],
)
def test_pytom_bad_input(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_pytom_markers(write(tmp_path / "p.txt", text))


def test_pytom_n_views_too_small():
    with pytest.raises(InputError, match=r"the file has 59 views but n_views=10 was given"):
        read_pytom_markers(PYTOM / "mixedCTEM_tomo3_markerfile.txt", n_views=10)


def _big_csv(tmp_path, rng, n_views=40, n_markers=300):
    """A marker CSV of about n_views x n_markers rows in shuffled order, 20% of points missing."""
    rows = [
        (m, v, rng.uniform(-5e3, 9e3), rng.uniform(-5e3, 9e3))
        for m in rng.permutation(np.arange(1, 3 * n_markers, 3))
        for v in range(n_views)
        if rng.random() > 0.2
    ]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    lines = [f"{m},{v},{x!r},{y!r}" for m, v, x, y in rows]
    return lines


@pytest.mark.parametrize("n_views", [None, 45])
def test_csv_numpy_path_equals_the_line_parser(tmp_path, monkeypatch, n_views):
    """Large CSVs are parsed by numpy in one go; the set is exactly the line parser's."""
    import lmalign_jax.io.markers as markers_module

    lines = _big_csv(tmp_path, np.random.default_rng(7))
    path = tmp_path / "big.csv"
    path.write_text("marker,view,x,y\n" + "\n".join(lines[:500]) + "\n\n" + "\n".join(lines[500:]) + "\n")
    assert markers_module._csv_fast(path.read_text().splitlines()[1:], str(path), n_views) is not None
    fast = read_markers_csv(path, n_views)
    monkeypatch.setattr(markers_module, "_csv_fast", lambda *args: None)
    slow = read_markers_csv(path, n_views)
    assert fast.marker_ids == slow.marker_ids and fast.source == slow.source
    np.testing.assert_array_equal(fast.mask, slow.mask)
    np.testing.assert_array_equal(fast.xy, slow.xy)  # bit for bit: the same decimal parsing


@pytest.mark.parametrize(
    "bad, match",
    [
        ("7,3,nan,1.0", "not finite"),
        ("7,3,1.0", "expected 4 comma-separated fields"),
        ("7,-1,1.0,2.0", "negative view index"),
        ("7.0,3,1.0,2.0", "marker is not an integer"),
        ("7,3,1_000.0,2.0", "x is not a number"),
    ],
)
def test_csv_numpy_path_falls_back_to_name_the_bad_line(tmp_path, bad, match):
    """One bad row among thousands: the message still names its line."""
    lines = _big_csv(tmp_path, np.random.default_rng(8), n_views=20, n_markers=100)
    lines.insert(1234, bad)
    path = tmp_path / "big.csv"
    path.write_text("marker,view,x,y\n" + "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"big\.csv:1236: .*{match}"):
        read_markers_csv(path)


def test_csv_numpy_path_reports_a_duplicate_by_line(tmp_path):
    lines = _big_csv(tmp_path, np.random.default_rng(9), n_views=20, n_markers=100)
    lines.append(lines[10])
    path = tmp_path / "big.csv"
    path.write_text("marker,view,x,y\n" + "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"big\.csv:{len(lines) + 1}: duplicate point .*first on line 12"):
        read_markers_csv(path)
