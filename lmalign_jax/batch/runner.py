"""Aligning many tilt series at once: shape buckets, batched solves, several local devices.

``align_batch`` runs the stages of :func:`lmalign_jax.core.align.align` on a list of series. Each
series falls into a *bucket* by its view and marker counts rounded up, and is padded to the
largest member of its bucket, ``(V, M)``: the extra views and markers get weight 0 and are held
fixed, so in the normal equations they are identity rows with zero gradient, their step is
exactly zero and the cost, gradient and step norms the L-M tests use are unchanged. A padded
series therefore follows the same iterations as its own solve (up to rounding in sums that now
include zeros). The padded problems of a bucket are stacked along a leading batch axis and one
jitted kernel per bucket solves them, every stage in the same call: stages differ only in which
entries are free, which is data (the free masks of all stages are built on the host up front),
and a ``lax.scan`` over the stages carries each series from one stage to the next on the device.

The kernel runs a ``lax.fori_loop`` over groups of ``vmap_width`` series; each group is one
``jax.vmap`` of the stage scan. In a vmapped ``while_loop`` a member that has stopped keeps its
state while the others iterate, so a series that converges early is not changed by one that
needs more iterations. ``vmap_width=1`` (the CPU default) runs the series one after another
inside the kernel: on CPU the solve is compute-bound, so vmapping saves nothing there, while
one call per chunk removes every per-stage round trip to the host. Accelerators default to
vmapping a whole device's share at once. With several local devices the batch is split across
them with ``jax.shard_map`` over a one-axis mesh: each device runs its own loop on its share
(on a multi-core CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX
starts gives N such devices).

The start values (tilt-axis estimate, closed-form markers and shifts) and the problems are built
per series on the host with the same functions ``align()`` uses; calls are dispatched
asynchronously, so the host prepares the next chunk while the device works.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import jax
import numpy as np

from ..core.frame import recentred_again, z_centred_start
from ..core.problem import check_points_per_view, mode_labels
from ..core.result import AlignmentResult
from ..core.settings import STAGES, check_options
from ..models import ProjectionModel
from ..observations import Observations
from ..solve import LMConfig, Status
from .chunks import Chunk, ChunkRunner, ProgressCallback, Series, prepare_series
from .plan import DEFAULT_BUCKET, bucket_shape, make_plan

__all__ = ["DEFAULT_BUCKET", "align_batch", "bucket_shape"]


def _per_series(value, n: int, name: str, is_single: Callable) -> list:
    """A per-series option: one value for all, or a sequence with one per series."""
    if is_single(value):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} series; give one value or one per series")
    return values


def _check_options(model, modes, stages, dtype, bucket):
    """The options shared by every series, checked as ``align()`` checks them."""
    m, modes, stages = check_options(model, modes, stages, dtype)
    for name, mode in modes.items():
        if not isinstance(mode, str):
            raise ValueError(
                f"parameter {name!r}: align_batch takes the modes free, fixed, shared, group:N and "
                "linear:N; per-view labels need align()"
            )  # noqa: TRY004
        mode_labels(name, mode, 1)  # raises on an unknown mode
    if bucket != "max":
        bucket_shape(1, 1, bucket)  # raises on a bad bucket
    return m, modes, stages


def align_batch(
    observations: Sequence[Observations],
    *,
    model: str | ProjectionModel = "jou",
    rotation_deg: float | None | Sequence[float | None] = None,
    modes: dict | None = None,
    stages=STAGES,
    config: LMConfig = LMConfig(),  # noqa: B008 - immutable, as in align()
    dtype: str = "float64",
    ref_view: int | None | Sequence[int | None] = None,
    weights: np.ndarray | None | Sequence[np.ndarray | None] = None,
    bucket=DEFAULT_BUCKET,
    batch_size: int | None = None,
    vmap_width: int | None = None,
    devices=None,
    progress: ProgressCallback | None = None,
) -> list[AlignmentResult | Exception]:
    """Align many tilt series with batched solves; each answer is that of ``align()``.

    Args:
        observations: the series.
        model, modes, stages, config, dtype: as for ``align()``, shared by every series
            (modes are strings: free, fixed, shared, group:N).
        rotation_deg, ref_view, weights: as for ``align()``; one value for every series or a
            sequence with one per series.
        bucket: which series share a kernel: an int or a pair of steps (series whose
            (views, markers) round up to the same multiples), ``"exact"`` (one bucket per
            distinct shape) or ``"max"`` (one bucket). A bucket's series are padded to its
            largest member; each bucket compiles one kernel, which serves every stage.
        batch_size: series slots per kernel call and device (default 32, rounded up to a
            multiple of ``vmap_width``). Unused slots are skipped, so a call's shapes, and
            its compilation, do not depend on how many series there are.
        vmap_width: series solved together by one ``jax.vmap`` inside a call; default 1 on
            CPU (fastest there: one series after another, in one compiled loop) and
            ``batch_size`` on accelerators.
        devices: local devices each call is split over (default: all devices of the default
            backend; an int takes the first N); with one device nothing is sharded.
        progress: ``progress(index, event, detail)``, see ``ProgressCallback``.
    Returns:
        One entry per series, in order: its ``AlignmentResult`` (numerical failure reported in
        ``status``, as by ``align()``), or the exception that stopped that series (bad
        observations or per-series options). Stage ``seconds`` are the series' share of its
        kernel call, split over its stages in proportion to their iterations (all stages run in
        one call); ``settings.bucket`` has the bucket shape.
    Raises:
        ValueError: options shared by every series (model, modes, stages, dtype, bucket, sizes).
    """
    m, modes, stages = _check_options(model, modes, stages, dtype, bucket)
    n = len(observations)
    rotations = _per_series(rotation_deg, n, "rotation_deg", lambda v: v is None or np.isscalar(v))
    refs = _per_series(ref_view, n, "ref_view", lambda v: v is None or np.isscalar(v))
    weight_list = _per_series(weights, n, "weights", lambda v: v is None or isinstance(v, np.ndarray))
    plan = make_plan(m, modes, dtype, batch_size, vmap_width, devices)
    results: list = [None] * n
    runner = ChunkRunner(plan, stages, config, dtype, results, progress or (lambda *_: None))
    again = ChunkRunner(plan, stages[-1:], config, dtype, results, progress or (lambda *_: None))
    again = again if recentred_again(m) else None

    series = []
    for i, obs in enumerate(observations):
        s = Series(i, obs)
        if isinstance(obs, Observations):
            series.append(s)
        else:
            runner.fail(s, TypeError(f"series {i} is a {type(obs).__name__}, not Observations"))
    if series and bucket == "max":
        largest = (max(s.obs.n_views for s in series), max(s.obs.n_markers for s in series))
    buckets: dict[tuple[int, int], list[Series]] = {}
    for s in series:
        key = largest if bucket == "max" else bucket_shape(s.obs.n_views, s.obs.n_markers, bucket)
        buckets.setdefault(key, []).append(s)
    # Each bucket is padded to its largest member only: series of one shape are not padded at
    # all (padding is arithmetic on zeros: 107 x 30 series in (112, 32) cost 12% more).
    buckets = {
        (max(s.obs.n_views for s in members), max(s.obs.n_markers for s in members)): members
        for members in buckets.values()
    }
    for shape, members in buckets.items():
        for s in members:
            s.shape = shape
    chunks = [
        Chunk(shape, members[c : c + plan.capacity])
        for shape, members in sorted(buckets.items())
        for c in range(0, len(members), plan.capacity)
    ]

    # Each chunk is one asynchronous kernel call: the host prepares the next chunk while the
    # device solves the ones before it; calls run in dispatch order and are collected in it.
    with jax.enable_x64(dtype == "float64"):
        in_flight: deque[Chunk] = deque()
        for chunk in chunks:
            for s in chunk.series:
                try:
                    check_points_per_view(m, modes, s.obs)
                    prepare_series(s, m, rotations[s.index], refs[s.index], weight_list[s.index])
                except Exception as e:  # noqa: BLE001 - reported per series
                    runner.fail(s, e)
            if runner.dispatch(chunk):
                in_flight.append(chunk)
        while in_flight:
            chunk = in_flight.popleft()
            runner.collect(chunk)
            if again is not None:
                _last_stage_again(again, chunk, m, results)
            runner.finish(chunk)
    return results


def _last_stage_again(again: ChunkRunner, chunk: Chunk, m: ProjectionModel, results: list) -> None:
    """As ``align()`` does for a model of ``core.frame.recentred_again``: the chunk's solved
    series with their markers at zero mean z, then the last stage once more (``again``)."""
    solved = [s for s in chunk.series if results[s.index] is None and s.status != Status.FAILED]
    for s in solved:
        s.views, s.markers = z_centred_start(m, s.views, s.markers)
    rerun = Chunk(chunk.shape, solved)
    if solved and again.dispatch(rerun):
        again.collect(rerun)
