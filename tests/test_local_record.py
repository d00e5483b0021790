"""The local alignment in the ``.json`` record: written by ``align --local``, read back, found by
``reconstruct --alignment`` and handed on by ``export --to imod`` (IMOD's real BBa set, every
patch kept as IMOD keeps them, so the section holds real local fits)."""

import json
import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from helpers import DATA
from helpers import run_cli as run

from lmalign_jax.io.errors import InputError
from lmalign_jax.io.imod_local import read_local_xf
from lmalign_jax.report import read_record

BBA = ["align", DATA / "imod-bb/BBa.resid", "--tilts", DATA / "imod-bb/BBa.tlt", "--image-size", 512, 512]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bba")
    rc, out, err = run(
        [*BBA, "--out-dir", folder, "--no-figure", "--no-errors", "-q", "--local", "--local-keep-all"],
        no_cache=True,
    )
    assert rc == 0, err
    return folder, out


def test_the_record_holds_every_patch_and_the_totals_printed(aligned):
    folder, out = aligned
    record = json.loads((folder / "BBa.json").read_text())
    section = record["local"]
    assert section["file"] == "BBalocal.xf" and "BBalocal.xf" in record["outputs"]
    local = read_local_xf(folder / "BBalocal.xf", n_views=61)
    assert section["grid"]["n_patches"] == list(local.n_patches) == [2, 2]
    assert section["n_patches"] == 4 and section["n_kept"] == 4
    ids = {m["id"] for m in record["markers"]}
    for p, centre in zip(section["patches"], local.centres, strict=True):
        assert p["centre"] == list(centre)  # the record's centres are the file's
        assert len(p["marker_ids"]) == p["n_markers"] >= 8 and set(p["marker_ids"]) <= ids
        assert p["kept"] and p["reason"] is None and p["threshold_sigma2"] is None
        assert p["local_rms_px"] <= p["global_rms_px"]  # each marker weighted by the patch's share
        assert 0 < p["n_coordinates"] <= 2 * 61 * p["n_markers"]
    assert section["options"]["weighting"] == "blend"
    # The totals are those printed, and the improvement is what they say.
    g, loc = section["global_mean_residual_px"], section["local_mean_residual_px"]
    printed = re.search(r"global ([\d.]+) px, local ([\d.]+) px", out)
    assert (float(printed[1]), float(printed[2])) == (round(g, 4), round(loc, 4))
    assert section["improvement_percent"] == pytest.approx(100 * (g - loc) / g)
    assert "Kept 4 of 4 patches" in out and "--local-keep-all" in section["keep_rule"]


