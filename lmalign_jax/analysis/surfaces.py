"""Where the beads lie: planes through the solved marker positions, as IMOD's SurfacesToAnalyze.

IMOD's ``tiltalign`` (``find_surfaces`` in ``flib/tiltalign``, read at LabShare-Archive/IMOD)
fits, to the solved 3-D fiducial positions, one plane ``z = a x + b y + c`` by least squares
(SurfacesToAnalyze 1), and with SurfacesToAnalyze 2 also two *parallel* planes, one through
the beads on each surface (one common slope, one intercept per surface). From the slope it
reports the rotations that make the specimen level, first about X then about Y:

- X-axis tilt needed ``= -atan(b)`` (degrees);
- adjusted slope ``s = a / (cos alpha - b sin alpha)`` with ``alpha = atan(b)``: the slope in x
  once the X tilt is applied;
- incremental tilt angle change ``= atan(-s)``, to add to every tilt angle (IMOD's
  AngleOffset), and the total change: that plus the offset already applied.

It also reports the mean ``|z - plane|`` residual, the unbinned thickness that contains the
centres of all beads (range of their z about the plane(s)), and the unbinned Z shift that
centres that range (IMOD prints it relative to the tilt axis; here the tilt axis is at z = 0,
the tomogram's centre). Our projection convention, ``x' = x cos(t) + z sin(t)``, is IMOD's
(checked on IMOD's own BB outputs, tests/data), so the figures carry over unchanged: adding
the tilt change to every tilt rotates the specimen by ``Ry(-change)`` (an exact symmetry of the
model, so the ``.xf`` stay valid) and levels it.

Splitting beads onto two surfaces. IMOD (since 2010, ``surfacesort.c``) seeds clusters with
the steepest neighbouring pairs and grows them with local plane fits; before that it split the
beads at the middle of their range about the one-plane fit and refitted. We do the latter,
refined to convergence: from four starting splits (the middle and the widest empty band of z,
about the one-plane fit and in raw z) assign each bead to the nearer of the two parallel planes
and refit until nothing changes, keep the split with the least squared residual, and then move
single beads to the other surface while that lowers it (the nearer-plane rule alone can stop
with one bead on the wrong surface tilting both planes). IMOD
always splits when asked; we first test whether the beads separate at all. The separation
``D = (c_top - c_bottom) / s`` (``s``: residual SD about the two planes) is compared with the
same statistic on 199 draws of beads spread uniformly through one slab at the same x, y (the
one-layer arrangement that mimics two surfaces best); if the beads do not separate better than
99% of those draws, the analysis says so and keeps the one-plane fit (as IMOD does when there
are too few beads to split).

Minimum numbers of beads (IMOD's): a slope needs 3 (with 3, the slope in x only), the X-axis
tilt 4, two surfaces 5 (IMOD splits 4 but has no residual to judge the split by).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int

from .surface_split import (
    least_squares,
    null_separations,
    parallel_planes,
    plane_design,
    separation_of,
    split,
)

__all__ = [
    "MIN_POINTS_SLOPE",
    "MIN_POINTS_TWO_SURFACES",
    "MIN_POINTS_X_TILT",
    "PlaneFit",
    "SurfaceAnalysis",
    "TwoSurfaceFit",
    "analyze_surfaces",
]

MIN_POINTS_SLOPE = 3
MIN_POINTS_X_TILT = 4
MIN_POINTS_TWO_SURFACES = 5


@dataclass(frozen=True)
class PlaneFit:
    """One plane ``z = slope_x x + slope_y y + intercept`` fitted to all beads (pixels of the
    points). Angles in degrees; None where there are too few beads for them. ``*_se_deg``:
    1-sigma standard errors from the fit's covariance (None without residual degrees of freedom)."""

    n_points: int
    slope_x: float
    slope_y: float
    intercept_px: float
    mean_residual_px: float
    adjusted_slope: float
    x_axis_tilt_deg: float | None
    tilt_angle_change_deg: float
    x_axis_tilt_se_deg: float | None
    tilt_angle_change_se_deg: float | None


