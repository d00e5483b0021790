"""OutputSet: a run's files appear together or not at all."""

import os

import pytest

from lmalign_jax.io.outputs import OutputSet


def test_commit_writes_every_file(tmp_path):
    d = tmp_path / "new" / "deeper"
    with OutputSet(d, "run") as out:
        out.write_text(".xf", "a\n")
        out.write_bytes(".png", b"\x89PNG")
        with open(out.stage(".tlt"), "w") as f:
            f.write("1.0\n")
        assert not d.joinpath("run.xf").exists()  # nothing visible before the commit
        written = out.commit()
    assert written == [str(d / "run.xf"), str(d / "run.png"), str(d / "run.tlt")]
    assert sorted(os.listdir(d)) == ["run.png", "run.tlt", "run.xf"]  # no staging folder left
    assert (d / "run.xf").read_text() == "a\n"


def test_failure_before_commit_leaves_nothing(tmp_path):
    d = tmp_path / "out"
    with pytest.raises(RuntimeError), OutputSet(d, "run") as out:
        out.write_text(".xf", "half")
        raise RuntimeError("boom")
    assert not d.exists()  # the folder made for the set is removed again
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "run.xf").write_text("old\n")
    with OutputSet(tmp_path / "keep", "run") as out:
        out.write_text(".xf", "new\n")  # left without commit: discarded
    assert os.listdir(tmp_path / "keep") == ["run.xf"]
    assert (tmp_path / "keep" / "run.xf").read_text() == "old\n"


def test_failed_commit_restores_old_files(tmp_path):
    (tmp_path / "run.xf").write_text("old xf\n")
    (tmp_path / "run.json").mkdir()  # cannot be replaced by a file
    with OutputSet(tmp_path, "run") as out:
        out.write_text(".xf", "new xf\n")
        out.write_text(".json", "{}")
        with pytest.raises(IsADirectoryError):
            out.commit()
    assert (tmp_path / "run.xf").read_text() == "old xf\n"
    assert sorted(os.listdir(tmp_path)) == ["run.json", "run.xf"]


def test_bad_prefix_and_duplicates(tmp_path):
    with pytest.raises(ValueError, match="plain file-name stem"):
        OutputSet(tmp_path, "a/b")
    with OutputSet(tmp_path, "x") as out:
        out.stage(".xf")
        with pytest.raises(ValueError, match="already part of this output set"):
            out.stage(".xf")
