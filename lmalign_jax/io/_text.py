"""Shared helpers for the text parsers: reading, number parsing, fixed-column fallback.

Every helper raises only :class:`InputError` for bad content.
"""

from __future__ import annotations

import math
import os
import re

from .errors import InputError

_INT = re.compile(r"[+-]?[0-9]{1,30}")

__all__ = [
    "read_bytes",
    "read_lines",
    "check_extension",
    "parse_int",
    "parse_float",
    "split_fields",
    "show",
]


def show(text: str, limit: int = 40) -> str:
    """``repr`` of ``text`` cut to ``limit`` characters, for error messages."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_bytes(path: str | os.PathLike) -> bytes:
    """Whole file as bytes; a missing or unreadable file is an :class:`InputError`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, None, "is a directory, not a file") from None
    except OSError as e:
        raise InputError(path, None, f"cannot read file ({e.strerror or e})") from None
    except ValueError as e:  # e.g. an embedded NUL character in the path
        raise InputError(path, None, f"invalid path ({e})") from None


def read_lines(path: str | os.PathLike) -> list[str]:
    """The file's lines (UTF-8, a leading BOM and ``\\r`` line ends dropped).

    Lines are split on ``\\n`` only, so index ``k`` is line ``k + 1`` as an editor numbers it.
    Invalid UTF-8 is an :class:`InputError` naming the line.
    """
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(path, line, f"not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def check_extension(path: str | os.PathLike, supported: tuple[str, ...], what: str) -> str:
    """Lower-case extension of ``path`` (with dot); an unsupported one is an :class:`InputError`."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in supported:
        got = f"extension {ext!r}" if ext else "no extension"
        raise InputError(path, None, f"unsupported {what} file ({got}); supported: {', '.join(supported)}")
    return ext


def parse_int(token: str, path, line: int | None, what: str) -> int:
    """``token`` as a decimal integer within the int64 range."""
    t = token.strip()
    if not _INT.fullmatch(t):
        raise InputError(path, line, f"{what} is not an integer: {show(t)}")
    value = int(t)
    if abs(value) >= 2**63:
        raise InputError(path, line, f"{what} is out of range: {show(t)}")
    return value


def parse_float(token: str, path, line: int | None, what: str) -> float:
    """``token`` as a finite float; ``nan``/``inf`` are an :class:`InputError`."""
    t = token.strip()
    if not t.isascii() or "_" in t:
        raise InputError(path, line, f"{what} is not a number: {show(t)}")
    try:
        value = float(t)
    except ValueError:
        raise InputError(path, line, f"{what} is not a number: {show(t)}") from None
    if not math.isfinite(value):
        raise InputError(path, line, f"{what} is not finite: {show(t)}")
    return value


def split_fields(text: str, widths: tuple[int, ...]) -> list[str]:
    """Split a Fortran fixed-format record into fields.

    Whitespace splitting is tried first. When it gives too few fields and the record is long
    enough to reach the last column, numbers that filled their fields may have run together
    (e.g. ``-1234.56-789.01``): the record is then cut at the fixed column ``widths``, provided
    every cut field is a single token. Otherwise the whitespace tokens are returned, so the
    caller can report their count.
    """
    tokens = text.split()
    if len(tokens) >= len(widths) or len(text.rstrip()) <= sum(widths[:-1]):
        return tokens
    fields, pos = [], 0
    for w in widths:
        fields.append(text[pos : pos + w].strip())
        pos += w
    rest = text[pos:].strip()
    if rest:
        fields.append(rest)
    if all(f and len(f.split()) == 1 for f in fields):
        return fields
    return tokens