@dataclass(frozen=True)
class TwoSurfaceFit:
    """Two parallel planes, ``z = slope_x x + slope_y y + intercept`` per surface (pixels of the
    points), fitted to the beads sorted onto the bottom and top surfaces. ``thickness_px``:
    distance between the intercepts along z (IMOD's "Thickness at Z intercepts"), with its
    1-sigma standard error; ``separation``: (top - bottom intercept) / residual SD, and
    ``separation_p``: the fraction of one-slab draws that separate as well."""

    n_bottom: int
    n_top: int
    slope_x: float
    slope_y: float
    intercept_bottom_px: float
    intercept_top_px: float
    mean_residual_bottom_px: float
    mean_residual_top_px: float
    mean_residual_px: float
    thickness_px: float
    thickness_se_px: float
    adjusted_slope: float
    x_axis_tilt_deg: float
    tilt_angle_change_deg: float
    x_axis_tilt_se_deg: float
    tilt_angle_change_se_deg: float
    separation: float
    separation_p: float


@dataclass(frozen=True)
class SurfaceAnalysis:
    """IMOD's surface analysis of a set of bead positions.

    ``surface`` (points,): 0 with one surface, else 1 bottom / 2 top (IMOD's numbering);
    ``residuals_px`` (points,): signed z distance of each bead from its surface's plane, pixels
    of the points. ``thickness_px`` and ``z_center_px`` are unbinned (points' pixels x
    ``binning``): the thickness containing the centres of all beads about the plane(s) used,
    and the z of the middle of that range relative to z = 0 (the tilt axis, the tomogram's
    centre): IMOD's "shift needed to center range of fiducials in Z". ``note``: why fewer
    surfaces were analysed than requested, else None.
    """

    n_surfaces_requested: int
    n_surfaces: int
    one_plane: PlaneFit
    two_surfaces: TwoSurfaceFit | None
    surface: Int[np.ndarray, " points"]
    residuals_px: Float[np.ndarray, " points"]
    thickness_px: float
    z_center_px: float
    binning: int
    tilt_offset_deg: float
    note: str | None

    @property
    def n_points(self) -> int:
        return self.one_plane.n_points

    @property
    def tilt_angle_change_deg(self) -> float:
        """Change to add to every tilt angle to level the specimen (from the fit used)."""
        fit = self.two_surfaces if self.n_surfaces == 2 else self.one_plane
        return fit.tilt_angle_change_deg

    @property
    def total_tilt_angle_change_deg(self) -> float:
        """The change plus the tilt offset already applied (IMOD's "Total tilt angle change")."""
        return self.tilt_angle_change_deg + self.tilt_offset_deg

    @property
    def x_axis_tilt_deg(self) -> float | None:
        """X-axis tilt that levels the specimen (IMOD's XAXISTILT), None with too few beads."""
        fit = self.two_surfaces if self.n_surfaces == 2 else self.one_plane
        return fit.x_axis_tilt_deg

    @property
    def suggested_thickness_px(self) -> int:
        """Unbinned thickness of a tomogram centred on the tilt axis that contains the centres
        of all beads once levelled: the beads' range plus twice its offset from the centre,
        rounded up to an even number of pixels."""
        needed = self.thickness_px + 2.0 * abs(self.z_center_px)
        return 2 * math.ceil(needed / 2.0 - 1e-9)

    def imod_log_lines(self) -> list[str]:
        """The block as tiltalign prints it in ``align.log`` (IMOD 4.11 layout), one string per line."""
        one = self.one_plane
        lines = [
            "",
            " SURFACE ANALYSIS:",
            "",
            " The following parameters are appropriate if fiducials are NOT on two surfaces:",
            "",
            " Fit of one plane to all fiducials:",
            f" # of points = {one.n_points:16d}",
            f" Mean residual =    {one.mean_residual_px:11.2f}",
            f" Adjusted slope =      {one.adjusted_slope:8.4f}",
        ]
        if one.x_axis_tilt_deg is None:
            lines.append(" Too few points to estimate X-axis tilt")
        else:
            lines.append(f" X axis tilt needed ={one.x_axis_tilt_deg:10.2f}")
        lines += self._tilt_change_lines(one.tilt_angle_change_deg)
        two = self.two_surfaces
        if two is not None and self.n_surfaces == 2:
            lines += [
                " The following parameters are appropriate if fiducials ARE on two surfaces,",
                " based on fit of two parallel planes to fiducials sorted onto two surfaces:",
            ]
            for name, n, resid, intercept in (
                ("bottom", two.n_bottom, two.mean_residual_bottom_px, two.intercept_bottom_px),
                ("top", two.n_top, two.mean_residual_top_px, two.intercept_top_px),
            ):
                lines += [
                    "",
                    f" On {name} surface:",
                    f" # of points = {n:12d}",
                    f" Mean residual ={resid:11.2f}",
                    f" Z axis intercept ={intercept:8.1f}",
                ]
            lines += [
                "",
                f" Overall mean residual ={two.mean_residual_px:15.2f}",
                f" Thickness at Z intercepts ={two.thickness_px:11.1f}",
                f" Adjusted slope ={two.adjusted_slope:22.4f}",
                f" X axis tilt needed ={two.x_axis_tilt_deg:18.2f}",
            ]
            lines += self._tilt_change_lines(two.tilt_angle_change_deg)
        elif self.n_surfaces_requested == 2:
            lines += ["", f" {self.note}", ""]
        lines += [
            f" Unbinned thickness needed to contain centers of all fiducials ={self.thickness_px:12.0f}",
            f" Incremental unbinned shift needed to center range of fiducials in Z ={self.z_center_px:8.1f}",
            f" Total unbinned shift needed to center range of fiducials in Z ={self.z_center_px:14.1f}",
        ]
        return lines

    def _tilt_change_lines(self, change: float) -> list[str]:
        return [
            f" Incremental tilt angle change ={change:7.2f}",
            f" Total tilt angle change ={change + self.tilt_offset_deg:13.2f}",
            " ",
        ]

    def to_dict(self) -> dict:
        """JSON-ready summary (the alignment record's ``surfaces`` section)."""
        one = self.one_plane
        out = {
            "n_surfaces_requested": self.n_surfaces_requested,
            "n_surfaces": self.n_surfaces,
            "n_points": one.n_points,
            "note": self.note,
            "tilt_angle_change_deg": self.tilt_angle_change_deg,
            "total_tilt_angle_change_deg": self.total_tilt_angle_change_deg,
            "x_axis_tilt_deg": self.x_axis_tilt_deg,
            "thickness_unbinned_px": self.thickness_px,
            "z_center_unbinned_px": self.z_center_px,
            "suggested_thickness_unbinned_px": self.suggested_thickness_px,
            "binning": self.binning,
            "one_plane": dict(vars(one)),
            "two_surfaces": dict(vars(self.two_surfaces)) if self.two_surfaces is not None else None,
            "surface": [int(s) for s in self.surface],
            "residuals_px": [float(r) for r in self.residuals_px],
            "imod_log_lines": self.imod_log_lines(),
        }
        return out


