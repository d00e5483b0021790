"""Chunks of padded series through every stage of ``align()``: start values, building the
problems, dispatching one kernel call per chunk and moving its answers into ``AlignmentResult``s.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ..core.problem import build_problem, free_masks, residual_function
from ..core.result import StageReport, result_from_solution
from ..core.settings import AlignmentSettings, stage_configs, stage_setup
from ..core.start import start_values
from ..models import ProjectionModel
from ..observations import Observations
from ..solve import LMConfig, Status, Variables, choose_elimination
from .kernel import batch_kernel, reporting_frames
from .plan import SERIES_AXIS, Plan, global_slot_count, padding_rules, stack_padded

__all__ = ["Chunk", "ChunkRunner", "ProgressCallback", "Series", "prepare_series"]

#: ``progress(index, event, detail)``: ``event`` is a stage name (that stage finished for series
#: ``index``; ``detail`` gives its status and RMS), ``"done"`` (``detail``: the final status) or
#: ``"error"`` (``detail``: why the series could not be aligned).
ProgressCallback = Callable[[int, str, str], None]


@dataclasses.dataclass(eq=False)
class Series:
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


def prepare_series(s: Series, m: ProjectionModel, rotation_deg, ref_view, weights) -> None:
    """Start values of one series, computed as ``align()`` computes them (``core.start``)."""
    initial = start_values(m, s.obs, rotation_deg=rotation_deg, ref_view=ref_view, weights=weights)
    s.ref_view, s.rotation_estimated, s.weights = initial.ref_view, initial.rotation_estimated_deg, weights
    s.views, s.markers = initial.views, initial.markers


@dataclasses.dataclass(eq=False)
class Chunk:
    """Up to one kernel call's worth of series of one bucket, and its solve in flight."""

    shape: tuple[int, int]
    series: list
    built: list = dataclasses.field(
        default_factory=list
    )  # (series, problem, free counts per stage) in flight
    slots: np.ndarray | None = None
    out: object = None  # the kernel's outputs (not yet ready) or the exception it raised
    dispatched: float = 0.0


class ChunkRunner:
    """Every stage of ``align()`` over chunks of padded series, one kernel call per chunk."""

    def __init__(
        self, plan: Plan, stages, config: LMConfig, dtype: str, results: list, notify: ProgressCallback
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
        self.frame_rule = self.alignment_settings.frame_rule(plan.model)
        self.last_ready = 0.0

    def fail(self, s: Series, error: Exception) -> None:
        self.results[s.index] = error
        self.notify(
            s.index,
            "error",
            str(error) if isinstance(error, ValueError | TypeError) else f"{type(error).__name__}: {error}",
        )

    def _build(self, s: Series):
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

    def dispatch(self, chunk: Chunk) -> bool:
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
        n_slots = max(global_slot_count(m, plan.modes, v), *(p.x0.g.shape[0] for p in problems))
        x_shapes, x_fills, s_shapes, s_fills = padding_rules(chunk.shape, n_slots)
        chunk.slots = plan.slots(len(problems))
        x0 = stack_padded([p.x0 for p in problems], chunk.slots, plan.capacity, x_shapes, x_fills)
        structure = stack_padded(
            [p.structure for p in problems], chunk.slots, plan.capacity, s_shapes, s_fills
        )
        stage_free = tuple(
            np.zeros((plan.capacity, n_stages, *shape), bool)
            for shape in ((v, m.n_parameters), (mk, 3), (n_slots,))
        )
        for slot, stage_masks in zip(chunk.slots, masks, strict=True):
            for k, fm in enumerate(stage_masks):
                for buf, mask in zip(stage_free, fm, strict=True):
                    buf[(slot, k, *(slice(0, n) for n in mask.shape))] = mask
        counts = plan.counts(len(problems))
        eliminate = choose_elimination(v, m.n_parameters, mk, 3, coupled_a=m.regularization is not None)
        kernel = batch_kernel(residual_function(m), eliminate, plan.width, plan.mesh)
        chunk.dispatched = time.perf_counter()
        try:
            if plan.mesh is None:
                chunk.out = kernel(x0, structure, stage_free, self.settings, self.max_iterations, counts[0])
            else:
                x0, structure, stage_free, counts = jax.device_put(
                    (x0, structure, stage_free, counts), NamedSharding(plan.mesh, PartitionSpec(SERIES_AXIS))
                )
                chunk.out = kernel(x0, structure, stage_free, self.settings, self.max_iterations, counts)
        except Exception as e:  # noqa: BLE001 - a failed call fails its series, not the batch
            chunk.out = e
        return True

    def collect(self, chunk: Chunk) -> None:
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

    def finish(self, chunk: Chunk) -> None:
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
                    reporting_frames(m, self.frame_rule, views, markers, nominal, view_mask, marker_mask)
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
