"""The options of an alignment: checked once, set up per stage, kept with the result.

``check_options`` validates what every alignment shares (model, modes, stages, dtype);
``stage_setup`` and ``stage_configs`` say what each stage holds fixed and when it stops;
``AlignmentSettings`` records what a run used, so its final problem can be rebuilt (standard
errors, differentiation). ``align()`` and ``align_batch()`` both take these from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..models import ProjectionModel, get_model
from ..observations import Observations
from ..solve import LMConfig
from .frame import FrameRule, frame_rule

STAGES = ("initial", "main", "tilt", "joint")
#: Relative cost change at which a stage that is not the last one stops.
INTERMEDIATE_COST_TOL = 1e-6


@dataclass(frozen=True, eq=False)
class AlignmentSettings:
    """The options an alignment ran with.

    modes: parameter name -> mode ("free", "fixed", "shared", "group:N" or labels (n_views,));
        a result of ``align()`` names every parameter of its model, others use the default.
    stages: the stages run, in order.
    dtype: "float64" or "float32".
    config: Levenberg-Marquardt settings of the final stage.
    ref_view: the gauge reference view (None: the view nearest 0 degrees).
    weights: (n_views, n_markers) observation weights, or None (all 1).
    bucket: (views, markers) the series was padded to by ``align_batch``; None for ``align()``.
    """

    modes: dict = field(default_factory=dict)
    stages: tuple[str, ...] = STAGES
    dtype: str = "float64"
    config: LMConfig = field(default_factory=LMConfig)
    ref_view: int | None = None
    weights: np.ndarray | None = None
    bucket: tuple[int, int] | None = None

    @property
    def tilts_solved(self) -> bool:
        """Whether any stage moved the tilts (then the reported frame zeroes their mean deviation)."""
        return not is_fixed(self.modes.get("tilt", "free")) and any(
            s in ("tilt", "joint") for s in self.stages
        )

    def frame_rule(self, model: ProjectionModel) -> FrameRule:
        """The reporting frame of a solution of ``model`` fitted with these settings."""
        return frame_rule(model, self.modes, self.tilts_solved)


def is_fixed(mode) -> bool:
    """Whether a parameter mode (a name or group labels (n_views,)) holds every view fixed."""
    if isinstance(mode, str):
        return mode == "fixed"
    return bool(np.all(np.asarray(mode) == -2))


def check_options(model, modes, stages, dtype) -> tuple[ProjectionModel, dict, tuple[str, ...]]:
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
        raise ValueError(
            f"model {m.name!r} has no parameter(s) {sorted(unknown)}; it has {', '.join(m.parameters)}"
        )
    return m, modes, stages


def stage_setup(
    stage: str, model: ProjectionModel, obs: Observations, ref_view: int
) -> tuple[frozenset, np.ndarray]:
    """Parameters held fixed and marker free-mask (n_markers, 3) for one stage (module
    docstring of ``core.align``)."""
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


def stage_configs(config: LMConfig, n_stages: int, dtype: str) -> list[LMConfig]:
    """The L-M settings of each of ``n_stages`` stages: ``config`` for the last; earlier ones,
    whose answers are only starting points, stop once the cost changes by less than
    ``INTERMEDIATE_COST_TOL`` (relative) unless ``config`` is stricter there too."""
    early = dataclasses.replace(
        config, cost_tol=max(config.tolerances(np.dtype(dtype))[0], INTERMEDIATE_COST_TOL)
    )
    return [early] * (n_stages - 1) + [config]
