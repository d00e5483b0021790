"""RELION 5 tilt-series STAR files, written with the ``starfile`` package.

RELION 5 keeps one ``tomograms.star`` (block ``global``: one row per tilt series, with
``rlnTomoTiltSeriesStarFile`` pointing at a per-tilt-series STAR file) and, per tilt series, a
STAR file whose block ``data_<rlnTomoName>`` has one row per tilt image with the alignment
columns ``rlnTomoXTilt``, ``rlnTomoYTilt``, ``rlnTomoZRot`` (degrees),
``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` (Angstrom). Their meaning is in
:mod:`.conventions`.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from ..io import atomic_write
from .conventions import ViewGeometry, relion_parameters

__all__ = ["relion_tilt_table", "write_relion_tilt_series", "write_relion_tomograms", "RELION_ALIGNMENT_COLUMNS"]

RELION_ALIGNMENT_COLUMNS = ("rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst")


def _write_star(path, data) -> None:
    """``starfile.write`` into a scratch file, then copy it into place atomically."""
    import starfile  # pandas + pyarrow: imported on use

    with tempfile.TemporaryDirectory() as scratch:
        tmp = os.path.join(scratch, "out.star")
        starfile.write(data, tmp, float_format="%.6f")
        with open(tmp, encoding="utf-8") as f:
            text = f.read()
    with atomic_write(path) as f:
        f.write(text)


def relion_tilt_table(geometry: ViewGeometry, pixel_size_angst: float, *, nominal_tilts_deg=None,
                      pre_exposure=None, image_names=None):
    """The per-tilt table as a pandas DataFrame, one row per view in view order.

    nominal_tilts_deg: (n_views,) stage tilts (rlnTomoNominalStageTiltAngle), default the solved
    tilts; pre_exposure: (n_views,) e/A^2 before each tilt (rlnMicrographPreExposure), default 0;
    image_names: (n_views,) rlnMicrographName entries, omitted when None.
    """
    import pandas as pd

    n = geometry.n_views
    columns = {}
    if image_names is not None:
        if len(image_names) != n:
            raise ValueError(f"image_names has {len(image_names)} entries for {n} views")
        columns["rlnMicrographName"] = [str(s) for s in image_names]
    for name, values, default in (("rlnTomoNominalStageTiltAngle", nominal_tilts_deg, geometry.tilts_deg),
                                  ("rlnMicrographPreExposure", pre_exposure, np.zeros(n))):
        values = default if values is None else np.asarray(values, dtype=np.float64)
        if values.shape != (n,) or not np.all(np.isfinite(values)):
            raise ValueError(f"{name} needs {n} finite values, got shape {values.shape}")
        columns[name] = values
    columns.update(relion_parameters(geometry, pixel_size_angst))
    return pd.DataFrame(columns)


def write_relion_tilt_series(path: str | os.PathLike, geometry: ViewGeometry, pixel_size_angst: float,
                             tomo_name: str, **table_options) -> None:
    """Write the per-tilt STAR file of one tilt series (block ``data_<tomo_name>``);
    ``table_options`` as in :func:`relion_tilt_table`."""
    if not tomo_name or any(c.isspace() for c in tomo_name):
        raise ValueError(f"tomo_name must be a non-empty word without spaces, got {tomo_name!r}")
    _write_star(path, {tomo_name: relion_tilt_table(geometry, pixel_size_angst, **table_options)})


def write_relion_tomograms(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write a RELION 5 ``tomograms.star`` (block ``global``), one row per tilt series.

    Each row needs rlnTomoName, rlnTomoTiltSeriesStarFile (path as RELION should read it),
    rlnTomoTiltSeriesPixelSize (A/px), rlnTomoSizeX/Y/Z (tomogram size, unbinned px),
    rlnVoltage (kV), rlnSphericalAberration (mm), rlnAmplitudeContrast and rlnTomoHand
    (+1 or -1); any other rln column is passed through. Nothing is guessed: microscope values
    must come from the user.
    """
    import pandas as pd

    required = ("rlnTomoName", "rlnTomoTiltSeriesStarFile", "rlnTomoTiltSeriesPixelSize", "rlnTomoSizeX",
                "rlnTomoSizeY", "rlnTomoSizeZ", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                "rlnTomoHand")
    if not rows:
        raise ValueError("no tilt series to list")
    for row in rows:
        missing = [c for c in required if c not in row]
        if missing:
            raise ValueError(f"tomograms.star row {row.get('rlnTomoName', '?')!r} lacks {', '.join(missing)}")
    table = pd.DataFrame(rows)
    table["rlnMicrographOriginalPixelSize"] = table.get("rlnMicrographOriginalPixelSize",
                                                        table["rlnTomoTiltSeriesPixelSize"])
    table["rlnOpticsGroupName"] = table.get("rlnOpticsGroupName", "optics1")
    _write_star(path, {"global": table})
