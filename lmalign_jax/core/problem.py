"""From a projection model, observations and parameter modes to a bipartite solver problem.

Views are the solver's A blocks (k model parameters each), markers its B blocks (x, y, z).
Each view-parameter family has a *mode*:

- ``"free"``: one value per view;
- ``"fixed"``: held at its current value;
- ``"shared"``: one value for all views (a global slot);
- ``"group:N"``: one value per set of about N consecutive views (IMOD's block grouping);
- ``"linear:N"``: values at the first view of each such set and at the last view (and at the
  reference view), interpolated linearly in view number between them (IMOD's linear grouping,
  its automapping options 3 and 5);
  the sets are tiltalign's (``core.grouping``: round(n_views / N) of them, some parameters'
  smaller at high tilt: ``ProjectionModel.group_size_power``);
- an integer array (n_views,) of group labels: one value per label (-1 = free per view).

The gauge freedoms (MODEL.md) are removed by fixing the model's gauge parameters (and the
tilt) at the reference view, and the z of one marker, whenever the markers are free; a
model's ``far_gauge`` groups are fixed at the view of largest |tilt| (symmetries that do not
move the reference view, e.g. the imod model's affine z freedom, see models/imod.py).
Parameters are scaled so a unit step moves a point by about one pixel: angles and ratios
are multiplied by the RMS marker radius L (pixels) inside the solver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..deformation_parameters import DEFORMATION_PARAMETERS
from ..models import ProjectionModel
from ..observations import Observations
from ..solve import (
    Structure,
    Variables,
    choose_elimination,
    count_free,
    make_structure,
    pad_problem,
    regularization_of,
)
from .grouping import automap_sets, group_sizes, linear_node_views

_FREE, _FIXED = -1, -2

#: Views, markers and global slots of a compiled computation (a stage's solve, the standard
#: errors) are padded up to multiples of this, so that a re-run after excluding a view or a
#: bead, or a series of a similar size, reuses the compiled code instead of compiling for seconds.
PAD_STEP = 8


def padded_size(n: int) -> int:
    """``n`` rounded up to a multiple of ``PAD_STEP``."""
    return -(-n // PAD_STEP) * PAD_STEP


def padded(fn, x0: Variables, structure: Structure):
    """``(x0, structure, sizes)``: the problem padded (``solve.pad_problem``) to view, marker and
    slot counts rounded up to ``PAD_STEP``, and its real sizes ``(n_a, n_b, n_g)``
    (``solve.unpad`` takes a solution back). A residual function with regularization rows (they
    couple every view, padded ones included) leaves the problem as it is."""
    sizes = (x0.a.shape[0], x0.b.shape[0], x0.g.shape[0])
    if regularization_of(fn) is None:
        x0, structure = pad_problem(x0, structure, *map(padded_size, sizes))
    return x0, structure, sizes


def _size(name: str, mode: str) -> int:
    """N of a "group:N" or "linear:N" mode; ValueError unless a whole number >= 1 in digits 0-9."""
    text = mode.split(":", 1)[1]
    if not re.fullmatch(r"[1-9][0-9]*", text):
        what = "group size" if mode.startswith("group:") else "node spacing"
        raise ValueError(f"parameter {name!r}: the {what} in {mode!r} must be a whole number >= 1")
    return int(text)


def is_linear(mode) -> bool:
    """Whether ``mode`` is a "linear:N" mode."""
    return isinstance(mode, str) and mode.startswith("linear:")


def linear_nodes(n_views: int, size: int, anchor=None, sizes=None, counts=None) -> np.ndarray:
    """Views (sorted) that carry a "linear:N" mode's values: IMOD's nodes for sets of about
    ``size`` views (``grouping.linear_node_views``: each set's first view and the last view;
    ``sizes``, ``counts`` as there), and ``anchor`` (a view or views where a gauge fixes the
    value: the reference view, the far view) when given."""
    nodes = set(linear_node_views(n_views, size, sizes, counts).tolist())
    if anchor is not None:
        nodes |= {int(a) for a in np.atleast_1d(anchor)}
    return np.array(sorted(nodes), dtype=int)


def linear_anchors(model: ProjectionModel, name: str, tilts_deg, ref_view: int) -> tuple[int, ...]:
    """The views a linear mode of ``name`` must have nodes at: the reference view, and the far
    view when ``name`` is in one of the model's far-gauge groups (:func:`free_masks`)."""
    far = any(name in group for group in model.far_gauge)
    return (int(ref_view), far_view(tilts_deg)) if far else (int(ref_view),)


