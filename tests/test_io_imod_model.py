"""IMOD binary fiducial models (.fid/.mod): round trips through imodmodel and corrupt-file errors."""

import struct
import warnings
from pathlib import Path

import imodmodel
import numpy as np
import pytest
from imodmodel.models import Contour, ImodModel, ModelHeader, Object

from lmalign_jax.io import (
    InputError,
    MarkerSet,
    read_imod_model,
    read_markers,
    read_pytom_markers,
    write_imod_model,
)
from lmalign_jax.io.imod_model import _ID, _MODEL, _OBJECT, contour_numbers

PYTOM = Path(__file__).parent / "data" / "pytom-empiar10064"
HEAD = _ID + _MODEL


def small_set(ids=(1, 2, 5), **kw):
    xy = np.array(
        [
            [[10.25, 20.5], [30.0, 40.0], [50.0, 60.0]],
            [[11.25, 21.5], [np.nan, np.nan], [51.0, 61.0]],
            [[12.25, 22.5], [32.0, 42.0], [np.nan, np.nan]],
        ]
    )
    return MarkerSet(xy=xy, mask=np.isfinite(xy[..., 0]), marker_ids=ids, source="t", **kw)


def save_model(path, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model.to_file(path)


def test_write_read_tiny_fid(tmp_path):
    m = small_set(image_size=(512, 480), pixel_size=5.4)
    p = tmp_path / "tiny.fid"
    write_imod_model(p, m)
    assert p.read_bytes()[:8] == b"IMODV1.2"
    r = read_markers(p)
    assert r.marker_ids == (1, 2, 5)
    assert r.image_size == (512, 480) and r.pixel_size == 5.4 and r.n_views == 3
    np.testing.assert_array_equal(r.mask, m.mask)
    np.testing.assert_allclose(r.xy[r.mask], m.xy[m.mask], atol=1e-4)  # float32 in the file
    # Independent check with imodmodel's own reader: contours 3 and 4 are empty gap fillers.
    df = imodmodel.read(p)
    assert sorted(set(df["contour_id"])) == [0, 1, 4]
    assert set(df["z"]) == {0.0, 1.0, 2.0}


def test_round_trip_real_pytom_markers(tmp_path):
    m, _ = read_pytom_markers(PYTOM / "mixedCTEM_tomo3_markerfile.txt")
    write_imod_model(tmp_path / "p.mod", m)
    r = read_imod_model(tmp_path / "p.mod")
    assert r.marker_ids == tuple(range(1, 9))  # PyTom's 0-based ids are not contour numbers
    assert r.image_size is None and r.pixel_size is None
    np.testing.assert_allclose(r.xy, m.xy, atol=1e-3)


def test_contour_numbers():
    assert contour_numbers((3, 1, 7)) == [3, 1, 7]
    assert contour_numbers((0, 1)) == [1, 2]
    assert contour_numbers(()) == []


def test_multi_object_and_rounding(tmp_path):
    o1 = Object(
        contours=[Contour(points=np.array([[1, 2, 0.0], [3, 4, 1.4]])), Contour(points=np.zeros((0, 3)))]
    )
    o2 = Object(contours=[Contour(points=np.array([[5, 6, 1.6]]))])
    model = ImodModel(
        header=ModelHeader(xmax=100, ymax=90, zmax=7, pixelsize=0.5, units=-10), objects=[o1, o2]
    )
    save_model(tmp_path / "m.fid", model)
    r = read_markers(tmp_path / "m.fid")
    assert r.marker_ids == (1, 3)  # object 2 contour 1 follows object 1's two contours
    assert r.n_views == 7 and r.image_size == (100, 90) and r.pixel_size == 0.5
    np.testing.assert_array_equal(r.mask[:, 0], [1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(r.xy[2, 1], [5, 6])
    assert read_imod_model(tmp_path / "m.fid", n_views=3).n_views == 3


def test_pixel_units_give_no_pixel_size(tmp_path):
    model = ImodModel(objects=[Object(contours=[Contour(points=np.array([[1, 2, 0.0]]))])])
    save_model(tmp_path / "m.mod", model)
    r = read_imod_model(tmp_path / "m.mod")
    assert r.pixel_size is None and r.image_size is None and r.n_views == 1


@pytest.mark.parametrize(
    "points, match",
    [
        ([[np.nan, 2, 0]], r"non-finite coordinate \(nan, 2.0\) \(object 1, contour 1, point 1\)"),
        ([[1, 2, 0], [1, 2, np.inf]], r"non-finite z \(object 1, contour 1, point 2\)"),
        ([[1, 2, -1]], r"negative view index -1 \(object 1, contour 1, point 1\)"),
        (
            [[1, 2, 0], [1, 2, 0.3]],
            r"duplicate point for marker 1 in view 0 \(object 1, contour 1, point 2\)",
        ),
    ],
)
def test_bad_points(tmp_path, points, match):
    save_model(
        tmp_path / "m.fid",
        ImodModel(objects=[Object(contours=[Contour(points=np.array(points, dtype=float))])]),
    )
    with pytest.raises(InputError, match=r"m.fid: " + match):
        read_imod_model(tmp_path / "m.fid")


@pytest.fixture
def valid_bytes(tmp_path):
    write_imod_model(tmp_path / "v.fid", small_set())
    return (tmp_path / "v.fid").read_bytes()


def chunk(tag, *ints, fmt=None):
    return tag + (struct.pack(fmt or ">" + "i" * len(ints), *ints) if ints else b"")


def corrupt_cases(valid):
    head = valid[:HEAD]
    obj = b"OBJT" + valid[HEAD + 4 : HEAD + 4 + _OBJECT]
    return [
        (b"XXXX" + valid[4:], r"not an IMOD model \(file does not start with 'IMOD'\)"),
        (valid[:100], r"truncated or corrupt IMOD model: header at byte 0 runs past the end \(100 bytes\)"),
        (valid[:-30], r"truncated or corrupt IMOD model: .* runs past the end"),
        (head, r"truncated or corrupt IMOD model: chunk tag at byte 240 runs past the end"),
        (
            head + b"\x00\xff\x01\x02",
            r"corrupt IMOD model: bad chunk tag b'\\x00\\xff\\x01\\x02' at byte 240",
        ),
        (head + b"CONT" + bytes(16) + b"IEOF", r"corrupt IMOD model: CONT chunk before any object"),
        (head + obj + chunk(b"MESH", -1, 1) + b"IEOF", r"corrupt IMOD model: bad mesh sizes at byte"),
        (head + obj + b"SIZE" + bytes(4) + b"IEOF", r"corrupt IMOD model: SIZE chunk before any contour"),
        (
            head + chunk(b"MOST", 13) + bytes(13) + b"IEOF",
            r"corrupt IMOD model: MOST size 13 not a multiple of 12",
        ),
        (head + obj + chunk(b"COST", 12) + bytes(12) + b"IEOF", r"corrupt IMOD model: misplaced COST chunk"),
        (
            head + obj + chunk(b"CONT", 2**30) + bytes(12) + b"IEOF",
            r"truncated or corrupt IMOD model: contour at byte",
        ),
        (
            head + obj + chunk(b"MESH", 0, 1) + bytes(8) + struct.pack(">i", 5) + b"IEOF",
            r"invalid IMOD model \(ValidationError: ",
        ),
        (head[:8] + b"\xff\xfe" + head[10:] + b"IEOF", r"invalid IMOD model \(ValidationError: "),
    ]


def test_corrupt_models(tmp_path, valid_bytes):
    for k, (data, match) in enumerate(corrupt_cases(valid_bytes)):
        p = tmp_path / f"c{k}.fid"
        p.write_bytes(data)
        with pytest.raises(InputError, match=rf"c{k}.fid: {match}"):
            read_markers(p)


def test_unknown_chunks_are_skipped(tmp_path, valid_bytes):
    # An unknown chunk (size-prefixed) before IEOF is skipped, as IMOD itself does.
    data = valid_bytes[:-4] + chunk(b"ZZZZ", 8) + bytes(8) + b"IEOF"
    (tmp_path / "u.fid").write_bytes(data)
    assert read_imod_model(tmp_path / "u.fid").marker_ids == (1, 2, 5)


def test_empty_model_has_no_points(tmp_path):
    save_model(tmp_path / "e.mod", ImodModel(objects=[Object()]))
    with pytest.raises(InputError, match=r"e.mod: no marker points"):
        read_imod_model(tmp_path / "e.mod")
