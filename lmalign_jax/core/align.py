"""The staged alignment of Jou et al. (initial, main, tilt estimate), finished by a joint solve.

1. ``initial``: scales and tilts held at their starting values and each marker's x, y held at
   its position in the reference (near 0 degree) view; solve marker z, rotations and shifts.
2. ``main``: tilts fixed; solve markers, scales, rotations, shifts (and model extras).
3. ``tilt``: markers fixed; solve every view's parameters, tilt included.
4. ``joint``: everything free at once (gauge fixed). The block-wise answer of stages 1-3 is
   not the least-squares optimum; this stage reaches it.

Afterwards the solution is moved, by exact symmetries of the model, to the frame whose tilts
deviate from the nominal ones by zero on average and whose markers have zero mean z. Marker
x, y stay in the gauge's frame: the specimen origin projects onto the image centre in the
reference view, so the aligned images sit where the raw ones did (as in IMOD).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import compiled_cache
from .initial import estimate_rotation_deg, starting_markers_and_shifts
from ..models import ProjectionModel, get_model
from ..observations import Observations
from .problem import build_problem, reference_view
from .result import AlignmentResult, StageReport, fit_image_transforms
from ..solve import LMConfig, Status, least_squares

STAGES = ("initial", "main", "tilt", "joint")
#: Relative cost change at which a stage that is not the last one stops.
INTERMEDIATE_COST_TOL = 1e-6


def _stage_setup(stage: str, model: ProjectionModel, obs: Observations, ref_view: int):
    """Parameters held fixed and marker free-mask (n_markers, 3) for one stage."""
    n_markers = obs.n_markers
    if stage == "initial":
        keep = {"rotation", *(model.shift_parameters or ())}
        free = np.zeros((n_markers, 3), dtype=bool)
        free[:, 2] = True
        free[~obs.mask[ref_view], :2] = True
        return frozenset(p for p in model.parameters if p not in keep), free
    if stage == "main":
        return frozenset({"tilt"}), np.ones((n_markers, 3), dtype=bool)
    if stage == "tilt":
        return frozenset(), np.zeros((n_markers, 3), dtype=bool)
    if stage == "joint":
        return frozenset(), np.ones((n_markers, 3), dtype=bool)
    raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


@partial(jax.jit, static_argnames=("project",))
def _project_grid(views, markers, *, project):
    return jax.vmap(jax.vmap(project, in_axes=(None, 0)), in_axes=(0, None))(views, markers)


def _project_all(model: ProjectionModel, views, markers):
    """Predicted centred positions (n_views, n_markers, 2), float64 numpy."""
    with jax.enable_x64(True):
        predicted = compiled_cache.call(_project_grid, np.asarray(views), np.asarray(markers), project=model.project)
        return np.asarray(predicted, dtype=np.float64)


def _to_reporting_frame(model: ProjectionModel, views, markers, nominal_tilts_rad, tilt_free: bool):
    """Zero mean tilt deviation from nominal and zero mean marker z (exact symmetries)."""
    with jax.enable_x64(True):
        args = (np.asarray(views, np.float64), np.asarray(markers, np.float64), np.asarray(nominal_tilts_rad, np.float64))
        views, markers = compiled_cache.call(_reporting_frame_call, *args, model=model, tilt_free=tilt_free)
        return np.asarray(views, np.float64), np.asarray(markers, np.float64)


@partial(jax.jit, static_argnames=("model", "tilt_free"))
def _reporting_frame_call(views, markers, nominal_tilts_rad, *, model: ProjectionModel, tilt_free: bool):
    return _reporting_frame(model, views, markers, nominal_tilts_rad, tilt_free)


@partial(jax.jit, static_argnums=(0, 4))
def _reporting_frame(model: ProjectionModel, views, markers, nominal_tilts_rad, tilt_free: bool):
    if tilt_free and model.tilt_offset is not None:
        delta = -jnp.mean(views[:, model.index("tilt")] - nominal_tilts_rad)
        views, markers = model.tilt_offset(views, markers, delta)
    if model.shift_parameters is not None:
        centroid = jnp.zeros(3, markers.dtype).at[2].set(jnp.mean(markers[:, 2]))
        at_centroid = model.project(views.T, centroid[:, None])  # (2, n_views)
        at_origin = model.project(views.T, jnp.zeros((3, 1), markers.dtype))
        sx, sy = (model.index(p) for p in model.shift_parameters)
        views = views.at[:, [sx, sy]].add((at_centroid - at_origin).T)
        markers = markers - centroid
    return views, markers


def check_options(model, modes, stages, dtype):
    """Validate the options every alignment shares: (model object, full modes dict, stages tuple)."""
    m = get_model(model)
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    stages = tuple(stages)
    if not stages:
        raise ValueError("at least one stage must run")
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; stages are {', '.join(STAGES)}")
    if [STAGES.index(s) for s in stages] != sorted(STAGES.index(s) for s in stages):
        raise ValueError(f"stages must run in the order {', '.join(STAGES)}, got {', '.join(stages)}")
    modes = {p: mode for p, mode in zip(m.parameters, m.default_modes, strict=True)} | dict(modes or {})
    unknown = set(modes) - set(m.parameters)
    if unknown:
        raise ValueError(f"model {m.name!r} has no parameter(s) {sorted(unknown)}; it has {', '.join(m.parameters)}")
    return m, modes, stages


def align(
    obs: Observations,
    *,
    model: str | ProjectionModel = "jou",
    rotation_deg: float | None = None,
    modes: dict | None = None,
    stages=STAGES,
    config: LMConfig = LMConfig(),
    dtype: str = "float64",
    ref_view: int | None = None,
    weights: np.ndarray | None = None,
    start: AlignmentResult | None = None,
    progress=None,
) -> AlignmentResult:
    """Align a tilt series on its fiducial markers.

    Args:
        obs: the observations (positions, mask, nominal tilts, image size).
        model: projection model name or object ("jou", "luther", "diez", "imod").
        rotation_deg: tilt-axis angle in the raw images, degrees counter-clockwise from the
            y axis (IMOD's RotationAngle); estimated from the marker tracks when None.
        modes: parameter name -> "free" | "fixed" | "shared" | "group:N" | labels (n_views,);
            unnamed parameters take the model's default.
        stages: which of "initial", "main", "tilt", "joint" to run, in that order.
        config: Levenberg-Marquardt settings for the final stage; earlier stages, whose
            answers are only starting points, stop once the cost changes by less than
            ``INTERMEDIATE_COST_TOL`` (relative) unless the config is stricter there too.
        dtype: "float64" (default; enabled locally for this call) or "float32" (GPU path).
        ref_view: gauge reference view (default: nearest 0 degrees).
        weights: (n_views, n_markers) observation weights (robust fitting), default 1.
        start: a previous solution of the same model and observations to start from instead
            of the closed-form estimates (e.g. ``stages=("joint",)`` to refine it).
        progress: optional ``callable(StageReport)``, called as each stage finishes.
    Returns:
        ``AlignmentResult``. Numerical failure is reported in ``status``, not raised.
    """
    m, modes, stages = check_options(model, modes, stages, dtype)
    ref_view = reference_view(obs.tilts_deg) if ref_view is None else int(ref_view)
    if not 0 <= ref_view < obs.n_views:
        raise ValueError(f"ref_view {ref_view} is outside 0..{obs.n_views - 1}")
    estimated = None
    if rotation_deg is None and start is not None:
        rotation_deg = float(np.mean(start.rotation_deg))
    if rotation_deg is None:
        estimated = rotation_deg = estimate_rotation_deg(obs)
    if not np.isfinite(rotation_deg):
        raise ValueError(f"rotation_deg must be finite, got {rotation_deg}")

    nominal = np.radians(obs.tilts_deg)
    if start is not None:
        if start.model != m.name or start.views.shape[0] != obs.n_views or start.markers.shape[0] != obs.n_markers:
            raise ValueError(
                f"start is a {start.model!r} solution of {start.views.shape[0]} views x {start.markers.shape[0]} markers; "
                f"expected {m.name!r} with {obs.n_views} x {obs.n_markers}"
            )
        views, markers = start.views.copy(), start.markers.copy()
    else:
        views = m.neutral_views(obs.n_views)
        views[:, m.index("rotation")] = np.radians(rotation_deg)
        views[:, m.index("tilt")] = nominal
        markers, shifts = starting_markers_and_shifts(obs, views[:, m.index("rotation")], ref_view)
        if m.shift_parameters is not None:
            views[:, [m.index(p) for p in m.shift_parameters]] = shifts

    reports = []
    status = Status.CONVERGED
    n_free = 0
    data = None
    with jax.enable_x64(dtype == "float64"):
        jdtype = jnp.float64 if dtype == "float64" else jnp.float32
        for number, stage in enumerate(stages, start=1):
            # A stage's seconds cover all of it (problem, solve blocked until ready, unpacking),
            # so the stages add up to the alignment; the first one includes loading or compiling.
            began = time.perf_counter()
            stage_config = config
            if number < len(stages):
                tol = config.tolerances(np.dtype(dtype))[0]
                stage_config = dataclasses.replace(config, cost_tol=max(tol, INTERMEDIATE_COST_TOL))
            hold, marker_free = _stage_setup(stage, m, obs, ref_view)
            # The observations are the same every stage: they go to the device once, with the
            # first stage's problem; later stages are built on the host and reuse them.
            problem = build_problem(
                m, obs, views, markers, modes, marker_free, hold=hold, ref_view=ref_view, weights=weights, dtype=jdtype,
                on_device=data is None,
            )
            structure = problem.structure
            if data is None:
                data = structure.pair_data, structure.weights
            else:
                structure = structure._replace(pair_data=data[0], weights=data[1])
            sol = least_squares(problem.fn, problem.x0, structure, eliminate=problem.eliminate, config=stage_config)
            sol = jax.device_get(jax.block_until_ready(sol))
            status = Status(int(sol.status))
            if status == Status.FAILED:
                seconds = time.perf_counter() - began
                reports.append(StageReport(stage, int(sol.iterations), int(sol.accepted), seconds, status.message, float("nan"), problem.n_free))
                if progress is not None:
                    progress(reports[-1])
                break
            views, markers = problem.to_model_units(sol.x)
            n_free = problem.n_free
            rms = float(np.sqrt(float(sol.cost) / obs.n_observed))
            seconds = time.perf_counter() - began
            reports.append(StageReport(stage, int(sol.iterations), int(sol.accepted), seconds, status.message, rms, n_free))
            if progress is not None:
                progress(reports[-1])

    tilt_free = modes["tilt"] != "fixed" and any(s in ("tilt", "joint") for s in stages)
    views, markers = _to_reporting_frame(m, views, markers, nominal, tilt_free)
    predicted = _project_all(m, views, markers)
    residuals = np.where(obs.mask[..., None], predicted - obs.centered_xy, np.nan)
    tilt = views[:, m.index("tilt")]
    aligned = markers[None, :, 0] * np.cos(tilt)[:, None] + markers[None, :, 2] * np.sin(tilt)[:, None]
    aligned = np.stack([aligned, np.broadcast_to(markers[:, 1], aligned.shape)], axis=-1)
    xf = fit_image_transforms(predicted, aligned)
    return AlignmentResult(
        model=m.name,
        observations=obs,
        views=views,
        markers=markers,
        residuals=residuals,
        stages=tuple(reports),
        status=status.message if status != Status.CONVERGED else "converged",
        n_free=n_free,
        rotation_estimated_deg=estimated,
        xf=xf,
        extras={"modes": modes, "ref_view": ref_view, "weights": weights},
    )
