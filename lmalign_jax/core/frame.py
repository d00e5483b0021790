"""The reporting frame of a solution and the positions it predicts.

A solution is reported in the frame, reached by exact symmetries of the model, whose tilts
deviate from the nominal ones by zero on average and whose markers have zero mean z. Marker
x, y stay in the gauge's frame: the specimen origin projects onto the image centre in the
reference view, so the aligned images sit where the raw ones did (as in IMOD). A model
without the exact z symmetry (``ProjectionModel.z_translation_symmetry``) keeps its z, which
``align()`` and ``align_batch()`` centre before running the last stage once more instead
(:func:`recentred_again`). ``align()``,
``align_batch()`` (on padded series, with masks) and ``alignment_function`` all use
``reporting_frame``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import compiled_cache
from ..models import ProjectionModel


def _mean(values, mask):
    """Mean of ``values`` (n,), over the entries where ``mask`` (n,) is True when given."""
    if mask is None:
        return jnp.mean(values)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def reporting_frame(
    model: ProjectionModel,
    views,
    markers,
    nominal_tilts_rad,
    tilt_free: bool,
    view_mask=None,
    marker_mask=None,
):
    """The same solution in the reporting frame (traceable JAX; no batch axis).

    views: (n_views, k) model units; markers: (n_markers, 3) pixels; nominal_tilts_rad:
    (n_views,). ``tilt_free``: whether the tilts were solved (else only markers move to zero
    mean z). ``view_mask`` (n_views,), ``marker_mask`` (n_markers,): the real entries of a
    padded series (means are taken over them); None means all. Returns (views, markers).
    """
    if tilt_free and model.tilt_offset is not None:
        delta = -_mean(views[:, model.index("tilt")] - nominal_tilts_rad, view_mask)
        views, markers = model.tilt_offset(views, markers, delta)
    if model.shift_parameters is not None and model.z_translation_symmetry:
        views, markers = _z_centred(model, views, markers, marker_mask)
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


#: ``reporting_frame`` compiled (model and tilt_free static); traced calls inline it.
jit_reporting_frame = jax.jit(reporting_frame, static_argnums=(0, 4))


@partial(jax.jit, static_argnames=("model", "tilt_free"))
def _frame_of_one(views, markers, nominal_tilts_rad, *, model: ProjectionModel, tilt_free: bool):
    """``reporting_frame`` with its static options as keywords (as ``compiled_cache.call`` keys them)."""
    return reporting_frame(model, views, markers, nominal_tilts_rad, tilt_free)


@partial(jax.jit, static_argnames=("model",))
def _predicted_of_one(views, markers, *, model: ProjectionModel):
    return predicted_positions(model, views, markers)


def to_reporting_frame(
    model: ProjectionModel, views, markers, nominal_tilts_rad, tilt_free: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``reporting_frame`` of one solution on the host: float64 numpy (views, markers)."""
    with jax.enable_x64(True):
        args = (
            np.asarray(views, np.float64),
            np.asarray(markers, np.float64),
            np.asarray(nominal_tilts_rad, np.float64),
        )
        views, markers = compiled_cache.call(_frame_of_one, *args, model=model, tilt_free=tilt_free)
        return np.asarray(views, np.float64), np.asarray(markers, np.float64)


def project_all(model: ProjectionModel, views, markers) -> np.ndarray:
    """Predicted centred positions (n_views, n_markers, 2), float64 numpy, pixels."""
    with jax.enable_x64(True):
        predicted = compiled_cache.call(
            _predicted_of_one, np.asarray(views, np.float64), np.asarray(markers, np.float64), model=model
        )
        return np.asarray(predicted, dtype=np.float64)
