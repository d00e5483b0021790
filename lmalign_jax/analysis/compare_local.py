"""Local alignment as a candidate of ``compare_models``: is it justified by the data?

The candidate is IMOD-style local alignment (``core.local.align_local``, with its patch-keeping
rule) on top of a rigid model of the comparison (the base: the first model with per-view
rotation, tilt and shifts). Both sides are judged the way IMOD's ``tilt`` uses them: every
marker's 3-D position is fitted to its points mapped into the globally aligned frame, through
the global projection alone or through the local file as tilt applies it
(``core.local_apply``), and the residuals are taken there. So the base's numbers here are
recomputed in that frame (they differ from the model row's by the ``.xf`` fit, a few 1e-4 px);
the comparison is paired point by point.

- BIC: ``N log(RSS / N) + p log N`` with ``N`` residual components; the local candidate's ``p``
  is the base's free parameters plus the free parameters of every *kept* patch (a patch that
  keeps the global solution costs nothing). ``delta_bic`` = local minus base; below
  ``-DECISIVE_BIC`` is decisive.
- Leave-out: the folds of the comparison. For each fold the base's fit without the fold's
  points (the one its own leave-out row used) gets its local alignment, solved on the training
  points only (``settings.weights``); the held-out points are predicted from markers fitted to
  the training points through the global projection or through that fold's local file, and
  the squared errors are paired: local is justified by the leave-out residual when it lowers
  them on average by more than twice the standard error of the mean difference, and is
  significantly worse when it raises them by as much.

Justified = both; a significantly worse leave-out residual is not justified, whatever the BIC
says. On a rigid specimen the keeping rule usually keeps no patch; the local file
then is the global alignment, and both criteria say "not justified" (no gain, no cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.local import LocalOptions, align_local, check_local_model
from ..core.local_apply import fit_markers_through_local, project_through_local
from ..core.result import AlignmentResult
from .criteria import DECISIVE_BIC

__all__ = ["LEAVE_OUT_SKIPPED", "LocalCandidate", "leave_out_text", "local_base", "local_candidate"]

#: How a verdict says the cross-validation was not run (``compare_models(leave_out=False)``).
LEAVE_OUT_SKIPPED = "skipped (--no-leave-out)"


#: Leave-out gains within this fraction of the squared prediction error itself are round-off
#: (e.g. local alignment that kept no patch in any fold predicts exactly what the global one does).
ROUNDOFF = 1e-9


def leave_out_significant(gain: float, se: float, scale_px2: float) -> bool:
    """Whether a leave-out gain (px^2) is significant: above 2 standard errors, and above
    round-off of the squared prediction error ``scale_px2`` it is a difference of. A loss is
    significant when ``-gain`` is."""
    return bool(np.isfinite(se) and gain > 2 * se and abs(gain) > ROUNDOFF * scale_px2)


def bic_text(delta: float) -> str:
    """The BIC half of a verdict for a change ``delta`` (candidate - base): decisive for the
    candidate below ``-DECISIVE_BIC``, decisive against it above ``DECISIVE_BIC`` (a rise that large
    is evidence against it, not a lack of evidence); a change that rounds to 0.0 is "unchanged"."""
    if not np.isfinite(delta):
        return "BIC not available"
    if round(abs(delta), 1) == 0:  # no direction to name (e.g. no patch kept: round-off only)
        return "BIC unchanged (0.0), not decisive"
    size = f"BIC {'lower' if delta < 0 else 'higher'} by {abs(delta):.1f}"
    if delta < -DECISIVE_BIC:
        return f"{size}, decisive"
    return f"{size}, decisive against" if delta > DECISIVE_BIC else f"{size}, not decisive"


def leave_out_text(gain: float, se: float, significant: bool, scale_px2: float = 0.0) -> str:
    """The leave-out half of a verdict: the mean reduction ``gain`` of the squared prediction
    error (px^2) and its standard error ``se`` (NaN for a single held-out point); ``significant``:
    whether the gain is (:func:`leave_out_significant`). A rise is judged by the same rule and
    said to be "significantly worse"; a gain at round-off of ``scale_px2`` is said to be none."""
    if abs(gain) <= ROUNDOFF * scale_px2:
        return "leave-out squared error unchanged (the same predictions, to round-off)"
    pm = f" +- {se:.4f}" if np.isfinite(se) else " (one point: no standard error)"
    if gain > 0:
        change, judged = "lower", "significant" if significant else "not significant"
    else:
        worse = leave_out_significant(-gain, se, scale_px2)
        change, judged = "higher", "significantly worse" if worse else "not significant"
    return f"leave-out squared error {change} by {abs(gain):.4f}{pm} px^2, {judged}"


@dataclass(frozen=True, eq=False)
class LocalCandidate:
    """Local alignment over ``base`` (module docstring); NaN where unavailable."""

    base: str
    n_patches: int
    n_kept: int
    extra_parameters: int
    n_components: int
    base_parameters: int
    rss_global_px2: float
    rss_local_px2: float
    delta_bic: float
    leave_out_rms_global_px: float
    leave_out_rms_local_px: float
    leave_out_gain_px2: float
    leave_out_gain_se_px2: float
    n_kept_per_fold: tuple[int, ...]
    note: str = ""
    #: Why the leave-out was not compared ("" when it was, or a note says why).
    leave_out_skipped: str = ""
    leave_out_errors: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    #: The local alignment's settings (``LocalOptions.to_dict``).
    options: dict = field(default_factory=dict)

    @property
    def justified_by_bic(self) -> bool:
        return bool(self.delta_bic < -DECISIVE_BIC)

    @property
    def justified_by_leave_out(self) -> bool:
        return leave_out_significant(self.leave_out_gain_px2, self.leave_out_gain_se_px2, self._scale_px2)

    @property
    def worse_by_leave_out(self) -> bool:
        """Whether local alignment predicts the held-out points significantly worse (the same rule)."""
        return leave_out_significant(-self.leave_out_gain_px2, self.leave_out_gain_se_px2, self._scale_px2)

    @property
    def _scale_px2(self) -> float:
        """The global alignment's mean squared prediction error per component (px^2)."""
        scale = self.leave_out_rms_global_px**2
        return float(scale) if np.isfinite(scale) else 0.0

    @property
    def justified(self) -> bool:
        return self.justified_by_bic and self.justified_by_leave_out

    @property
    def text(self) -> str:
        d, gain, se = self.delta_bic, self.leave_out_gain_px2, self.leave_out_gain_se_px2
        if np.isfinite(gain):
            verdict = "justified" if self.justified else "not justified"
            leave = leave_out_text(gain, se, self.justified_by_leave_out, self._scale_px2)
        else:
            verdict = "justified by BIC alone" if self.justified_by_bic else "not justified"
            leave = f"leave-out {self.leave_out_skipped or 'not compared'}"
        bic = bic_text(d)
        return (
            f"local alignment over {self.base}: {verdict} ({self.n_kept} of {self.n_patches} patches kept, "
            f"{self.extra_parameters} more parameters; {bic}; {leave})"
        )

    def to_dict(self) -> dict:
        out = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("leave_out_errors", "n_kept_per_fold")
        }
        out["n_kept_per_fold"] = list(self.n_kept_per_fold)
        out.update(
            justified=self.justified,
            justified_by_bic=self.justified_by_bic,
            justified_by_leave_out=self.justified_by_leave_out,
            worse_by_leave_out=self.worse_by_leave_out,
            text=self.text,
        )
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def takes_local(model) -> bool:
    """Whether a local alignment can refine ``model`` (per-view rotation, tilt and shifts, no
    regularization rows)."""
    try:
        check_local_model(model)
    except ValueError:
        return False
    return model.regularization is None