# --------------------------------------------------------------------------- fitting


def _angles(slope_x: float, slope_y: float) -> tuple[float, float, float]:
    """(adjusted slope, X-axis tilt needed, tilt angle change), angles in degrees."""
    alpha = math.atan(slope_y)
    adjusted = slope_x / (math.cos(alpha) - slope_y * math.sin(alpha))
    return adjusted, -math.degrees(alpha), math.degrees(math.atan(-adjusted))


def _angle_errors(slope_x: float, slope_y: float, cov_ab: np.ndarray) -> tuple[float, float]:
    """1-sigma errors of (X-axis tilt, tilt change) in degrees from the (2, 2) covariance of the
    slopes, by the delta method (central differences)."""
    jac = np.empty((2, 2))
    for k in range(2):
        h = 1e-6
        step = np.zeros(2)
        step[k] = h
        hi = _angles(slope_x + step[0], slope_y + step[1])
        lo = _angles(slope_x - step[0], slope_y - step[1])
        jac[:, k] = [(hi[1] - lo[1]) / (2 * h), (hi[2] - lo[2]) / (2 * h)]
    var = np.diag(jac @ cov_ab @ jac.T)
    return float(np.sqrt(max(var[0], 0.0))), float(np.sqrt(max(var[1], 0.0)))


