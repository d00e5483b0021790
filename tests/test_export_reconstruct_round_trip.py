"""What an alignment record reconstructs to (``reconstruct --alignment R.json --local``) is what
IMOD's files exported from it reconstruct to (``export --to imod``, then ``reconstruct --xf --tlt
--xtilt --zfac --local --exclude``, the files tilt would read): a luther series (z factors),
flattened (its .tlt's tilt change and its .xtilt's X-axis tilt), a view excluded, a local file.
They differ only by the rounding of the text files (.xf to 7 decimals, .tlt to 3, .xtilt to 2)."""

import mrcfile
import numpy as np
from helpers import run_cli


def test_a_record_and_its_imod_export_reconstruct_alike(tmp_path):
    rc, _, err = run_cli(["simulate", "--stack", "--out-dir", tmp_path / "sim", "--prefix", "s", "--seed", 3])
    assert rc == 0, err
    sim, a, imod = tmp_path / "sim", tmp_path / "a", tmp_path / "imod"
    align = [
        "align",
        sim / "s.csv",
        "--tilts",
        sim / "s.rawtlt",
        "--stack",
        sim / "s.mrc",
        "--model",
        "luther",
    ]
    align += ["--flatten", "--exclude", 3, "--local", "--local-keep-all", "--patch-size", 160, 160]
    rc, _, err = run_cli([*align, "--out-dir", a, "--no-figure", "--no-errors", "-q"])
    assert rc == 0, err
    rc, _, err = run_cli(["export", a / "s.json", "--to", "imod", "--out-dir", imod])
    assert rc == 0, err
    base = ["reconstruct", sim / "s.mrc", "--thickness", 40]
    rc, out, err = run_cli([*base, "--alignment", a / "s.json", "--local", "--out", tmp_path / "record.mrc"])
    assert rc == 0, err
    assert "leaving out view 3" in out + err and "X-axis tilt" in out + err and "z factors" in out + err
    files = [
        "--xf",
        imod / "s.xf",
        "--tlt",
        imod / "s.tlt",
        "--xtilt",
        imod / "s.xtilt",
        "--zfac",
        imod / "s.zfac",
    ]
    rc, _, err = run_cli(
        [*base, *files, "--local", imod / "slocal.xf", "--exclude", 3, "--out", tmp_path / "imod.mrc"]
    )
    assert rc == 0, err
    with mrcfile.open(tmp_path / "record.mrc") as m, mrcfile.open(tmp_path / "imod.mrc") as n:
        record, exported = np.array(m.data, np.float64), np.array(n.data, np.float64)
    largest, rms = (
        np.abs(record - exported).max() / np.abs(record).max(),
        (record - exported).std() / record.std(),
    )
    print(f"max diff {largest:.2e} of the maximum, rms {rms:.2e} sd")
    assert largest < 0.005 and rms < 0.005
