"""Pool workers end with the process that started them (workflow.parent_watch): a batch killed
outright (SIGKILL) left its spawned workers and their resource tracker running (audit)."""

import os
import subprocess
import sys
import textwrap
import time

PARENT = textwrap.dedent(
    """
    import concurrent.futures, multiprocessing, os, signal, sys, time
    from lmalign_jax.workflow.parent_watch import exit_with_parent

    def worker_pid():
        return os.getpid()

    if __name__ == "__main__":
        watched = sys.argv[1] == "watched"
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            **({"initializer": exit_with_parent, "initargs": (os.getpid(),)} if watched else {}),
        )
        print(pool.submit(worker_pid).result(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init to reap it is gone
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _worker_after_kill(tmp_path, mode: str, wait_s: float) -> bool:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    # the worker holds the pipe open after its parent is killed: read its line, not to the end
    parent = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.wait(timeout=120)
    parent.stdout.close()
    deadline = time.monotonic() + wait_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    return alive


def test_a_watched_worker_ends_when_its_parent_is_killed(tmp_path):
    assert not _worker_after_kill(tmp_path, "watched", wait_s=10.0)


def test_an_unwatched_worker_outlives_its_killed_parent(tmp_path):
    """The control: without the watch the worker is still there (the test can fail)."""
    assert _worker_after_kill(tmp_path, "plain", wait_s=3.0)
