"""The staged alignment of Jou et al. (initial, main, tilt estimate), finished by a joint solve.

1. ``initial``: scales and tilts held at their starting values and each marker's x, y held at
   its position in the reference (near 0 degree) view; solve marker z, rotations and shifts.
2. ``main``: tilts fixed; solve markers, scales, rotations, shifts (and model extras).
3. ``tilt``: markers fixed; solve every view's parameters, tilt included.
4. ``joint``: everything free at once (gauge fixed). The block-wise answer of stages 1-3 is
   not the least-squares optimum; this stage reaches it.

Every stage solves the problem padded to view and marker counts rounded up to ``PAD_STEP``
(``core.problem.padded``; not for models with regularization rows), so that a re-run after
excluding a view or a bead, or a series of a similar size, reuses the compiled solve (from the
command line's cache, across processes) instead of compiling another for seconds.

Start values come from ``core.start``, each stage's set-up from ``core.settings``; afterwards
the solution is moved to the reporting frame (``core.frame``: tilts deviate from the nominal
ones by zero on average, markers have zero mean z), as ``align_batch`` does too.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ..models import ProjectionModel
from ..observations import Observations
from ..solve import LMConfig, Status, least_squares, unpad
from .frame import project_all, recentred_again, to_reporting_frame, z_centred_start
from .problem import PAD_STEP, build_problem, check_points_per_view, padded
from .result import AlignmentResult, StageReport, result_from_solution
from .settings import (
    INTERMEDIATE_COST_TOL,
    STAGES,
    AlignmentSettings,
    check_options,
    stage_configs,
    stage_setup,
)
from .start import InitialAlignment, start_values

__all__ = ["INTERMEDIATE_COST_TOL", "PAD_STEP", "STAGES", "align"]


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
    start: AlignmentResult | InitialAlignment | None = None,
    progress=None,
) -> AlignmentResult:
    """Align a tilt series on its fiducial markers.

    Args:
        obs: the observations (positions, mask, nominal tilts, image size).
        model: projection model name or object ("jou", "luther", "diez", "imod").
        rotation_deg: tilt-axis angle in the raw images, degrees counter-clockwise from the
            y axis (IMOD's RotationAngle); estimated from the marker tracks when None.
        modes: parameter name -> "free" | "fixed" | "shared" | "group:N" | "linear:N" | labels (n_views,);
            unnamed parameters take the model's default.
        stages: which of "initial", "main", "tilt", "joint" to run, in that order.
        config: Levenberg-Marquardt settings for the final stage; earlier stages, whose
            answers are only starting points, stop once the cost changes by less than
            ``INTERMEDIATE_COST_TOL`` (relative) unless the config is stricter there too.
        dtype: "float64" (default; enabled locally for this call) or "float32" (GPU path).
        ref_view: gauge reference view (default: nearest 0 degrees).
        weights: (n_views, n_markers) observation weights (robust fitting), default 1.
        start: a previous solution of the same model and observations, or an
            ``InitialAlignment`` (``core.start.initial_alignment``), to start from instead
            of the closed-form estimates (e.g. ``stages=("joint",)`` to refine it).
        progress: optional ``callable(StageReport)``, called as each stage finishes.
    Returns:
        ``AlignmentResult``. Numerical failure is reported in ``status``, not raised.
    Raises:
        ValueError: bad options, or a view with fewer observed points than its own free
            parameters need (``core.problem.points_needed``), whose fit would be arbitrary.
    """
    m, modes, stages = check_options(model, modes, stages, dtype)
    check_points_per_view(m, modes, obs)
    initial = start_values(m, obs, rotation_deg=rotation_deg, ref_view=ref_view, weights=weights, start=start)
    views, markers, ref_view = initial.views, initial.markers, initial.ref_view
    settings = AlignmentSettings(
        modes=modes, stages=stages, dtype=dtype, config=config, ref_view=ref_view, weights=weights
    )

    reports = []
    status = Status.CONVERGED
    n_free = 0
    data = None
    with jax.enable_x64(dtype == "float64"):
        jdtype = jnp.float64 if dtype == "float64" else jnp.float32
        runs = list(zip(stages, stage_configs(config, len(stages), dtype), strict=True))
        if recentred_again(m):  # the last stage once more, from the markers at zero mean z
            runs.append(runs[-1])
        for k, (stage, stage_config) in enumerate(runs):
            # A stage's seconds cover all of it (problem, solve blocked until ready, unpacking),
            # so the stages add up to the alignment; the first one includes loading or compiling.
            began = time.perf_counter()
            hold, marker_free = stage_setup(stage, m, obs, ref_view)
            if k == len(stages):
                views, markers = z_centred_start(m, views, markers)
            # The observations are the same every stage: they go to the device once, with the
            # first stage's problem; later stages are built on the host and reuse them.
            problem = build_problem(
                m,
                obs,
                views,
                markers,
                modes,
                marker_free,
                hold=hold,
                ref_view=ref_view,
                weights=weights,
                dtype=jdtype,
                on_device=False,
            )
            x0, structure, sizes = padded(problem.fn, problem.x0, problem.structure)
            if data is None:
                data = jax.device_put((structure.pair_data, structure.weights))
            structure = structure._replace(pair_data=data[0], weights=data[1])
            sol = least_squares(problem.fn, x0, structure, eliminate=problem.eliminate, config=stage_config)
            sol = sol._replace(x=unpad(sol.x, *sizes))
            sol = jax.device_get(jax.block_until_ready(sol))
            status = Status(int(sol.status))
            if status == Status.FAILED:
                seconds = time.perf_counter() - began
                reports.append(
                    StageReport(
                        stage,
                        int(sol.iterations),
                        int(sol.accepted),
                        seconds,
                        status.message,
                        float("nan"),
                        problem.n_free,
                    )
                )
                if progress is not None:
                    progress(reports[-1])
                break
            views, markers = problem.to_model_units(sol.x)
            n_free = problem.n_free
            rms = float(np.sqrt(float(sol.cost) / obs.n_observed))
            seconds = time.perf_counter() - began
            reports.append(
                StageReport(
                    stage, int(sol.iterations), int(sol.accepted), seconds, status.message, rms, n_free
                )
            )
            if progress is not None:
                progress(reports[-1])

    views, markers = to_reporting_frame(m, views, markers, np.radians(obs.tilts_deg), settings.frame_rule(m))
    return result_from_solution(
        m,
        obs,
        views,
        markers,
        project_all(m, views, markers),
        stages=tuple(reports),
        status=status.message if status != Status.CONVERGED else "converged",
        n_free=n_free,
        rotation_estimated_deg=initial.rotation_estimated_deg,
        settings=settings,
    )