def local_base(results: dict, names) -> str | None:
    """The first of ``names`` whose result exists and whose model takes a local alignment."""
    for name in names:
        result = results.get(name)
        if result is not None and not result.status.startswith("failed") and takes_local(result.model):
            return name
    return None


def _point_weights(result: AlignmentResult, mask) -> np.ndarray:
    """(V, M) each point's weight in ``result``'s fit on ``mask``: its robust weight squared, else 1."""
    weights = result.settings.weights
    return np.where(mask, 1.0 if weights is None else np.asarray(weights, float) ** 2, 0.0)


def _through(local, result: AlignmentResult, mask, start_xyz, z_factors=None):
    """(markers xyz, aligned points (V, M, 2) centred) fitted to ``mask``'s points through ``local``
    (with the global alignment's ``z_factors`` (V, 2), or None), weighted as ``result``'s fit."""
    obs = result.observations
    aligned = result.aligned_xy() - obs.center
    xyz, _ = fit_markers_through_local(
        local,
        aligned,
        mask,
        result.tilts_deg,
        obs.image_size,
        start_xyz,
        z_factors=z_factors,
        point_weights=_point_weights(result, mask),
    )
    return xyz, aligned


def _prediction_errors(local, result: AlignmentResult, train, held, start_xyz, z_factors=None) -> np.ndarray:
    xyz, aligned = _through(local, result, train, start_xyz, z_factors)
    predicted = project_through_local(
        local, xyz, result.tilts_deg, result.observations.image_size, z_factors=z_factors
    )
    return (predicted - aligned)[held]


