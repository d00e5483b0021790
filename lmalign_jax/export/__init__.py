"""Exports of a solved alignment for the next program: RELION 5, AreTomo, the CryoET Data
Portal and IMOD's extra files; sign and axis conventions in :mod:`.conventions`.

numpy only (no JAX); ``starfile`` is imported when a STAR file is written.
"""

from .aretomo import ALN_COLUMNS, AretomoAlignment, read_aln, write_aln
from .conventions import (
    ViewGeometry,
    aretomo_parameters,
    aretomo_project,
    decompose_xf,
    our_project,
    relion_parameters,
    relion_project,
    unrepresented_px,
    xf_from_rotation_shift,
)
from .imod import read_xtilt, write_xtilt
from .portal import portal_alignment, write_portal_json
from .relion import (
    RELION_ALIGNMENT_COLUMNS,
    add_alignment_to_relion_tilt_series,
    relion_tilt_table,
    write_relion_tilt_series,
    write_relion_tomograms,
)

__all__ = [
    "ALN_COLUMNS",
    "RELION_ALIGNMENT_COLUMNS",
    "AretomoAlignment",
    "ViewGeometry",
    "add_alignment_to_relion_tilt_series",
    "aretomo_parameters",
    "aretomo_project",
    "decompose_xf",
    "our_project",
    "portal_alignment",
    "read_aln",
    "read_xtilt",
    "relion_parameters",
    "relion_project",
    "relion_tilt_table",
    "unrepresented_px",
    "write_aln",
    "write_portal_json",
    "write_relion_tilt_series",
    "write_relion_tomograms",
    "write_xtilt",
    "xf_from_rotation_shift",
]