def test_the_record_reads_back_and_older_records_still_read(aligned, tmp_path):
    folder, _ = aligned
    rec = read_record(str(folder / "BBa.json"))
    assert rec.local.file == "BBalocal.xf" and rec.local.n_kept == 4 and len(rec.local.patches) == 4
    assert rec.local_path == str(folder / "BBalocal.xf")
    record = json.loads((folder / "BBa.json").read_text())
    del record["local"]  # as written before the section existed, or without --local
    (tmp_path / "old.json").write_text(json.dumps(record))
    old = read_record(str(tmp_path / "old.json"))
    assert old.local is None and old.local_path is None
    np.testing.assert_array_equal(old.xf, rec.xf)
    record["local"] = {"file": "../elsewhere/x.xf", "patches": [], "n_patches": 0, "n_kept": 0}
    (tmp_path / "bad.json").write_text(json.dumps(record))
    # a path (an absolute one was answered "no valid 'file'", audit): the file must be beside it
    with pytest.raises(
        InputError, match=r"'file' must name a file beside the record, .*'\.\./elsewhere/x\.xf'"
    ):
        read_record(str(tmp_path / "bad.json"))
    record["local"]["file"] = 7
    (tmp_path / "bad.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="'local' section has no valid 'file'"):
        read_record(str(tmp_path / "bad.json"))


def test_export_imod_hands_on_the_local_file_under_imods_name(aligned, tmp_path):
    folder, _ = aligned
    rc, out, err = run(["export", folder / "BBa.json", "--to", "imod", "--out-dir", tmp_path / "TS"])
    assert rc == 0, err
    copied = read_local_xf(tmp_path / "TS" / "BBalocal.xf", n_views=61)
    original = read_local_xf(folder / "BBalocal.xf", n_views=61)
    np.testing.assert_array_equal(copied.transforms, original.transforms)
    np.testing.assert_array_equal(copied.delta_tilt_deg, original.delta_tilt_deg)
    # --local FILE is what both the Plocal.xf and the .aln carry (audit: Plocal.xf stayed the
    # record's while the .aln took FILE): IMOD's own local alignment of the set
    imods = Path(__file__).parent / "data" / "imod-local" / "BBalocal.xf"
    argv = [
        "export",
        folder / "BBa.json",
        "--to",
        "imod,aretomo",
        "--local",
        imods,
        "--out-dir",
        tmp_path / "I",
    ]
    rc, out, err = run(argv)
    assert rc == 0 and f"BBalocal.xf and local rows of BBa.aln from {imods}" in err, err
    given, theirs = (
        read_local_xf(tmp_path / "I" / "BBalocal.xf", n_views=61),
        read_local_xf(imods, n_views=61),
    )
    np.testing.assert_array_equal(given.transforms, theirs.transforms)
    assert np.abs(given.transforms - original.transforms).max() > 0.1  # not the record's
    # The same folder exported again from a record without a local alignment: the earlier
    # BBalocal.xf stays (nothing is deleted) and a warning says tilt would apply it (audit)
    record = json.loads((folder / "BBa.json").read_text())
    del record["local"]
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "BBa.json").write_text(json.dumps(record))
    rc, out, err = run(
        ["export", tmp_path / "plain" / "BBa.json", "--to", "imod", "--out-dir", tmp_path / "TS"]
    )
    stale = tmp_path / "TS" / "BBalocal.xf"
    assert rc == 0 and f"{stale} is not part of this alignment" in err and "LOCALFILE); remove it" in err, err
    # A record whose local file went missing is refused whole, nothing written.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "BBa.json").write_text((folder / "BBa.json").read_text())
    rc, out, err = run(["export", moved / "BBa.json", "--to", "imod", "--out-dir", tmp_path / "none"])
    assert rc == 2 and "names the local alignment BBalocal.xf" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_reconstruct_takes_the_local_file_from_the_record(aligned, tmp_path):
    """A bare --local applies the file the record names (the same tomogram as naming it); without
    --local the command says the record has one."""
    folder, _ = aligned
    rng = np.random.default_rng(0)
    with mrcfile.new(tmp_path / "BBa.mrc") as m:
        m.set_data(rng.standard_normal((61, 512, 512)).astype(np.float32))
    common = ["reconstruct", tmp_path / "BBa.mrc", "--alignment", folder / "BBa.json", "--bin", 16]
    common += ["--thickness", 64]
    rc, _, err = run([*common, "--local", "--out", tmp_path / "a.mrc"])
    assert rc == 0, err
    assert f"applying the local alignment {folder / 'BBalocal.xf'} (4 of 4 patches kept" in err
    rc, _, err = run([*common, "--local", folder / "BBalocal.xf", "--out", tmp_path / "b.mrc", "-q"])
    assert rc == 0, err
    with mrcfile.open(tmp_path / "a.mrc") as a, mrcfile.open(tmp_path / "b.mrc") as b:
        np.testing.assert_array_equal(a.data, b.data)
    rc, _, err = run([*common, "--out", tmp_path / "c.mrc"])
    assert rc == 0 and "has a local alignment" in err and "add --local to apply it" in err
    rc, _, err = run(
        [*common[:2], "--xf", folder / "BBa.xf", "--tlt", folder / "BBa.tlt", "--thickness", 64, "--local"]
    )
    assert rc == 2 and "--local without a file takes it from --alignment" in err


def test_a_file_of_global_solutions_is_described_by_what_it_holds():
    """With no patch kept, the report said 'the local file equals the global alignment' also for
    the shape model, whose patches carry its own variation across the field, and then showed the
    local residual lower than the global one (audit). It says so only for identity transforms."""
    from lmalign_jax.io.imod_local import LocalAlignment
    from lmalign_jax.workflow.local import _what_the_file_holds

    identity = np.broadcast_to(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (4, 3, 2, 3)).copy()
    plain = LocalAlignment((2, 2), (100, 100), (200, 200), 0.0, np.zeros((4, 3)), identity)
    assert _what_the_file_holds(plain) == "the local file equals the global alignment"
    varied = identity.copy()
    varied[2, 1, 0, 2] = 0.3  # a patch's shift in one view
    shaped = LocalAlignment((2, 2), (100, 100), (200, 200), 0.0, np.zeros((4, 3)), varied)
    assert "variation across the field" in _what_the_file_holds(shaped)
    tilted = LocalAlignment((2, 2), (100, 100), (200, 200), 0.0, np.full((4, 3), 0.01), identity)
    assert "variation across the field" in _what_the_file_holds(tilted)
    # a model with z factors (luther): patches holding the global solution carry the global ones
    zfac = np.array([[0.01, -0.02], [0.0, 0.0], [0.03, 0.005]])
    with_z = LocalAlignment(
        (2, 2),
        (100, 100),
        (200, 200),
        0.0,
        np.zeros((4, 3)),
        identity,
        z_factors=np.broadcast_to(zfac, (4, 3, 2)),
    )
    assert _what_the_file_holds(with_z, zfac) == "the local file equals the global alignment"
    assert "variation across the field" in _what_the_file_holds(with_z, zfac * 1.01)
    # without global z factors tilt ignores the file's
    assert _what_the_file_holds(with_z) == "the local file equals the global alignment"


def test_the_reports_change_says_higher_when_the_local_residual_rose():
    """The summary clamped the change at zero: a local residual 13x the global one read "0.0%
    lower" (audit)."""
    from lmalign_jax.workflow.local import _change_text

    assert _change_text(0.3147, 0.2984) == " (5.2% lower)"
    assert _change_text(0.4692, 6.1968) == " (1220.7% higher)"
    assert _change_text(0.5, 0.50001) == " (unchanged)"
    assert _change_text(0.0, 0.0) == ""
