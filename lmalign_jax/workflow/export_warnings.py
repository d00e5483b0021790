"""What an export must say it leaves out: a deformation model's per-view deformation, a
flattened record's X-axis tilt where a target does not carry it, what the targets that hold a
rotation, a tilt and a shift per view lose (magnification, z factors, a local alignment), and an
earlier alignment's ``P.zfac``/``Plocal.xf`` left beside an IMOD export. :func:`export_warnings`
gathers them for ``lmalign export`` and ``align --export``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..deformation_parameters import largest_deformation
from ..export import unrepresented_px
from ..io import InputError
from ..io.imod_local import LocalAlignment
from ..io.outputs import OutputSet
from ..report import AlignmentRecord
from .local import LOCAL_SUFFIX
from .record_markers import excluded_views, flattened_xtilt_deg, record_geometry, z_factors

__all__ = [
    "RIGID_TARGETS",
    "export_drops",
    "export_warnings",
    "geometry_drops",
    "stale_companions",
    "x_tilt_drops",
]


def export_drops(record: AlignmentRecord) -> str | None:
    """What no export format carries of ``record``'s alignment, in words (None: nothing): the
    per-view deformation of a ``--model warp`` or ``--model shape`` record (the formats hold its
    rigid part)."""
    views = record.views
    largest = None if views is None else largest_deformation(record.model_name, views.parameters)
    if largest is None:
        return None
    return (
        f"{record.path} is a {record.model_name} model's alignment ({record.model_name} coefficients up to "
        f"{largest:.3g} px 1000 px from the centre): the exported files hold its rigid part only; "
        f"'lmalign reconstruct --alignment' applies the {record.model_name}"
    )


def x_tilt_drops(record: AlignmentRecord, targets: Sequence[str], prefix: str) -> str | None:
    """The warning for a flattened record (``align --flatten``) exported to targets that do not
    carry its X-axis tilt (RELION, the Portal, AreTomo; IMOD's ``.xtilt`` does); None when there
    are none, or the X-axis tilt is 0."""
    x_tilt = flattened_xtilt_deg(record)
    if x_tilt == 0:
        return None
    names = {"relion": f"{prefix}.star", "portal": f"{prefix}_portal.json", "aretomo": f"{prefix}.aln"}
    dropped = [f"{t} ({names[t]})" for t in targets if t in names]
    if not dropped:
        return None
    return (
        f"{record.path} is flattened with an X-axis tilt of {x_tilt:.2f} deg (the "
        f"value of IMOD's .xtilt): {', '.join(dropped)} do not carry it (written as 0); apply it there "
        "by hand or export the alignment without --flatten"
    )


#: Targets whose per-view geometry is a rotation, a tilt and a shift (no magnification, stretch,
#: skew or height term) and which carry no local alignment (AreTomo's local rows: shifts only).
RIGID_TARGETS = ("relion", "aretomo", "portal")


def geometry_drops(
    record: AlignmentRecord, targets: Sequence[str], prefix: str, local: LocalAlignment | None = None
) -> str | None:
    """The warning for targets that hold a view's rotation, tilt and shift only
    (:data:`RIGID_TARGETS`), naming what of ``record``'s alignment they lose and how much: the
    views' magnification, stretch and skew where they move the image corners by more than half
    the fit's RMS residual (:func:`lmalign_jax.export.unrepresented_px`), the z factors (the
    ``.zfac``) at the solved markers' heights, and the local alignment (``local``, or the one the
    record names; AreTomo keeps each patch's shift). None when they lose nothing worth saying."""
    lossy = [t for t in targets if t in RIGID_TARGETS]
    if not lossy:
        return None
    fitted = ~excluded_views(record)
    losses = []
    lost = np.where(fitted, unrepresented_px(record_geometry(record)), 0.0)
    rms = record.rms_residual_px
    if lost.max() > max(0.05, 0.5 * (rms or 0.0)):
        k = int(np.argmax(lost))
        fit = f", against the fit's RMS residual of {rms:.2f} px" if rms else ""
        losses.append(
            f"the views' magnification{', stretch and skew' if record.model_name == 'imod' else ''} "
            f"(up to {lost[k]:.2f} px at the image corners, view {k + 1}{fit})"
        )
    try:  # None at once for a model without a height term
        zfac = z_factors(record)
    except InputError:  # views lacking a parameter: the IMOD target refuses them, nothing to say here
        zfac = None
    if zfac is not None and record.markers is not None and record.markers.xyz.size:
        height = np.abs(record.markers.xyz[:, 2]).max()
        moved = np.where(fitted, np.abs(zfac).max(axis=1), 0.0) * height
        if moved.max() > 0.05:
            losses.append(
                f"the z factors of {prefix}.zfac (up to {moved.max():.2f} px at the markers' heights)"
            )
    if local is not None or record.local is not None:
        losses.append(
            "the local alignment"
            + (" (the .aln's local rows keep each patch's shift only)" if "aretomo" in lossy else "")
        )
    if not losses:
        return None
    return (
        f"{', '.join(lossy)} hold{'s' if len(lossy) == 1 else ''} each view's rotation, tilt and shift only: "
        f"{'it loses' if len(lossy) == 1 else 'they lose'} "
        + "; ".join(losses)
        + ". The IMOD files carry all of it"
        + (
            f"; align with --scale-mode fixed for a geometry {'it holds' if len(lossy) == 1 else 'they hold'}"
            " exactly"
            if losses[0].startswith("the views'")
            else ""
        )
    )


def stale_companions(targets: Sequence[str], out_dir: str, prefix: str, written: Sequence[str]) -> str | None:
    """The warning for an IMOD export beside a ``P.zfac`` or ``Plocal.xf`` it did not write (an
    earlier export or run into the folder, for another alignment), which IMOD's tilt would apply
    with the new ``.xf`` (ZFACTORFILE, LOCALFILE); None when there is none."""
    if "imod" not in targets:
        return None
    out = OutputSet(out_dir, prefix)
    names = {os.path.abspath(w) for w in written}
    stale = [
        p
        for p in out.final_paths((".zfac", LOCAL_SUFFIX))
        if os.path.exists(p) and os.path.abspath(p) not in names
    ]
    if not stale:
        return None
    one = len(stale) == 1
    return (
        f"{' and '.join(stale)} {'is' if one else 'are'} not part of this alignment (from an earlier run or "
        f"export): IMOD's tilt would apply {'it' if one else 'them'} with the new {prefix}.xf (ZFACTORFILE, "
        f"LOCALFILE); remove {'it' if one else 'them'}"
    )


def export_warnings(
    record: AlignmentRecord,
    targets: Sequence[str],
    prefix: str,
    local: LocalAlignment | None,
    out_dir: str,
    written: Sequence[str],
) -> list[str]:
    """What an export written (``written``, into ``out_dir``) must say: a deformation model's
    rigid part only (:func:`export_drops`), a flattened record's X-axis tilt
    (:func:`x_tilt_drops`), what the rigid targets lose (:func:`geometry_drops`), an earlier
    alignment's ``P.zfac``/``Plocal.xf`` left beside it (:func:`stale_companions`)."""
    messages = (
        export_drops(record),
        x_tilt_drops(record, targets, prefix),
        geometry_drops(record, targets, prefix, local),
        stale_companions(targets, out_dir, prefix, written),
    )
    return [m for m in messages if m]
