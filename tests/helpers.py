"""Shared test helpers: loading the real IMOD answer sets, noise floors, tilt errors."""

from pathlib import Path

import numpy as np

from lmalign_jax import Observations

DATA = Path(__file__).resolve().parent.parent / "lmalign_jax" / "data"

#: IMOD 4.8 tiltalign mean residuals with RotOption 1, TiltOption 2, MagOption 1 (pixels).
IMOD_SETS = {
    "BBa": ("imod-bb/BBa", (512, 512), 0.324),
    "BBb": ("imod-bb/BBb", (512, 512), 0.305),
    "midzone2a": ("imod-midzone2/midzone2a", (1950, 1024), 0.678),
    "midzone2b": ("imod-midzone2/midzone2b", (1024, 1950), 0.673),
}


def load_resid_observations(name: str) -> Observations:
    """Measured points of an IMOD .resid file as Observations (parsed independently of io/)."""
    stem, size, _ = IMOD_SETS[name]
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
    """Expected RMS residual at the optimum: sigma * sqrt(1 - n_free / (2 N_obs))."""
    return sigma * result.noise_floor_factor


def tilt_error_deg(result, truth) -> float:
    """RMS tilt error after removing the common offset (a gauge freedom), degrees."""
    d = result.tilts_deg - truth.true_tilts_deg
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def rotation_error_deg(result, truth) -> float:
    """RMS in-plane rotation error, degrees."""
    return float(np.sqrt(np.mean((result.rotation_deg - truth.true_rotation_deg) ** 2)))
