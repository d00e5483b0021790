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

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..core.frame import predicted_positions, reporting_frame
from ..core.problem import build_problem, free_masks, mode_labels, residual_function
from ..core.result import AlignmentResult, StageReport, result_from_solution
from ..core.settings import STAGES, AlignmentSettings, check_options, stage_configs, stage_setup
from ..core.start import start_values
from ..models import ProjectionModel
from ..observations import Observations
from ..solve import LMConfig, Status, Structure, Variables, choose_elimination, effective_a, least_squares

__all__ = ["DEFAULT_BUCKET", "align_batch", "bucket_shape"]

#: Default bucket: series whose view and marker counts round up to the same multiples of 8.
DEFAULT_BUCKET = (8, 8)
#: Series per kernel call and device, when ``batch_size`` is not given.
DEFAULT_BATCH_PER_DEVICE = 32
_AXIS = "series"

#: ``progress(index, event, detail)``: ``event`` is a stage name (that stage finished for series
#: ``index``; ``detail`` gives its status and RMS), ``"done"`` (``detail``: the final status) or
#: ``"error"`` (``detail``: why the series could not be aligned).
ProgressCallback = Callable[[int, str, str], None]


def bucket_shape(n_views: int, n_markers: int, bucket=DEFAULT_BUCKET) -> tuple[int, int]:
    """The bucket of a series: its ``(views, markers)`` rounded up to multiples of ``bucket``.

    ``bucket``: an int (both steps), a pair ``(view_step, marker_step)``, or ``"exact"``
    (one bucket per distinct shape). ``"max"`` (one bucket for the whole batch) is resolved by
    :func:`align_batch`, which knows every shape and pads each bucket to its largest member.
    """
    if bucket == "exact":
        return int(n_views), int(n_markers)
    steps = (bucket, bucket) if isinstance(bucket, int | np.integer) else tuple(bucket)
    if len(steps) != 2 or not all(isinstance(s, int | np.integer) and s >= 1 for s in steps):
        raise ValueError(
            f"bucket must be a positive int, a pair of positive ints, 'exact' or 'max', got {bucket!r}"
        )
    return int(math.ceil(n_views / steps[0]) * steps[0]), int(math.ceil(n_markers / steps[1]) * steps[1])


@dataclasses.dataclass(eq=False)
class _Series:
    """One series' state between stages (host side, model units)."""

    index: int
    obs: Observations
    ref_view: int = 0
    rotation_estimated: float | None = None
    weights: np.ndarray | None = None
    views: np.ndarray | None = None
    markers: np.ndarray | None = None
    shape: tuple[int, int] = (0, 0)
    reports: list = dataclasses.field(default_factory=list)
    status: Status = Status.CONVERGED
    n_free: int = 0


# --------------------------------------------------------------------------- the kernels


def _solve_stages(fn, eliminate, x0: Variables, structure: Structure, stage_free, settings, max_iterations):
    """Every stage of one series: ``lax.scan`` over the stages, each a ``least_squares``.

    ``structure``'s free masks are replaced per stage by ``stage_free`` = (free_a (S, n_a, k_a),
    free_b (S, n_b, k_b), free_g (S, n_g)); ``settings`` (S, 4) are each stage's tolerances and
    initial damping, ``max_iterations`` (S,). Between stages tied entries take their slot's
    value, as ``align()``'s round trip through model units does. A stage that fails ends the
    series: later stages leave x unchanged (their outputs are not reported). Returns x after the
    last stage that did not fail, and per stage (S,) cost, status, iterations, accepted.
    """

    def stage(carry, data):
        x, stopped = carry
        free_a, free_b, free_g, setting, max_it = data
        config = LMConfig(
            max_iterations=max_it,
            cost_tol=setting[0],
            step_tol=setting[1],
            gradient_tol=setting[2],
            initial_damping=setting[3],
        )
        sol = least_squares(
            fn,
            x,
            structure._replace(free_a=free_a, free_b=free_b, free_g=free_g),
            eliminate=eliminate,
            config=config,
        )
        stop = stopped | (sol.status == Status.FAILED)
        solved = Variables(effective_a(sol.x.a, sol.x.g, structure.tie_a), sol.x.b, sol.x.g)
        x = jax.tree_util.tree_map(lambda new, old: jnp.where(stop, old, new), solved, x)
        as_int = partial(jnp.asarray, dtype=jnp.int32)
        return (x, stop), (sol.cost, as_int(sol.status), as_int(sol.iterations), as_int(sol.accepted))

    (x, _), per_stage = jax.lax.scan(stage, (x0, jnp.asarray(False)), (*stage_free, settings, max_iterations))
    return x, *per_stage


