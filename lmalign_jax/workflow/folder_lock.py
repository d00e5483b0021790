"""One batch at a time per output folder.

Two ``lmalign batch`` runs into one ``--out-dir`` at once would write the same series' files in
turn, each reporting its own outputs written while the other replaces them. :func:`folder_lock`
holds a lock for the folder while a run writes there: a file named after the folder's real path
in a folder of the user's in the system's temporary folder (nothing is written into the output
folder itself), holding the run's process id. A lock whose process is gone (a run killed
outright) is taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile

from .status import UsageError

__all__ = ["folder_lock", "lock_path"]


def lock_path(out_dir: str) -> str:
    """The lock file of the output folder ``out_dir`` (which need not exist yet)."""
    key = hashlib.sha256(os.path.realpath(out_dir).encode()).hexdigest()[:24]
    user = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"lmalign-locks-{user}", f"{key}.lock")


def _holder(path: str) -> int | None:
    """The live process holding the lock at ``path``, or None (no lock, or its process is gone)."""
    try:
        with open(path, encoding="ascii") as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's live process
        return pid
    return pid


@contextlib.contextmanager
def folder_lock(out_dir: str, what: str = "lmalign batch"):
    """Hold ``out_dir``'s lock while the block runs; UsageError, before any work, when another
    live process holds it."""
    path = lock_path(out_dir)
    fd = None
    for _ in range(2):  # a stale lock is removed once, then created anew
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pid = _holder(path)
            if pid is not None:
                raise UsageError(
                    f"another {what} (process {pid}) is writing into {out_dir}: two runs into one folder "
                    "would replace each other's files; wait for it to finish or choose another --out-dir"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        except OSError:  # no writable temporary folder (another user's lock folder): run unlocked
            yield
            return
    else:
        raise UsageError(f"cannot lock {out_dir} for {what} ({path} keeps reappearing)")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
