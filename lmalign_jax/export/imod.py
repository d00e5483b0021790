"""IMOD extras: the ``.xtilt`` file (X-axis tilt per view).

Layout: one angle in degrees per line, line k = view k, read free-format by IMOD's ``tilt``
(XTILTFILE); etomo writes ``f7.2``. Our models have no X-axis tilt, so we write zeros unless
given other values.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..io import InputError, atomic_write

__all__ = ["read_xtilt", "write_xtilt"]


def write_xtilt(path: str | os.PathLike, x_tilt_deg) -> None:
    """Write X-axis tilts (n_views,) in degrees, one per line as ``%7.2f`` (IMOD's layout)."""
    values = np.asarray(x_tilt_deg, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"x_tilt_deg must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(np.abs(values) >= 999.995):
        raise ValueError("x_tilt_deg must be finite and fit IMOD's f7.2 field")
    with atomic_write(path) as f:
        for value in values:
            f.write(f"{float(value):7.2f}\n")


def read_xtilt(path: str | os.PathLike) -> np.ndarray:
    """Read an IMOD ``.xtilt`` file: float64 (n_views,) X-axis tilts in degrees.

    Blank lines at the end are allowed; anything else that is not one finite number per line
    is an :class:`lmalign_jax.io.InputError` naming the line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            path, None, f"cannot read the X-axis tilt file ({exc.__class__.__name__}: {exc})"
        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(path, None, "no X-axis tilt angles")
    out = []
    for k, raw in enumerate(lines, start=1):
        tokens = raw.split()
        if len(tokens) != 1:
            raise InputError(path, k, f"expected one X-axis tilt angle per line, got {len(tokens)} values")
        try:
            value = float(tokens[0])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(path, k, f"X-axis tilt {tokens[0][:40]!r} is not a finite number")
        out.append(value)
    return np.array(out, dtype=np.float64)
