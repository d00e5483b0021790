"""Exporting a written alignment for the next program: IMOD, AreTomo, RELION 5, the Data Portal.

:func:`export_alignment` turns an alignment record (``<prefix>.json``, read back by
:func:`lmalign_jax.report.read_record`) into the files each program reads, all or none
(:class:`~lmalign_jax.io.outputs.OutputSet`). ``lmalign export`` and ``lmalign align
--export`` call it. The writers and their conventions are in :mod:`lmalign_jax.export`.

Files, for ``--prefix P``:

- imod: ``P.xf``, ``P.tlt`` (as in the record), ``P.xtilt`` (zeros: our ``.xf`` hold no X-axis
  tilt; a flattened record's X-axis tilt, which the other targets do not carry:
  ``workflow.export_warnings``), ``P_nogaps.fid`` (gaps filled by the solved projection; the
  measured points it keeps must be those the record was fitted to,
  :func:`lmalign_jax.workflow.record_markers.check_markers_match`), ``P_erase.fid`` (beads in
  the aligned stack, for ``ccderaser``) and ``align.log`` (tiltalign's layout, named as etomo
  names it: one folder per tilt series, as etomo, RELION's IMOD importer and WarpTools'
  ``ts_import_alignments`` expect), ``P.zfac`` when the projection varies with height beyond tilt's
  formula (:func:`z_factors`: luther's magnifications, diez's declination), and ``Plocal.xf`` with the
  local alignment (the file the record names, ``align --local``, or one given: checked and scaled
  to the record's pixels as ``reconstruct --local`` does, :func:`local_alignment_for`; written
  under the name etomo and tilt's LOCALFILE expect). No ``.tltxf`` (it equals the
  ``.xf``: we align the raw images).
- aretomo: ``P.aln`` (global rows; views left out of the fit are DarkFrame lines), and local
  rows converted from that local alignment: :func:`local_alignment_for`,
  :func:`lmalign_jax.export.aretomo.aretomo_local_rows`.
- relion: ``P.star``, RELION 5's per-tilt-series STAR (block ``data_P``); needs the pixel size.
- portal: ``P_portal.json``, the CryoET Data Portal alignment JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from ..export import (
    add_alignment_to_relion_tilt_series,
    portal_alignment,
    write_aln,
    write_relion_tilt_series,
    write_xtilt,
)
from ..export.imod import (
    filled_marker_set,
    write_erase_model,
    write_filled_model,
    write_zfac,
)
from ..export.imod_log import AlignLog, write_align_log
from ..io import InputError, write_tlt, write_xf
from ..io.imod_local import LocalAlignment, write_local_xf
from ..io.markerset import contour_numbers
from ..io.outputs import OutputSet
from ..report import AlignmentRecord, read_record
from .local import LOCAL_SUFFIX
from .local_file import read_local_for
from .record_markers import excluded_views, fitted_positions, flattened_xtilt_deg, record_geometry, z_factors
from .series import FAR_OUTSIDE
from .status import UsageError

__all__ = [
    "ALIGN_LOG_NAME",
    "EXPORT_TARGETS",
    "check_export",
    "check_export_folder",
    "export_alignment",
    "export_suffixes",
    "local_alignment_for",
    "unnamed_local_file",
    "parse_export_targets",
    "read_alignment_record",
    "z_factors",
]

EXPORT_TARGETS = ("imod", "aretomo", "relion", "portal")
ALIGN_LOG_NAME = "align.log"
_SUFFIXES = {
    "imod": (".xf", ".tlt", ".xtilt", "_nogaps.fid", "_erase.fid", ".zfac", LOCAL_SUFFIX),
    "aretomo": (".aln",),
    "relion": (".star",),
    "portal": ("_portal.json",),
}


#: The largest pixel size taken, Angstrom (1 um): beyond any tilt series, and far from where the
#: exported lengths in Angstrom would overflow to inf.
MAX_PIXEL_ANGST = 1e4
#: The smallest, Angstrom: below any microscope's, and where the STAR's shifts in Angstrom (6
#: decimals) would round to 0.
MIN_PIXEL_ANGST = 0.01


def parse_export_targets(text: str, option: str = "--to") -> tuple[str, ...]:
    """``"imod,relion"`` or ``"all"`` as targets in EXPORT_TARGETS order; UsageError otherwise."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not names:
        raise UsageError(f"{option}: name one or more of {', '.join(EXPORT_TARGETS)}, or all")
    if "all" in names:
        return EXPORT_TARGETS
    unknown = [n for n in names if n not in EXPORT_TARGETS]
    if unknown:
        raise UsageError(
            f"{option}: unknown target {unknown[0]!r}; choose from {', '.join(EXPORT_TARGETS)}, or all"
        )
    return tuple(t for t in EXPORT_TARGETS if t in names)


