"""The ``local`` section of the ``<prefix>.json`` record (``align --local``), built and read back.

Only :mod:`lmalign_jax.report.record_build` (building) and :mod:`lmalign_jax.report.record`
(reading) call this module: it is the record's layout for one optional section, kept apart. The section is
an addition within ``record_version`` 1: a record without it (older, or aligned without
``--local``) reads with ``local`` None.

Layout::

    "local": {
      "file": "<prefix>local.xf",            # the local file's name, beside the record
      "options": {patch_size, overlap, min_fids, fix_markers, modes, weighting, significance, joint},
      "keep_rule": "...",                    # how patches were kept, in words
      "grid": {"n_patches": [nX, nY], "start": [X, Y], "spacing": [dX, dY]},
      "n_patches": P, "n_kept": K,
      "global_mean_residual_px": g,          # every marker fitted through the global transform
      "local_mean_residual_px": l,           # ... through the local file as IMOD's tilt applies it
      "improvement_percent": 100 (g - l) / g,
      "solve_seconds": s,
      "joint_free": j,                       # parameters of the kept patches refined together (0: not)
      "patches": [{"index": [i, j], "centre": [x, y], "box": [w, h], "n_markers": n,
                   "marker_ids": [...], "global_rms_px": .., "local_rms_px": ..,
                   "n_free": p, "n_coordinates": c, "test_n_free": q, "drop_sigma2": ..,
                   "threshold_sigma2": .. or null,
                   "kept": true/false, "status": "...", "reason": null or why the global stands}],
      "notes": [...]
    }
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..io.errors import InputError

__all__ = ["LOCAL_KEEP_RULE", "LocalRecord", "local_section", "read_local_section"]

LOCAL_KEEP_RULE = (
    "a patch keeps its own fit only when its fit with every marker weighted fully lowers its sum of "
    "squares by more than fitting noise would: drop/sigma^2 > lam (p + {k:g} sqrt(2p)), p that fit's "
    "free parameters (test_n_free), lam = sum w^2 / sum w of a robust fit's weights (else 1); the "
    "others hold the global solution (--local-keep-all keeps every patch, as IMOD does)"
)
KEEP_ALL_RULE = "every patch keeps its own fit (--local-keep-all, as IMOD does)"
KEEP_SOLVED_RULE = (
    "every patch that could be solved keeps its own fit (--local-keep-all, as IMOD does); the others "
    "hold the global solution (their status says why)"
)


def local_section(solution, options, file_name: str, marker_ids) -> dict:
    """The record's ``local`` section of a ``core.local.LocalSolution`` (module docstring).

    ``options``: its ``LocalOptions``; ``file_name``: the local file's name (no folder);
    ``marker_ids``: (m,) the markers' ids in the input file, in the result's order.
    """
    f = solution.file
    kept = sum(p.kept_local for p in solution.patches)
    g, loc = solution.global_mean_px, solution.local_mean_px
    patches = []
    for p in solution.patches:
        patches.append(
            {
                "index": list(p.index),
                "centre": list(p.centre),
                "box": list(p.box),
                "n_markers": p.n_markers,
                "marker_ids": [int(marker_ids[i]) for i in p.marker_indices],
                "global_rms_px": p.global_rms_px,
                "local_rms_px": p.local_rms_px,
                "n_free": p.n_free,
                "n_coordinates": p.n_coordinates,
                "test_n_free": p.test_n_free,
                "drop_sigma2": p.chi2_drop,
                "threshold_sigma2": p.threshold if math.isfinite(p.threshold) else None,
                "kept": p.kept_local,
                "status": p.status,
                "reason": None if p.kept_local else p.status,
            }
        )
    significance = options.significance
    return {
        "file": file_name,
        "options": options.to_dict(),
        "keep_rule": (
            (KEEP_ALL_RULE if kept == len(solution.patches) else KEEP_SOLVED_RULE)
            if significance is None
            else LOCAL_KEEP_RULE.format(k=significance)
        ),
        "grid": {"n_patches": list(f.n_patches), "start": list(f.start), "spacing": list(f.spacing)},
        "n_patches": len(solution.patches),
        "n_kept": int(kept),
        "global_mean_residual_px": g,
        "local_mean_residual_px": loc,
        "improvement_percent": 100.0 * (g - loc) / g if g > 0 else None,
        "solve_seconds": solution.seconds,
        "joint_free": int(solution.joint_free),
        "patches": patches,
        "notes": list(solution.notes),
    }


@dataclass(frozen=True)
class LocalRecord:
    """What a record says about its local alignment: the file's name as recorded (``file``, no
    folder), patches and how many kept, mean residuals (px) through the global transform and
    through the local file, and the per-patch entries as written (dicts, module docstring)."""

    file: str
    n_patches: int
    n_kept: int
    global_mean_residual_px: float | None
    local_mean_residual_px: float | None
    patches: list


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def read_local_section(path: str, section) -> LocalRecord | None:
    """The ``local`` section of the record at ``path`` (None when absent); InputError naming the
    record when the section is there but malformed."""
    if section is None:
        return None
    file = section.get("file") if isinstance(section, dict) else None
    if not isinstance(file, str) or not file:
        raise InputError(path, None, "'local' section has no valid 'file' (the local file's name)")
    if "/" in file or "\\" in file:
        raise InputError(
            path,
            None,
            f"'local' section's 'file' must name a file beside the record, without a folder, got {file!r} "
            "(give another local file with --local FILE)",
        )
    patches = section.get("patches")
    n_patches, n_kept = section.get("n_patches"), section.get("n_kept")
    if not (
        isinstance(patches, list)
        and all(isinstance(p, dict) for p in patches)
        and isinstance(n_patches, int)
        and isinstance(n_kept, int)
        and n_patches == len(patches)
        and 0 <= n_kept <= n_patches
    ):
        raise InputError(path, None, "'local' section: 'patches', 'n_patches' or 'n_kept' malformed")
    return LocalRecord(
        file=file,
        n_patches=n_patches,
        n_kept=n_kept,
        global_mean_residual_px=_number(section.get("global_mean_residual_px")),
        local_mean_residual_px=_number(section.get("local_mean_residual_px")),
        patches=patches,
    )
