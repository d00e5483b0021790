"""CryoET Data Portal alignment JSON (the schema the ``cryoet-alignment`` package reads).

Fields, as the portal's ``Alignment`` model has them: ``affine_transformation_matrix`` (4 x 4,
identity: no volume transform), ``alignment_type`` ("GLOBAL"), ``format`` (the program the
alignment came from), ``is_portal_standard``, ``tilt_offset`` and ``x_rotation_offset``
(degrees, 0), ``volume_offset`` and ``volume_dimension`` ({"x", "y", "z"}, pixels), and
``per_section_alignment_parameters``: per kept view ``z_index`` (0-based view),
``tilt_angle``, ``volume_x_rotation`` (degrees), ``in_plane_rotation`` (2 x 2 rotation by the
tilt-axis angle, counter-clockwise) and ``x_offset``, ``y_offset`` (pixels). Offsets and
rotation follow AreTomo's meaning (:mod:`.conventions`); ``cryoet-alignment`` converts IMOD
files to the same numbers when the xf matrices are pure rotations.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..io import atomic_write
from .conventions import ViewGeometry, decompose_xf

__all__ = ["portal_alignment", "write_portal_json"]


def portal_alignment(
    geometry: ViewGeometry, *, excluded_views=(), volume_size_px=(0.0, 0.0, 0.0), source_format: str = "IMOD"
) -> dict:
    """The portal alignment as a JSON-ready dict.

    excluded_views: 0-based views left out of ``per_section_alignment_parameters``;
    volume_size_px: (x, y, z) of the reconstruction, pixels (0 when unknown, as the portal's
    converter writes it); source_format: the ``format`` field ("IMOD": our files are IMOD's).
    """
    rotation, _, shift = decompose_xf(geometry.xf)
    excluded = {int(v) for v in excluded_views}
    sections = []
    for v in range(geometry.n_views):
        if v in excluded:
            continue
        a = np.radians(rotation[v])
        sections.append(
            {
                "z_index": v,
                "tilt_angle": float(geometry.tilts_deg[v]),
                "volume_x_rotation": float(geometry.x_tilt_deg[v]),
                "in_plane_rotation": [
                    [float(np.cos(a)), float(-np.sin(a))],
                    [float(np.sin(a)), float(np.cos(a))],
                ],
                "x_offset": float(shift[v, 0]),
                "y_offset": float(shift[v, 1]),
            }
        )
    if not sections:
        raise ValueError("every view is excluded: nothing to write")
    x, y, z = (float(s) for s in volume_size_px)
    return {
        "affine_transformation_matrix": np.eye(4).tolist(),
        "alignment_type": "GLOBAL",
        "format": source_format,
        "is_portal_standard": True,
        "tilt_offset": 0.0,
        "volume_offset": {"x": 0.0, "y": 0.0, "z": 0.0},
        "x_rotation_offset": 0.0,
        "per_section_alignment_parameters": sections,
        "volume_dimension": {"x": x, "y": y, "z": z},
    }


def write_portal_json(path: str | os.PathLike, geometry: ViewGeometry, **options) -> None:
    """Write :func:`portal_alignment` (same ``options``) as JSON."""
    document = portal_alignment(geometry, **options)
    with atomic_write(path) as f:
        json.dump(document, f, indent=2)
        f.write("\n")
