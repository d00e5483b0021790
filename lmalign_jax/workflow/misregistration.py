"""The predicted misregistration of a particle list under a written alignment (``lmalign
uncertainty``): read the record's covariance and the points, evaluate, write a CSV."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.misregistration import COORDINATES, DEFINITION, misregistration
from ..io import atomic_write
from ..io.errors import InputError
from ..io.points import read_points
from ..report.record import read_covariance, read_record
from .series import FAR_OUTSIDE


@dataclass(frozen=True)
class PointErrors:
    """points (n, 3) px from the tomogram centre; misregistration_px (n,)."""

    points: np.ndarray
    misregistration_px: np.ndarray


def points_misregistration(
    record_path: str,
    points_path: str,
    *,
    pixel_size: float | None = None,
    tomogram_size: tuple[float, float, float] | None = None,
    tomo_name: str | None = None,
) -> PointErrors:
    """The misregistration of every point of ``points_path`` (CSV or RELION STAR, see
    ``io.points``) under the alignment of ``record_path`` (an ``lmalign align`` .json written
    with standard errors). Bad files raise ``InputError``."""
    record = read_record(record_path)
    record.check_converged("evaluate")
    covariance = read_covariance(record_path)
    points = read_points(points_path, pixel_size=pixel_size, tomogram_size=tomogram_size, tomo_name=tomo_name)
    size = record.image_size
    if size is not None:  # a point this far out is an error in the file (as for markers)
        limit = FAR_OUTSIDE * max(size)
        far = np.flatnonzero(np.max(np.abs(points), axis=1) > limit)
        if far.size:
            x, y, z = points[far[0]]
            raise InputError(
                points_path,
                None,
                f"point {far[0] + 1} at ({x:.6g}, {y:.6g}, {z:.6g}) px is more than {FAR_OUTSIDE} image "
                f"sizes ({limit:.0f} px) from the tomogram centre: not a position in {record_path}'s "
                "tomogram (coordinates are unbinned px from the centre)",
            )
    values = misregistration(covariance, points)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:  # a record without its image size: no reach to check, but never write inf
        raise InputError(
            points_path,
            None,
            f"point {bad[0] + 1}: its misregistration is not finite (coordinates too large)",
        )
    return PointErrors(points, values)


def write_points_csv(path: str, errors: PointErrors) -> None:
    """``index,x_px,y_px,z_px,misregistration_px`` per point (index 0-based in file order),
    written atomically, after two comment lines giving the definition and the coordinates."""
    with atomic_write(path) as f:
        f.write(f"# {DEFINITION}\n# coordinates: {COORDINATES}\n")
        f.write("index,x_px,y_px,z_px,misregistration_px\n")
        for i, ((x, y, z), m) in enumerate(zip(errors.points, errors.misregistration_px, strict=True)):
            f.write(f"{i},{x:.3f},{y:.3f},{z:.3f},{m:.5f}\n")
