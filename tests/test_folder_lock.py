"""One batch at a time per output folder (workflow.folder_lock): two runs into one --out-dir
replaced each other's files, each reporting its own written (audit)."""

import os
import subprocess
import sys

import pytest
from helpers import run_cli as run

from lmalign_jax.workflow.folder_lock import folder_lock, lock_path
from lmalign_jax.workflow.status import UsageError


def test_a_live_holder_refuses_a_second_run_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = lock_path(str(out))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{holder.pid}\n")
        with pytest.raises(
            UsageError, match=rf"another lmalign batch \(process {holder.pid}\) is writing into"
        ):
            with folder_lock(str(out)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(str(out)):  # its process gone: the lock is taken over, and released after
        with open(lock_path(str(out))) as f:
            assert f.read().strip() == str(os.getpid())
    assert not os.path.exists(lock_path(str(out)))
    assert not out.exists()  # nothing is written into the output folder itself


def test_batch_into_a_folder_another_run_holds_exits_2_before_any_work(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.csv a.rawtlt 1024 1024\n")
    out = tmp_path / "out"
    path = lock_path(str(out))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(path, "w") as f:
            f.write(f"{holder.pid}\n")
        rc, _, err = run(["batch", listing, "--out-dir", out, "--no-figure"])
    finally:
        holder.kill()
        holder.wait()
        os.unlink(path)
    assert rc == 2 and f"another lmalign batch (process {holder.pid}) is writing into {out}" in err, err
    assert not out.exists()