def export_suffixes(targets: Sequence[str], *, with_xf_tlt: bool = True) -> tuple[str, ...]:
    """The ``<prefix>`` suffixes the targets write (align.log aside)."""
    out = []
    for t in targets:
        out += [s for s in _SUFFIXES[t] if with_xf_tlt or s not in (".xf", ".tlt")]
    return tuple(out)


def read_alignment_record(path: str) -> AlignmentRecord:
    """The record at ``path``; InputError naming it if it is not an ``lmalign align`` record or
    cannot be exported (not converged, a shift or marker far outside its image)."""
    record = read_record(path)
    _check_exportable(record)
    return record


def local_alignment_for(
    record: AlignmentRecord, path: str | None = None, warn=None, pixel_size_angst: float | None = None
) -> tuple[LocalAlignment | None, str | None]:
    """(IMOD local alignment, its path) for the export: ``path``, else the file the record's
    ``local`` section names (``align --local``), else (None, None): a ``<stem>local.xf`` beside a
    record without that section is another run's (:func:`unnamed_local_file`). Checked as
    ``reconstruct --local`` checks it (``workflow.local_file.read_local_for``: transforms, local
    angles, the grid against the record's image) and scaled from its header's pixel size to
    ``pixel_size_angst`` (default: the record's), with a ``warn``-ing (a callable taking the
    message; None: silent); InputError naming the file and line, patch or view of the first
    problem."""
    if path is None:
        if record.local is None:
            return None, None
        path = record.local_path
        if not os.path.isfile(path):
            raise InputError(
                record.path,
                None,
                f"names the local alignment {record.local.file}, which is not beside it ({path}); "
                "put it back or re-run lmalign align --local",
            )
    if record.image_size is None or record.xf is None or record.tilts_deg is None:
        raise InputError(
            record.path, None, "the record has no image size or alignment to check a local file against"
        )
    x_tilt = flattened_xtilt_deg(record)
    x_tilts = None if x_tilt == 0 else np.full(record.tilts_deg.size, x_tilt)
    local = read_local_for(
        path,
        record.xf,
        record.tilts_deg,
        x_tilts,
        tuple(int(round(v)) for v in record.image_size),
        pixel_size_angst if pixel_size_angst is not None else record.pixel_size_A,
        warn or (lambda message: None),
        frame="record",
    )
    return local, path


def unnamed_local_file(record: AlignmentRecord) -> str | None:
    """``<stem>local.xf`` beside a record that names no local alignment (an earlier ``align
    --local`` into the same folder: solved against another global alignment), which the export
    does not use unless given; None when there is none."""
    if record.local is not None:
        return None
    path = os.path.splitext(os.path.abspath(record.path))[0] + LOCAL_SUFFIX
    return path if os.path.isfile(path) else None


def _require(record: AlignmentRecord, what: str):
    """InputError naming the record when it cannot be exported (:func:`_check_exportable`) or
    has no image size."""
    _check_exportable(record)
    if record.image_size is None:
        raise InputError(record.path, None, f"the record has no image size, needed for {what}")


