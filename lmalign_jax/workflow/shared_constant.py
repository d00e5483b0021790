"""``lmalign batch --share CONSTANT``: estimate a constant shared by the batch, then fix it.

First pass: every series is solved in batched solves (with the rotation ``shared`` across its
views for ``--share rotation``; with the options as given for ``--share tilt-offset``), and each
series' estimate and standard error come from its own fit (its rotation, or the tilt offset
that levels its beads: :mod:`lmalign_jax.analysis.shared_constant`).
:func:`~lmalign_jax.analysis.shared_constant.combine` makes the shared value (inverse-variance
weighted, disagreeing series left out). Second pass (the normal batch): the series that agree
are aligned with the constant fixed at the shared value (the rotation fixed; or every nominal
tilt plus the shared offset, as a corrected stage offset would give, so the written ``.tlt`` and
``.xyz`` are in the frame where the specimens lie level on average); those that disagree keep
their own alignment as asked, since their own data, not the batch, decide it, and the summary
names them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..analysis.shared_constant import (
    DEFAULT_K,
    SHARED_PARAMETER,
    SharedConstant,
    check_shareable,
    combine,
    level_offset_estimate,
    series_estimate,
)
from ..batch.runner import align_batch
from ..core.result import AlignmentResult
from ..solve import LMConfig
from .batch_series import BatchOptions, Prepared
from .status import UsageError


def _estimate(result, constant: str) -> tuple[float, float]:
    if not isinstance(result, AlignmentResult):
        return float("nan"), float("nan")
    if constant in SHARED_PARAMETER:
        return series_estimate(result, SHARED_PARAMETER[constant])
    return level_offset_estimate(result)


def estimate_shared(
    prepared: list[Prepared], options: BatchOptions, constant: str, k: float = DEFAULT_K
) -> SharedConstant:
    """The shared constant from every prepared series (first pass, nothing written).

    UsageError (one line) for a constant that cannot be shared, fewer than two series, or
    fewer than two whose fit gives an estimate.
    """
    try:
        check_shareable(constant)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if len(prepared) < 2:
        raise UsageError(
            f"--share {constant} needs at least two series to share it; "
            f"the batch has {len(prepared)} to align"
        )
    if not k > 0:
        raise UsageError(f"--share-threshold must be a positive number of standard deviations, got {k:g}")
    parameter = SHARED_PARAMETER.get(constant)
    results = align_batch(
        [p.observations for p in prepared],
        model=options.model,
        rotation_deg=[p.inputs.rotation_deg for p in prepared],
        modes=options.modes | ({parameter: "shared"} if parameter else {}),
        stages=options.stages,
        config=LMConfig(max_iterations=options.max_iterations),
        dtype=options.dtype,
        bucket=options.bucket,
        batch_size=options.batch_size,
    )
    estimates = [_estimate(r, constant) for r in results]
    try:
        return combine(
            [p.spec.name for p in prepared],
            [e[0] for e in estimates],
            [e[1] for e in estimates],
            name=constant,
            k=k,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _with_constant(p: Prepared, shared: SharedConstant) -> Prepared:
    """Series ``p`` with the shared constant fixed in its inputs."""
    source = f"shared by the batch (--share {shared.name}: {shared.value:.3f} deg)"
    if shared.name == "rotation":
        return replace(p, inputs=replace(p.inputs, rotation_deg=shared.value, rotation_source=source))
    offset = float(shared.value)
    return replace(
        p,
        inputs=p.inputs.with_tilt_offset(offset, source),
        observations=replace(p.observations, tilts_deg=np.asarray(p.observations.tilts_deg) + offset),
    )


def split_by_agreement(
    prepared: list[Prepared], options: BatchOptions, shared: SharedConstant
) -> list[tuple[list[Prepared], BatchOptions]]:
    """(series, options) groups of the second pass: the kept series with the constant fixed at
    the shared value, the others with the options as given."""
    check_shareable(shared.name)
    kept = [_with_constant(p, shared) for p, keep in zip(prepared, shared.kept, strict=True) if keep]
    others = [p for p, keep in zip(prepared, shared.kept, strict=True) if not keep]
    parameter = SHARED_PARAMETER.get(shared.name)
    fixed = replace(options, modes=options.modes | {parameter: "fixed"}) if parameter else options
    return [(group, opts) for group, opts in ((kept, fixed), (others, options)) if group]
