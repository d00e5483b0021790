"""A microscope constant shared by every series of a batch, and the series that disagree with it.

Two constants (``lmalign batch --share``) have a per-series estimate with a standard error,
which is all the combination below needs:

- ``rotation``, the tilt-axis angle: the same microscope, detector and magnification give
  every view of every series the same axis in the raw images. Each series' own fit, with the
  rotation ``shared`` across its views, estimates it (:func:`series_estimate`).
- ``tilt-offset``, the stage's tilt offset. A tilt offset common to every view of a series is
  not determined by its markers: with solved (or fixed) tilts, ``R_y(theta + d) X =
  R_y(theta) R_y(d) X``, so an offset ``d`` is the rigid specimen turned by ``d`` about the
  tilt axis (MODEL.md, "Gauge freedoms"). What determines a stage's offset, as in IMOD, is
  the offset that makes the *specimen level*: IMOD's surface analysis ("Total tilt angle
  change", :mod:`.surfaces`), fitted to the solved beads (two parallel planes when the beads
  separate onto two surfaces, else one plane), with its standard error from the plane fit's
  covariance (:func:`level_offset_estimate`). This assumes that specimens lie level on the
  grid *on average*: each series' own slant (a lamella milled at an angle, a wavy grid) is
  scatter about the shared value, which the between-series variance ``tau^2`` below absorbs,
  and a series slanted far more than the rest (or with a wrong mdoc) is flagged. The estimate
  of a series is in the frame its alignment is reported in (tilts deviating from the nominal
  ones by zero on average), so it also carries the mean of that series' random per-view tilt
  errors: more honest scatter between series, in ``tau``.

``mag`` is refused, and here is why. The scale of a series is fixed to 1 at its reference view
(a gauge freedom: markers fix the specimen only up to one overall scale, since a specimen
``s`` times larger seen at ``1/s`` the magnification gives the same images), so no series
measures an absolute magnification; that is a calibration, the pixel size (the MRC header or
``--pixel-size``). What markers do determine is each view's magnification *relative* to the
reference view (``--mode scale=...``). A pattern of it shared by a batch (say, the change per
degree of tilt) would be identifiable, but it is not a microscope constant a user acts on: it
follows each series' own focus and eucentric height changes through the tilts, so it belongs
to each series, and fixing it from other series would only bias them. :func:`check_shareable`
says so in one line.

Joint solve (rotation). The batch cost is ``sum_i chi2_i(R, theta_i)``, with ``R`` the shared constant
and ``theta_i`` series ``i``'s own parameters (markers, shifts, scales, tilts), free. Minimising
each series over its own parameters leaves the profile ``P_i(R) = min_theta chi2_i(R, theta)``,
which near that series' own optimum ``r_i`` is ``P_i(r_i) + (R - r_i)^2 / se_i^2`` (``se_i``:
the standard error of ``r_i`` from the series' own fit, whose covariance is the inverse of the
curvature of ``chi2_i = cost_i / sigma_i^2``). The joint optimum of ``sum_i P_i(R)`` is thus,
to first order (exactly where the profiles are quadratic), the inverse-variance weighted mean
``R = sum w_i r_i / sum w_i``, ``w_i = 1 / se_i^2``, with standard error ``(sum w_i)^-1/2``;
re-solving each series with ``R`` fixed gives its ``theta_i`` at the joint optimum. Each series
is weighted by its own noise estimate ``sigma_i`` (a weighted joint least squares): series of
different quality count by their information, not by their count. This is cheaper and more
robust than one giant solve (every series stays a batched, same-shaped solve) and the test
``tests/test_shared_constant.py`` checks it against the direct joint optimum found by
minimising ``sum_i P_i(R)`` over ``R``: on 4 series x 21 views x 10 markers the two agree
to 3e-4 of the standard error and the joint cost's curvature matches ``1 / SE^2`` to 0.1%, so
no further iteration (re-estimating the curvatures at ``R``) is needed; it would change
nothing measurable. The series are not re-solved jointly with a shared slot in one giant
problem because that would couple every series in one normal matrix and defeat the batching.
For the tilt offset the estimates are independent plane fits to each series' beads, and their
inverse-variance mean is the least-squares offset that levels all the specimens at once.

Angles are compared modulo 360 degrees. The hand of the rotation is not folded: with the
projection of MODEL.md, an axis at ``R + 180`` with every tilt negated and the specimen turned
180 degrees about z gives the same images, so a series whose axis comes out 180 degrees from
the others has its tilt signs reversed (a wrong mdoc) and is reported as disagreeing, which is
what the user needs to know.

Disagreeing series. Series ``i`` is compared with the constant estimated from the *other*
kept series (leave one out, so an outlier cannot pull the reference or inflate the scatter
used to judge itself): ``z_i = (r_i - R_-i) / sqrt(se_i^2 + tau_-i^2 + SE(R_-i)^2)``, the
predictive z of a new series, where ``tau^2`` is the between-series variance beyond the fits'
own errors (DerSimonian & Laird 1986 moment estimate, 0 when the series agree within their
errors; ``R_-i`` and its standard error then use weights ``1 / (se_i^2 + tau^2)``, so real
extra scatter between series widens the test rather than flagging honest series). The series
with the largest ``|z|`` above ``k`` (default 4: a false alarm once in ~16,000 honest series)
is left out and the test is repeated on the rest, while at least 3 series remain (with 2 one
cannot say which is wrong). The first pass is a plain least-squares fit (``--robust`` applies
to the aligned outputs of the second pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float

from ..core.result import AlignmentResult
from .surfaces import analyze_surfaces
from .uncertainty import uncertainty

#: The constants ``--share`` names (issue #16).
SHAREABLE = ("rotation", "tilt-offset", "mag")
#: Those estimated by a model parameter fitted ``shared`` across one series' views, and that parameter.
SHARED_PARAMETER = {"rotation": "rotation"}
#: Those a batch can share: the above, and the tilt offset that levels the specimen.
IDENTIFIABLE = (*SHARED_PARAMETER, "tilt-offset")
#: Why a constant cannot be shared, in one line.
NOT_IDENTIFIABLE = {
    "mag": "the scale is fixed to 1 at each series' reference view (a gauge freedom: markers determine "
    "a specimen only up to one overall scale), so no series measures the magnification; it is a "
    "calibration: give the calibrated pixel size (the stack's header or --pixel-size), and per-view "
    "magnification changes stay per series (--mode scale=...)",
}
#: Default outlier threshold, in predictive standard deviations.
DEFAULT_K = 4.0


def check_shareable(name: str) -> str:
    """``name`` if a batch can share that constant; ValueError (a one-line reason) if not."""
    if name not in SHAREABLE:
        raise ValueError(f"--share: unknown constant {name!r}; choose from {', '.join(SHAREABLE)}")
    if name not in IDENTIFIABLE:
        raise ValueError(
            f"--share {name} is not available: {NOT_IDENTIFIABLE[name]}; shareable: {', '.join(IDENTIFIABLE)}"
        )
    return name


def series_estimate(result: AlignmentResult, parameter: str = "rotation") -> tuple[float, float]:
    """(estimate, standard error) of a parameter fitted ``shared`` within one series (degrees
    for angles), from the series' own fit; (NaN, NaN) if it did not converge or the error is
    undetermined."""
    if not result.converged:
        return float("nan"), float("nan")
    value = result.parameter(parameter)
    se = uncertainty(result).parameter_se(parameter)
    se = se[np.isfinite(se) & (se > 0)]
    if se.size == 0 or not np.allclose(value, value[0]):
        return float("nan"), float("nan")
    return float(value[0]), float(np.median(se))


def level_offset_estimate(result: AlignmentResult, n_surfaces: int = 2) -> tuple[float, float]:
    """(tilt offset that levels the specimen, its standard error), degrees, from IMOD's surface
    analysis of a series' solved beads (``n_surfaces`` 2: two parallel planes where the beads
    separate onto two surfaces, else one plane); its "Total tilt angle change", the offset to
    add to every tilt of the result. (NaN, NaN) if the fit did not converge or has too few
    beads for a plane with a standard error."""
    if not result.converged:
        return float("nan"), float("nan")
    try:
        analysis = analyze_surfaces(np.asarray(result.markers), n_surfaces)
    except ValueError:
        return float("nan"), float("nan")
    fit = analysis.two_surfaces if analysis.n_surfaces == 2 else analysis.one_plane
    se = fit.tilt_angle_change_se_deg
    if se is None or not se > 0:
        return float("nan"), float("nan")
    return float(analysis.total_tilt_angle_change_deg), float(se)


def wrap_deg(angle):
    """Angles (degrees) wrapped into [-180, 180)."""
    return (np.asarray(angle, dtype=float) + 180.0) % 360.0 - 180.0


@dataclass(frozen=True)
class SharedConstant:
    """The combined constant and each series' agreement with it.

    name: the constant ("rotation", "tilt-offset"); unit: its unit ("deg").
    value, se: the shared estimate (the joint least-squares optimum of the kept series: weights
        1 / se_i^2) and its standard error.
    between_sd: tau, the between-series scatter beyond the fits' errors (0 if none).
    se_with_scatter: the standard error of the shared value were tau real (random-effects
        weights 1 / (se_i^2 + tau^2)); equal to ``se`` when tau is 0.
    k: the outlier threshold used.
    series: (n,) names; estimates, ses: (n,) each series' own estimate and standard error
        (NaN where its fit failed); z: (n,) leave-one-out predictive z; kept: (n,) whether the
        series is in the shared estimate.
    """

    name: str
    unit: str
    value: float
    se: float
    between_sd: float
    se_with_scatter: float
    k: float
    series: tuple[str, ...]
    estimates: Float[np.ndarray, " n"]
    ses: Float[np.ndarray, " n"]
    z: Float[np.ndarray, " n"]
    kept: Bool[np.ndarray, " n"]

    @property
    def disagreeing(self) -> list[str]:
        """Names of the series left out (|z| > k), in input order."""
        return [
            s
            for s, keep, e in zip(self.series, self.kept, self.estimates, strict=True)
            if not keep and np.isfinite(e)
        ]

    def rows(self) -> list[dict]:
        """One dict per series: name, estimate, se, difference from the shared value, z, verdict."""
        out = []
        for i, s in enumerate(self.series):
            finite = bool(np.isfinite(self.estimates[i]))
            out.append(
                {
                    "series": s,
                    "estimate": float(self.estimates[i]) if finite else None,
                    "se": float(self.ses[i]) if finite else None,
                    "difference": float(wrap_deg(self.estimates[i] - self.value)) if finite else None,
                    "z": float(self.z[i]) if finite else None,
                    "verdict": "kept" if self.kept[i] else ("disagrees" if finite else "no estimate"),
                }
            )
        return out

    def record(self) -> dict:
        """The JSON record: the shared value and the per-series rows."""
        return {
            "constant": self.name,
            "unit": self.unit,
            "value": self.value,
            "se": self.se,
            "between_series_sd": self.between_sd,
            "se_with_scatter": self.se_with_scatter,
            "k": self.k,
            "test": "leave-one-out predictive z = (r_i - R_-i) / sqrt(se_i^2 + tau_-i^2 + SE(R_-i)^2)",
            "disagreeing": self.disagreeing,
            "series": self.rows(),
        }


def _pooled(x: np.ndarray, se: np.ndarray) -> tuple[float, float, float, float, float]:
    """Of estimates ``x`` with errors ``se``: (fixed-effects mean and standard error: the joint
    least-squares optimum; tau; random-effects mean and standard error, with tau^2 added to
    every series' variance)."""
    w = 1.0 / se**2
    fixed = float(np.sum(w * x) / np.sum(w))
    fixed_se = float(np.sqrt(1.0 / np.sum(w)))
    tau2 = 0.0
    if x.size > 1:
        q = float(np.sum(w * (x - fixed) ** 2))
        tau2 = max(0.0, (q - (x.size - 1)) / float(np.sum(w) - np.sum(w**2) / np.sum(w)))
    w = 1.0 / (se**2 + tau2)
    return (
        fixed,
        fixed_se,
        float(np.sqrt(tau2)),
        float(np.sum(w * x) / np.sum(w)),
        float(np.sqrt(1.0 / np.sum(w))),
    )


def _z_scores(x, se, kept, centre) -> np.ndarray:
    """Leave-one-out predictive z of every series against the kept ones (module docstring)."""
    z = np.full(x.size, np.nan)
    for i in np.flatnonzero(np.isfinite(x)):
        others = kept.copy()
        others[i] = False
        if others.sum() < 1:
            continue
        d = wrap_deg(x[others] - centre)
        _, _, tau, m, m_se = _pooled(d, se[others])
        z[i] = (wrap_deg(x[i] - centre) - m) / np.sqrt(se[i] ** 2 + tau**2 + m_se**2)
    return z


def combine(
    names,
    estimates: Float[np.ndarray, " n"],
    ses: Float[np.ndarray, " n"],
    *,
    name: str = "rotation",
    unit: str = "deg",
    k: float = DEFAULT_K,
) -> SharedConstant:
    """Combine per-series estimates of a shared angle (degrees) with outlier rejection.

    ``estimates``/``ses``: (n,) each series' own estimate and standard error; NaN for a series
    without one. Angles are compared modulo 360 (about the median). ValueError if fewer than two
    series have an estimate.
    """
    x = np.asarray(estimates, dtype=float)
    se = np.asarray(ses, dtype=float)
    kept = np.isfinite(x) & np.isfinite(se) & (se > 0)
    if kept.sum() < 2:
        raise ValueError(
            f"sharing the {name} needs at least two series with an estimate; "
            f"{int(kept.sum())} of {x.size} have one"
        )
    centre = float(np.median(x[kept]))
    while kept.sum() >= 3:
        z = _z_scores(x, se, kept, centre)
        worst = int(np.nanargmax(np.where(kept, np.abs(z), -np.inf)))
        if not abs(z[worst]) > k:
            break
        kept[worst] = False
    d, d_se, tau, _, scatter_se = _pooled(wrap_deg(x[kept] - centre), se[kept])
    value = float(wrap_deg(centre + d))
    return SharedConstant(
        name=name,
        unit=unit,
        value=value,
        se=d_se,
        between_sd=tau,
        se_with_scatter=scatter_se,
        k=k,
        series=tuple(names),
        estimates=x,
        ses=se,
        z=_z_scores(x, se, kept, centre),
        kept=kept,
    )


def shared_table(shared: SharedConstant) -> str:
    """A plain-text table of the shared constant and each series' agreement with it."""
    u = shared.unit
    lines = [
        f" Shared {shared.name}: {shared.value:.3f} +- {shared.se:.3f} {u} from {int(shared.kept.sum())} "
        f"of {len(shared.series)} series (between-series sd {shared.between_sd:.3f} {u}; "
        f"disagreeing: |z| > {shared.k:g})",
        f" {'series':<24} {'estimate':>10} {'se':>8} {'diff':>8} {'z':>7}  verdict",
    ]
    for r in shared.rows():
        if r["estimate"] is None:
            lines.append(f" {r['series']:<24} {'':>10} {'':>8} {'':>8} {'':>7}  {r['verdict']}")
        else:
            lines.append(
                f" {r['series']:<24} {r['estimate']:>10.3f} {r['se']:>8.3f} {r['difference']:>8.3f} "
                f"{r['z']:>7.2f}  {r['verdict']}"
            )
    return "\n".join(lines) + "\n"


def shared_tsv(shared: SharedConstant) -> str:
    """The per-series table as tab-separated values (empty cells where unknown)."""
    cols = ("series", "estimate", "se", "difference", "z", "verdict")
    units = {"estimate": f"_{shared.unit}", "se": f"_{shared.unit}", "difference": f"_{shared.unit}", "z": ""}
    head = "\t".join(c if c in ("series", "verdict") else f"{shared.name}_{c}{units[c]}" for c in cols)
    body = [
        "\t".join(
            "" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c])) for c in cols
        )
        for r in shared.rows()
    ]
    return "\n".join([head, *body]) + "\n"