def _solve_local(fn, eliminate, width, x0, structure, stage_free, settings, max_iterations, count):
    """Solve the first ``count`` stacked series (leading axis), ``width`` at a time.

    ``stage_free`` leaves are (B, S, ...); outputs x (B, ...) and per-stage arrays (B, S)."""
    solve = partial(_solve_stages, fn, eliminate, settings=settings, max_iterations=max_iterations)
    n, n_stages = x0.a.shape[0], settings.shape[0]
    out = (
        jax.tree_util.tree_map(jnp.zeros_like, x0),
        jnp.zeros((n, n_stages), x0.a.dtype),
        *(jnp.zeros((n, n_stages), jnp.int32) for _ in range(3)),
    )

    def group(i, out):
        start = i * width
        x, s, f = jax.tree_util.tree_map(
            lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, start, width), (x0, structure, stage_free)
        )
        if width == 1:
            squeeze = partial(jax.tree_util.tree_map, lambda leaf: leaf[0])
            res = jax.tree_util.tree_map(lambda leaf: leaf[None], solve(squeeze(x), squeeze(s), squeeze(f)))
        else:
            res = jax.vmap(solve)(x, s, f)
        return jax.tree_util.tree_map(
            lambda buf, r: jax.lax.dynamic_update_slice_in_dim(buf, r, start, 0), out, res
        )

    return jax.lax.fori_loop(0, (count + width - 1) // width, group, out)


_KERNELS: dict = {}


def _kernel(fn, eliminate: str, width: int, mesh: Mesh | None):
    """The jitted batch solve for one residual function, elimination, width and device mesh."""
    key = (fn, eliminate, width, mesh)
    if key not in _KERNELS:
        local = partial(_solve_local, fn, eliminate, width)
        if mesh is None:
            _KERNELS[key] = jax.jit(local)
        else:
            spec, rep = PartitionSpec(_AXIS), PartitionSpec()

            def sharded(x0, structure, stage_free, settings, max_iterations, counts):
                return local(x0, structure, stage_free, settings, max_iterations, counts[0])

            _KERNELS[key] = jax.jit(
                jax.shard_map(
                    sharded,
                    mesh=mesh,
                    in_specs=(spec, spec, spec, rep, rep, spec),
                    out_specs=spec,
                    check_vma=False,
                )
            )
    return _KERNELS[key]


@partial(jax.jit, static_argnums=(0, 1))
def _finish(model: ProjectionModel, tilt_free: bool, views, markers, nominal, view_mask, marker_mask):
    """Reporting frame and predicted positions of padded series (leading batch axis).

    The frame is that of ``align()`` (``core.frame.reporting_frame``) with the means taken over
    the real views and markers only. Returns views (B, V, k), markers (B, M, 3), predicted
    centred positions (B, V, M, 2).
    """

    def one(views, markers, nominal, view_mask, marker_mask):
        views, markers = reporting_frame(model, views, markers, nominal, tilt_free, view_mask, marker_mask)
        return views, markers, predicted_positions(model, views, markers)

    return jax.vmap(one)(views, markers, nominal, view_mask, marker_mask)


# --------------------------------------------------------------------------- packing


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """How a batch is laid out: the model and modes, precision, slots per call, devices."""

    model: ProjectionModel
    modes: dict
    dtype: object  # jnp.float64 or jnp.float32
    per_device: int  # slots per device and call
    width: int  # series per vmap
    devices: tuple
    mesh: Mesh | None

    @property
    def capacity(self) -> int:
        return self.per_device * len(self.devices)

    def slots(self, n: int) -> np.ndarray:
        """Slot of each of ``n`` series: dealt round-robin over the devices to balance them."""
        j = np.arange(n)
        return (j % len(self.devices)) * self.per_device + j // len(self.devices)

    def counts(self, n: int) -> np.ndarray:
        """Series per device for a chunk of ``n``."""
        d = np.arange(len(self.devices))
        return np.maximum((n - d + len(self.devices) - 1) // len(self.devices), 0).astype(np.int32)


def _padding(shape: tuple[int, int], n_slots: int):
    """How each solver input is padded to the bucket ``shape``: per field of ``Variables`` and
    ``Structure``, a function giving a leaf's padded shape, and the fill value (weight 0, not
    free, not tied: padded views and markers are identity rows of the normal equations)."""
    v, m = shape
    return (
        Variables(lambda a: (v, a.shape[1]), lambda b: (m, b.shape[1]), lambda g: (n_slots,)),
        Variables(0, 0, 0),
        Structure(
            pair_data=lambda d: d.shape[:-2] + (v, m),
            weights=lambda w: (v, m),
            free_a=lambda f: (v, f.shape[1]),
            tie_a=lambda t: (v, t.shape[1]),
            free_b=lambda f: (m, f.shape[1]),
            free_g=lambda f: (n_slots,),
            const=lambda c: c.shape,
        ),
        Structure(0, 0, False, -1, False, False, 0),
    )


def _stack(trees, slots, capacity: int, shapes, fills):
    """Stack same-structured pytrees into (capacity, ...) arrays, each leaf padded by field.

    ``shapes``/``fills`` are NamedTuples of the trees' type giving, per field, the padded shape
    of a leaf and the fill value; slots not in ``slots`` hold the fill.
    """
    fields = []
    for f, to_shape, fill in zip(trees[0]._fields, shapes, fills, strict=True):
        columns = [jax.tree_util.tree_leaves(getattr(t, f)) for t in trees]
        treedef = jax.tree_util.tree_structure(getattr(trees[0], f))
        leaves = []
        for j, first in enumerate(columns[0]):
            first = np.asarray(first)
            padded = to_shape(first)
            buf = np.full((capacity, *padded), fill, dtype=first.dtype)
            for slot, col in zip(slots, columns, strict=True):
                buf[(slot, *(slice(0, s) for s in np.shape(col[j])))] = np.asarray(col[j])
            leaves.append(buf)
        fields.append(jax.tree_util.tree_unflatten(treedef, leaves))
    return type(trees[0])(*fields)


def _n_slots(model: ProjectionModel, modes: dict, n_views: int) -> int:
    """Global slots of the problem layout for ``n_views`` views (an upper bound for fewer views)."""
    total = 0
    for name in model.parameters:
        labels = mode_labels(name, modes[name], n_views)
        total += np.unique(labels[labels >= 0]).size
    return total


# --------------------------------------------------------------------------- the pipeline


def _prepare(s: _Series, m: ProjectionModel, rotation_deg, ref_view, weights) -> None:
    """Start values of one series, computed as ``align()`` computes them (``core.start``)."""
    initial = start_values(m, s.obs, rotation_deg=rotation_deg, ref_view=ref_view, weights=weights)
    s.ref_view, s.rotation_estimated, s.weights = initial.ref_view, initial.rotation_estimated_deg, weights
    s.views, s.markers = initial.views, initial.markers


@dataclasses.dataclass(eq=False)
class _Chunk:
    """Up to one kernel call's worth of series of one bucket, and its solve in flight."""

    shape: tuple[int, int]
    series: list
    built: list = dataclasses.field(
        default_factory=list
    )  # (series, problem, free counts per stage) in flight
    slots: np.ndarray | None = None
    out: object = None  # the kernel's outputs (not yet ready) or the exception it raised
    dispatched: float = 0.0


class _Runner:
    """Every stage of ``align()`` over chunks of padded series, one kernel call per chunk."""

    def __init__(
        self, plan: _Plan, stages, config: LMConfig, dtype: str, results: list, notify: ProgressCallback
    ):
        self.plan, self.stages, self.results, self.notify = plan, stages, results, notify
        self.alignment_settings = AlignmentSettings(
            modes=plan.modes, stages=stages, dtype=dtype, config=config
        )
        configs = stage_configs(config, len(stages), dtype)  # as in align()
        self.settings = np.asarray(
            [(*c.tolerances(np.dtype(dtype)), c.initial_damping) for c in configs], dtype
        )  # (S, 4)
        self.max_iterations = np.asarray([c.max_iterations for c in configs], np.int32)  # (S,)
        self.tilt_free = self.alignment_settings.tilts_solved
        self.last_ready = 0.0

    def fail(self, s: _Series, error: Exception) -> None:
        self.results[s.index] = error
        self.notify(
            s.index,
            "error",
            str(error) if isinstance(error, ValueError | TypeError) else f"{type(error).__name__}: {error}",
        )

    def _build(self, s: _Series):
        """The series' problem (first stage's masks) and every stage's free masks, host side."""
        plan, m = self.plan, self.plan.model
        hold, marker_free = stage_setup(self.stages[0], m, s.obs, s.ref_view)
        problem = build_problem(
            m,
            s.obs,
            s.views,
            s.markers,
            plan.modes,
            marker_free,
            hold=hold,
            ref_view=s.ref_view,
            weights=s.weights,
            dtype=plan.dtype,
            on_device=False,
        )
        masks = [(problem.structure.free_a, problem.structure.free_b, problem.structure.free_g)]
        for stage in self.stages[1:]:
            hold, marker_free = stage_setup(stage, m, s.obs, s.ref_view)
            masks.append(free_masks(m, s.obs, plan.modes, marker_free, hold=hold, ref_view=s.ref_view))
        return problem, masks

    def dispatch(self, chunk: _Chunk) -> bool:
        """Build the chunk's problems and start the solve of all their stages (asynchronously).

        Returns False when no series of the chunk is left to solve.
        """
        plan, m, n_stages = self.plan, self.plan.model, len(self.stages)
        chunk.built, masks = [], []
        for s in chunk.series:
            if self.results[s.index] is not None:
                continue
            try:
                problem, stage_masks = self._build(s)
            except Exception as e:  # noqa: BLE001 - reported per series
                self.fail(s, e)
                continue
            chunk.built.append((s, problem, [int(sum(np.sum(f) for f in fm)) for fm in stage_masks]))
            masks.append(stage_masks)
        if not chunk.built:
            return False
        problems = [p for _, p, _ in chunk.built]
        v, mk = chunk.shape
        n_slots = max(_n_slots(m, plan.modes, v), *(p.x0.g.shape[0] for p in problems))
        x_shapes, x_fills, s_shapes, s_fills = _padding(chunk.shape, n_slots)
        chunk.slots = plan.slots(len(problems))
        x0 = _stack([p.x0 for p in problems], chunk.slots, plan.capacity, x_shapes, x_fills)
        structure = _stack([p.structure for p in problems], chunk.slots, plan.capacity, s_shapes, s_fills)
        stage_free = tuple(
            np.zeros((plan.capacity, n_stages, *shape), bool)
            for shape in ((v, m.n_parameters), (mk, 3), (n_slots,))
        )
        for slot, stage_masks in zip(chunk.slots, masks, strict=True):
            for k, fm in enumerate(stage_masks):
                for buf, mask in zip(stage_free, fm, strict=True):
                    buf[(slot, k, *(slice(0, n) for n in mask.shape))] = mask
        counts = plan.counts(len(problems))
        eliminate = choose_elimination(v, m.n_parameters, mk, 3)
        kernel = _kernel(residual_function(m), eliminate, plan.width, plan.mesh)
        chunk.dispatched = time.perf_counter()
        try:
            if plan.mesh is None:
                chunk.out = kernel(x0, structure, stage_free, self.settings, self.max_iterations, counts[0])
            else:
                x0, structure, stage_free, counts = jax.device_put(
                    (x0, structure, stage_free, counts), NamedSharding(plan.mesh, PartitionSpec(_AXIS))
                )
                chunk.out = kernel(x0, structure, stage_free, self.settings, self.max_iterations, counts)
        except Exception as e:  # noqa: BLE001 - a failed call fails its series, not the batch
            chunk.out = e
        return True

    def collect(self, chunk: _Chunk) -> None:
        """Wait for the chunk's solve and move the answers into its series (as ``align()`` does).

        Stage reports stop at a stage that failed; a series' share of the call's time is split
        over its stages in proportion to their iterations (plus the first linearisation).
        """
        try:
            if isinstance(chunk.out, Exception):
                raise chunk.out
            x, cost, status, iterations, accepted = jax.device_get(chunk.out)
        except Exception as e:  # noqa: BLE001 - a failed call fails its series, not the batch
            for s, _, _ in chunk.built:
                self.fail(s, e)
            return
        finally:
            chunk.out = None
        # solves run in dispatch order: this one ran from when it was dispatched or the
        # previous one was ready, whichever is later
        ready = time.perf_counter()
        seconds = (ready - max(chunk.dispatched, self.last_ready)) / len(chunk.built)
        self.last_ready = ready
        for (s, problem, n_free), slot in zip(chunk.built, chunk.slots, strict=True):
            ran = len(self.stages)
            failed = np.flatnonzero(status[slot] == Status.FAILED)
            if failed.size:
                ran = int(failed[0]) + 1
            share = (iterations[slot, :ran] + 1) / np.sum(iterations[slot, :ran] + 1)
            for k in range(ran):
                st = Status(int(status[slot, k]))
                s.status = st
                rms = (
                    float("nan")
                    if st == Status.FAILED
                    else float(np.sqrt(float(cost[slot, k]) / s.obs.n_observed))
                )
                if st != Status.FAILED:
                    s.n_free = n_free[k]
                report = StageReport(
                    self.stages[k],
                    int(iterations[slot, k]),
                    int(accepted[slot, k]),
                    seconds * share[k],
                    st.message,
                    rms,
                    n_free[k],
                )
                s.reports.append(report)
                self.notify(s.index, self.stages[k], f"{st.message}, rms {rms:.4f} px")
            mine = Variables(
                x.a[slot, : s.obs.n_views], x.b[slot, : s.obs.n_markers], x.g[slot, : problem.x0.g.shape[0]]
            )
            s.views, s.markers = problem.to_model_units(mine)
        chunk.built = []

    def finish(self, chunk: _Chunk) -> None:
        """Reporting frame, residuals and IMOD transforms of the chunk's series, as ``align()`` ends."""
        plan, m = self.plan, self.plan.model
        alive = [s for s in chunk.series if self.results[s.index] is None]
        if not alive:
            return
        v, mk = chunk.shape
        c = plan.capacity
        views, markers = np.zeros((c, v, m.n_parameters)), np.zeros((c, mk, 3))
        nominal, view_mask, marker_mask = np.zeros((c, v)), np.zeros((c, v), bool), np.zeros((c, mk), bool)
        for j, s in enumerate(alive):
            nv, nm = s.obs.n_views, s.obs.n_markers
            views[j, :nv], markers[j, :nm], nominal[j, :nv] = s.views, s.markers, np.radians(s.obs.tilts_deg)
            view_mask[j, :nv], marker_mask[j, :nm] = True, True
        try:
            with jax.enable_x64(True):
                views, markers, predicted = jax.device_get(
                    _finish(m, self.tilt_free, views, markers, nominal, view_mask, marker_mask)
                )
        except Exception as e:  # noqa: BLE001
            for s in alive:
                self.fail(s, e)
            return
        for j, s in enumerate(alive):
            nv, nm = s.obs.n_views, s.obs.n_markers
            result = result_from_solution(
                m,
                s.obs,
                *(
                    np.asarray(a, np.float64)
                    for a in (views[j, :nv], markers[j, :nm], predicted[j, :nv, :nm])
                ),
                stages=tuple(s.reports),
                status=s.status.message if s.status != Status.CONVERGED else "converged",
                n_free=s.n_free,
                rotation_estimated_deg=s.rotation_estimated,
                settings=dataclasses.replace(
                    self.alignment_settings, ref_view=s.ref_view, weights=s.weights, bucket=chunk.shape
                ),
            )
            self.results[s.index] = result
            self.notify(s.index, "done", result.status)


# --------------------------------------------------------------------------- the driver


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
                f"parameter {name!r}: align_batch takes the modes free, fixed, shared and group:N; "
                "per-view labels need align()"
            )  # noqa: TRY004
        mode_labels(name, mode, 1)  # raises on an unknown mode
    if bucket != "max":
        bucket_shape(1, 1, bucket)  # raises on a bad bucket
    return m, modes, stages


def _plan(m, modes, dtype, batch_size, vmap_width, devices) -> _Plan:
    if devices is None:
        devices = tuple(jax.local_devices())
    elif isinstance(devices, int):
        available = jax.local_devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}: there are {len(available)} local devices")
        devices = tuple(available[:devices])
    else:
        devices = tuple(devices)
        if not devices:
            raise ValueError("devices must name at least one device")
    per_device = DEFAULT_BATCH_PER_DEVICE if batch_size is None else int(batch_size)
    width = (1 if devices[0].platform == "cpu" else per_device) if vmap_width is None else int(vmap_width)
    if per_device < 1 or width < 1:
        raise ValueError(f"batch_size and vmap_width must be at least 1, got {batch_size} and {vmap_width}")
    if width > 1 and len(devices) > 1 and devices[0].platform == "cpu":
        # Observed with jax 0.10.2: the vmapped solve sharded over several host devices
        # never returns (all threads idle), while vmap_width=1 runs normally.
        raise ValueError(
            f"vmap_width={width} over {len(devices)} CPU devices hangs in XLA's CPU runtime; "
            "use vmap_width=1 (the CPU default)"
        )
    mesh = Mesh(np.array(devices), (_AXIS,)) if len(devices) > 1 else None
    jdtype = jnp.float64 if dtype == "float64" else jnp.float32
    return _Plan(m, modes, jdtype, math.ceil(per_device / width) * width, width, devices, mesh)


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
    plan = _plan(m, modes, dtype, batch_size, vmap_width, devices)
    results: list = [None] * n
    runner = _Runner(plan, stages, config, dtype, results, progress or (lambda *_: None))

    series = []
    for i, obs in enumerate(observations):
        s = _Series(i, obs)
        if isinstance(obs, Observations):
            series.append(s)
        else:
            runner.fail(s, TypeError(f"series {i} is a {type(obs).__name__}, not Observations"))
    if series and bucket == "max":
        largest = (max(s.obs.n_views for s in series), max(s.obs.n_markers for s in series))
    buckets: dict[tuple[int, int], list[_Series]] = {}
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
        _Chunk(shape, members[c : c + plan.capacity])
        for shape, members in sorted(buckets.items())
        for c in range(0, len(members), plan.capacity)
    ]

    # Each chunk is one asynchronous kernel call: the host prepares the next chunk while the
    # device solves the ones before it; calls run in dispatch order and are collected in it.
    with jax.enable_x64(dtype == "float64"):
        in_flight: deque[_Chunk] = deque()
        for chunk in chunks:
            for s in chunk.series:
                try:
                    _prepare(s, m, rotations[s.index], refs[s.index], weight_list[s.index])
                except Exception as e:  # noqa: BLE001 - reported per series
                    runner.fail(s, e)
            if runner.dispatch(chunk):
                in_flight.append(chunk)
        while in_flight:
            chunk = in_flight.popleft()
            runner.collect(chunk)
            runner.finish(chunk)
    return results
