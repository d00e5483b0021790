"""Writing an alignment: every output file of a solved series, all or none.

:func:`write_alignment` is the one place that writes ``<prefix>.xf .tlt .resid .xyz .json .png``
(``align``, ``batch`` and ``demo`` call it); a new output file is added here. Files are staged
and renamed together by :class:`~lmalign_jax.io.outputs.OutputSet`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass

import jax
import numpy as np

from .. import __version__, io
from ..analysis.criteria import underdetermined
from ..analysis.surfaces import SurfaceAnalysis, analyze_surfaces
from ..core.local_maps import flattened_pair
from ..export.imod import write_xtilt, write_zfac, xtilt_file_value_deg
from ..io.imod_local import write_local_xf
from ..io.markerset import contour_numbers
from ..io.outputs import OutputSet
from ..report import (
    FileViews,
    build_record,
    expand_to_file_views,
    interpolate_transforms,
    record_as_read,
    record_to_json,
    render_figure,
)
from .local import LOCAL_SUFFIX, SolvedLocal, in_flattened_frame
from .record_markers import z_factors
from .selection import Selection
from .series import SeriesInputs
from .settings import AlignSettings
from .status import EXIT_FAILED, EXIT_OK, UsageError
from .truth import truth_ok

#: Outputs of a converged alignment, and of one that did not converge (the report only).
ALIGN_OUTPUTS = (".xf", ".tlt", ".resid", ".xyz", ".json", ".png")
REPORT_OUTPUTS = (".json", ".png")


def software_info() -> dict:
    """The record's ``software`` section: versions and the device the solve ran on."""
    return {
        "name": "lmalign_jax",
        "version": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "device": str(jax.devices()[0]),
    }


def _warn_underdetermined(result, warn) -> None:
    """A deformation model whose (effective) parameters leave less than one residual degree of
    freedom passes through every point: its residual and noise estimate say nothing about the data
    (rigid models never get here: a view short of points for its own parameters is left out).
    Say so."""
    coordinates = 2 * result.observations.n_observed
    if not underdetermined(result.n_parameters, coordinates):  # compare's rule
        return
    count = (
        f"{result.n_parameters:.1f} effective parameters ({result.n_free} free)"
        if result.n_effective is not None
        else f"{result.n_free} free parameters"
    )
    warn(
        f"the {result.model.name} model has {count} for {coordinates} coordinates: it passes through "
        "every point, so its residual and noise estimate say nothing about the data ('lmalign compare' "
        "marks it underdetermined); align more markers or views, or use a rigid model (jou)"
    )


def _warn_xf_alone(summary: dict, model: str, prefix: str, warn) -> None:
    """A deformation model's ``.xf`` holds its rigid part only: say so when, applied alone, it
    leaves the points more than 3 sigma (rms) from the solved markers' projections."""
    check = summary["aligned_check_rms_px"]
    worst = max((v for v in (check["x"], check["y"]) if v is not None), default=0.0)
    sigma = summary["sigma_px"]
    if np.isfinite(sigma) and worst > 3 * sigma:
        warn(
            f"{prefix}.xf alone leaves the points {worst:.2f} px (rms) from the solved markers' projections "
            f"({3 * sigma:.2f} px would be 3 sigma): the {model} model's per-view deformation "
            "carries the rest, which IMOD's tilt and other tools reading only the .xf do not apply; "
            "'lmalign reconstruct --alignment' applies it, and 'lmalign compare' says whether the data "
            "justify the model"
        )


