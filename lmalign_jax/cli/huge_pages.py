"""Transparent huge pages for a command's large arrays (Linux with glibc 2.35 or later).

XLA allocates every output and temporary buffer of a computation afresh, and the kernel zeroes
each 4 KiB page of it at its first touch (a page fault). A 2048 x 2048 px, 61-view
reconstruction 256 thick touches about 10 GB that way: 2.6 million faults, half of its 9-11 s
of system time (measured; 0.1 million faults and 5-6.6 s with huge pages). glibc's ``malloc``
asks the kernel for transparent huge pages (2 MiB, 512 times fewer faults) where the tunable
``glibc.malloc.hugetlb=1`` is set, which the dynamic loader reads only when a process starts; so
the launcher sets it and replaces itself with the same command once, before anything large is
imported (:func:`relaunch_with_huge_pages`). It does nothing where the kernel gives huge pages
to every process anyway (``always``) or to none (``never``), on other C libraries and systems,
when ``GLIBC_TUNABLES`` already names the tunable, or when ``LMALIGN_HUGE_PAGES=0``.
"""

from __future__ import annotations

import os
import platform
import sys

__all__ = ["SWITCH", "TUNABLE", "wanted", "relaunch_with_huge_pages"]

SWITCH = "LMALIGN_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_at_least(major: int, minor: int) -> bool:
    name, version = platform.libc_ver()
    if name != "glibc":
        return False
    try:
        have = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return have >= (major, minor)


def _kernel_mode(path: str = _THP_MODE) -> str | None:
    """The selected transparent-huge-page mode (``always``, ``madvise``, ``never``), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def wanted(environ=None, *, mode: str | None = None) -> bool:
    """Whether relaunching with the tunable would change anything here (module docstring)."""
    environ = os.environ if environ is None else environ
    if environ.get(SWITCH, "1") == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux") or not _glibc_at_least(2, 35):
        return False
    return (_kernel_mode() if mode is None else mode) == "madvise"


def relaunch_with_huge_pages() -> None:
    """Replace this process by the same command line with ``glibc.malloc.hugetlb=1`` added to
    ``GLIBC_TUNABLES``, where :func:`wanted` says so and the command can be run again as it
    was (a script or ``python -m``; not ``python -c`` or a script read from standard input).
    Returns only where it does not relaunch (or the relaunch fails: the command then runs as
    it is). Call it first thing in an entry point, never from library code."""
    script = sys.argv[0] if sys.argv else ""
    orig = getattr(sys, "orig_argv", None)
    if not orig or not script or not os.path.isfile(script) or not sys.executable or not wanted():
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, orig)
    except OSError:
        os.environ["GLIBC_TUNABLES"] = tunables
        if not tunables:
            del os.environ["GLIBC_TUNABLES"]
