"""Comparing projection-model variants on the same observations.

``compare_models`` fits each model with ``align`` and tabulates, per model:

- ``n_free``: free parameters of the final solve (gauge-fixed; markers included);
- ``effective_parameters``: ``n_free`` for a rigid model; for a deformation model, whose
  per-view coefficients are tied by smoothness rows, the trace of the data's hat matrix
  ``n_free - tr(H^-1 H_reg)`` (``solve.effective_parameters``), the number of parameters the
  data actually pay for;
- ``rms_residual_px`` (paper eq. 4) and ``mean_residual_px`` (IMOD's mean length);
- ``bic``: the Bayesian information criterion for Gaussian residuals,
  ``N log(RSS / N) + p log(N)`` with ``N = 2 * n_observed`` residual components, ``RSS``
  their sum of squares (penalty rows not included) and ``p`` the effective number of
  parameters. Lower is better; a difference above ~10 is decisive;
- ``leave_out_rms_px``: a cross-validated prediction error (below; lower is better);
- how far its view parameters move from the first model's: the largest per-view
  difference in rotation, and in tilt after removing the mean difference (a constant tilt
  offset is a gauge freedom of most models), degrees.

Leave-out scheme. A marker's own observations fix its 3-D position, so holding out whole
markers measures nothing; instead single observations are held out. The observed
(view, marker) pairs are shuffled with ``numpy.random.default_rng(seed)`` and dealt in turn
to ``folds`` disjoint folds (about 1/folds of the points each; 20% for the default 5). A
point is skipped (never held out) when removing it would leave its marker in fewer than
``min_views_per_marker`` training views or its view with fewer than
``min_markers_per_view`` training markers in that fold. For each fold and model, the joint
stage is solved from the model's full solution with the fold's points given weight 0
(``align(..., stages=("joint",), start=full, weights=training_mask)``: the same compiled
solve, no recompilation), and the held-out points are predicted by the fitted views and
markers. ``leave_out_rms_px`` is the per-component RMS of those prediction errors pooled
over all folds; ``leave_out_mean_px`` their mean length. Every model sees the same folds.

Deformation verdict. For each deformation model (``models.DEFORMATION_MODELS``) in the table,
``deformation_verdicts`` says whether the data justify it over the best rigid model by BIC
(lower by more than ``DECISIVE_BIC``) and by the leave-out residual (the held-out points'
squared prediction errors, paired point by point, lower on average by more than twice the
standard error of that mean difference).

Local alignment (``local=LocalOptions(...)``, or ``"local"`` among the models) is a further
candidate over the first rigid model: :mod:`lmalign_jax.analysis.compare_local`, reported as
``ModelComparison.local`` with its verdict on the same two criteria.

Underdetermined models. A model whose parameters (``effective_parameters``: ``n_free`` for a
rigid model) leave less than one residual degree of freedom among the ``2 * n_observed``
measured coordinates (:func:`criteria.underdetermined`) can pass through every point: its RMS
says nothing and its BIC is meaningless. Its row is marked ``underdetermined`` (the table's
status says how many parameters for how many coordinates), its BIC and leave-out residual are
NaN, and it is never a best model, a deformation verdict's rigid model or the base of the local
candidate. The leave-out residual is likewise skipped (NaN, with a note) for a model that is
underdetermined in a fold's training set. A model for which some view has fewer points than its
own parameters need (``core.problem.points_needed``; ``align()`` refuses it) is not
fitted: its row is marked underdetermined, status "not fitted", and says which views. A fold
whose training set leaves a view fewer points than that skips the model's leave-out (a note
says which), as its held-out points there would be predicted by arbitrary values.

Unconverged fits. A fit that stopped at the iteration limit answered (its row has its numbers)
but is not ranked either: never a best model, a deformation verdict's rigid model (a deformation
model that did not converge is "not judged") or the base of the local candidate; its status says
"not ranked". With ``leave_out=False`` the verdicts say the leave-out was skipped.

A model whose fit fails, or raises, gets a row with its status and NaN numbers; the others
still compare. "diez" has no shift term and expects centred observations: on data with
shifts it fits badly, which the table shows (its status says whether it converged).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..core.align import align
from ..core.local_options import LocalOptions
from ..core.problem import points_needed
from ..core.result import AlignmentResult
from ..models import MODELS, ProjectionModel, get_model
from ..observations import Observations
from .compare_local import LEAVE_OUT_SKIPPED, local_base, local_candidate, takes_local
from .comparison import ModelComparison, ModelRow
from .criteria import (
    DECISIVE_BIC,
    _positive_int,
    bic,
    effective_parameter_count,
    leave_out_folds,
    underdetermined,
)

__all__ = [
    "DECISIVE_BIC",
    "DEFAULT_MODELS",
    "ModelComparison",
    "ModelRow",
    "bic",
    "compare_models",
    "effective_parameter_count",
    "leave_out_folds",
]

DEFAULT_MODELS = ("jou", "luther", "diez", "imod")
#: align() keywords compare_models sets itself.
_RESERVED = ("model", "weights", "start")


def compare_models(
    obs: Observations,
    models=DEFAULT_MODELS,
    *,
    folds: int = 5,
    seed: int = 0,
    leave_out: bool = True,
    min_views_per_marker: int = 3,
    min_markers_per_view: int = 5,
    local: LocalOptions | None = None,
    view_names=None,
    **align_kwargs,
) -> ModelComparison:
    """Fit each model to the same observations and compare them (see the module docstring).

    Args:
        obs: the observations.
        models: model names (or ``ProjectionModel`` objects), or one comma-separated string;
            differences are reported against the first.
        folds: number of leave-out folds (>= 2); ``seed`` shuffles the points into them.
        leave_out: False skips the cross-validation (leave-out columns are NaN).
        min_views_per_marker, min_markers_per_view: what each fold's training set keeps.
        local: also judge local alignment with these options over the first rigid model
            (``"local"`` among ``models`` means ``LocalOptions()``).
        view_names: how the notes name each view of ``obs`` (n_views strings, e.g. the file's
            1-based numbers when ``obs`` holds a selection in tilt order); default ``"view I"``,
            I the index in ``obs``.
        **align_kwargs: passed to every ``align`` call (rotation_deg, modes, stages, config,
            dtype, ref_view). ``modes`` applies to each model for the parameters it has.
            ``model``, ``weights`` and ``start`` are not accepted.
    Returns:
        ``ModelComparison``.
    """
    if isinstance(models, str):
        models = [s.strip() for s in models.split(",")]
    if not isinstance(models, ProjectionModel) and any(isinstance(m, str) and m == "local" for m in models):
        models = [m for m in models if not (isinstance(m, str) and m == "local")]
        local = local or LocalOptions()
    chosen = _models(models)
    names = tuple(m.name for m in chosen)
    bad = [k for k in _RESERVED if k in align_kwargs]
    if bad:
        raise ValueError(f"compare_models sets {', '.join(bad)} itself; pass the models as models=(...)")
    folds = _positive_int("folds", folds, minimum=2)
    min_views_per_marker = _positive_int("min_views_per_marker", min_views_per_marker, minimum=2)
    min_markers_per_view = _positive_int("min_markers_per_view", min_markers_per_view, minimum=1)
    modes = dict(align_kwargs.pop("modes", None) or {})
    known = {p for m in chosen for p in m.parameters}
    unknown = sorted(set(modes) - known)
    if unknown:
        raise ValueError(f"modes name parameter(s) {unknown} that none of the models {', '.join(names)} has")

    if view_names is None:
        view_names = [f"view {v}" for v in range(obs.n_views)]
    elif len(view_names) != obs.n_views:
        raise ValueError(f"view_names has {len(view_names)} names for {obs.n_views} views")
    fold_of = leave_out_folds(obs.mask, folds, seed, min_views_per_marker, min_markers_per_view)
    if not leave_out:
        fold_of = np.full(obs.mask.shape, -1, dtype=int)

    results: dict = {}
    fold_fits: dict = {}
    rows: list[ModelRow] = []
    for m in chosen:
        kwargs = dict(align_kwargs)
        model_modes = {p: v for p, v in modes.items() if p in m.parameters}
        if model_modes:
            kwargs["modes"] = model_modes
        fold_fits[m.name] = []
        rows.append(_fit_row(obs, m, kwargs, fold_of, folds, results, fold_fits[m.name], view_names))
    candidate, local_note = None, ""
    if local is not None:
        base = local_base(results, [r.model for r in rows if r.ranked])
        if base is None:
            local_note = "no rigid model with per-view rotation, tilt and shifts answered (jou, imod, luther)"
            under = local_base(results, names) or next(  # or one not fitted for want of points
                (m.name for m, r in zip(chosen, rows, strict=True) if r.short_of_points and takes_local(m)),
                None,
            )
            if under is not None:  # it answered, but is underdetermined or did not converge
                row = next(r for r in rows if r.model == under)
                what = "determined" if row.underdetermined else "converged"
                local_note = f"no {what} rigid model to stand on ({under}: {row.unranked_text})"
        else:
            try:
                skipped = LEAVE_OUT_SKIPPED if not leave_out else "not compared (see the notes)"
                candidate = local_candidate(results[base], base, local, fold_fits[base], skipped)
            except Exception as exc:  # the comparison of the models still stands
                local_note = f"error: {type(exc).__name__}: {exc}"

    reference = next((r.model for r in rows if r.ranked), None) or next((r.model for r in rows if r.ok), None)
    if reference is not None:
        ref = results[reference]
        rows = [_with_differences(r, results.get(r.model), ref) for r in rows]
    return ModelComparison(
        tuple(rows), results, reference, folds, int(seed), fold_of, candidate, local_note, bool(leave_out)
    )


def _fit_row(
    obs, m: ProjectionModel, kwargs, fold_of, folds, results, fold_fits: list, view_names
) -> ModelRow:
    """One model's row; ``fold_fits`` gets (held-out mask, fit without them) per fold; the notes
    name views by ``view_names``."""
    n_obs = obs.n_observed
    note = (
        ""
        if m.shift_parameters is not None
        else "no shift term: expects centred observations (fits badly otherwise)"
    )
    start = time.perf_counter()
    try:
        needed = points_needed(m, kwargs.get("modes") or {}, obs.n_views, obs.tilts_deg, obs.mask.sum(axis=1))
        short = np.flatnonzero(obs.mask.sum(axis=1) < needed)
        if short.size:  # align() refuses: say why, as an underdetermined row
            results[m.name] = None
            v = int(short[0])
            why = (
                f"{short.size} of {obs.n_views} views have fewer points than their own parameters need "
                f"({view_names[v]}: {int(obs.mask[v].sum())} of {int(needed[v])})"
            )
            return replace(
                _empty_row(m.name, "not fitted", n_obs, time.perf_counter() - start, note),
                underdetermined=True,
                short_of_points=why,
            )
        full = align(obs, model=m, **kwargs)
    except Exception as exc:  # one model's failure must not stop the comparison
        results[m.name] = None
        return _empty_row(
            m.name, f"error: {type(exc).__name__}: {exc}", n_obs, time.perf_counter() - start, note
        )
    results[m.name] = full
    resid = full.residuals[obs.mask]
    rss = float(np.sum(resid * resid))
    n_effective = float(full.n_free)
    if m.regularization is not None and not full.status.startswith("failed"):
        try:
            n_effective = effective_parameter_count(full)
        except Exception as exc:
            note = (note + "; " if note else "") + f"effective parameters: {type(exc).__name__}: {exc}"
    n_parameters = n_effective if np.isfinite(n_effective) else float(full.n_free)
    under = underdetermined(n_parameters, 2 * n_obs)
    leave_rms = leave_mean = float("nan")
    leave_errors = None
    n_held = int((fold_of >= 0).sum())
    held_max = max((int((fold_of == f).sum()) for f in range(folds)), default=0)
    n_train = 2 * (n_obs - held_max)  # coordinates of the smallest training set
    if n_held and not under and underdetermined(n_parameters, n_train):
        note = (note + "; " if note else "") + (
            f"leave-out skipped: {n_parameters:g} parameters for {n_train} coordinates "
            "in a fold's training set"
        )
    elif (
        n_held
        and not under
        and (short_fold := _fold_short_of_points(obs.mask, needed, fold_of, folds, view_names))
    ):
        note = (note + "; " if note else "") + f"leave-out skipped: {short_fold}"
    elif not full.status.startswith("failed") and n_held and not under:
        fold_kwargs = {k: v for k, v in kwargs.items() if k != "stages"}
        errors = []
        try:
            for f in range(folds):
                held = fold_of == f
                if not held.any():
                    continue
                train = (obs.mask & ~held).astype(np.float64)
                fit = align(obs, model=m, stages=("joint",), start=full, weights=train, **fold_kwargs)
                if fit.status.startswith("failed"):
                    note = (note + "; " if note else "") + f"leave-out fold {f} failed: {fit.status}"
                errors.append(fit.residuals[held])
                fold_fits.append((held, fit))
            e = np.concatenate(errors)
            leave_errors = e
            leave_rms = float(np.sqrt(np.mean(e * e)))
            leave_mean = float(np.mean(np.linalg.norm(e, axis=-1)))
        except Exception as exc:
            note = (note + "; " if note else "") + f"leave-out error: {type(exc).__name__}: {exc}"
    rms = full.rms_residual_px if np.isfinite(rss) else float("nan")
    return ModelRow(
        model=m.name,
        status=full.status,
        n_free=int(full.n_free),
        n_observed=n_obs,
        rss_px2=rss,
        rms_residual_px=rms,
        mean_residual_px=full.mean_residual_px,
        bic=float("nan") if under else bic(rss, 2 * n_obs, n_effective),
        leave_out_rms_px=leave_rms,
        leave_out_mean_px=leave_mean,
        n_held_out=n_held,
        max_rotation_diff_deg=float("nan"),
        max_tilt_diff_deg=float("nan"),
        mean_tilt_offset_deg=float("nan"),
        seconds=time.perf_counter() - start,
        note=note,
        effective_parameters=n_effective,
        leave_out_errors=leave_errors,
        underdetermined=under,
    )


def _fold_short_of_points(mask, needed, fold_of, folds: int, view_names) -> str | None:
    """Why a fold's fit would be arbitrary (a training view with fewer points than the
    ``needed`` (n_views,) of its own parameters: its held-out points would be predicted by
    arbitrary values), or None."""
    for f in range(folds):
        left = (mask & (fold_of != f)).sum(axis=1)
        short = np.flatnonzero(left < needed)
        if short.size:
            v = int(short[0])
            return (
                f"fold {f} leaves {view_names[v]} {int(left[v])} training point(s), fewer than the "
                f"{int(needed[v])} its own parameters need"
            )
    return None


def _empty_row(name, status, n_obs, seconds, note) -> ModelRow:
    nan = float("nan")
    return ModelRow(name, status, 0, n_obs, nan, nan, nan, nan, nan, nan, 0, nan, nan, nan, seconds, note)


def _with_differences(row: ModelRow, result: AlignmentResult | None, ref: AlignmentResult) -> ModelRow:
    if result is None or not row.ok:
        return row
    drot = result.rotation_deg - ref.rotation_deg
    drot = (drot + 180.0) % 360.0 - 180.0
    dtilt = result.tilts_deg - ref.tilts_deg
    offset = float(np.mean(dtilt))
    dtilt = dtilt - offset
    return replace(
        row,
        max_rotation_diff_deg=float(np.max(np.abs(drot))),
        max_tilt_diff_deg=float(np.max(np.abs(dtilt))),
        mean_tilt_offset_deg=offset,
        rotation_diff_deg=drot,
        tilt_diff_deg=dtilt,
    )


def _models(models) -> tuple[ProjectionModel, ...]:
    if isinstance(models, (str, ProjectionModel)):
        models = [s.strip() for s in models.split(",")] if isinstance(models, str) else [models]
    try:
        models = list(models)
    except TypeError:
        raise ValueError(f"models must be a sequence of model names, got {models!r}") from None
    if not models or all(isinstance(m, str) and not m for m in models):
        raise ValueError(f"models is empty; choose one or more of {', '.join(MODELS)}")
    unknown = [m for m in models if not isinstance(m, ProjectionModel) and m not in MODELS]
    if unknown:
        raise ValueError(
            f"unknown projection model(s) {', '.join(map(repr, unknown))}; choose from {', '.join(MODELS)}"
        )
    chosen = [get_model(m) for m in models]
    names = [m.name for m in chosen]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model(s) {', '.join(dup)} listed more than once")
    return tuple(chosen)