def linear_owned(low: np.ndarray, high: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """(n_views,) bool: the views whose node no other view draws on (:func:`linear_blend`'s
    layout): its value is the view's own parameter."""
    users = np.bincount(low, weights=frac > 0, minlength=low.max() + 1)
    users += np.bincount(high, weights=(frac < 1) & (high != low), minlength=low.max() + 1)
    at_node = (high == low) & (frac == 1)
    return at_node & (users[low] == 1)


def linear_blend(name: str, mode, n_views: int, anchor=None, sizes=None, counts=None):
    """For a "linear:N" mode, ``(nodes, low, high, frac)``: the node views (m,), and per view
    (n_views,) the ranks of the nodes before and after it and the weight of the one before
    (1 at a node, and past the last node: ``low == high``). None for other modes. ``sizes``
    and ``counts`` as in ``grouping.automap_sets``."""
    if not is_linear(mode):
        return None
    nodes = linear_nodes(n_views, _size(name, mode), anchor, sizes, counts)
    views = np.arange(n_views)
    low = np.searchsorted(nodes, views, side="right") - 1
    high = np.minimum(low + 1, nodes.size - 1)
    single = (nodes[low] == views) | (high == low)  # at a node, or past the last one
    high = np.where(single, low, high)
    span = np.maximum(nodes[high] - nodes[low], 1)
    frac = np.where(single, 1.0, (nodes[high] - views) / span)
    return nodes, low, high, frac


def mode_labels(name: str, mode, n_views: int, anchor=None, sizes=None, counts=None) -> np.ndarray:
    """Group label per view for a mode: -2 fixed, -1 free per view, >= 0 a shared slot (for a
    "linear:N" mode, the rank of the node at or before the view: :func:`linear_blend`, whose
    nodes depend on ``anchor``; "group:N" and "linear:N" divide the views as IMOD does, with
    ``sizes`` and ``counts`` as in ``grouping.automap_sets``)."""
    if is_linear(mode):
        return linear_blend(name, mode, n_views, anchor, sizes, counts)[1]
    if isinstance(mode, str):
        if mode == "free":
            return np.full(n_views, _FREE)
        if mode == "fixed":
            return np.full(n_views, _FIXED)
        if mode == "shared":
            return np.zeros(n_views, dtype=int)
        if mode.startswith("group:"):
            return automap_sets(n_views, _size(name, mode), sizes, counts)
        raise ValueError(
            f"parameter {name!r}: unknown mode {mode!r}; use free, fixed, shared, group:N, linear:N or labels"
        )
    labels = np.asarray(mode)
    if labels.shape != (n_views,) or not np.issubdtype(labels.dtype, np.integer) or (labels < _FIXED).any():
        raise ValueError(f"parameter {name!r}: group labels must be {n_views} integers >= -2, got {labels!r}")
    return labels.astype(int)


def _regularized(model: ProjectionModel) -> np.ndarray:
    """(k,) bool: the parameters a model's regularization rows tie to neighbouring views."""
    if model.regularization is None:
        return np.zeros(len(model.parameters), bool)
    views = jnp.tile(jnp.asarray(model.neutral, jnp.float32), (4, 1))  # enough for its differences
    rows = jax.jacfwd(lambda v: jnp.asarray(model.regularization(v)))(views)  # (rows, 4, k)
    return np.asarray(jnp.any(rows != 0, axis=(0, 1)))


def own_parameters(
    model: ProjectionModel, modes: dict, n_views: int, tilts_deg=None, counts=None
) -> np.ndarray:
    """(n_views,) int: how many parameters each view has of its own: those free per view
    (``"free"``, a group of that view alone, or a linear mode's node no other view draws on,
    its nodes placed as :func:`linear_anchors` places them for ``tilts_deg`` (n_views,) when
    given). Fixed, shared, grouped and interpolated ones are set elsewhere, as are those the
    model's regularization ties to neighbouring views. The groups are those of the fit's views
    (``tilts_deg`` and ``counts``, the observed points per view, as ``build_problem`` sees them)."""
    own = np.zeros(n_views, int)
    regularized = _regularized(model)
    for p, name in enumerate(model.parameters):
        if regularized[p]:
            continue
        mode = modes.get(name, model.default_modes[p])
        sizes = group_sizes(model, name, mode, tilts_deg)
        if is_linear(mode):
            anchor = None
            if tilts_deg is not None:
                anchor = linear_anchors(model, name, tilts_deg, reference_view(tilts_deg))
            _, low, high, frac = linear_blend(name, mode, n_views, anchor, sizes, counts)
            own += linear_owned(low, high, frac)
            continue
        labels = mode_labels(name, mode, n_views, sizes=sizes, counts=counts)
        members = np.bincount(np.maximum(labels, 0), weights=labels >= 0, minlength=1)
        own += (labels == _FREE) | ((labels >= 0) & (members[np.maximum(labels, 0)] == 1))
    return own


def points_needed(
    model: ProjectionModel, modes: dict, n_views: int, tilts_deg=None, counts=None
) -> np.ndarray:
    """(n_views,) int: the fewest observed points that can determine each view's own parameters
    (:func:`own_parameters`), half their number rounded up (a point gives two coordinates). A
    view with fewer points has a direction its data do not constrain: a fit returns an
    arbitrary value along it."""
    return -(-own_parameters(model, modes, n_views, tilts_deg, counts) // 2)


def check_points_per_view(model: ProjectionModel, modes: dict, obs: Observations) -> None:
    """Raise ValueError if a view of ``obs`` has fewer observed points than its own free
    parameters need (:func:`points_needed`; ``modes`` may name only some parameters, the rest
    take the model's defaults): the fit would return an arbitrary value for them and report it
    as converged."""
    have = obs.mask.sum(axis=1)
    own = own_parameters(model, modes, obs.n_views, obs.tilts_deg, have)
    short = np.flatnonzero(have < -(-own // 2))  # points_needed
    if short.size:
        v = int(short[0])
        more = (
            f" (and {short.size - 1} more view(s): {short[1:6].tolist()}{' ...' if short.size > 6 else ''})"
        )
        raise ValueError(
            f"view {v} has {int(have[v])} observed point(s) but needs {-(-own[v] // 2)}: model "
            f"{model.name!r} fits {own[v]} parameters of its own there and a point gives two "
            f"coordinates{more if short.size > 1 else ''}; leave such views "
            "out (Observations.select_views; lmalign_jax.workflow.selection.select_views does it for a "
            "model's settings) or share, group or fix their parameters"
        )


def _residual(project, view, xyz, observed, unit):
    """Model minus observed position (2, ...) for scaled view parameters (k, ...), markers (3, ...).

    ``unit`` (k,) converts solver units to model units; trailing dimensions broadcast.
    """
    return project(view * unit.reshape(unit.shape + (1,) * (view.ndim - 1)), xyz) - observed


def _regularization(regularization, view, unit):
    """The model's regularization rows for scaled view parameters ``view`` (n_views, k)."""
    return regularization(view * unit)


_RESIDUALS: dict = {}  # (projection function, regularization) -> its solver residual


def residual_function(model: ProjectionModel):
    """The solver residual for ``model``: one object per projection function (and
    regularization), so jit caches are shared, and models that share a name keep their own
    (neither replaces the other). A model's regularization rows ride along as the residual's
    ``regularization`` attribute, as the solver expects (``solve._linearize``)."""
    key = (model.project, model.regularization)
    if key not in _RESIDUALS:
        fn = partial(_residual, model.project)
        if model.regularization is not None:
            fn.regularization = partial(_regularization, model.regularization)
        _RESIDUALS[key] = fn
    return _RESIDUALS[key]


def characteristic_radius(obs: Observations) -> float:
    """RMS distance of observed points from the image centre (pixels, at least 1)."""
    c = obs.centered_xy  # zero where missing
    return float(max(np.sqrt(np.sum(c * c) / obs.n_observed), 1.0))


@dataclass(frozen=True, eq=False)
class AlignmentProblem:
    """A built problem: solver inputs plus what is needed to map back to model units.

    x0: starting solver variables (view parameters in solver units, markers in pixels).
    unit: (k,) model units per solver unit of each view parameter.
    tie: (n_views, k) global slot of each view entry, -1 if none.
    blend: None, or (tie2, frac, offset) (n_views, k) each, host arrays: an entry is ``frac`` of
        its ``tie`` slot, ``1 - frac`` of its ``tie2`` slot and ``offset`` (linear modes, grouped
        tilt increments; ``solve.Structure.tie_blend``).
    eliminate: the block set the Schur complement eliminates ("a" views, "b" markers).
    n_free: number of free parameters.
    """

    model: ProjectionModel
    fn: partial
    x0: Variables
    structure: Structure
    unit: np.ndarray
    tie: np.ndarray
    blend: tuple | None
    eliminate: str
    n_free: int

    def to_model_units(self, x: Variables) -> tuple[np.ndarray, np.ndarray]:
        """Solver variables -> (views (n_views, k) in model units, markers (n_markers, 3)), float64
        numpy; computed on the host in the solve's precision."""
        a = np.asarray(x.a)
        if np.shape(x.g)[0]:
            g = np.asarray(x.g)
            tied = g[np.clip(self.tie, 0, None)]
            if self.blend is not None:
                tie2, frac, offset = (np.asarray(b) for b in self.blend)
                tied = frac * tied + (1 - frac) * g[np.clip(tie2, 0, None)] + offset
            a = np.where(self.tie >= 0, tied, a)
        return np.asarray(a * self.unit.astype(a.dtype), np.float64), np.asarray(x.b, np.float64)


def reference_view(tilts_deg) -> int:
    """The view nearest 0 degrees: the gauge reference."""
    return int(np.argmin(np.abs(np.asarray(tilts_deg))))


def far_view(tilts_deg) -> int:
    """The view of largest nominal |tilt|: where the far gauge (``ProjectionModel.far_gauge``) is fixed."""
    return int(np.argmax(np.abs(np.asarray(tilts_deg))))


def reference_marker(mask, ref_view: int) -> int:
    """The marker seen in the most views, preferring those seen in the reference view."""
    mask = np.asarray(mask)
    return int(np.argmax(mask.sum(axis=0) + mask.shape[0] * mask[ref_view]))


def free_masks(
    model: ProjectionModel,
    obs: Observations,
    modes: dict,
    marker_free: np.ndarray,
    *,
    hold: frozenset = frozenset(),
    ref_view: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which entries one solve moves: (views (n_views, k), markers (n_markers, 3), slots (n_slots,)) bool.

    Views' own entries are free in mode "free" unless held; slots (in the order of
    ``build_problem``'s layout) unless held; the gauge is fixed at ``ref_view`` (and one
    marker's z, and the model's far-gauge groups at ``far_view``) whenever any marker entry is
    free; a deformation model's coefficients in its gauge, always. Only ``hold`` and
    ``marker_free`` differ between the stages of an alignment; the layout does not.
    """
    unknown = (set(modes) | set(hold)) - set(model.parameters)
    if unknown:
        raise ValueError(
            f"model {model.name!r} has no parameter(s) {sorted(unknown)}; it has {model.parameters}"
        )
    n_views = obs.n_views
    marker_free = np.asarray(marker_free, dtype=bool).copy()
    gauge_active = bool(marker_free.any())
    # a deformation model's coefficients at the reference view are held in every stage, so the
    # markers keep the reference view's shape: freed while the markers are held (the tilt stage),
    # they drifted there (shrink -0.26 px on a simulated domed series) and were then held off zero
    deformation = set(model.gauge) & set(DEFORMATION_PARAMETERS.get(model.name, ()))
    gauge = set(model.gauge) | {"tilt"} if gauge_active else deformation
    free = np.zeros((n_views, model.n_parameters), dtype=bool)
    slot_free: list[bool] = []
    far = far_view(obs.tilts_deg)
    far_slot = {}  # a linear mode's slot of its node at the far view
    per_view = {}  # the parameters that can follow the far gauge's symmetry view by view
    for p, name in enumerate(model.parameters):
        mode = modes.get(name, model.default_modes[p])
        anchor = linear_anchors(model, name, obs.tilts_deg, ref_view)
        sizes = group_sizes(model, name, mode, obs.tilts_deg)
        labels = mode_labels(name, mode, n_views, anchor, sizes, obs.mask.sum(axis=1))
        held = name in hold
        free[:, p] = (labels == _FREE) & (not held)
        if name in gauge and labels[ref_view] == _FREE:
            free[ref_view, p] = False
        per_view[name] = labels[far] == _FREE or is_linear(mode)
        if is_linear(mode):
            far_slot[name] = len(slot_free) + labels[far]  # the far view is one of its nodes
        # the slot holding the reference view's value (a linear mode's node there) is the gauge's
        for label in np.unique(labels[labels >= 0]):
            slot_free.append(not held and not (name in gauge and labels[ref_view] == label))
    if gauge_active and model.far_gauge:
        # a linear mode follows the symmetry nearly as a free one does (exactly for linear:1):
        # its node at the far view is fixed as a free parameter's entry there is
        for group in model.far_gauge:
            if all(per_view[name] for name in group):
                for name in group:
                    if name in far_slot:
                        slot_free[far_slot[name]] = False
                    else:
                        free[far, model.index(name)] = False
    if gauge_active and model.gauge_marker_z and marker_free[:, 2].any():
        marker_free[reference_marker(obs.mask, ref_view), 2] = False
    return free, marker_free, np.asarray(slot_free, dtype=bool)


def build_problem(
    model: ProjectionModel,
    obs: Observations,
    views: np.ndarray,
    markers: np.ndarray,
    modes: dict,
    marker_free: np.ndarray,
    *,
    hold: frozenset = frozenset(),
    ref_view: int | None = None,
    weights: np.ndarray | None = None,
    dtype=jnp.float64,
    on_device: bool = True,
) -> AlignmentProblem:
    """Assemble the solver problem.

    Args:
        views: (n_views, k) current view parameters, model units.
        markers: (n_markers, 3) current marker positions, pixels.
        modes: parameter name -> mode (see module docstring); missing names use the model's
            default mode. Modes set the problem's layout (which values are shared).
        marker_free: (n_markers, 3) bool, which marker coordinates are solved for.
        hold: parameter names held at their current values in this solve (a stage's choice);
            unlike a "fixed" mode this keeps the layout, so all stages share one compilation.
        ref_view: gauge reference view (default: nearest 0 degrees).
        weights: (n_views, n_markers) optional observation weights (robust fitting); default 1.
        on_device: False keeps the solver inputs as numpy arrays (for callers that stack
            many problems and transfer them once).
    """
    n_views, k = views.shape
    ref_view = reference_view(obs.tilts_deg) if ref_view is None else ref_view
    free, marker_free, slot_free = free_masks(model, obs, modes, marker_free, hold=hold, ref_view=ref_view)

    radius = characteristic_radius(obs)
    unit = np.array([1.0 if kind == "length" else 1.0 / radius for kind in model.kinds])
    views = np.array(views, dtype=np.float64)
    tie = np.full((n_views, k), -1, dtype=np.int32)
    tie2 = np.full((n_views, k), -1, dtype=np.int32)
    frac = np.ones((n_views, k))
    # grouped tilts share an increment from their nominal angles, as IMOD's grouped tilts do
    # (one angle for a group of views tilted differently fits nothing); other parameters share values
    base = np.zeros((n_views, k))
    if "tilt" in model.parameters:
        base[:, model.index("tilt")] = np.radians(np.asarray(obs.tilts_deg, np.float64))
    slots: list[float] = []  # slot values, solver units
    counts = obs.mask.sum(axis=1)  # points per view: where fewer than 3, tiltalign's sets skip the view
    for p, name in enumerate(model.parameters):
        mode = modes.get(name, model.default_modes[p])
        sizes = group_sizes(model, name, mode, obs.tilts_deg)
        anchor = linear_anchors(model, name, obs.tilts_deg, ref_view)
        blend = linear_blend(name, mode, n_views, anchor, sizes, counts)
        change = views[:, p] - base[:, p]
        if blend is not None:  # node values from the views there; the rest interpolated
            nodes, low, high, frac[:, p] = blend
            tie[:, p], tie2[:, p] = len(slots) + low, len(slots) + high
            values = change[nodes]
            views[:, p] = frac[:, p] * values[low] + (1 - frac[:, p]) * values[high] + base[:, p]
            slots.extend(values / unit[p])
            continue
        labels = mode_labels(name, mode, n_views, sizes=sizes, counts=counts)
        for label in np.unique(labels[labels >= 0]):
            members = labels == label
            tie[members, p] = len(slots)
            views[members, p] = np.mean(change[members]) + base[members, p]
            slots.append(np.mean(change[members]) / unit[p])
    tied_base = np.where(tie >= 0, base / unit, 0.0)
    # whether the blend is needed follows from the modes alone (series of one batch share a layout)
    blended = bool(
        (tie2 >= 0).any() or ("tilt" in model.parameters and (tie[:, model.index("tilt")] >= 0).any())
    )

    w = obs.mask.astype(np.float64) if weights is None else np.where(obs.mask, weights, 0.0)
    put = jnp.asarray if on_device else (lambda array, dtype: np.asarray(array, np.dtype(dtype)))
    structure = make_structure(
        pair_data=put(np.moveaxis(obs.centered_xy, -1, 0), dtype),  # (2, n_views, n_markers)
        weights=put(w, dtype),
        free_a=free,
        tie_a=tie,
        free_b=marker_free,
        free_g=np.asarray(slot_free, dtype=bool),
        const=put(unit, dtype),
        tie_blend=(tie2, frac, tied_base) if blended else None,
    )
    x0 = Variables(
        a=put(views / unit, dtype),
        b=put(markers, dtype),
        g=put(np.asarray(slots, dtype=np.float64), dtype),
    )
    return AlignmentProblem(
        model=model,
        fn=residual_function(model),
        x0=x0,
        structure=structure,
        unit=unit,
        tie=tie,
        blend=structure.tie_blend,
        eliminate=choose_elimination(
            n_views, k, obs.n_markers, 3, coupled_a=model.regularization is not None
        ),
        n_free=count_free(structure),
    )


def final_problem(result) -> AlignmentProblem:
    """The joint problem at a solved alignment (an ``AlignmentResult``), float64: every
    parameter free as its modes allow, markers free, the run's reference view and weights.
    Standard errors and implicit differentiation linearise this problem."""
    settings = result.settings
    obs = result.observations
    return build_problem(
        result.model,
        obs,
        result.views,
        result.markers,
        settings.modes,
        np.ones((obs.n_markers, 3), bool),
        ref_view=settings.ref_view,
        weights=settings.weights,
    )
