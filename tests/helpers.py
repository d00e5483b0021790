"""Shared test helpers: running the CLI in-process, loading the real IMOD answer sets, noise
floors, tilt errors."""

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmalign_jax import Observations, cli

DATA = Path(__file__).resolve().parent.parent / "lmalign_jax" / "data"

#: The real IMOD answer sets (lmalign_jax/data/*/SOURCE.md): file stem and image size (nx, ny).
IMOD_SETS = {
    "BBa": ("imod-bb/BBa", (512, 512)),
    "BBb": ("imod-bb/BBb", (512, 512)),
    "midzone2a": ("imod-midzone2/midzone2a", (1950, 1024)),
    "midzone2b": ("imod-midzone2/midzone2b", (1024, 1950)),
}

#: Mean residuals (px) that earlier READMEs labelled "IMOD 4.8, RotOption 1, TiltOption 2,
#: MagOption 1". Their origin is undocumented: they first appear in commit b555840 with no log,
#: command file or source, IMOD cannot be run here, and each equals this package's own jou
#: result rounded up to 3 decimals. Kept only as a regression pin of our jou fit, never as
#: IMOD's figure.
JOU_MEAN_RESIDUAL_PX = {"BBa": 0.324, "BBb": 0.305, "midzone2a": 0.678, "midzone2b": 0.673}


def run_cli(args, *, no_cache: bool = False) -> tuple[int, str, str]:
    """``lmalign`` in-process: (exit status, stdout, stderr). ``no_cache``: with
    LMALIGN_NO_COMPILATION_CACHE set for the call (the CLI then leaves JAX's settings alone)."""
    out, err = io.StringIO(), io.StringIO()
    before = os.environ.get("LMALIGN_NO_COMPILATION_CACHE")
    if no_cache:
        os.environ["LMALIGN_NO_COMPILATION_CACHE"] = "1"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main([str(a) for a in args])
    finally:
        if no_cache and before is None:
            del os.environ["LMALIGN_NO_COMPILATION_CACHE"]
    return rc, out.getvalue(), err.getvalue()


def imod_residuals(name: str) -> np.ndarray:
    """IMOD's shipped residuals (projected - measured) of a set's .resid file, (N_obs, 2) px."""
    rows = np.loadtxt(DATA / f"{IMOD_SETS[name][0]}.resid", skiprows=1, ndmin=2)
    return rows[:, 3:5]


def load_resid_observations(name: str) -> Observations:
    """Measured points of an IMOD .resid file as Observations (parsed independently of io/)."""
    stem, size = IMOD_SETS[name]
    rows = [line.split() for line in (DATA / f"{stem}.resid").read_text().splitlines()[1:] if line.strip()]
    xy = np.array([[float(r[0]), float(r[1])] for r in rows])
    view = np.array([int(r[2]) for r in rows])
    marker = np.cumsum(np.r_[1, np.diff(view) <= 0]) - 1  # a new fiducial starts where view does not increase
    tilts = np.loadtxt(DATA / f"{stem}.tlt")
    positions = np.full((tilts.size, marker.max() + 1, 2), np.nan)
    mask = np.zeros(positions.shape[:2], dtype=bool)
    positions[view, marker] = xy
    mask[view, marker] = True
    return Observations(positions, mask, tilts, size)


def noise_floor(sigma: float, result) -> float:
    """Expected RMS residual at the optimum: sigma * sqrt(1 - n_free / (2 N_obs)), pixels."""
    return sigma * result.noise_floor_factor


