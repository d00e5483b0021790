"""Warnings raised while a command runs reach the user as the command's own one-line
``lmalign: warning:`` (no source path or code line); numpy's remarks on NaN arithmetic, which
name no input, are left out."""

import contextlib
import io
import warnings

import numpy as np

from lmalign_jax.cli._main import _show_warning


def _shown(emit) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        emit()
    return err.getvalue()


def test_a_library_warning_is_one_line():
    text = _shown(lambda: warnings.warn("standard errors are NaN", RuntimeWarning, stacklevel=1))
    assert text == "lmalign: warning: standard errors are NaN\n"


def test_numpy_nan_arithmetic_is_left_out():
    assert _shown(lambda: np.nanmean(np.full(3, np.nan))) == ""
