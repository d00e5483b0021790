"""The reporting frame of a solution and the positions it predicts.

A solution is reported in the frame, reached by exact symmetries of the model, whose tilts
deviate from the nominal ones by zero on average (a model with a frame map,
``ProjectionModel.frame_map``, the imod model's affine z, maps its specimen first: the imod
model's tilts and x-stretches are then their likeliest), whose scale is 1 in the view nearest 0 degrees, whose
markers have zero mean z, and whose specimen origin projects onto the image centre in that
view, so the aligned images sit where the raw ones did (as in IMOD). The frame is a function
of the solution alone, whatever values earlier stages left in the gauge's fixed entries, so
repeated fits report comparable numbers and their standard errors (``analysis.uncertainty``)
are those of the numbers reported. Symmetries a model lacks are not used
(``ProjectionModel.z_translation_symmetry`` and its kin); ``align()`` and ``align_batch()``
centre the z of a model without the z one before running the last stage once more instead
(:func:`recentred_again`). ``align()``, ``align_batch()`` (on padded series, with masks) and
``alignment_function`` all use ``reporting_frame``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import compiled_cache
from ..models import ProjectionModel

#: Entries of a frame's scalar vector: the tilt change (radians), the specimen's scaling
#: minus 1, its move (x, y, z px; the markers move by minus it, the shifts follow), and a frame
#: map's four numbers (``ProjectionModel.frame_map``); all zero leave a solution unchanged.
N_FRAME_SCALARS = 9
_MOVE, _MAP = slice(2, 5), slice(5, 9)


class FrameRule(NamedTuple):
    """Which of a model's exact symmetries the reporting frame uses, from what was solved.

    tilts: the tilts were solved (the frame may move them).
    mapped: the model's ``frame_map`` applies (its needed parameters free in every view
        and the tilts solved); it then replaces the tilt change.
    moves: every view has its own shifts, which can take up a move of the specimen (a shared
        or grouped shift cannot: the move shifts each view's image by its own amount).
    scales: no view's scale is fixed, so all can follow a scaling of the specimen.
    """

    tilts: bool
    mapped: bool = False
    moves: bool = True
    scales: bool = True


def frame_rule(model: ProjectionModel, modes: dict, tilts_solved: bool) -> FrameRule:
    """The frame of a solution of ``model`` fitted with ``modes`` (missing names: the model's
    default mode)."""

    def mode(name):
        return modes.get(name, model.default_modes[model.index(name)])

    frame_map = model.frame_map
    free = frame_map is not None and all(_mode_is_free(mode(name)) for name in frame_map.needs)
    moves = all(_mode_is_free(mode(name)) for name in model.shift_parameters or ())
    scale = mode("scale") if "scale" in model.parameters else "fixed"
    scales = scale != "fixed" if isinstance(scale, str) else not bool(np.any(np.asarray(scale) == -2))
    return FrameRule(tilts=bool(tilts_solved), mapped=bool(tilts_solved and free), moves=moves, scales=scales)


def _mode_is_free(mode) -> bool:
    """Whether a parameter mode gives every view its own value."""
    if isinstance(mode, str):
        return mode == "free"
    return bool(np.all(np.asarray(mode) == -1))


def _mean(values, mask):
    """Mean of ``values`` (n,), over the entries where ``mask`` (n,) is True when given."""
    if mask is None:
        return jnp.mean(values)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _moves(model: ProjectionModel, rule: FrameRule) -> tuple[bool, bool]:
    """Whether the frame moves the specimen (the shifts following) in (x and y, z): a model with
    shifts whose projection such a move changes by the same image offset everywhere, fitted with
    shifts of each view's own (``FrameRule.moves``)."""
    shifts = model.shift_parameters is not None and rule.moves
    return shifts and model.xy_translation_symmetry, shifts and model.z_translation_symmetry


def _reference(nominal_tilts_rad, view_mask):
    """The real view nearest 0 degrees, by nominal tilt (``core.problem.reference_view``)."""
    size = jnp.abs(nominal_tilts_rad)
    return jnp.argmin(size if view_mask is None else jnp.where(view_mask, size, jnp.inf))


def _scales(model: ProjectionModel, rule: FrameRule) -> bool:
    """Whether the frame scales the specimen (every view's scale following)."""
    return "scale" in model.parameters and model.scale_symmetry and rule.scales


def _turned(model: ProjectionModel, views, markers, scalars, rule: FrameRule):
    """The solution (views (n, k), markers (m, 3)) after the frame's tilt change or frame map and
    its scaling (markers by 1 + scalars[1], the views' scales by its inverse)."""
    if rule.mapped:
        views, markers = model.frame_map.apply(views, markers, scalars[_MAP])
    elif rule.tilts and model.tilt_offset is not None:
        views, markers = model.tilt_offset(views, markers, scalars[0])
    if _scales(model, rule):
        factor = 1 + scalars[1]
        views = views.at[..., model.index("scale")].divide(factor)
        markers = markers * factor
    return views, markers


def frame_scalars(
    model: ProjectionModel,
    views,
    markers,
    nominal_tilts_rad,
    rule: FrameRule,
    view_mask=None,
    marker_mask=None,
):
    """The scalars (``N_FRAME_SCALARS``,) that move a solution into its reporting frame.

    First the tilts: changed by minus their mean deviation from nominal, or, for a model with a
    frame map (``ProjectionModel.frame_map``), its map. Then the specimen is scaled to a scale of
    1 in the view nearest 0 degrees, and moved to zero mean marker z and to where its origin
    projects onto the image centre in that view. views (n, k) model units, markers (m, 3) px,
    nominal (n,) radians; the masks: the real entries of a padded series. Traceable.
    """
    dtype = views.dtype
    scalars = jnp.zeros(N_FRAME_SCALARS, dtype)
    ref = _reference(nominal_tilts_rad, view_mask)
    if rule.mapped:
        scalars = scalars.at[_MAP].set(model.frame_map.scalars(views, nominal_tilts_rad, view_mask))
    elif rule.tilts and model.tilt_offset is not None:
        scalars = scalars.at[0].set(-_mean(views[:, model.index("tilt")] - nominal_tilts_rad, view_mask))
    if _scales(model, rule):  # the turn leaves the scales as they are
        scalars = scalars.at[1].set(views[ref, model.index("scale")] - 1)
    moves_xy, moves_z = _moves(model, rule)
    if not moves_z:  # (every model with the x-y symmetry has the z one)
        return scalars
    views, markers = _turned(model, views, markers, scalars, rule)
    zbar = _mean(markers[:, 2], marker_mask)
    if not moves_xy:
        return scalars.at[_MOVE].set(jnp.zeros(3, dtype).at[2].set(zbar))
    at_ref = partial(model.project, views[ref])
    origin = jnp.zeros(3, dtype)
    image = jax.jacfwd(at_ref)(origin)  # (2, 3): the view is affine in the marker position
    # the move t with the origin's image at the centre: image t + offset = 0, t_z = zbar
    offset = at_ref(origin) + image[:, 2] * zbar
    xy = image[:, :2]
    usable = jnp.abs(jnp.linalg.det(xy)) > 1e-12
    move = jnp.linalg.solve(jnp.where(usable, xy, jnp.eye(2, dtype=dtype)), -offset)
    return scalars.at[_MOVE].set(jnp.concatenate([jnp.where(usable, move, 0.0), zbar[None]]))


def framed_view(model: ProjectionModel, view, scalars, rule: FrameRule):
    """One view (k,) moved into the reporting frame by ``scalars`` (:func:`frame_scalars`)."""
    view = _turned(model, view[None], jnp.zeros((1, 3), view.dtype), scalars, rule)[0][0]
    if any(_moves(model, rule)):
        moved = model.project(view, scalars[_MOVE]) - model.project(view, jnp.zeros(3, view.dtype))
        sx, sy = (model.index(p) for p in model.shift_parameters)
        view = view.at[jnp.array([sx, sy])].add(moved)
    return view


def framed_marker(model: ProjectionModel, marker, scalars, rule: FrameRule):
    """One marker (3,) moved into the reporting frame by ``scalars`` (:func:`frame_scalars`)."""
    neutral = jnp.asarray(model.neutral, marker.dtype)[None]
    marker = _turned(model, neutral, marker[None], scalars, rule)[1][0]
    return marker - scalars[_MOVE] if any(_moves(model, rule)) else marker


def reporting_frame(
    model: ProjectionModel,
    views,
    markers,
    nominal_tilts_rad,
    rule: FrameRule,
    view_mask=None,
    marker_mask=None,
):
    """The same solution in the reporting frame (traceable JAX; no batch axis).

    views: (n_views, k) model units; markers: (n_markers, 3) pixels; nominal_tilts_rad:
    (n_views,). ``rule``: which symmetries the frame uses (:func:`frame_rule`). ``view_mask``
    (n_views,), ``marker_mask`` (n_markers,): the real entries of a padded series (means and
    the reference view are taken over them); None means all. Returns (views, markers).
    """
    scalars = frame_scalars(model, views, markers, nominal_tilts_rad, rule, view_mask, marker_mask)
    views = jax.vmap(lambda view: framed_view(model, view, scalars, rule))(views)
    markers = jax.vmap(lambda marker: framed_marker(model, marker, scalars, rule))(markers)
    return views, markers


def _z_centred(model: ProjectionModel, views, markers, marker_mask=None):
    """The markers moved along z to zero mean z, each view's shift taking up the move where the
    centroid projects (traceable JAX): the same solution for a model with the exact z symmetry,
    the nearest such start for one without."""
    centroid = jnp.zeros(3, markers.dtype).at[2].set(_mean(markers[:, 2], marker_mask))
    at_centroid = model.project(views.T, centroid[:, None])  # (2, n_views)
    at_origin = model.project(views.T, jnp.zeros((3, 1), markers.dtype))
    sx, sy = (model.index(p) for p in model.shift_parameters)
    views = views.at[:, [sx, sy]].add((at_centroid - at_origin).T)
    return views, markers - centroid


@partial(jax.jit, static_argnames=("model",))
def _z_centred_of_one(views, markers, *, model: ProjectionModel):
    return _z_centred(model, views, markers)


def recentred_again(model: ProjectionModel) -> bool:
    """Whether ``align()`` and ``align_batch()`` run a model's last stage once more from the
    markers at zero mean z (:func:`z_centred_start`): a model whose z translation is only nearly
    a symmetry (``ProjectionModel.z_translation_symmetry`` False) with one marker's z held by the
    gauge. Held at its value from the first estimates, that marker's z set where the specimen
    sits in the tomogram: on BBa the warp model's markers ended 45 px below its centre, and a
    tomogram as thick as the specimen would have cut it. Other models' reporting frame centres
    them exactly."""
    return not model.z_translation_symmetry and model.gauge_marker_z and model.shift_parameters is not None


def z_centred_start(model: ProjectionModel, views, markers) -> tuple[np.ndarray, np.ndarray]:
    """The solution with its markers at zero mean z, each view's shift taking up the move where
    the centroid projects (:func:`_z_centred`, float64 numpy), for a model of
    :func:`recentred_again`; other models unchanged."""
    if not recentred_again(model):
        return views, markers
    with jax.enable_x64(True):
        args = np.asarray(views, np.float64), np.asarray(markers, np.float64)
        views, markers = compiled_cache.call(_z_centred_of_one, *args, model=model)
        return np.asarray(views, np.float64), np.asarray(markers, np.float64)


def predicted_positions(model: ProjectionModel, views, markers):
    """Predicted centred image positions (n_views, n_markers, 2), pixels (traceable JAX)."""
    return jax.vmap(jax.vmap(model.project, in_axes=(None, 0)), in_axes=(0, None))(views, markers)


#: ``reporting_frame`` compiled (model and rule static); traced calls inline it.
jit_reporting_frame = jax.jit(reporting_frame, static_argnums=(0, 4))


@partial(jax.jit, static_argnames=("model", "rule"))
def _frame_of_one(views, markers, nominal_tilts_rad, *, model: ProjectionModel, rule: FrameRule):
    """``reporting_frame`` with its static options as keywords (as ``compiled_cache.call`` keys them)."""
    return reporting_frame(model, views, markers, nominal_tilts_rad, rule)


@partial(jax.jit, static_argnames=("model",))
def _predicted_of_one(views, markers, *, model: ProjectionModel):
    return predicted_positions(model, views, markers)


def to_reporting_frame(
    model: ProjectionModel, views, markers, nominal_tilts_rad, rule: FrameRule
) -> tuple[np.ndarray, np.ndarray]:
    """``reporting_frame`` of one solution on the host: float64 numpy (views, markers)."""
    with jax.enable_x64(True):
        args = (
            np.asarray(views, np.float64),
            np.asarray(markers, np.float64),
            np.asarray(nominal_tilts_rad, np.float64),
        )
        views, markers = compiled_cache.call(_frame_of_one, *args, model=model, rule=rule)
        return np.asarray(views, np.float64), np.asarray(markers, np.float64)


def project_all(model: ProjectionModel, views, markers) -> np.ndarray:
    """Predicted centred positions (n_views, n_markers, 2), float64 numpy, pixels."""
    with jax.enable_x64(True):
        predicted = compiled_cache.call(
            _predicted_of_one, np.asarray(views, np.float64), np.asarray(markers, np.float64), model=model
        )
        return np.asarray(predicted, dtype=np.float64)
