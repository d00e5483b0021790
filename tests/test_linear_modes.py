"""IMOD's two groupings of a view parameter: blocks (``group:N``, one value per N views) and
linear (``linear:N``, values every N views interpolated in view number between them; tiltalign's
automapping options 3 and 5), with grouped tilts sharing a change from their nominal angles.

Judged against known truth: series whose true rotation and tilt errors drift linearly across
the views (what linear grouping can follow and blocks cannot), and the real BBa set.
"""

import numpy as np
import pytest
from helpers import load_resid_observations

from lmalign_jax import Observations, align, get_model, simulate
from lmalign_jax.analysis.uncertainty import uncertainty
from lmalign_jax.batch import align_batch
from lmalign_jax.core.frame import project_all
from lmalign_jax.core.problem import linear_blend, linear_nodes

NOISE = 0.3


def drifting_series(seed: int = 0, n_views: int = 41, n_markers: int = 30):
    """Observations whose true tilt errors and rotation drift linearly with the view number
    (0.6 deg and 1.0 deg end to end), 0.3 px noise, and the truth (views, markers)."""
    base = simulate(
        n_views=n_views,
        n_markers=n_markers,
        tilt_error_deg=0.0,
        rotation_jitter_deg=0.0,
        noise_px=0.0,
        seed=seed,
    )
    m = get_model("jou")
    views = base.views.copy()
    ramp = np.linspace(-0.5, 0.5, n_views)
    views[:, m.index("tilt")] += np.radians(0.6) * ramp
    views[:, m.index("rotation")] += np.radians(1.0) * ramp
    obs = base.observations
    clean = project_all(m, views, base.markers)
    xy = clean + obs.center + NOISE * np.random.default_rng(seed + 100).standard_normal(clean.shape)
    return Observations(xy, obs.mask, obs.tilts_deg, obs.image_size), views


def expected_rms(result) -> float:
    """The RMS residual per coordinate a fit at the noise floor gives: sigma sqrt(1 - p / n)."""
    n = 2 * result.observations.n_observed
    return NOISE * np.sqrt(1 - result.n_parameters / n)


def test_nodes_every_n_views_with_the_last_and_the_anchor():
    # 13 views by about 5: IMOD makes round(13 / 5) = 3 sets (4, 4, 5 views; tests/test_grouping.py)
    assert linear_nodes(13, 5, None).tolist() == [0, 4, 8, 12]
    assert linear_nodes(13, 5, 6).tolist() == [0, 4, 6, 8, 12]
    assert linear_nodes(1, 3, 0).tolist() == [0]
    nodes, low, high, frac = linear_blend("tilt", "linear:5", 13, 6)
    # any function linear between nodes is reproduced exactly from its node values
    values = np.sin(np.arange(13.0))
    at_nodes = values[nodes]
    interpolated = frac * at_nodes[low] + (1 - frac) * at_nodes[high]
    np.testing.assert_allclose(interpolated[nodes], values[nodes])
    line = 0.3 * np.arange(13.0) - 1.0
    np.testing.assert_allclose(frac * line[nodes][low] + (1 - frac) * line[nodes][high], line, atol=1e-12)
    assert linear_blend("tilt", "group:5", 13, 6) is None


@pytest.fixture(scope="module")
def drifting():
    obs, truth = drifting_series()
    fits = {
        name: align(obs, modes=modes)
        for name, modes in {
            "linear": {"rotation": "linear:6", "tilt": "linear:5"},
            "blocks": {"rotation": "group:6", "tilt": "group:5"},
            "free": {},
        }.items()
    }
    return obs, truth, fits


def test_linear_grouping_follows_a_linear_drift_to_the_noise_floor(drifting):
    """The drift is linear in the view number, so the linear grouping's model holds: its RMS
    residual is the noise floor's within 5 sd of the RMS's scatter (relative sd 1/sqrt(2 dof)),
    while blocks of the same sizes leave a staircase (each view off by up to half a block's
    drift) more than 10 sd above it."""
    _, _, fits = drifting
    linear, blocks = fits["linear"], fits["blocks"]
    assert linear.converged and blocks.converged
    dof = 2 * linear.observations.n_observed - linear.n_parameters
    assert abs(linear.rms_residual_px / expected_rms(linear) - 1) < 5 / np.sqrt(2 * dof)
    assert blocks.rms_residual_px / expected_rms(blocks) - 1 > 10 / np.sqrt(2 * dof)
    # more values than blocks of those sizes: the last view and the anchor are nodes, and IMOD's
    # linear tilt sets are smaller at high tilt
    assert linear.n_parameters >= blocks.n_parameters + 2


def test_linear_grouping_recovers_the_drifting_angles(drifting):
    """Fewer parameters, the right model: the drifts of rotation and tilt come out closer to the
    truth than with every view free: by about sqrt(values / views) = 0.5-0.6 (11-12 values for 41
    views), 0.43-0.65 on seeds 0-3. Compared up to a common offset: a common tilt change is an
    exact symmetry, and the gauge holds the reference view, whose own scatter would move every
    other view's change from it."""
    _, truth, fits = drifting
    m = get_model("jou")

    def error(result, name):
        p = m.index(name)
        return np.std(result.views[:, p] - truth[:, p])

    for name in ("rotation", "tilt"):
        assert error(fits["linear"], name) < 0.75 * error(fits["free"], name)


