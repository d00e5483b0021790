"""Writing a run's output files as one set: all of them appear, or none of them changes.

Files are first written (by any writer, e.g. those of :mod:`lmalign_jax.io`) into a hidden
staging folder inside the output folder, so a failure while computing or formatting any file
leaves the output folder as it was. :meth:`OutputSet.commit` then moves each staged file over its
final name with ``os.replace`` (atomic per file, same file system). Files that the commit would
replace are first moved aside; if a move fails half-way, the new files are removed and the old
ones put back, so a failed run never leaves a mixture of old and new files (nor a half-written
``.xf``).

Usage::

    with OutputSet(out_dir, prefix) as out:
        write_xf(out.stage(".xf"), A, shifts)
        out.write_text(".json", text)
        written = out.commit()          # final paths, in staging order

Leaving the ``with`` block without :meth:`commit` (an exception, or an early return) discards
everything; an output folder created for the set is removed again when it is left empty. An
``OSError`` met writing a staged file (a full disk) names the file's final path, never the
hidden staging folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from .atomic import name_target, short_name

__all__ = ["OutputSet"]


def is_file_stem(prefix: str) -> bool:
    """Whether ``prefix`` can name files in a folder: not empty, no folder separator, not . or .."""
    separators = {os.sep, os.altsep} - {None}
    return bool(prefix) and not any(c in prefix for c in separators) and prefix not in (".", "..")


class OutputSet:
    """A set of files ``<out_dir>/<prefix><suffix>`` written together.

    Args:
        out_dir: output folder; created (with parents) when missing.
        prefix: file-name stem shared by every file of the set (no folder part).
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str):
        if not is_file_stem(prefix):
            raise ValueError(f"prefix must be a plain file-name stem, got {prefix!r}")
        self.out_dir = os.fspath(out_dir)
        self.prefix = prefix
        self._staged: dict[str, str] = {}  # final path -> staged path, in staging order
        self._staging: str | None = None
        self._created: list[str] = []

    # ------------------------------------------------------------------ names
    def path(self, suffix: str) -> str:
        """Final path of the file with ``suffix`` (e.g. ``".xf"``, ``"_truth.json"``)."""
        return os.path.join(self.out_dir, self.prefix + suffix)

    def final_paths(self, suffixes) -> list[str]:
        return [self.path(s) for s in suffixes]

    # ------------------------------------------------------------------ staging
    def _ensure_staging(self) -> str:
        if self._staging is None:
            missing = []
            head = os.path.abspath(self.out_dir)
            while not os.path.exists(head):
                missing.append(head)
                head = os.path.dirname(head)
            os.makedirs(self.out_dir, exist_ok=True)
            self._created = missing  # deepest first
            try:
                self._staging = tempfile.mkdtemp(  # the prefix cut: any name that fits can be staged
                    prefix=f".{short_name(self.prefix)}.lmalign-", suffix=".tmp", dir=self.out_dir
                )
            except OSError as e:
                self.discard()
                raise (name_target(e, self.out_dir, (e.filename,)) or e) from e
        return self._staging

    def stage(self, suffix: str) -> str:
        """A path in the staging folder to write the file with ``suffix`` to (by any writer)."""
        return self.stage_named(self.prefix + suffix)

    def stage_named(self, name: str) -> str:
        """As :meth:`stage`, for a file whose name is not ``<prefix><suffix>`` (etomo's
        ``align.log``): ``<out_dir>/<name>``."""
        if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
            raise ValueError(f"name must be a plain file name, got {name!r}")
        final = os.path.join(self.out_dir, name)
        if final in self._staged:
            raise ValueError(f"{final} is already part of this output set")
        staged = os.path.join(self._ensure_staging(), name)
        self._staged[final] = staged
        return staged

    def write_text(self, suffix: str, text: str) -> str:
        """Stage a UTF-8 text file; returns its final path."""
        staged = self.stage(suffix)
        with open(staged, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        return self.path(suffix)

    def write_bytes(self, suffix: str, data: bytes) -> str:
        """Stage a binary file; returns its final path."""
        staged = self.stage(suffix)
        with open(staged, "wb") as f:
            f.write(data)
        return self.path(suffix)

    # ------------------------------------------------------------------ commit / discard
    def commit(self) -> list[str]:
        """Move every staged file to its final name; returns the final paths in staging order.

        Raises ``OSError`` (after restoring the previous state) when a file cannot be moved.
        """
        if self._staging is None:
            return []
        for final, staged in self._staged.items():
            if not os.path.isfile(staged):
                raise FileNotFoundError(f"staged file for {final} was never written")
        backups: dict[str, str] = {}
        placed: list[str] = []
        try:
            for final in self._staged:
                if os.path.lexists(final):
                    if os.path.isdir(final) and not os.path.islink(final):
                        raise IsADirectoryError(f"{final} is a directory")
                    backup = os.path.join(self._staging, "old-" + os.path.basename(final))
                    os.replace(final, backup)
                    backups[final] = backup
            for final, staged in self._staged.items():
                _sync(staged)
                os.replace(staged, final)
                placed.append(final)
        except BaseException as e:
            named = self._name_final(e)
            for final in placed:
                with contextlib.suppress(OSError):
                    os.unlink(final)
            for final, backup in backups.items():
                with contextlib.suppress(OSError):
                    os.replace(backup, final)
            self.discard()
            if named is None:
                raise
            raise named from e
        written = list(self._staged)
        self._remove_staging()
        self._created = []
        self._staged = {}
        return written

    def discard(self) -> None:
        """Forget every staged file; remove output folders created for this set if left empty."""
        self._remove_staging()
        self._staged = {}
        for folder in self._created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._created = []

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def _name_final(self, exc: BaseException) -> OSError | None:
        """``atomic.name_target`` for an ``OSError`` about a staged file, or about none (a failed
        write, taken to be of the file staged last): one naming that file's final path."""
        if not isinstance(exc, OSError) or not self._staged:
            return None
        name = exc.filename
        final_of = {staged: final for final, staged in self._staged.items()}
        if name is None:
            final = list(self._staged)[-1]
        elif os.fspath(name) in final_of:
            final = final_of[os.fspath(name)]
        elif self._staging is not None and _inside(name, self._staging):  # a staged file's temporary
            final = list(self._staged)[-1]
        else:
            return None
        return name_target(exc, final, () if name is None else (name,))

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        named = None if exc is None else self._name_final(exc)
        if self._staging is not None:
            self.discard()
        if named is not None:
            raise named from exc


def _inside(path, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path.startswith(folder + os.sep)


def _sync(path: str) -> None:
    """Flush a staged file to disk before it is renamed into place."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
