"""Seeded synthetic tilt series with known truth, for tests, the demo and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jaxtyping import Bool, Float

from ..models import get_model
from ..observations import Observations


@dataclass(frozen=True, eq=False)
class SyntheticSeries:
    """Synthetic observations and the truth that made them.

    observations: the noisy, masked marker positions.
    views: (n_views, k) true view parameters of ``model``, model units (radians, ratios, px).
    markers: (n_markers, 3) true marker positions, pixels from the specimen centre.
    outliers: (n_views, n_markers) bool, observations displaced as mis-clicks.
    noise_px: standard deviation of the Gaussian noise per coordinate, pixels.
    clean_xy: (n_views, n_markers, 2) noise-free image positions (pixels, image origin), the
        truth an alignment's predicted positions are judged against (deformation included).
    deformation: the known deformation, when one was simulated (``simulate``'s warp_px,
        bend_px, shrink): "warp" (n_views, 6) coefficients and "shape" (n_views, 4) in the
        units of the "warp" and "shape" models, and the settings; None for a rigid specimen.
    """

    observations: Observations
    model: str
    views: Float[np.ndarray, "views k"]
    markers: Float[np.ndarray, "markers 3"]
    outliers: Bool[np.ndarray, "views markers"]
    noise_px: float
    clean_xy: Float[np.ndarray, "views markers 2"] | None = None
    deformation: dict | None = None

    @property
    def true_tilts_deg(self) -> np.ndarray:
        return np.degrees(self.views[:, get_model(self.model).index("tilt")])

    @property
    def true_rotation_deg(self) -> np.ndarray:
        return np.degrees(self.views[:, get_model(self.model).index("rotation")])


def tilt_angles(n_views: int, tilt_range=(-60.0, 60.0)) -> np.ndarray:
    """Evenly spaced nominal tilts, degrees, (n_views,)."""
    return np.linspace(tilt_range[0], tilt_range[1], n_views)


def _missing_runs(rng, tilts, n_markers, fraction):
    """Mask (n_views, n_markers) with runs of high-tilt views removed, ~``fraction`` missing."""
    n_views = tilts.size
    mask = np.ones((n_views, n_markers), dtype=bool)
    if fraction <= 0:
        return mask
    order_neg = np.argsort(tilts)  # most negative first
    order_pos = order_neg[::-1]
    budget = int(round(fraction * mask.size))
    max_run = max(1, int(0.45 * n_views))
    for marker in rng.permutation(n_markers):
        if budget <= 0:
            break
        run = int(min(budget, rng.integers(1, max_run + 1)))
        order = order_neg if rng.random() < 0.5 else order_pos
        mask[order[:run], marker] = False
        budget -= run
    return mask


def simulate(
    *,
    n_views: int = 61,
    n_markers: int = 30,
    tilt_range=(-60.0, 60.0),
    tilts_deg=None,
    image_size=(2048, 2048),
    thickness_px: float = 300.0,
    rotation_deg: float = -12.0,
    rotation_jitter_deg: float = 0.2,
    tilt_error_deg: float = 0.2,
    scale_jitter: float = 0.003,
    shift_px: float = 15.0,
    noise_px: float = 0.5,
    missing_fraction: float = 0.0,
    outlier_fraction: float = 0.0,
    outlier_px=(5.0, 20.0),
    model: str = "jou",
    extra: dict | None = None,
    markers=None,
    seed: int = 0,
    warp_px: float = 0.0,
    bend_px: float = 0.0,
    shrink: float = 0.0,
) -> SyntheticSeries:
    """A synthetic tilt series of fiducial observations.

    Markers are spread uniformly over the central 70% of the image and through the
    specimen thickness. Per view: scale 1 + N(0, scale_jitter), rotation rotation_deg +
    N(0, rotation_jitter_deg), tilt nominal + N(0, tilt_error_deg), shifts N(0, shift_px).
    ``missing_fraction`` of observations are removed in runs at the high-tilt ends (no
    marker is then guaranteed in every view); ``outlier_fraction`` are displaced by a random
    distance in ``outlier_px`` (mis-clicks). ``extra``: parameter name -> (mean, sd) for the
    model's other parameters (e.g. {"xstretch": (0, 0.01)} for the imod model). ``markers``:
    (n, 3) marker positions (pixels from the specimen centre) to use instead of random ones
    (``n_markers`` is then ignored).

    A known deformation (model "jou" only; drawn from a separate random stream, so the rest of
    the series is the same as without it): ``warp_px`` adds a smooth in-plane warp to every
    view, quadratic in the view's tilt-axis-frame position, of about ``warp_px`` pixels at
    the corner of the marker field, each of its six terms a random quadratic function of the
    view index (``deformation_profiles``); ``bend_px`` domes the specimen progressively with
    the view index (z of a marker at the edge of the marker field rises by up to ``bend_px``,
    0 in view 0); ``shrink`` thins it progressively (z scaled by ``1 - shrink`` in the last
    view). ``markers`` stay the view-0 (undeformed) positions.
    """
    rng = np.random.default_rng(seed)
    m = get_model(model)
    tilts = tilt_angles(n_views, tilt_range) if tilts_deg is None else np.asarray(tilts_deg, dtype=float)
    n_views = tilts.size
    nx, ny = image_size
    if markers is None:
        markers = np.column_stack(
            [
                rng.uniform(-0.35, 0.35, n_markers) * nx,
                rng.uniform(-0.35, 0.35, n_markers) * ny,
                rng.uniform(-0.5, 0.5, n_markers) * thickness_px,
            ]
        )
    else:
        markers = np.asarray(markers, dtype=np.float64).reshape(-1, 3)
        n_markers = markers.shape[0]
    views = m.neutral_views(n_views)
    draws = {
        "scale": (1.0, scale_jitter),
        "rotation": (np.radians(rotation_deg), np.radians(rotation_jitter_deg)),
        "dx": (0.0, shift_px),
        "dy": (0.0, shift_px),
        **(extra or {}),
    }
    for name, (mean, sd) in draws.items():
        if name in m.parameters:
            views[:, m.index(name)] = mean + sd * rng.standard_normal(n_views)
    views[:, m.index("tilt")] = np.radians(tilts + tilt_error_deg * rng.standard_normal(n_views))
    deformation = None
    if warp_px or bend_px or shrink:
        if m.name != "jou":
            raise ValueError(f"a simulated deformation needs model 'jou', got {m.name!r}")
        clean, deformation = _deformed_projections(
            views, markers, (nx, ny), warp_px, bend_px, shrink, np.random.default_rng([seed, 1])
        )
    else:
        with jax.default_device(jax.devices("cpu")[0]), jax.enable_x64(True):
            project = jax.jit(jax.vmap(jax.vmap(m.project, in_axes=(None, 0)), in_axes=(0, None)))
            clean = np.asarray(project(views, markers), dtype=np.float64)
    xy = clean + noise_px * rng.standard_normal(clean.shape) + np.array([nx, ny]) / 2.0
    mask = _missing_runs(rng, tilts, n_markers, missing_fraction)
    outliers = np.zeros_like(mask)
    n_out = int(round(outlier_fraction * mask.sum()))
    if n_out:
        seen = np.argwhere(mask)
        pick = seen[rng.choice(len(seen), n_out, replace=False)]
        distance = rng.uniform(*outlier_px, n_out)
        angle = rng.uniform(0, 2 * np.pi, n_out)
        xy[pick[:, 0], pick[:, 1]] += distance[:, None] * np.column_stack([np.cos(angle), np.sin(angle)])
        outliers[pick[:, 0], pick[:, 1]] = True
    obs = Observations(np.where(mask[..., None], xy, np.nan), mask, tilts, (float(nx), float(ny)))
    clean_xy = clean + np.array([nx, ny]) / 2.0
    return SyntheticSeries(obs, m.name, views, markers, outliers, float(noise_px), clean_xy, deformation)


#: Length (pixels) at which the "warp" and "shape" models' coefficients are stated.
_COEFFICIENT_LENGTH_PX = 1000.0


def deformation_profiles(rng, n_views: int, n_terms: int) -> np.ndarray:
    """Smooth per-view profiles (n_views, n_terms): ``a + b t + c t^2`` in ``t`` = view index
    scaled to [-0.5, 0.5], with a, b, c ~ N(0, 1/3) per term (RMS about 1 over the series)."""
    t = np.linspace(-0.5, 0.5, n_views)[:, None]
    a, b, c = rng.normal(0.0, np.sqrt(1.0 / 3.0), (3, 1, n_terms))
    return a + b * t + c * t * t


def _deformed_projections(views, markers, image_size, warp_px, bend_px, shrink, rng):
    """Noise-free centred positions (n_views, n_markers, 2) of the jou model with a known warp
    and shape change (see ``simulate``), in plain numpy, and the deformation's record."""
    n_views = views.shape[0]
    field = 0.35 * np.asarray(image_size, dtype=float)  # half-widths of the marker field
    corner = float(np.hypot(*field))
    scale, rotation, tilt, dx, dy = (views[:, p][:, None] for p in range(5))
    x, y, z = (markers[:, i][None, :] for i in range(3))
    growth = np.linspace(0.0, 1.0, n_views)[:, None]  # 0 in view 0, 1 in the last
    dome = bend_px * growth * 0.5 * ((x / field[0]) ** 2 + (y / field[1]) ** 2)
    z_view = z * (1.0 - shrink * growth) + dome
    u = np.cos(tilt) * x + np.sin(tilt) * z_view
    v = np.broadcast_to(y, u.shape)
    profiles = warp_px * deformation_profiles(rng, n_views, 6)  # (n_views, 6), px at the corner
    a, b = u / corner, v / corner
    terms = (a * a, a * b, b * b)
    du = sum(profiles[:, k, None] * terms[k] for k in range(3))
    dv = sum(profiles[:, 3 + k, None] * terms[k] for k in range(3))
    pu, pv = u + du, v + dv
    px = scale * (np.cos(rotation) * pu - np.sin(rotation) * pv) + dx
    py = scale * (np.sin(rotation) * pu + np.cos(rotation) * pv) + dy
    length = _COEFFICIENT_LENGTH_PX
    g = growth[:, 0]
    shape = np.column_stack(
        [
            -shrink * g * length,
            bend_px * g * 0.5 * (length / field[0]) ** 2,
            np.zeros(n_views),
            bend_px * g * 0.5 * (length / field[1]) ** 2,
        ]
    )
    record = {
        "warp_px": float(warp_px),
        "bend_px": float(bend_px),
        "shrink": float(shrink),
        "warp": profiles * (length / corner) ** 2,
        "shape": shape,
    }
    return np.stack([px, py], axis=-1), record