def test_linear_1_is_every_view_free(drifting):
    """For a parameter IMOD groups evenly (rotation; tilt in blocks), sets of one view are
    every view free (linear tilt sets are sized by cos(tilt): central views pair up)."""
    obs, _, fits = drifting
    one = align(obs, modes={"rotation": "linear:1", "tilt": "group:1"})
    assert one.n_parameters == fits["free"].n_parameters
    np.testing.assert_allclose(one.rms_residual_px, fits["free"].rms_residual_px, rtol=1e-9)


def test_grouped_tilts_share_a_change_from_their_nominal_angles():
    """Tilts of one group move together: every tilt of a group keeps its nominal difference to
    the others (one absolute angle for views tilted 2 deg apart would fit nothing: on IMOD's BBa
    it gave 2.1 px against 0.26 px with tilts free)."""
    series = simulate(n_views=25, n_markers=20, tilt_error_deg=0.0, noise_px=NOISE, seed=5)
    result = align(series.observations, modes={"tilt": "group:5"})
    change = result.tilts_deg - series.observations.tilts_deg
    for start in range(0, 25, 5):
        group = change[start : start + 5]
        np.testing.assert_allclose(group, group[0], atol=1e-9)
    assert result.rms_residual_px < 1.2 * expected_rms(result)


def test_grouped_tilts_on_imods_bba_fit_as_well_as_free_ones():
    obs = load_resid_observations("BBa")
    free = align(obs)
    for mode in ("group:5", "linear:5"):
        grouped = align(obs, modes={"tilt": mode})
        assert grouped.converged
        assert grouped.rms_residual_px < 1.02 * free.rms_residual_px


def test_batches_give_what_one_series_alone_gives():
    """Batched series (padded to one shape) carry the blend and the tilts' nominal angles too."""
    series = [simulate(n_views=25 + 2 * i, n_markers=12, seed=i, tilt_error_deg=0.0) for i in range(2)]
    modes = {"tilt": "linear:5", "rotation": "group:4"}  # a blend with the tilts' offsets, and blocks
    batched = align_batch([s.observations for s in series], modes=modes)
    for s, b in zip(series, batched, strict=True):
        alone = align(s.observations, modes=modes)
        np.testing.assert_allclose(b.rms_residual_px, alone.rms_residual_px, rtol=1e-8)
        np.testing.assert_allclose(b.tilts_deg, alone.tilts_deg, atol=1e-8)


def test_single_precision_gives_the_double_precision_answer(drifting):
    """The blend's fractions and the tilts' nominal angles follow the solve's precision."""
    obs, _, fits = drifting
    single = align(obs, modes={"rotation": "linear:6", "tilt": "linear:5"}, dtype="float32")
    assert single.converged
    assert (
        abs(single.rms_residual_px - fits["linear"].rms_residual_px) < 1e-3 * fits["linear"].rms_residual_px
    )
    np.testing.assert_allclose(single.tilts_deg, fits["linear"].tilts_deg, atol=2e-3)


def test_the_far_gauge_holds_linear_modes_on_the_imod_model():
    """The imod model's far gauge (an affine z symmetry of tilt, x-stretch and skew) is fixed at
    the far view's node of a linear mode as at a free parameter's entry there. Skew sets of one
    view (grouped evenly) are every view free, and with linear tilt and x-stretch too, no
    combination is left undetermined (it had three more free parameters than the free fit, and
    a singular covariance: NaN standard errors)."""
    obs = simulate(n_views=21, n_markers=20, seed=9).observations
    free = align(obs, model="imod")
    skew = align(obs, model="imod", modes={"skew": "linear:1"})
    assert skew.n_parameters == free.n_parameters
    np.testing.assert_allclose(skew.views, free.views, atol=1e-7)
    linear = align(obs, model="imod", modes={"xstretch": "linear:2", "skew": "linear:1", "tilt": "linear:2"})
    assert linear.n_parameters < free.n_parameters
    se = uncertainty(linear).views_se
    assert np.isfinite(se).all() and np.degrees(se[:, 2]).max() < 0.5


def test_a_view_that_owns_its_linear_values_needs_the_points_they_need():
    """With linear:1 (or the last view alone after a node) a view's values are its own: three
    points cannot give the imod model's seven, and the fit says so instead of returning arbitrary
    values. A view with fewer than 3 points does not count toward a set (tiltalign's rule): it
    rides in its neighbour's, so its one point need only give its shift."""
    s = simulate(n_views=21, n_markers=15, seed=4)
    o = s.observations
    mask = o.mask.copy()
    mask[3, np.flatnonzero(mask[3])[3:]] = False
    three_points = Observations(o.xy, mask, o.tilts_deg, o.image_size)
    with pytest.raises(ValueError, match="view 3 has 3 observed point"):
        align(three_points, model="imod", modes={"rotation": "linear:1", "scale": "linear:1"})
    align(three_points, model="imod", modes={"rotation": "linear:4", "scale": "linear:4"})  # shared nodes
    mask = o.mask.copy()
    mask[6, 1:] = False
    one_point = Observations(o.xy, mask, o.tilts_deg, o.image_size)
    result = align(one_point, modes={"tilt": "linear:1", "rotation": "linear:1", "scale": "linear:1"})
    assert result.converged


@pytest.mark.parametrize(
    "mode", ["linear:0", "linear:1_0", "linear:+5", "linear: 5", "linear:\u0665", "group:-2"]
)
def test_the_api_takes_the_sizes_the_command_line_takes(mode):
    """Whole numbers >= 1 in the digits 0-9 (int() alone took '1_0', '+5', ' 5' and an
    Arabic-Indic five, which the command line refuses)."""
    obs = simulate(n_views=9, n_markers=6, seed=1).observations
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        align(obs, modes={"tilt": mode})