def local_candidate(
    base: AlignmentResult, name: str, options: LocalOptions, fold_fits=(), leave_out_skipped: str = ""
) -> LocalCandidate:
    """Local alignment over the solved ``base`` (named ``name``) as a candidate (module docstring).

    ``fold_fits``: (held-out mask, base fitted without those points) per leave-out fold; none
    skips the leave-out comparison, for the reason ``leave_out_skipped`` says.
    """
    obs = base.observations
    mask = obs.mask
    solution = align_local(base, options)
    kept = [p for p in solution.patches if p.kept_local]
    # the kept patches' parameters, and the increments their joint refinement added to them
    extra = int(sum(p.n_free for p in kept)) + solution.joint_added
    aligned = base.aligned_xy() - obs.center
    # the global alignment's z factors (the file's own replace them), the points weighted as the fit
    through = dict(z_factors=solution.z_factors, point_weights=_point_weights(base, mask))
    g_xyz, g_res = fit_markers_through_local(
        None, aligned, mask, base.tilts_deg, obs.image_size, base.markers, **through
    )
    _, l_res = fit_markers_through_local(
        solution.file, aligned, mask, base.tilts_deg, obs.image_size, g_xyz, **through
    )
    rss_g, rss_l = float(np.nansum(g_res**2)), float(np.nansum(l_res**2))
    n = 2 * obs.n_observed
    delta = n * math.log(rss_l / rss_g) + extra * math.log(n) if rss_g > 0 and rss_l > 0 else math.nan

    errors_g, errors_l, kept_per_fold, note = [], [], [], ""
    for held, fit in fold_fits:
        if fit is None or fit.status.startswith("failed"):
            note = "a leave-out fold's base fit failed; leave-out not compared"
            errors_g, errors_l = [], []
            break
        train = mask & ~held
        fold_local = align_local(fit, options)
        kept_per_fold.append(sum(p.kept_local for p in fold_local.patches))
        zfac = fold_local.z_factors
        xyz0, _ = _through(None, fit, train, fit.markers, zfac)
        errors_g.append(_prediction_errors(None, fit, train, held, xyz0, zfac))
        errors_l.append(_prediction_errors(fold_local.file, fit, train, held, xyz0, zfac))
    gain = se = rms_g = rms_l = math.nan
    pair = None
    if errors_g:
        eg, el = np.concatenate(errors_g), np.concatenate(errors_l)
        pair = (eg, el)
        d = np.sum(eg**2, axis=-1) - np.sum(el**2, axis=-1)
        gain = float(np.mean(d) / 2)
        se = float(np.std(d, ddof=1) / np.sqrt(d.size) / 2) if d.size > 1 else math.nan
        rms_g, rms_l = float(np.sqrt(np.mean(eg**2))), float(np.sqrt(np.mean(el**2)))
    return LocalCandidate(
        base=name,
        n_patches=len(solution.patches),
        n_kept=len(kept),
        extra_parameters=extra,
        n_components=n,
        base_parameters=int(base.n_free),
        rss_global_px2=rss_g,
        rss_local_px2=rss_l,
        delta_bic=float(delta),
        leave_out_rms_global_px=rms_g,
        leave_out_rms_local_px=rms_l,
        leave_out_gain_px2=gain,
        leave_out_gain_se_px2=se,
        n_kept_per_fold=tuple(int(k) for k in kept_per_fold),
        note=note,
        leave_out_skipped="" if pair is not None or note else leave_out_skipped,
        leave_out_errors=pair,
        options=options.to_dict(),
    )
