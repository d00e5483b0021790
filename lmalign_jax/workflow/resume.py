"""``lmalign batch --resume``: which series an earlier run into the same outputs finished."""

from __future__ import annotations

import os

from ..io.imod import read_xf
from ..io.mrc import read_labels
from ..io.outputs import OutputSet
from ..io.tilts import read_tilts
from ..report import read_record
from .batch_series import RESUMED, STATUS_OK, TOMOGRAM, BatchOptions, Outcome, Prepared
from .reconstruction import reconstruction_label
from .status import EXIT_OK


def _same_file(recorded: str | None, path: str | None) -> bool:
    """Whether a path a record names is ``path`` (both None counts as the same)."""
    if recorded is None or path is None:
        return recorded is None and path is None
    return os.path.realpath(recorded) == os.path.realpath(path)


def _outputs_whole(paths: list[str], n_views: int) -> bool:
    """Whether every output is a non-empty file, and the ``.xf`` and ``.tlt`` hold one line per
    view of the series (a file emptied or cut short after the run is not taken as done)."""
    for path in paths:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return False
        ext = os.path.splitext(path)[1].lower()
        if ext == ".xf" and read_xf(path)[0].shape[0] != n_views:
            return False
        if ext == ".tlt" and read_tilts(path).size != n_views:
            return False
    return True


def earlier_outcome(p: Prepared, options: BatchOptions) -> Outcome | None:
    """The series' outcome from an earlier run into the same outputs (``--resume``), or None
    when it must be aligned (again).

    A series is done when its ``.json`` record says it converged, names the same marker, tilt
    and stack files, image size, excluded views and given rotation, was made with the same
    model, modes, stages, precision and iteration limit, is newer than its input files, and
    every output it lists is there and not empty, its ``.xf`` and ``.tlt`` whole (the ``.png``
    too when figures are wanted, the standard errors when they are). With ``--reconstruct`` its
    tomogram must also exist, be newer than the record, and carry the label of the same
    thickness, binning and filter.
    """
    out = OutputSet(p.out_dir, p.prefix)
    record_path, tomogram = out.final_paths((".json", TOMOGRAM))
    try:
        record = read_record(record_path)
        made = os.path.getmtime(record_path)
        opts = record.options
        outputs = [os.path.join(out.out_dir, name) for name in record.outputs]
        size = record.image_size
        done = (
            record.converged
            and record.exit_code == EXIT_OK
            and _same_file(record.markers_path, p.spec.markers)
            and _same_file(record.tilts_path, p.inputs.tilts_path)
            and _same_file(record.stack_path, p.stack)
            and size is not None
            and [float(v) for v in size] == [float(v) for v in p.inputs.image_size]
            and record.excluded_by_user == [v + 1 for v in p.selection.excluded_by_user]
            and opts["rotation_source"].startswith("rotation=") == (p.spec.rotation is not None)
            and (p.spec.rotation is None or opts["rotation_deg"] == p.spec.rotation)
            and (opts["model"], opts["modes"], opts["stages"], opts["dtype"], opts["max_iterations"])
            == (
                options.model,
                options.settings().all_modes(),
                list(options.stages),
                options.dtype,
                options.max_iterations,
            )
            and all(os.path.getmtime(q) <= made for q in (p.spec.markers, p.inputs.tilts_path))
            and _outputs_whole(outputs, len(p.inputs.tilts_deg))
            and (not options.figure or any(q.endswith(".png") for q in outputs))
            and (not options.errors or record.has_standard_errors)
            and opts.get("robust")
            == ({"loss": options.robust, "group_size": options.robust_group_size} if options.robust else None)
        )
        if done and options.reconstruct is not None:
            label = reconstruction_label(options.reconstruct, options.binning, options.filter)[:80]
            done = (
                os.path.isfile(tomogram)
                and os.path.getmtime(tomogram) >= made
                and label in read_labels(tomogram)
            )
            outputs.append(tomogram)
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ):  # no record, or not one this version wrote: align again
        return None
    if not done:
        return None
    obs = p.observations
    return Outcome(
        p.spec.name,
        p.spec.markers,
        p.spec.tilts,
        STATUS_OK,
        EXIT_OK,
        views=obs.n_views,
        markers_fitted=obs.n_markers,
        points=obs.n_observed,
        rms_residual_px=record.rms_residual_px,
        mean_residual_px=record.mean_residual_px,
        seconds=p.read_seconds,
        detail=RESUMED,
        outputs=outputs,
    )
