"""The code base is lint-clean and formatted as pyproject.toml's [tool.ruff] says."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ["lmalign_jax", "tests", "benchmarks"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *TREES], cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.parametrize("args", [("check", "--no-cache"), ("format", "--check", "--no-cache")])
def test_ruff_is_clean(args):
    done = _ruff(*args)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
