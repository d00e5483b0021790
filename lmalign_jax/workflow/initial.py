"""A series' start read from another program's alignment: AreTomo ``.aln`` or IMOD ``.xf``."""

from __future__ import annotations

import os

import numpy as np

from ..core.start import InitialAlignment, initial_alignment
from ..export import decompose_xf, read_aln
from ..io import InputError, read_xf
from ..models import get_model
from .series import FAR_OUTSIDE
from .status import print_warning

#: Magnifications a start may have (a microscope's differ from 1 by a few percent).
MAGNIFICATION_RANGE = (0.1, 10.0)


def read_initial_alignment(
    path: str, inputs, selection, obs, model_name: str, warn=print_warning
) -> InitialAlignment:
    """The start of ``obs`` (the fitted views ``selection.view_index`` of ``inputs``) from ``path``.

    ``.aln``: AreTomo's ROT, TILT, TX, TY and GMAG per raw section (conventions in
    :mod:`lmalign_jax.export.conventions`); a dark frame (no row) starts from the nominal
    start (see :func:`lmalign_jax.core.start.initial_alignment`). Any other name is read as an
    IMOD ``.xf`` (raw -> aligned), with the nominal tilts of the tilt file.
    A view's shift must be within ``FAR_OUTSIDE`` image sizes and its magnification within
    :data:`MAGNIFICATION_RANGE`; ``warn`` hears of .aln sections that have no row and are not
    dark frames (they start as dark frames do).
    Raises:
        InputError: a malformed file, or one whose views or image size are not the series'.
    """
    n_file = inputs.tilts_deg.size
    if os.path.splitext(path)[1].lower() == ".aln":
        aln = read_aln(path)
        if aln.raw_size[2] != n_file:
            raise InputError(
                path, None, f"RawSize has {aln.raw_size[2]} sections; the series has {n_file} views"
            )
        size = aln.raw_size[:2]
        per_view = aln.by_section()
        rotation, tilts = per_view["rotation_deg"], per_view["tilts_deg"]
        shift, magnification = per_view["shift_px"], per_view["magnification"]
        tilts = np.where(np.isfinite(rotation), tilts, np.nan)
        missing = np.setdiff1d(np.flatnonzero(~np.isfinite(rotation)), aln.dark_sections)
        if missing.size:
            views = ", ".join(map(str, missing[:10] + 1)) + " ..." * (missing.size > 10)
            warn(
                f"{path}: {missing.size} of the RawSize {n_file} sections have neither a row nor a "
                f"DarkFrame line (views {views}, 1-based): they start from the built-in start"
            )
        where = "view {}".format
    else:
        a, d = read_xf(path)
        if a.shape[0] != n_file:
            raise InputError(path, None, f"{a.shape[0]} transforms; the series has {n_file} views")
        if np.any(np.abs(np.linalg.det(a)) < 1e-12):
            raise InputError(path, None, "a transform is singular")
        size = None
        rotation, magnification, shift = decompose_xf(np.concatenate([a, d[:, :, None]], axis=2))
        tilts = inputs.tilts_deg
        where = "line {}".format
    if size is not None and np.max(np.abs(np.subtract(size, inputs.image_size))) > 1.0:
        raise InputError(
            path,
            None,
            f"RawSize {size[0]} x {size[1]} is not the series' image size "
            f"{inputs.image_size[0]:g} x {inputs.image_size[1]:g}",
        )
    far = FAR_OUTSIDE * max(inputs.image_size)
    low, high = MAGNIFICATION_RANGE
    for k in range(n_file):  # sections without a row (NaN) start from the built-in start
        if np.any(np.abs(shift[k]) > far):
            raise InputError(
                path,
                None,
                f"{where(k + 1)}: shift {shift[k, 0]:g}, {shift[k, 1]:g} px is more than "
                f"{FAR_OUTSIDE} image sizes ({far:g} px)",
            )
        if not (low <= magnification[k] <= high or np.isnan(magnification[k])):
            raise InputError(
                path,
                None,
                f"{where(k + 1)}: magnification {magnification[k]:g} is outside {low:g} to {high:g}",
            )
    v = selection.view_index
    return initial_alignment(get_model(model_name), obs, rotation[v], tilts[v], shift[v], magnification[v])
