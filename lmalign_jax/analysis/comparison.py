"""The table ``compare_models`` returns: one :class:`ModelRow` per model and the
:class:`ModelComparison` that ranks them, judges the deformation models and prints it all (the
criteria are described in :mod:`lmalign_jax.analysis.compare`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..models import DEFORMATION_MODELS, MODELS, get_model
from .compare_local import (
    LEAVE_OUT_SKIPPED,
    LocalCandidate,
    bic_text,
    leave_out_significant,
    leave_out_text,
)
from .criteria import DECISIVE_BIC, aicc

__all__ = ["ModelComparison", "ModelRow"]


@dataclass(frozen=True, eq=False)
class ModelRow:
    """One model's line of the comparison (see the module docstring); NaN where unavailable."""

    model: str
    status: str
    n_free: int
    n_observed: int
    rss_px2: float
    rms_residual_px: float
    mean_residual_px: float
    bic: float
    leave_out_rms_px: float
    leave_out_mean_px: float
    n_held_out: int
    max_rotation_diff_deg: float
    max_tilt_diff_deg: float
    mean_tilt_offset_deg: float
    seconds: float
    note: str = ""
    rotation_diff_deg: np.ndarray | None = field(default=None, repr=False)
    tilt_diff_deg: np.ndarray | None = field(default=None, repr=False)
    effective_parameters: float = float("nan")
    #: (n_held_out, 2) leave-out prediction errors, px, in the same point order for every model.
    leave_out_errors: np.ndarray | None = field(default=None, repr=False)
    #: Its parameters leave no residual degree of freedom (module docstring): never ranked.
    underdetermined: bool = False
    #: Why it was not fitted at all: views with fewer points than their own parameters need
    #: (``core.problem.points_needed``); "" when it was fitted.
    short_of_points: str = ""

    @property
    def ok(self) -> bool:
        """The fit produced an answer (converged or stopped at the iteration limit)."""
        return bool(np.isfinite(self.rms_residual_px)) and not self.status.startswith(("failed", "error"))

    @property
    def converged(self) -> bool:
        """The fit answered and converged (not stopped at the iteration limit)."""
        return self.ok and self.status.startswith("converged")

    @property
    def aicc(self) -> float:
        """Small-sample AIC (:func:`lmalign_jax.analysis.criteria.aicc`) on the BIC's terms: its
        residual components and (effective) parameters."""
        k = self.effective_parameters if np.isfinite(self.effective_parameters) else self.n_free
        return aicc(self.rss_px2, 2 * self.n_observed, k)

    @property
    def ranked(self) -> bool:
        """The fit converged and is determined: it can be a best model."""
        return self.converged and not self.underdetermined

    @property
    def underdetermined_text(self) -> str:
        """``"underdetermined: P free parameters for N coordinates"`` ("" when determined)."""
        if not self.underdetermined:
            return ""
        if self.short_of_points:
            return f"underdetermined: {self.short_of_points}"
        p = self.effective_parameters
        what = (
            f"{p:.1f} effective parameters ({self.n_free} free)"
            if np.isfinite(p) and round(p, 1) != self.n_free
            else f"{self.n_free} free parameters"
        )
        return f"underdetermined: {what} for {2 * self.n_observed} coordinates"

    @property
    def unranked_text(self) -> str:
        """Why a model that answered is not ranked ("" when it is ranked or did not answer)."""
        if self.underdetermined:
            return self.underdetermined_text
        return self.status if self.ok and not self.converged else ""  # stopped at the iteration limit

    @property
    def status_text(self) -> str:
        """The status, and why it is not ranked where it answered but is not (the table's column)."""
        if self.underdetermined:
            return f"{self.status}; {self.underdetermined_text}"
        return f"{self.status}; not ranked" if self.ok and not self.converged else self.status

    def to_dict(self) -> dict:
        out = {}
        for name in self.__dataclass_fields__:
            if name == "leave_out_errors":
                continue
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = [_finite_or_none(v) for v in value.tolist()]
            elif isinstance(value, float):
                value = _finite_or_none(value)
            out[name] = value
        out["ranked"] = self.ranked
        return out