def _check_exportable(record: AlignmentRecord) -> None:
    """InputError naming the record when its alignment did not converge, or (with its image size)
    a view's shift or a marker is more than :data:`FAR_OUTSIDE` image sizes out (a hand edit)."""
    record.check_converged("export")
    if record.image_size is None:
        return
    far = FAR_OUTSIDE * max(record.image_size)
    shifts = np.abs(record.xf[:, :, 2]).max(axis=1)
    if shifts.max() > far:
        k = int(np.argmax(shifts > far))
        raise InputError(
            record.path,
            None,
            f"views[{k}].xf shift ({record.xf[k, 0, 2]:g}, {record.xf[k, 1, 2]:g}) px is more than "
            f"{FAR_OUTSIDE} image sizes ({far:g} px): not an alignment of this image",
        )
    if record.markers is not None and record.markers.xyz.size:
        reach = np.abs(record.markers.xyz).max(axis=1)
        if reach.max() > far:
            i = int(np.argmax(reach > far))
            x, y, z = record.markers.xyz[i]
            raise InputError(
                record.path,
                None,
                f"markers[{i}] at ({x:g}, {y:g}, {z:g}) px is more than {FAR_OUTSIDE} image sizes "
                f"({far:g} px) from the centre: not a marker of this image",
            )


def _align_log(record: AlignmentRecord, prefix: str, software: str) -> AlignLog:
    views, markers = record.views, record.markers
    keep = ~views.excluded
    params = views.parameters
    n_keep = int(keep.sum())

    def param(name, default):
        return params[name][keep] if name in params else np.full(n_keep, default)

    scale = param("scale", 1.0)
    tilts = record.tilts_deg[keep]
    options = record.options
    start = options.get("rotation_deg")
    rotation = float(start) if isinstance(start, (int, float)) else float(np.mean(param("rotation", 0.0)))
    entries = [
        ("ModelFile", os.path.basename(record.markers_path or "")),
        ("ImageFile", os.path.basename(record.stack_path or "")),
        ("OutputResidualFile", f"{prefix}.resid"),
        ("OutputFidXYZFile", f"{prefix}.xyz"),
        ("OutputFilledInModel", f"{prefix}_nogaps.fid"),
        ("OutputTiltFile", f"{prefix}.tlt"),
        ("OutputXAxisTiltFile", f"{prefix}.xtilt"),
        ("OutputTransformFile", f"{prefix}.xf"),
        ("RotationAngle", f"{rotation:.2f}"),
        ("TiltFile", os.path.basename(record.tilts_path or "")),
        ("AngleOffset", "0.0"),
    ]
    if not keep.all():  # every view left out of the fit (by the user or for lack of markers), as the .aln
        entries.append(("ExcludeList", ",".join(str(int(v) + 1) for v in np.flatnonzero(~keep))))
    if record.pixel_size_A is not None:
        entries.append(("UnbinnedPixelSize", f"{record.pixel_size_A / 10.0:g}"))
    n_points = record.n_points or 0
    return AlignLog(
        entries=tuple(entries),
        view_numbers=np.flatnonzero(keep) + 1,
        rotation_deg=param("rotation", 0.0),
        tilt_deg=tilts,
        delta_tilt_deg=tilts - views.nominal_tilts_deg[keep],
        magnification=scale,
        dmag=param("xstretch", 0.0),
        skew_deg=param("skew", 0.0),
        view_mean_residual_px=views.mean_residual_px[keep],
        contour_numbers=np.asarray(contour_numbers(tuple(int(i) for i in markers.ids))),
        markers_xyz=markers.xyz,
        marker_mean_residual_px=markers.mean_residual_px,
        n_points=int(n_points),
        n_unknowns=int(record.n_free or 0),
        residual_mean_px=float(record.mean_residual_px or 0.0),
        residual_sd_px=float(record.sd_residual_px) if record.sd_residual_px is not None else float("nan"),
        note=f"Written by {software} from {os.path.basename(record.path)} (model {record.model_name}), "
        "not by IMOD's tiltalign; lengths in pixels",
    )


def check_export_folder(targets: Sequence[str], out_dir: str, prefix: str) -> None:
    """UsageError, before any work, when the IMOD target would replace another series'
    ``align.log`` in ``out_dir`` (``align --export`` checks it before solving)."""
    if "imod" in targets:
        _check_align_log(out_dir, prefix)


