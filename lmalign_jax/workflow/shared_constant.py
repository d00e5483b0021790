"""``lmalign batch --share CONSTANT``: estimate a constant shared by the batch, then fix it.

First pass: every series is solved with the constant's parameter ``shared`` across its views
(one value per series) in batched solves, and each series' estimate and standard error come
from its own fit. :func:`lmalign_jax.analysis.shared_constant.combine` makes the shared value
(inverse-variance weighted, disagreeing series left out; its docstring says why this is the
joint optimum). Second pass (the normal batch): the series that agree are aligned with the
constant fixed at the shared value; those that disagree keep their own alignment as asked,
since their own data, not the batch, decide it, and the summary names them.
"""

from __future__ import annotations

from dataclasses import replace

from ..analysis.shared_constant import DEFAULT_K, SharedConstant, check_shareable, combine, series_estimate
from ..batch.runner import align_batch
from ..core.result import AlignmentResult
from ..solve import LMConfig
from .batch_series import BatchOptions, Prepared
from .status import UsageError


def estimate_shared(
    prepared: list[Prepared], options: BatchOptions, constant: str, k: float = DEFAULT_K
) -> SharedConstant:
    """The shared constant from every prepared series (first pass, nothing written).

    UsageError (one line) for a constant that cannot be shared, fewer than two series, or
    fewer than two whose fit gives an estimate.
    """
    try:
        parameter = check_shareable(constant)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if len(prepared) < 2:
        raise UsageError(
            f"--share {constant} needs at least two series to share it; "
            f"the batch has {len(prepared)} to align"
        )
    if not k > 0:
        raise UsageError(f"--share-threshold must be a positive number of standard deviations, got {k:g}")
    results = align_batch(
        [p.observations for p in prepared],
        model=options.model,
        rotation_deg=[p.inputs.rotation_deg for p in prepared],
        modes=options.modes | {parameter: "shared"},
        stages=options.stages,
        config=LMConfig(max_iterations=options.max_iterations),
        dtype=options.dtype,
        bucket=options.bucket,
        batch_size=options.batch_size,
    )
    estimates = [
        series_estimate(r, parameter) if isinstance(r, AlignmentResult) else (float("nan"),) * 2
        for r in results
    ]
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


def split_by_agreement(
    prepared: list[Prepared], options: BatchOptions, shared: SharedConstant
) -> list[tuple[list[Prepared], BatchOptions]]:
    """(series, options) groups of the second pass: the kept series with the constant fixed at
    the shared value, the others with the options as given."""
    parameter = check_shareable(shared.name)
    kept = [
        replace(
            p,
            inputs=replace(
                p.inputs,
                rotation_deg=shared.value,
                rotation_source=f"shared by the batch (--share {shared.name}: {shared.value:.3f} deg)",
            ),
        )
        for p, keep in zip(prepared, shared.kept, strict=True)
        if keep
    ]
    others = [p for p, keep in zip(prepared, shared.kept, strict=True) if not keep]
    fixed = replace(options, modes=options.modes | {parameter: "fixed"})
    return [(group, opts) for group, opts in ((kept, fixed), (others, options)) if group]