@dataclass(frozen=True)
class FloorFit:
    """One fit's (or a pool of fits') residuals measured against the noise floor.

    The statistics. Near the optimum the model is linear in its parameters over the scale of
    the noise, so the n = 2 N_obs residual components are r = (I - H) e, with e ~ N(0, sigma^2 I)
    the measurement noise and H the orthogonal projector onto the columns of the gauge-fixed
    Jacobian (rank p = n_free). Hence RSS / sigma^2 = |r|^2 / sigma^2 ~ chi^2 with
    dof = n - p degrees of freedom: mean dof, variance 2 dof. The RMS residual
    L = sqrt(RSS / n) and the floor sigma sqrt(1 - p / n) = sigma sqrt(dof / n) give

        ratio = L / floor = sqrt(chi^2_dof / dof),

    whose mean is 1 - 1 / (4 dof) + O(dof^-2) and whose standard deviation is, by the delta
    method (d sqrt(x) = dx / 2 at x = 1), sqrt(2 / dof) / 2 = 1 / sqrt(2 dof); with dof close to
    n = 2 N_obs that is about 1 / sqrt(4 N_obs). The bias 1 / (4 dof) is a fraction
    1 / (2 sqrt(2 dof)) of a standard deviation (under 0.02 here) and is ignored. Independent
    fits with the same sigma pool exactly: sum_k RSS_k / sigma^2 ~ chi^2 with sum_k dof_k degrees
    of freedom, so the pooled ratio sqrt(sum RSS_k / (sigma^2 sum dof_k)) has standard deviation
    1 / sqrt(2 sum dof_k): K fits shrink the scatter by sqrt(K) and let a small excess show.
    """

    rss: float  #: sum of squared residual components / sigma^2 (dimensionless)
    dof: int  #: 2 N_obs - n_free, summed over pooled fits

    @property
    def ratio(self) -> float:
        """RMS residual / noise floor (1 for a correct least-squares optimum, up to scatter)."""
        return float(np.sqrt(self.rss / self.dof))

    @property
    def sd(self) -> float:
        """Standard deviation of ``ratio`` for a correct optimum: 1 / sqrt(2 dof)."""
        return float(1.0 / np.sqrt(2.0 * self.dof))

    @property
    def z(self) -> float:
        """(ratio - 1) in standard deviations."""
        return (self.ratio - 1.0) / self.sd


def floor_fit(result, sigma: float, points=None) -> FloorFit:
    """A fit's residuals (pixels) on ``points`` ((n_views, n_markers) bool; default: the observed
    ones) against Gaussian noise of ``sigma`` px per coordinate and the fit's n_free."""
    points = result.observations.mask if points is None else points
    r = np.asarray(result.residuals, dtype=np.float64)[points]
    return FloorFit(float(np.sum(r**2)) / sigma**2, int(2 * points.sum() - result.n_free))


def summary_floor_fit(summary: dict, sigma: float) -> FloorFit:
    """The same from a JSON record's "summary" (rms_residual_px, n_points, n_free)."""
    n = int(summary["n_points"])
    return FloorFit(2 * n * (summary["rms_residual_px"] / sigma) ** 2, 2 * n - int(summary["n_free"]))


def pool(fits) -> FloorFit:
    """Independent fits taken together (see FloorFit: chi^2 variables add)."""
    fits = list(fits)
    return FloorFit(sum(f.rss for f in fits), sum(f.dof for f in fits))


#: Tolerance of the noise-floor checks, in standard deviations of the ratio: a correct solver
#: passes one check with probability 1 - 6e-5 (two-sided normal tail at 4).
FLOOR_SD = 4.0
#: Per-fit tolerance where many fits are checked at once: P(|z| > 5) = 6e-7 a fit, so even a
#: hundred fits raise a false alarm with probability under 1e-4.
FLOOR_SD_EACH = 5.0


def assert_at_noise_floor(fits, n_sd: float = FLOOR_SD) -> FloorFit:
    """Each fit and the pool of them sit at the noise floor within the statistical scatter.

    The pool is held to ``n_sd`` standard deviations; when several fits are given each one is
    held to FLOOR_SD_EACH (a local minimum or a wrong fit of one series shows there). Returns
    the pool so a caller can state what excess the check would have caught.
    """
    fits = [fits] if isinstance(fits, FloorFit) else list(fits)
    each = n_sd if len(fits) == 1 else max(n_sd, FLOOR_SD_EACH)
    for k, f in enumerate(fits):
        assert abs(f.z) < each, f"fit {k}: RMS / floor = {f.ratio:.4f}, {f.z:+.2f} sd (sd {f.sd:.4f})"
    pooled = pool(fits)
    assert abs(pooled.z) < n_sd, (
        f"pooled RMS / floor = {pooled.ratio:.4f}, {pooled.z:+.2f} sd (sd {pooled.sd:.4f})"
    )
    return pooled


