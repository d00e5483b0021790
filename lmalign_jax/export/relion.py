"""RELION 5 tilt-series STAR files, written with the ``starfile`` package.

RELION 5 keeps one ``tomograms.star`` (block ``global``: one row per tilt series, with
``rlnTomoTiltSeriesStarFile`` pointing at a per-tilt-series STAR file) and, per tilt series, a
STAR file whose block ``data_<rlnTomoName>`` has one row per tilt image with the alignment
columns ``rlnTomoXTilt``, ``rlnTomoYTilt``, ``rlnTomoZRot`` (degrees),
``rlnTomoXShiftAngst``, ``rlnTomoYShiftAngst`` (Angstrom). Their meaning is in
:mod:`.conventions`. A user who imported the tilt series into RELION already has that
per-tilt file (with image names, dose and CTF columns): :func:`add_alignment_to_relion_tilt_series`
fills the alignment columns in; :func:`write_relion_tilt_series` writes a stand-alone one.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from ..io import atomic_write
from .conventions import ViewGeometry, relion_parameters

__all__ = [
    "RELION_ALIGNMENT_COLUMNS",
    "add_alignment_to_relion_tilt_series",
    "relion_tilt_table",
    "write_relion_tilt_series",
    "write_relion_tomograms",
]

RELION_ALIGNMENT_COLUMNS = (
    "rlnTomoXTilt",
    "rlnTomoYTilt",
    "rlnTomoZRot",
    "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst",
)


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


def relion_tilt_table(
    geometry: ViewGeometry,
    pixel_size_angst: float,
    *,
    nominal_tilts_deg=None,
    pre_exposure=None,
    image_names=None,
    keep=None,
):
    """The per-tilt table as a pandas DataFrame, one row per view in view order.

    nominal_tilts_deg: (n_views,) stage tilts (rlnTomoNominalStageTiltAngle), default the solved
    tilts; pre_exposure: (n_views,) e/A^2 before each tilt (rlnMicrographPreExposure), default 0;
    image_names: (n_views,) rlnMicrographName entries, omitted when None; keep: (n_views,) bool,
    the views written (default all): views left out of the alignment get no row, as RELION's own
    exclusion of tilt images removes theirs (their transforms are interpolated, not fitted).
    """
    import pandas as pd

    n = geometry.n_views
    columns = {}
    if image_names is not None:
        if len(image_names) != n:
            raise ValueError(f"image_names has {len(image_names)} entries for {n} views")
        columns["rlnMicrographName"] = [str(s) for s in image_names]
    for name, values, default in (
        ("rlnTomoNominalStageTiltAngle", nominal_tilts_deg, geometry.tilts_deg),
        ("rlnMicrographPreExposure", pre_exposure, np.zeros(n)),
    ):
        values = default if values is None else np.asarray(values, dtype=np.float64)
        if values.shape != (n,) or not np.all(np.isfinite(values)):
            raise ValueError(f"{name} needs {n} finite values, got shape {values.shape}")
        columns[name] = values
    columns.update(relion_parameters(geometry, pixel_size_angst))
    table = pd.DataFrame(columns)
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (n,) or not keep.any():
            raise ValueError(f"keep needs {n} booleans, at least one true, got shape {keep.shape}")
        table = table[keep].reset_index(drop=True)
    return table


def write_relion_tilt_series(
    path: str | os.PathLike, geometry: ViewGeometry, pixel_size_angst: float, tomo_name: str, **table_options
) -> None:
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

    required = (
        "rlnTomoName",
        "rlnTomoTiltSeriesStarFile",
        "rlnTomoTiltSeriesPixelSize",
        "rlnTomoSizeX",
        "rlnTomoSizeY",
        "rlnTomoSizeZ",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnTomoHand",
    )
    if not rows:
        raise ValueError("no tilt series to list")
    for row in rows:
        missing = [c for c in required if c not in row]
        if missing:
            raise ValueError(f"tomograms.star row {row.get('rlnTomoName', '?')!r} lacks {', '.join(missing)}")
    table = pd.DataFrame(rows)
    table["rlnMicrographOriginalPixelSize"] = table.get(
        "rlnMicrographOriginalPixelSize", table["rlnTomoTiltSeriesPixelSize"]
    )
    table["rlnOpticsGroupName"] = table.get("rlnOpticsGroupName", "optics1")
    _write_star(path, {"global": table})


def add_alignment_to_relion_tilt_series(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    geometry: ViewGeometry,
    pixel_size_angst: float,
    nominal_tilts_deg,
    *,
    tolerance_deg: float = 0.01,
    keep=None,
) -> None:
    """Put our alignment into the per-tilt STAR file RELION 5's import wrote for this series.

    Each row is matched to the view whose ``nominal_tilts_deg`` (n_views,) equals its
    rlnTomoNominalStageTiltAngle within ``tolerance_deg``; the five alignment columns are set
    (replaced if present), every other column and the row order are kept. Rows of views not in
    ``keep`` ((n_views,) bool, default all: the views the alignment fitted) are removed, as
    RELION's own exclusion of tilt images does. A row with no view or with several, or a view
    claimed by two rows, is an :class:`lmalign_jax.io.InputError` naming the file and the tilt
    image (1-based row of the table).
    """
    import starfile

    from ..io import InputError

    nominal = np.asarray(nominal_tilts_deg, dtype=np.float64)
    if nominal.shape != (geometry.n_views,) or not np.all(np.isfinite(nominal)):
        raise ValueError(
            f"nominal_tilts_deg needs {geometry.n_views} finite values, got shape {nominal.shape}"
        )
    try:
        blocks = starfile.read(in_path, always_dict=True)
    except Exception as exc:  # noqa: BLE001 -- starfile raises many types (pandas, parser) for a bad file
        raise InputError(
            in_path, None, f"cannot read as a STAR file ({exc.__class__.__name__}: {exc})"
        ) from None
    names = [
        name
        for name, block in blocks.items()
        if hasattr(block, "columns") and "rlnTomoNominalStageTiltAngle" in block.columns
    ]
    if len(names) != 1:
        raise InputError(
            in_path, None, f"expected one data block with rlnTomoNominalStageTiltAngle, found {len(names)}"
        )
    table = blocks[names[0]].copy()
    # a row cut short (a truncated file) reads with empty or missing cells: STAR has no empty value
    missing = table.isna() | table.apply(lambda col: col.map(lambda v: isinstance(v, str) and not v.strip()))
    if missing.to_numpy().any():
        row, col = (int(i) for i in np.argwhere(missing.to_numpy())[0])
        raise InputError(
            in_path,
            None,
            f"tilt image {row + 1}: no value for {table.columns[col]} (every row needs all "
            f"{len(table.columns)} columns: is the file cut short?)",
        )
    columns = relion_parameters(geometry, pixel_size_angst)
    views = []
    for row, value in enumerate(table["rlnTomoNominalStageTiltAngle"]):
        try:
            tilt = float(value)
        except (TypeError, ValueError):
            tilt = float("nan")
        if not np.isfinite(tilt):
            raise InputError(
                in_path,
                None,
                f"tilt image {row + 1}: rlnTomoNominalStageTiltAngle is not a number: {value!r}",
            )
        match = np.flatnonzero(np.abs(nominal - tilt) <= tolerance_deg)
        if match.size != 1:
            what = "no view" if match.size == 0 else f"{match.size} views"
            raise InputError(
                in_path, None, f"tilt image {row + 1} (nominal {tilt:g} deg) matches {what} of the alignment"
            )
        views.append(int(match[0]))
    if len(set(views)) != len(views):
        raise InputError(in_path, None, "two tilt images match the same view of the alignment")
    for name, values in columns.items():
        table[name] = values[views]
    if keep is not None:
        table = table[np.asarray(keep, dtype=bool)[views]].reset_index(drop=True)
    blocks[names[0]] = table
    _write_star(out_path, blocks)