def _spans_plane(xy: np.ndarray) -> bool:
    """Whether the beads' x, y positions span two directions (else no slope in y)."""
    centred = xy - xy.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    return s.size == 2 and s[0] > 0 and s[1] > 1e-9 * s[0]


def _fit_one_plane(xyz: np.ndarray):
    """(PlaneFit, residuals (n,)) of one plane through all beads."""
    n = len(xyz)
    use_y = n >= MIN_POINTS_X_TILT and _spans_plane(xyz[:, :2])
    design = plane_design(xyz[:, :2], use_y)
    coef, resid = least_squares(design, xyz[:, 2])
    slope_x, slope_y = float(coef[0]), float(coef[1]) if use_y else 0.0
    adjusted, x_tilt, change = _angles(slope_x, slope_y)
    dof = n - design.shape[1]
    x_se = change_se = None
    if dof > 0:
        cov = float(resid @ resid) / dof * np.linalg.pinv(design.T @ design)
        if use_y:
            x_se, change_se = _angle_errors(slope_x, slope_y, cov[:2, :2])
        else:
            _, change_se = _angle_errors(slope_x, 0.0, np.diag([cov[0, 0], 0.0]))
    fit = PlaneFit(
        n_points=n,
        slope_x=slope_x,
        slope_y=slope_y,
        intercept_px=float(coef[-1]),
        mean_residual_px=float(np.mean(np.abs(resid))),
        adjusted_slope=adjusted,
        x_axis_tilt_deg=x_tilt if use_y else None,
        tilt_angle_change_deg=change,
        x_axis_tilt_se_deg=x_se,
        tilt_angle_change_se_deg=change_se,
    )
    return fit, resid


def _fit_two_surfaces(xyz: np.ndarray, top: np.ndarray, separation: float, p: float):
    coef, resid, design = parallel_planes(xyz, top)
    n = len(xyz)
    cov = float(resid @ resid) / (n - 4) * np.linalg.pinv(design.T @ design)
    slope_x, slope_y = float(coef[0]), float(coef[1])
    adjusted, x_tilt, change = _angles(slope_x, slope_y)
    x_se, change_se = _angle_errors(slope_x, slope_y, cov[:2, :2])
    fit = TwoSurfaceFit(
        n_bottom=int((~top).sum()),
        n_top=int(top.sum()),
        slope_x=slope_x,
        slope_y=slope_y,
        intercept_bottom_px=float(coef[2]),
        intercept_top_px=float(coef[2] + coef[3]),
        mean_residual_bottom_px=float(np.mean(np.abs(resid[~top]))),
        mean_residual_top_px=float(np.mean(np.abs(resid[top]))),
        mean_residual_px=float(np.mean(np.abs(resid))),
        thickness_px=float(coef[3]),
        thickness_se_px=float(np.sqrt(cov[3, 3])),
        adjusted_slope=adjusted,
        x_axis_tilt_deg=x_tilt,
        tilt_angle_change_deg=change,
        x_axis_tilt_se_deg=x_se,
        tilt_angle_change_se_deg=change_se,
        separation=separation,
        separation_p=p,
    )
    return fit, resid, coef


