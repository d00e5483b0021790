"""The options of one program in an IMOD command file (Etomo's ``align.com``, ``tilt.com``).

Etomo writes each program's options in PIP form: a line ``$tiltalign -StandardInput`` (or
``$tilt -StandardInput``) and then one option a line, ``Name<tab or spaces>value`` (a name alone
is a flag; PIP also takes ``Name=value`` and a ``#`` comment after the value), ``#`` comment
lines, until the next ``$`` line or ``EndInput``; a second section for the same program is
refused. Only that program's section is read;
what the options mean is for the caller (``lmalign_jax.cli.imod_com``, ``lmalign_jax.cli.tilt_com``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ._text import read_lines
from .errors import InputError

__all__ = ["ComOption", "read_com_options", "read_tiltalign_com"]

#: The command file Etomo writes each program's options into, for messages.
_COM_FILES = {"tiltalign": "align.com", "tilt": "tilt.com"}


@dataclass(frozen=True)
class ComOption:
    """One option line: its name, its value text ("" for a flag) and its 1-based line number."""

    name: str
    value: str
    line: int


def read_tiltalign_com(path: str | os.PathLike) -> dict[str, list[ComOption]]:
    """The options of the file's ``$tiltalign`` section (:func:`read_com_options`)."""
    return read_com_options(path, "tiltalign")


def read_com_options(path: str | os.PathLike, program: str) -> dict[str, list[ComOption]]:
    """The options of the file's ``$<program>`` section, name -> its lines in file order.

    Raises InputError for a file without that section, for one written in the program's old
    sequential form (answers one a line, without ``-StandardInput``), and for a section with no
    options.
    """
    lines = read_lines(path)
    start = None
    for number, text in enumerate(lines, 1):
        words = text.split()
        if words and words[0] == f"${program}":
            if "-StandardInput" not in words[1:]:
                raise InputError(
                    path,
                    number,
                    f"{program}'s old sequential input (answers one a line) is not read: give the "
                    f"options as Etomo writes them ('${program} -StandardInput', then 'Name value' lines)",
                )
            if len(words) > 2:
                raise InputError(
                    path, number, f"options on the ${program} line itself are not read: one a line below it"
                )
            start = number
            break
    if start is None:
        com = _COM_FILES.get(program, f"{program} command file")
        raise InputError(path, None, f"no '${program}' command in the file (is it an Etomo {com}?)")
    options: dict[str, list[ComOption]] = {}
    end = len(lines)
    for number, text in enumerate(lines[start:], start + 1):
        stripped = text.strip()
        if stripped.startswith("$") or stripped == "EndInput":
            end = number - 1  # the 0-based index of the line that ends the section
            break
        if not stripped or stripped.startswith("#"):
            continue
        # PIP's forms: "Name value", "Name=value", "Name = value", a comment after the value
        form = re.match(r"([^\s=]+)\s*=?\s*(.*)", stripped)
        if form is None:
            raise InputError(
                path, number, f"expected 'Name value' (an option of ${program}), got {stripped!r}"
            )
        name, value = form.groups()
        value = "" if value.startswith("#") else re.sub(r"\s+#.*", "", value).strip()
        options.setdefault(name, []).append(ComOption(name, value, number))
    if not options:
        raise InputError(path, start, f"the ${program} command has no options after it")
    for number, text in enumerate(lines[end:], end + 1):
        words = text.split()
        if words and words[0] == f"${program}":
            raise InputError(
                path,
                number,
                f"a second ${program} command (the first is at line {start}): one is read; split the file",
            )
    return options
