"""Atomic file writes: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write", "name_target", "short_name", "temporary_prefix"]


def _default_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give a new file (0o666 minus umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def short_name(name: str, limit: int = 64) -> str:
    """``name`` cut to at most ``limit`` bytes of the file system's encoding, on a character
    boundary (64 characters of a multi-byte script could pass a 255-byte name limit); what cannot
    be decoded is left out (the result only starts a temporary name)."""
    encoded = os.fsencode(name)
    if len(encoded) <= limit:
        return name
    return encoded[:limit].decode(sys.getfilesystemencoding(), errors="ignore")


def temporary_prefix(path: str | os.PathLike) -> str:
    """Prefix of a hidden temporary file written beside ``path`` (``.<name>.``): the name cut to
    64 bytes (:func:`short_name`), so that any name the file system takes can be written through it."""
    return "." + short_name(os.path.basename(os.fspath(path))) + "."


def replace_with(tmp: str, path: str | os.PathLike) -> None:
    """Move the finished ``tmp`` over ``path``, keeping an existing file's permissions (else
    those a plain ``open`` would give): the last step of every atomic write."""
    if os.path.exists(path):
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    else:
        os.chmod(tmp, _default_mode())
    os.replace(tmp, path)


def name_target(exc: BaseException, path: str | os.PathLike, temporaries=()) -> OSError | None:
    """The ``OSError`` to raise for ``exc``, met while writing ``path``: one that names ``path``
    ("PATH: cannot write: REASON") when ``exc`` names one of its ``temporaries`` or no file at
    all (a failed ``write``); None for an error about another file, or not an ``OSError``."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    if exc.filename is not None and os.fspath(exc.filename) not in {os.fspath(t) for t in temporaries}:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    reason = reason if reason.startswith("cannot write: ") else f"cannot write: {reason}"
    return OSError(exc.errno, reason, os.fspath(path))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Data go to a temporary file in the same directory; on a clean exit of the ``with`` block it is
    flushed, synced and ``os.replace``-d onto ``path`` (atomic on POSIX). If the block raises, the
    temporary file is removed and any existing ``path`` is left untouched. An ``OSError`` of the
    write names ``path``, never the temporary file (:func:`name_target`).

    ``mode`` is ``"w"`` (text, UTF-8, ``\\n`` line endings) or ``"wb"`` (binary).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=directory)
    except OSError as e:  # it names the temporary file
        raise (name_target(e, path, (e.filename,)) or e) from e
    try:
        if mode == "w":
            f = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        else:
            f = os.fdopen(fd, "wb")
    except BaseException:  # an interrupt inside fdopen: the file object may have closed fd already
        with contextlib.suppress(OSError):
            os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace_with(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        named = name_target(e, path, (tmp,))
        if named is None:
            raise
        raise named from e