def _check_align_log(out_dir: str, prefix: str) -> None:
    """Refuse to replace another series' align.log (one folder per tilt series)."""
    path = os.path.join(out_dir, ALIGN_LOG_NAME)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(20000)
    except OSError:
        return
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "OutputTiltFile":
            if value.strip() != f"{prefix}.tlt":
                raise UsageError(
                    f"{path} belongs to another tilt series ({value.strip()}); IMOD files go in one folder "
                    "per tilt series: choose another --out-dir"
                )
            return


def check_export(
    targets: Sequence[str], prefix: str, pixel_size_angst: float | None, missing: str | None
) -> None:
    """UsageError, before any work, for an export that cannot be written: a pixel size that is
    not positive (or, with targets, outside :data:`MIN_PIXEL_ANGST` .. :data:`MAX_PIXEL_ANGST`), or RELION
    without one
    (``missing``: why there is none, e.g. "X.json has none"; None: not known yet, not checked)
    or with a ``prefix`` that is not one word (RELION names the tilt series by it)."""
    pixel = pixel_size_angst
    if pixel is not None and not (np.isfinite(pixel) and pixel > 0):
        raise UsageError(f"--pixel-size must be a positive number of Angstrom, got {pixel:g}")
    if targets and pixel is not None and pixel < MIN_PIXEL_ANGST:
        raise UsageError(
            f"pixel size {pixel:g} A is under {MIN_PIXEL_ANGST:g} A, not a tilt series' pixel size: "
            "give the pixel size in Angstrom with --pixel-size"
        )
    if targets and pixel is not None and pixel > MAX_PIXEL_ANGST:
        raise UsageError(
            f"pixel size {pixel:g} A is over {MAX_PIXEL_ANGST:g} A (1 um), not a tilt series' pixel size: "
            "give the pixel size in Angstrom with --pixel-size"
        )
    if "relion" not in targets:
        return
    if pixel is None and missing is not None:
        raise UsageError(f"RELION needs the pixel size and {missing}: give --pixel-size (Angstrom per pixel)")
    if not prefix or any(c.isspace() for c in prefix):
        raise UsageError(
            f"RELION names the tilt series by the output prefix, {prefix!r}, which is not one word: "
            "give --prefix NAME without spaces"
        )


def export_alignment(
    record: AlignmentRecord,
    targets: Sequence[str],
    *,
    out_dir: str,
    prefix: str,
    pixel_size_angst: float | None = None,
    measured=None,
    with_xf_tlt: bool = True,
    software: str = "lmalign_jax",
    surface_lines: Sequence[str] = (),
    relion_tilt_series: str | None = None,
    local: LocalAlignment | None = None,
) -> list[str]:
    """Write ``targets`` (from EXPORT_TARGETS) of ``record`` into ``out_dir``; all or none.

    pixel_size_angst: A/px, default the record's (RELION needs one); measured: the input's
    MarkerSet (gaps of the filled model are filled, measured points kept; None: all projected);
    with_xf_tlt: write ``.xf``/``.tlt`` with the IMOD files (``align --export`` has just
    written them); surface_lines: the surface-analysis block for ``align.log``; local: IMOD's
    local alignment of these views, for ``Plocal.xf`` and the ``.aln``'s local rows (default: the
    one the record names, :func:`local_alignment_for`). Returns the
    paths written. InputError for a record that cannot be exported, UsageError for a missing
    pixel size or a folder holding another series' ``align.log``.
    """
    targets = tuple(targets)
    _require(record, ", ".join(targets))
    if local is None and {"imod", "aretomo"} & set(targets):
        local = local_alignment_for(record, pixel_size_angst=pixel_size_angst)[0]
    geometry = record_geometry(record)
    pixel = pixel_size_angst if pixel_size_angst is not None else record.pixel_size_A
    check_export(targets, prefix, pixel, f"{record.path} has none")
    excluded = excluded_views(record)
    fitted = ~excluded
    if "imod" in targets:
        if record.views is None or record.markers is None:
            raise InputError(record.path, None, "the record lacks its per-view table or solved markers")
        _check_align_log(out_dir, prefix)
    stage = {
        "imod": lambda out: _stage_imod(
            out, record, geometry, fitted, measured, pixel, with_xf_tlt, software, surface_lines, local
        ),
        "aretomo": lambda out: write_aln(
            out.stage(".aln"), geometry, excluded_views=np.flatnonzero(excluded), local=local
        ),
        "relion": lambda out: _stage_relion(out, record, geometry, pixel, prefix, relion_tilt_series, fitted),
        "portal": lambda out: out.write_text(
            "_portal.json",
            json.dumps(portal_alignment(geometry, excluded_views=np.flatnonzero(excluded)), indent=2) + "\n",
        ),
    }
    out = OutputSet(out_dir, prefix)
    with out:
        for target in targets:
            try:
                stage[target](out)
            except InputError:
                raise
            except ValueError as exc:  # a writer's layout cannot hold a number: say which, write nothing
                raise InputError(record.path, None, f"cannot be written for {target}: {exc}") from None
        return out.commit()