def analyze_surfaces(
    points_xyz: Float[np.ndarray, "points 3"],
    n_surfaces: int,
    *,
    binning: int = 1,
    tilt_offset_deg: float = 0.0,
    separation_draws: int = 199,
    significance: float = 0.01,
    seed: int = 0,
) -> SurfaceAnalysis:
    """IMOD's surface analysis (SurfacesToAnalyze ``n_surfaces``: 1 or 2) of bead positions.

    ``points_xyz`` (points, 3): solved marker positions, pixels, z = 0 at the tilt axis (as
    ``AlignmentResult.markers``; IMOD uses its centroid-zero positions). ``binning``: how many
    unbinned pixels one pixel of the points is (IMOD's ImagesAreBinned), for the thickness
    and shift. ``tilt_offset_deg``: the offset already added to the tilts (IMOD's
    AngleOffset), for the total tilt change. ``separation_draws``, ``significance``,
    ``seed``: the one-slab test that two surfaces must pass (module docstring).

    Raises ValueError for fewer than 3 beads, non-finite positions or ``n_surfaces`` not 1 or 2.
    """
    xyz = np.asarray(points_xyz, dtype=np.float64)
    if n_surfaces not in (1, 2):
        raise ValueError(f"n_surfaces must be 1 or 2 (IMOD's SurfacesToAnalyze), got {n_surfaces!r}")
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"points_xyz must have shape (points, 3), got {xyz.shape}")
    if not np.all(np.isfinite(xyz)):
        raise ValueError("points_xyz has non-finite positions")
    n = len(xyz)
    if n < MIN_POINTS_SLOPE:
        raise ValueError(
            f"surface analysis needs at least {MIN_POINTS_SLOPE} beads to fit a plane "
            f"({MIN_POINTS_X_TILT} for the X-axis tilt, {MIN_POINTS_TWO_SURFACES} for two surfaces); "
            f"got {n}"
        )
    if int(binning) < 1:
        raise ValueError(f"binning must be a positive integer, got {binning!r}")
    binning = int(binning)

    one, resid = _fit_one_plane(xyz)
    two, note = None, None
    surface = np.zeros(n, dtype=np.int64)
    intercept = np.full(n, one.intercept_px)
    if n_surfaces == 2:
        top = split(xyz, resid) if n >= MIN_POINTS_TWO_SURFACES and _spans_plane(xyz[:, :2]) else None
        if top is None:
            note = "There are too few points to analyze for distribution on two surfaces"
        else:
            separation = separation_of(xyz, top)
            null = null_separations(xyz[:, :2], separation_draws, seed)
            p = (1 + int(np.sum(null >= separation))) / (1 + separation_draws)
            if p > significance:
                note = (
                    f"The {n} fiducials do not separate into two surfaces (a single layer splits as "
                    f"well with p = {p:.2f}); using the fit of one plane"
                )
            else:
                two, resid, coef = _fit_two_surfaces(xyz, top, separation, p)
                surface = np.where(top, 2, 1)
                intercept = np.where(top, coef[2] + coef[3], coef[2])
    # Range of the beads about their plane(s), as z: IMOD's "extremes" (find_surfaces).
    bottom_z = intercept + resid
    lowest = float(bottom_z[surface != 2].min()) if np.any(surface != 2) else float(bottom_z.min())
    highest = float(bottom_z[surface != 1].max()) if np.any(surface != 1) else float(bottom_z.max())
    return SurfaceAnalysis(
        n_surfaces_requested=n_surfaces,
        n_surfaces=2 if two is not None else 1,
        one_plane=one,
        two_surfaces=two,
        surface=surface,
        residuals_px=resid,
        thickness_px=binning * (highest - lowest),
        z_center_px=binning * (highest + lowest) / 2.0,
        binning=binning,
        tilt_offset_deg=float(tilt_offset_deg),
        note=note,
    )