@dataclass(frozen=True, eq=False)
class ModelComparison:
    """The table of ``compare_models``.

    Attributes:
        rows: one ``ModelRow`` per model, in the order asked for.
        results: model name -> its full ``AlignmentResult`` (None if it raised).
        reference: the model the parameter differences are taken against (the first ranked
            one, else the first that answered).
        folds, seed: the leave-out scheme's settings; ``fold_of`` (n_views, n_markers) the
            fold each observation was held out in, -1 if never (or unobserved).
        leave_out: False when the cross-validation was skipped (``leave_out=False``).
    """

    rows: tuple[ModelRow, ...]
    results: dict
    reference: str | None
    folds: int
    seed: int
    fold_of: np.ndarray
    local: LocalCandidate | None = None
    local_note: str = ""
    leave_out: bool = True

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(r.model for r in self.rows)

    def row(self, model: str) -> ModelRow:
        for r in self.rows:
            if r.model == model:
                return r
        raise KeyError(f"model {model!r} is not in this comparison ({', '.join(self.models)})")

    def _best(self, attr: str) -> str | None:
        rows = [r for r in self.rows if r.ranked and np.isfinite(getattr(r, attr))]
        return min(rows, key=lambda r: getattr(r, attr)).model if rows else None

    @property
    def best_by_bic(self) -> str | None:
        """The ranked model (converged, determined) with the lowest BIC, None if none is ranked."""
        return self._best("bic")

    @property
    def best_by_leave_out(self) -> str | None:
        """The ranked model with the lowest leave-out RMS, None if unavailable."""
        return self._best("leave_out_rms_px")

    def format_table(self) -> str:
        """The comparison as a fixed-width text table (one row per model)."""
        best_bic = min((r.bic for r in self.rows if r.ranked and np.isfinite(r.bic)), default=np.nan)
        header = (
            f"{'model':<8} {'free':>5} {'eff.':>6} {'RMS(px)':>8} {'mean(px)':>8} {'leave-out':>9} "
            f"{'BIC':>10} {'dBIC':>8} "
            f"{'max|drot|':>9} {'max|dtilt|':>10}  status"
        )
        lines = [header]
        for r in self.rows:
            lines.append(
                f"{r.model:<8} {r.n_free:>5d} {_fmt(r.effective_parameters, 6, 1)} "
                f"{_fmt(r.rms_residual_px, 8, 4)} "
                f"{_fmt(r.mean_residual_px, 8, 4)} "
                f"{_fmt(r.leave_out_rms_px, 9, 4)} {_fmt(r.bic, 10, 1)} "
                f"{_fmt(r.bic - best_bic if r.ranked else np.nan, 8, 1)} "
                f"{_fmt(r.max_rotation_diff_deg, 9, 3)} {_fmt(r.max_tilt_diff_deg, 10, 3)}  {r.status_text}"
            )
        return "\n".join(lines)

    def to_text(self) -> str:
        """The table plus the winners and notes, for people (``lmalign compare``)."""
        n_obs = self.rows[0].n_observed if self.rows else 0
        n_held = int((self.fold_of >= 0).sum())
        none_ranked = any(r.ok or r.underdetermined for r in self.rows) and not any(
            r.ranked for r in self.rows
        )
        lines = [
            f"Model comparison on {n_obs} observations ({2 * n_obs} residual components)",
            self.format_table(),
            "",
            f"best by BIC: {self.best_by_bic or '-'}; "
            f"best by leave-out residual: {self.best_by_leave_out or '-'}"
            + (
                " (no model is ranked: each is underdetermined, did not converge or failed)"
                if none_ranked
                else ""
            ),
        ]
        unranked = [r.model for r in self.rows if r.ok and r.underdetermined]
        if unranked:
            lines.append(
                f"not ranked: {', '.join(unranked)} (underdetermined: as many parameters as measured "
                "coordinates or more, effective parameters for a deformation model; no residual degree "
                "of freedom)"
            )
        unconverged = [r.model for r in self.rows if r.ok and not r.converged and not r.underdetermined]
        if unconverged:
            lines.append(
                f"not ranked: {', '.join(unconverged)} (did not converge: stopped at the iteration limit; "
                "its numbers are those of an unfinished fit)"
            )
        unfitted = [r.model for r in self.rows if r.short_of_points]
        if unfitted:
            lines.append(
                f"not fitted: {', '.join(unfitted)} (underdetermined: some views have fewer points than "
                "the parameters of their own need; a fit would be arbitrary there)"
            )
        if not self.leave_out:
            lines.append(f"leave-out: {LEAVE_OUT_SKIPPED}")
        elif not n_held:
            lines.append(
                f"leave-out: {self.folds} folds (seed {self.seed}): no observation could be held out "
                "(too few markers per view or views per marker)"
            )
        else:
            lines.append(
                f"leave-out: {self.folds} folds (seed {self.seed}), "
                f"{n_held} of {n_obs} observations held out once each; "
                "RMS of their predictions by the model fitted without them (joint stage)"
            )
        if self.reference is not None:
            lines.append(
                "max|drot|, max|dtilt|: largest per-view rotation and tilt difference "
                f"from {self.reference!r}, degrees "
                "(tilt after removing the mean offset)"
            )
        lines += [f"note: {r.model}: {r.note}" for r in self.rows if r.note]
        verdicts = self.deformation_verdicts()
        lines += [f"deformation: {v['text']}" for v in verdicts]
        unjudged = [
            r.model for r in self.rows if r.model in DEFORMATION_MODELS and (r.ok or r.underdetermined)
        ]
        if unjudged and not verdicts:
            lines.append(
                f"deformation: {', '.join(unjudged)} not judged: no rigid model in the table to judge "
                f"{'it' if len(unjudged) == 1 else 'them'} against (list {_base_of(unjudged[0])} too)"
            )
        if self.local is not None:
            lines.append(f"local: {self.local.text}")
            lines += [f"note: local: {self.local.note}"] if self.local.note else []
        lines += [f"note: local: {self.local_note}"] if self.local_note else []
        return "\n".join(lines)

    def deformation_verdicts(self) -> list[dict]:
        """Whether each deformation model in the table is justified over the rigid model it
        extends (module docstring; jou for warp and shape), or, where that one is not in the
        table, the best rigid model (the text says so: the difference then includes the rigid
        models' own): dicts with model, rigid, justified_by_bic, justified_by_leave_out,
        delta_bic, leave_out_gain_px2 (mean reduction of the squared error) and its standard
        error, and a sentence ``text``. Empty when no rigid model is ranked (the table's notes
        say so); a deformation model that answered but is not ranked (underdetermined, or not
        converged) is not judged."""
        rigid = [r for r in self.rows if r.ranked and r.model not in DEFORMATION_MODELS]
        rigid = [r for r in rigid if np.isfinite(r.bic)]
        if not rigid:
            return []
        out = []
        for r in self.rows:
            if r.model not in DEFORMATION_MODELS or not (r.ok or r.underdetermined):
                continue
            extended = set(get_model(r.model).parameters)
            nested = [q for q in rigid if set(get_model(q.model).parameters) <= extended]
            best = min(nested or rigid, key=lambda q: q.bic)
            unnested = (
                ""
                if nested
                else f" (which it does not extend: list {_base_of(r.model)} to judge the deformation itself)"
            )
            if not r.ranked:
                out.append(_not_judged(r, best.model))
                continue
            delta = r.bic - best.bic
            by_bic = bool(delta < -DECISIVE_BIC)
            gain = se = float("nan")
            scale = 0.0  # the rigid model's mean squared prediction error per component, px^2
            if (
                r.leave_out_errors is not None
                and best.leave_out_errors is not None
                and len(r.leave_out_errors)
            ):
                d = np.sum(best.leave_out_errors**2, axis=-1) - np.sum(r.leave_out_errors**2, axis=-1)
                gain = float(np.mean(d) / 2)  # per component, px^2
                se = float(np.std(d, ddof=1) / np.sqrt(d.size) / 2) if d.size > 1 else float("nan")
                scale = float(np.mean(np.sum(best.leave_out_errors**2, axis=-1)) / 2)
            by_leave_out = leave_out_significant(gain, se, scale)
            if np.isfinite(gain):
                verdict = "justified" if by_bic and by_leave_out else "not justified"
                leave = leave_out_text(gain, se, by_leave_out, scale)
            else:  # skipped, or not available for one of the two: say so, not "nan"
                # BIC alone near saturation (few points per parameter: its RSS falls towards 0)
                # favours any model; the small-sample AICc must agree
                saturated = by_bic and not r.aicc < best.aicc
                by_bic = by_bic and not saturated
                verdict = "justified by BIC alone" if by_bic else "not justified"
                leave = (
                    f"leave-out {LEAVE_OUT_SKIPPED if not self.leave_out else 'not compared (see the notes)'}"
                )
                if saturated:
                    leave += (
                        f"; but {2 * r.n_observed} coordinates for {r.n_free} parameters are too few for "
                        "BIC: the small-sample AICc does not favour it"
                    )
            text = f"{r.model} over {best.model}{unnested}: {verdict} ({bic_text(delta)}; {leave})"
            out.append(
                {
                    "model": r.model,
                    "rigid": best.model,
                    "justified": by_bic and by_leave_out,
                    "justified_by_bic": by_bic,
                    "justified_by_leave_out": by_leave_out,
                    "delta_bic": float(delta),
                    "leave_out_gain_px2": gain,
                    "leave_out_gain_se_px2": se,
                    "text": text,
                }
            )
        return out

    def to_dict(self) -> dict:
        """JSON-ready form (NaN -> None)."""
        return {
            "models": list(self.models),
            "reference": self.reference,
            "best_by_bic": self.best_by_bic,
            "best_by_leave_out": self.best_by_leave_out,
            "folds": self.folds,
            "seed": self.seed,
            "leave_out": self.leave_out,
            "n_held_out": int((self.fold_of >= 0).sum()),
            "rows": [r.to_dict() for r in self.rows],
            "deformation": [
                {k: _finite_or_none(v) for k, v in d.items()} for d in self.deformation_verdicts()
            ],
            "local": None if self.local is None else self.local.to_dict(),
        }


def _base_of(name: str) -> str:
    """The registered rigid model(s) that deformation model ``name`` extends (its parameters
    include theirs), in words."""
    extended = set(get_model(name).parameters)
    bases = [
        m for m, model in MODELS.items() if m not in DEFORMATION_MODELS and set(model.parameters) <= extended
    ]
    return " or ".join(bases) or "the rigid model it extends"


def _not_judged(row: ModelRow, rigid: str) -> dict:
    """The deformation verdict of a deformation model that is not ranked: not justified."""
    nan = float("nan")
    return {
        "model": row.model,
        "rigid": rigid,
        "justified": False,
        "justified_by_bic": False,
        "justified_by_leave_out": False,
        "delta_bic": nan,
        "leave_out_gain_px2": nan,
        "leave_out_gain_se_px2": nan,
        "text": f"{row.model} over {rigid}: not judged ({row.unranked_text})",
    }


def _fmt(value, width, digits) -> str:
    return f"{value:>{width}.{digits}f}" if np.isfinite(value) else f"{'-':>{width}}"


def _finite_or_none(value):
    return value if not isinstance(value, float) or np.isfinite(value) else None
