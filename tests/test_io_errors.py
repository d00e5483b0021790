"""InputError, atomic writes, and the io package's import rules."""

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import lmalign_jax.io as lio
from lmalign_jax.io import InputError, atomic_write, fixed_width, write_tlt, write_xf

IO_DIR = Path(lio.__file__).parent


def test_input_error_message_and_attributes():
    e = InputError("a/b.tlt", 3, "tilt angle is not a number")
    assert isinstance(e, ValueError)
    assert str(e) == "a/b.tlt:3: tilt angle is not a number"
    assert (e.path, e.line, e.problem) == ("a/b.tlt", 3, "tilt angle is not a number")
    e = InputError(Path("x.fid"), None, "file not found")
    assert str(e) == "x.fid: file not found" and e.line is None and e.path == "x.fid"
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.line is None


def test_atomic_write_success_and_permissions(tmp_path):
    p = tmp_path / "out.txt"
    with atomic_write(p) as f:
        f.write("hello\n")
        assert not p.exists()
    assert p.read_text() == "hello\n"
    mask = os.umask(0)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)
    os.chmod(p, 0o640)
    with atomic_write(p, "wb") as f:
        f.write(b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01" and (p.stat().st_mode & 0o777) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_atomic_write_failure_leaves_nothing(tmp_path):
    p = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(p) as f:
            f.write("partial\n")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(p) as f:
            f.write("new\n")
            raise KeyboardInterrupt
    assert p.read_text() == "old\n" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    assert os.listdir(tmp_path) == []


def fail_on_call(monkeypatch, k: int) -> None:
    """Make the k-th block formatted by any fixed-width writer raise ``OSError("disk full")``."""
    real, calls = fixed_width.format_records, []

    def failing(record, columns):
        calls.append(1)
        if len(calls) == k:
            raise OSError("disk full")
        return real(record, columns)

    monkeypatch.setattr(fixed_width, "format_records", failing)
    monkeypatch.setattr(fixed_width, "CHUNK_ROWS", 1)


def test_writer_failing_midway_leaves_no_file(tmp_path, monkeypatch):
    fail_on_call(monkeypatch, 3)  # two lines are already written when it fails
    with pytest.raises(OSError, match="disk full"):
        write_xf(tmp_path / "a.xf", np.tile(np.eye(2), (3, 1, 1)), np.zeros((3, 2)))
    assert os.listdir(tmp_path) == []


def test_tlt_writer_failing_midway_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.tlt"
    p.write_text("  1.00\n")
    fail_on_call(monkeypatch, 3)
    with pytest.raises(OSError, match="disk full"):
        write_tlt(p, [1.0, 2.0, 3.0, 4.0])
    assert p.read_text() == "  1.00\n" and os.listdir(tmp_path) == ["a.tlt"]


def test_io_is_numpy_only():
    """lmalign_jax.io imports no jax and nothing from lmalign_jax outside io."""
    for path in IO_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 1:
                    pytest.fail(f"{path.name}: relative import outside io")
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("jax", "jaxlib", "optax"), f"{path.name} imports {name}"
                assert not (top == "lmalign_jax" and not name.startswith("lmalign_jax.io")), (
                    f"{path.name} imports {name}"
                )


def test_public_names_exported():
    for name in lio.__all__:
        assert hasattr(lio, name), name