def tilt_error_deg(result, truth) -> float:
    """RMS tilt error after removing the common offset (a gauge freedom), degrees."""
    d = result.tilts_deg - truth.true_tilts_deg
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def rotation_error_deg(result, truth) -> float:
    """RMS in-plane rotation error, degrees."""
    return float(np.sqrt(np.mean((result.rotation_deg - truth.true_rotation_deg) ** 2)))


def bead_views(positions: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """(V, size, size) float32 aligned views of Gaussian beads (``sigma`` px) at centred
    ``positions`` (V, n, 2)."""
    c = np.arange(size) + 0.5 - size / 2
    dx = c[None, None, None, :] - positions[:, :, 0, None, None]
    dy = c[None, None, :, None] - positions[:, :, 1, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * sigma**2)).sum(axis=1).astype(np.float32)


def peak_values(volume: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """A (NZ, NY, NX) volume's values at the voxels nearest centred positions ``xyz`` (n, 3), px."""
    nz, ny, nx = volume.shape
    index = np.round(xyz[:, ::-1] + [nz / 2, ny / 2, nx / 2] - 0.5).astype(int)
    return volume[index[:, 0], index[:, 1], index[:, 2]]


def align_observations(obs: Observations, folder: Path, *options) -> Path:
    """``lmalign align`` of simulated observations written as ``folder/s.csv`` (marker,view,x,y)
    and ``s.rawtlt``, into ``folder/a`` (a 2048 px image, no figure, no errors); returns the
    record's path. ``options``: more of align's arguments (e.g. ``--model warp``)."""
    from lmalign_jax.io.tilts import write_tlt

    rows = zip(*np.nonzero(obs.mask), strict=True)
    lines = ["marker,view,x,y"] + [
        f"{m},{v},{float(obs.xy[v, m, 0])!r},{float(obs.xy[v, m, 1])!r}" for v, m in rows
    ]
    (folder / "s.csv").write_text("\n".join(lines) + "\n")
    write_tlt(folder / "s.rawtlt", obs.tilts_deg)
    args = ["align", folder / "s.csv", "--tilts", folder / "s.rawtlt", "--image-size", 2048, 2048]
    rc, _, err = run_cli([*args, "--out-dir", folder / "a", "--no-figure", "--no-errors", "-q", *options])
    assert rc == 0, err
    return folder / "a" / "s.json"


def volume_points(alignment, solved_tilts_deg: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """(n, 3) where the reconstruction puts markers solved at ``xyz`` (n, 3) with ``solved_tilts_deg``
    (projections ``(x cos t + z sin t, y)``): the volume point each view of the alignment, as
    reconstruct applies it (its tilts and X-axis tilts), projects where the marker was seen
    (least squares over the views)."""
    from lmalign_jax.core.local_apply import local_projection_matrices

    mats, _ = local_projection_matrices(None, alignment.tilts_deg, alignment.x_tilts_deg)
    seen, _ = local_projection_matrices(None, solved_tilts_deg)
    lhs = mats[0].reshape(-1, 3)
    rhs = np.einsum("vij,nj->vin", seen[0], xyz).reshape(-1, len(xyz))
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0].T


def surface_slopes(xyz: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(dz/dx, dz/dy) of two parallel planes through the beads on each surface."""
    design = np.column_stack([xyz[:, 0], xyz[:, 1], top, ~top]).astype(float)
    return np.linalg.lstsq(design, xyz[:, 2], rcond=None)[0][:2]


def write_with_nan_pixel(source, target, view: int) -> None:
    """Write the MRC stack ``source`` as ``target`` with pixel (10, 10) of (0-based) ``view`` NaN."""
    import warnings

    import mrcfile

    with mrcfile.open(source) as m:
        data = np.array(m.data)
    data[view, 10, 10] = np.nan
    with warnings.catch_warnings(), mrcfile.new(target) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's "contains NaN values"
        m.set_data(data)
