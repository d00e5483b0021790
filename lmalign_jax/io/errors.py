"""The one exception type every parser in :mod:`lmalign_jax.io` raises for bad input."""

from __future__ import annotations

import os

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad or unreadable input file.

    Attributes
    ----------
    path : str
        The file that was being read.
    line : int or None
        1-based line number of the offending line, or None when it does not apply
        (binary files, whole-file problems).
    problem : str
        What is wrong, without the location prefix.

    The message reads ``"{path}:{line}: {problem}"``, or ``"{path}: {problem}"`` without a line.
    """

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str):
        self.path = os.fspath(path)
        self.line = None if line is None else int(line)
        self.problem = str(problem)
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        super().__init__(f"{where}: {self.problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.problem))
