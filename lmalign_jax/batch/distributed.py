"""Many tilt series on many machines: groups of series sent to a Dask cluster.

Each task is one group of series; the worker that runs it aligns the whole group with
:func:`lmalign_jax.batch.runner.align_batch` (batched solves on that machine's devices). Workers keep
their compiled kernels between tasks, so groups of similar shapes are cheap after the first.

Pointing it at a cluster: install ``lmalign_jax`` and ``dask[distributed]`` on every machine;
start ``dask scheduler`` on one (it prints ``tcp://HOST:8786``) and ``dask worker
tcp://HOST:8786 --nthreads 1`` on each (JAX already uses several cores per worker; on a GPU
machine run one worker per GPU with ``CUDA_VISIBLE_DEVICES`` set); then pass the address as
``scheduler``. A ``distributed.Client``, or a ``LocalCluster`` for one machine, also works.
Dask is imported only when these functions run; it is an optional dependency.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from ..core.result import AlignmentResult
from ..observations import Observations
from .runner import align_batch

__all__ = ["align_distributed", "connect", "map_groups"]

#: Series per task when not given.
DEFAULT_GROUP_SIZE = 32


def _distributed():
    try:
        import distributed
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "a Dask scheduler needs the 'distributed' package: pip install 'dask[distributed]'"
        ) from e
    return distributed


@contextlib.contextmanager
def connect(scheduler, *, timeout: float = 30.0):
    """A ``distributed.Client`` for ``scheduler``: an address (``tcp://host:8786``), a
    ``Client`` (used as is, left open) or a cluster object such as ``LocalCluster``.

    A client made here is closed on leaving the ``with`` block. Raises ``OSError`` when the
    scheduler cannot be reached within ``timeout`` seconds.
    """
    distributed = _distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    try:
        client = distributed.Client(scheduler, set_as_default=False, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise OSError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from e
    try:
        yield client
    finally:
        client.close()


def map_groups(
    func: Callable,
    groups: Sequence,
    *args,
    scheduler,
    on_result: Callable[[int, object], None] | None = None,
) -> list:
    """Run ``func(group, *args)`` for every group on the cluster; results in group order.

    A task that raised gives its exception in place of a result (the other groups are not
    affected). ``on_result(index, result_or_exception)`` is called as each task finishes, in
    completion order (progress display). ``func`` must be importable by the workers (a
    module-level function of an installed package).
    """
    distributed = _distributed()
    results: list = [None] * len(groups)
    with connect(scheduler) as client, client.as_current():
        futures = [client.submit(func, group, *args, pure=False) for group in groups]
        index = {f.key: i for i, f in enumerate(futures)}
        for future in distributed.as_completed(futures):
            i = index[future.key]
            try:
                results[i] = future.result()
            except Exception as e:  # noqa: BLE001 - one failed task fails its group only
                results[i] = e
            if on_result is not None:
                on_result(i, results[i])
            future.release()
    return results


def align_distributed(
    observations: Sequence[Observations],
    *,
    scheduler,
    group_size: int = DEFAULT_GROUP_SIZE,
    on_result: Callable[[int, object], None] | None = None,
    **align_options,
) -> list[AlignmentResult | Exception]:
    """``align_batch`` over a Dask cluster: groups of ``group_size`` series, one task each.

    Series are grouped by shape so each worker compiles few buckets. ``align_options`` are
    those of :func:`lmalign_jax.batch.runner.align_batch` shared by all series (``progress`` is not
    available across machines; ``on_result(group_index, results)`` reports finished groups).
    Per-series options (``rotation_deg``, ``ref_view``, ``weights`` as sequences) are split
    with the groups. Returns one entry per series, in order, as ``align_batch`` does; a
    group whose task failed gives its exception for each of its series.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    if "progress" in align_options:
        raise ValueError("progress callbacks do not cross machines; use on_result")
    n = len(observations)
    per_series = {
        k: v
        for k, v in align_options.items()
        if k in ("rotation_deg", "ref_view", "weights") and _is_sequence(v)
    }
    for k, v in per_series.items():
        if len(v) != n:
            raise ValueError(f"{k} has {len(v)} entries for {n} series; give one value or one per series")
    shared = {k: v for k, v in align_options.items() if k not in per_series}
    order = sorted(range(n), key=lambda i: _shape(observations[i]))
    index_groups = [order[i : i + group_size] for i in range(0, n, group_size)]
    tasks = [
        ([observations[i] for i in g], shared | {k: [v[i] for i in g] for k, v in per_series.items()})
        for g in index_groups
    ]
    results: list = [None] * n
    done = map_groups(_run_task, tasks, scheduler=scheduler, on_result=on_result)
    for g, value in zip(index_groups, done, strict=True):
        for j, i in enumerate(g):
            results[i] = value if isinstance(value, BaseException) else value[j]
    return results


def _run_task(task) -> list:
    """What a worker runs: one group of series through ``align_batch``."""
    observations, options = task
    return align_batch(observations, **options)


def _is_sequence(value) -> bool:
    import numpy as np

    return value is not None and not np.isscalar(value) and not isinstance(value, np.ndarray)


def _shape(obs) -> tuple[int, int]:
    return (obs.n_views, obs.n_markers) if isinstance(obs, Observations) else (0, 0)
