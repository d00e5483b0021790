"""Worker processes that end with the process that started them.

A ``ProcessPoolExecutor`` worker whose parent is killed outright (SIGKILL, the OOM killer) is
left running, adopted by init, holding its memory and the pool's resource tracker alive: Python
cleans up only after a parent that exits. :func:`exit_with_parent`, a pool's ``initializer``
(``initargs=(os.getpid(),)``), starts a daemon thread in the worker that checks once a second
whether its parent is still the one that started it and ends the worker at once when not.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["exit_with_parent", "PARENT_POLL_S"]

#: Seconds between the worker's checks of its parent.
PARENT_POLL_S = 1.0


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process: end it (exit status 1, no clean-up: its parent is gone) as soon as
    its parent is no longer ``parent_pid``."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