def _stage_imod(
    out, record, geometry, fitted, measured, pixel, with_xf_tlt, software, surface_lines, local
) -> None:
    """Stage the IMOD files (module docstring) in ``out``."""
    prefix = out.prefix
    if with_xf_tlt:
        write_xf(out.stage(".xf"), record.xf[:, :, :2], record.xf[:, :, 2])
        write_tlt(out.stage(".tlt"), record.tilts_deg)
    write_xtilt(out.stage(".xtilt"), _x_tilts(record, geometry))
    zfac = z_factors(record)
    if zfac is not None:
        write_zfac(out.stage(".zfac"), zfac)
    markers = record.markers
    # the record's own model projects its solved markers (the exported geometry's tilts carry a
    # flattened record's tilt change, which its solved markers do not: 26 px off, review)
    raw = fitted_positions(record)
    filled = filled_marker_set(
        geometry, markers.xyz, markers.ids, measured, fitted, pixel_size_angst=pixel, projected=raw
    )
    write_filled_model(out.stage("_nogaps.fid"), filled)
    write_erase_model(
        out.stage("_erase.fid"),
        geometry,
        markers.xyz,
        markers.ids,
        fitted,
        pixel_size_angst=pixel,
        projected=raw,
    )
    write_align_log(
        out.stage_named(ALIGN_LOG_NAME),
        _align_log(record, prefix, software),
        surface_lines or _recorded_surface_lines(record),
    )
    if local is not None:  # checked and scaled to the record's pixels (local_alignment_for)
        write_local_xf(out.stage(LOCAL_SUFFIX), local)


def _x_tilts(record: AlignmentRecord, geometry) -> np.ndarray:
    """(n,) ``.xtilt`` degrees: the geometry's (zeros for our models), or, where ``align
    --flatten`` levelled the series, the value its ``.xtilt`` got (``xtilt_file_value_deg``)."""
    x_tilt = flattened_xtilt_deg(record)
    return np.full(len(geometry.x_tilt_deg), x_tilt) if x_tilt != 0 else np.asarray(geometry.x_tilt_deg)


def _recorded_surface_lines(record: AlignmentRecord) -> list[str]:
    """The surface-analysis block ``align --surfaces`` stored in the record (none: [])."""
    lines = (record.surfaces or {}).get("imod_log_lines")
    return [str(line) for line in lines] if isinstance(lines, list) else []


def _stage_relion(out, record, geometry, pixel, prefix, relion_tilt_series, fitted) -> None:
    """Stage ``P.star``: stand-alone, or RELION's imported tilt-series STAR with our columns; the
    views left out of the fit (``fitted`` false) get no row, as in the ``.aln`` and Portal files."""
    nominal = record.views.nominal_tilts_deg if record.views is not None else None
    if not relion_tilt_series:
        write_relion_tilt_series(
            out.stage(".star"), geometry, pixel, prefix, nominal_tilts_deg=nominal, keep=fitted
        )
        return
    if nominal is None:
        raise InputError(record.path, None, "the record has no nominal tilts to match RELION's rows")
    add_alignment_to_relion_tilt_series(
        relion_tilt_series, out.stage(".star"), geometry, pixel, nominal, keep=fitted
    )