def check_output_folder(out: OutputSet, suffixes, input_paths, option: str | None = None) -> None:
    """Refuse an output folder that cannot be written and outputs that would overwrite inputs;
    ``option`` is how the messages name what the user gave (``--out-dir <folder>`` unless given)."""
    said = option or f"--out-dir {out.out_dir}"
    head = os.path.abspath(out.out_dir)
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise UsageError(f"{said}: {head} exists and is not a folder")
    if not os.access(head, os.W_OK | os.X_OK):
        raise UsageError(f"{said}: {head} is not writable")
    try:
        longest = os.pathconf(head, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    for path in out.final_paths(suffixes):  # caught here, not after the solve
        for part in os.path.abspath(path).split(os.sep):
            if len(os.fsencode(part)) > longest:
                raise UsageError(
                    f"{said}: the name {part[:40]}... is {len(os.fsencode(part))} bytes, longer than the "
                    f"{longest} a file name may have here"
                )
    inputs_real = {os.path.realpath(p) for p in input_paths if p}
    for path in out.final_paths(suffixes):
        if os.path.realpath(path) in inputs_real:
            choose = "another --out" if option else "another --prefix or --out-dir"
            raise UsageError(f"output {path} would overwrite an input file; choose {choose}")


def input_record(inputs: SeriesInputs, sel: Selection, obs) -> dict:
    """The record's ``inputs`` section: files, image size, views and markers (views 1-based);
    ``tilt_offset_deg`` (added to every tilt of the file) and its source when one was added."""
    offset = (
        {"tilt_offset_deg": inputs.tilt_offset_deg, "tilt_offset_source": inputs.tilt_offset_source}
        if inputs.tilt_offset_source is not None
        else {}
    )
    return {
        "markers": inputs.markers_path,
        "markers_format": inputs.markers_format,
        "tilts": inputs.tilts_path,
        "stack": inputs.stack_path,
        "image_size": list(inputs.image_size),
        "image_size_source": inputs.image_size_source,
        "pixel_size_A": inputs.pixel_size,
        "n_views": int(inputs.tilts_deg.size),
        "n_views_fitted": obs.n_views,
        "excluded_views": sorted(
            v + 1
            for v in set(sel.excluded_by_user) | set(sel.excluded_no_markers) | set(sel.excluded_few_points)
        ),
        "excluded_by_user": [v + 1 for v in sel.excluded_by_user],
        "excluded_no_markers": [v + 1 for v in sel.excluded_no_markers],
        "excluded_too_few_points": [v + 1 for v in sel.excluded_few_points],
        "n_markers_in_file": inputs.markers.n_markers,
        "n_markers": obs.n_markers,
        "dropped_markers": sel.dropped_markers,
        "n_points_in_file": inputs.markers.n_observations,
        "tilts_sorted_for_fit": sel.sorted_by_tilt,
        **offset,
    }


def _stage_alignment_files(
    out: OutputSet, result, fv: FileViews, marker_ids, inputs: SeriesInputs, flat: SurfaceAnalysis | None
) -> None:
    """Stage the .xf, .tlt, .resid and .xyz of a converged alignment (file view order); with
    ``flat``, the .tlt levelled by its tilt change and an .xtilt with its X-axis tilt."""
    io.write_xf(out.stage(".xf"), fv.xf[:, :, :2], fv.xf[:, :, 2])
    io.write_tlt(out.stage(".tlt"), fv.tilts_deg + (flat.tilt_angle_change_deg if flat else 0.0))
    if flat is not None:
        write_xtilt(out.stage(".xtilt"), np.full(fv.n_views, xtilt_file_value_deg(flat.x_axis_tilt_deg)))
    m_idx, v_idx = np.nonzero(fv.mask.T)  # grouped by marker, views increasing (IMOD's order)
    io.write_resid(out.stage(".resid"), fv.xy[v_idx, m_idx], v_idx, fv.residuals[v_idx, m_idx])
    nx, ny = inputs.image_size
    xyz = result.markers + np.array([nx / 2.0, ny / 2.0, 0.0])  # fid.xyz: x, y in image pixels
    ids = np.asarray(contour_numbers(tuple(marker_ids)))
    io.write_fid_xyz(out.stage(".xyz"), xyz, ids, inputs.pixel_size, (int(round(nx)), int(round(ny))))


def _file_view_transforms(xf: np.ndarray, fv: FileViews) -> np.ndarray:
    """(n, 2, 3) transforms of the fitted views (``xf`` (k, 2, 3), fitting order) in file order,
    the views left out interpolated in tilt between them, as ``expand_to_file_views`` does."""
    out = np.empty_like(fv.xf)
    out[fv.view_index] = xf
    if fv.excluded.any():
        tilts = fv.nominal_tilts_deg
        out[fv.excluded] = interpolate_transforms(xf, tilts[fv.view_index], tilts[fv.excluded])
    return out


def surface_analysis(
    result, n_surfaces: int, warn=None, tilt_offset_deg: float = 0.0
) -> SurfaceAnalysis | None:
    """IMOD's surface analysis of a converged result's markers, or None (with a warning) when
    it cannot be done (not converged, too few markers). ``tilt_offset_deg``: the offset already
    added to the file's tilts (IMOD's AngleOffset), part of its total tilt angle change."""
    if not result.converged:
        return None
    try:
        return analyze_surfaces(result.markers, n_surfaces, tilt_offset_deg=tilt_offset_deg)
    except ValueError as exc:
        if warn is not None:
            warn(f"no surface analysis: {exc}")
        return None


@dataclass
class WrittenAlignment:
    """What :func:`write_alignment` wrote: the record (a dict, as in the ``.json``), the result
    on every file view, the paths written, the exit status the alignment earns, and the
    surface analysis when one was asked for."""

    record: dict
    file_views: FileViews
    written: list
    exit_code: int
    surfaces: SurfaceAnalysis | None = None


def write_alignment(
    out: OutputSet,
    inputs: SeriesInputs,
    sel: Selection,
    result,
    marker_ids,
    settings: AlignSettings,
    *,
    command,
    errors=None,
    robust=None,
    figure: bool = True,
    n_worst: int = 10,
    truth: dict | None = None,
    batch: dict | None = None,
    surfaces: int | None = None,
    flatten: bool = False,
    warn=None,
    local: SolvedLocal | None = None,
) -> WrittenAlignment:
    """Write a solved series' outputs into ``out``: all of ALIGN_OUTPUTS if it converged, else
    the report only (``.json``, ``.png``); no ``.png`` without ``figure``.

    ``result``: the AlignmentResult of ``sel``'s views (fitting order); ``marker_ids`` (m,) its
    markers' ids; ``errors``: its Uncertainty; ``robust``: its RobustResult; ``truth``: a
    comparison with the truth (``workflow.truth.compare_with_truth``), which also sets the
    exit status; ``batch``: the batched solve's details for the record's options;
    ``surfaces`` (1 or 2): add IMOD's surface analysis of the markers to the record;
    ``flatten``: also apply its tilt change to the ``.tlt`` and write its X-axis tilt to an
    ``.xtilt`` (implies ``surfaces=1`` when not given). ``warn``: one-line warnings.
    ``local``: a solved local alignment of a converged ``result``, written as ``<prefix>local.xf``
    with the others and described in the record's ``local`` section.
    """
    fv = expand_to_file_views(result, sel.view_index, inputs.tilts_deg)
    converged = result.converged
    rotation = inputs.rotation_deg if inputs.rotation_deg is not None else result.rotation_estimated_deg
    options = settings.record_options(rotation, inputs.rotation_source, command, batch)
    analysis = (
        surface_analysis(result, surfaces or 1, warn, inputs.tilt_offset_deg)
        if (surfaces or flatten)
        else None
    )
    flat = analysis if flatten else None
    suffixes = tuple(s for s in (ALIGN_OUTPUTS if converged else REPORT_OUTPUTS) if figure or s != ".png")
    suffixes += (".xtilt",) if flat is not None else ()
    local = local if converged else None
    # a flattened series whose projection has a height term: its .xf and .zfac fitted together in
    # the frame of its .tlt (the solved .xf misses there by the turned height's x part)
    x_tilt = xtilt_file_value_deg(flat.x_axis_tilt_deg) if flat is not None else 0.0  # what tilt applies
    pair = (
        flattened_pair(result, flat.tilt_angle_change_deg, x_tilt) if flat is not None and converged else None
    )
    if pair is not None:
        fv = dataclasses.replace(fv, xf=_file_view_transforms(pair[0], fv))
    if local is not None and flat is not None:
        local = in_flattened_frame(
            local,
            result,
            sel.view_index,
            inputs.tilts_deg,
            flat.tilt_angle_change_deg,
            None if pair is None else pair[0],
            x_tilt,
        )
    suffixes += (LOCAL_SUFFIX,) if local is not None else ()
    # a local file with each patch's z factors is read by tilt with the global .zfac beside it
    # (ZFACTORFILE; without it tilt gives the patches none): written with it, as export writes it
    with_zfac = local is not None and local.file.z_factors is not None
    suffixes += (".zfac",) if with_zfac else ()
    extra = {
        "outputs": [os.path.basename(p) for p in out.final_paths(suffixes)],
        "exit_code": EXIT_OK if converged else EXIT_FAILED,
    }
    if robust is not None:
        extra["robust"] = robust.to_dict()
    if analysis is not None:
        extra["surfaces"] = {**analysis.to_dict(), "flattened": flat is not None}
    if truth is not None:
        extra["truth"] = truth
        if not truth_ok(truth):
            extra["exit_code"] = EXIT_FAILED
    record = build_record(
        result,
        fv,
        marker_ids=marker_ids,
        inputs=input_record(inputs, sel, result.observations),
        options=options,
        n_worst=n_worst,
        software=software_info(),
        extra=extra,
        errors=errors,
        local=None if local is None else (local.solution, local.options, out.prefix + LOCAL_SUFFIX),
    )
    if converged and warn is not None and result.model.regularization is not None:
        _warn_underdetermined(result, warn)
        _warn_xf_alone(record["summary"], result.model.name, out.prefix, warn)
    with out:
        if converged:
            _stage_alignment_files(out, result, fv, marker_ids, inputs, flat)
        if local is not None:
            write_local_xf(out.stage(LOCAL_SUFFIX), local.file)
        if with_zfac:
            zfac = z_factors(record_as_read(record, out.path(".json")))
            write_zfac(out.stage(".zfac"), np.zeros((fv.n_views, 2)) if zfac is None else zfac)
        out.write_text(".json", record_to_json(record))
        if figure:
            markers_name = os.path.basename(inputs.markers_path)
            title = f"{out.prefix}: {markers_name}, {os.path.basename(inputs.tilts_path)}"
            out.write_bytes(".png", render_figure(result, fv, record, title=title, errors=errors))
        written = out.commit()
    return WrittenAlignment(record, fv, written, extra["exit_code"], analysis)
