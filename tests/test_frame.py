"""The reporting frame (core.frame): one frame per solution, whatever values the gauge held.

An alignment's gauge holds some entries (the reference view's shifts, the imod model's tilt and
x-stretch at two views) where earlier stages left them. The same solution moved by an exact
symmetry of its model fits the points as well; the reported frame must be the same for both.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmalign_jax import align, get_model, simulate
from lmalign_jax.core.frame import frame_rule, project_all, to_reporting_frame
from lmalign_jax.models import imod


@pytest.fixture(scope="module")
def solutions():
    """A solved jou and imod series (21 views, 12 markers, some missing)."""
    out = {}
    for name, extra in (("jou", None), ("imod", {"xstretch": (0.0, 0.01), "skew": (0.0, 0.01)})):
        series = simulate(n_views=21, n_markers=12, seed=8, missing_fraction=0.1, model=name, extra=extra)
        out[name] = align(series.observations, model=name)
    return out


def moved(model, views, markers, turn, factor, shift):
    """The solution under an exact symmetry: the model's frame map (imod: ``turn`` (4,)) or tilt
    offset (jou: ``turn[0]`` radians), the specimen scaled by ``factor`` (the views' scales by its
    inverse), then moved by ``shift`` (3,) px (the markers by minus it, the shifts following)."""
    with jax.enable_x64(True):
        if model.frame_map is not None:
            views, markers = model.frame_map.apply(
                jnp.asarray(views), jnp.asarray(markers), jnp.asarray(turn)
            )
        else:
            views, markers = model.tilt_offset(jnp.asarray(views), jnp.asarray(markers), turn[0])
        views, markers = np.array(views), np.array(markers) * factor
    views[:, model.index("scale")] /= factor
    offset = project_all(model, views, shift[None]) - project_all(model, views, np.zeros((1, 3)))
    views[:, [model.index("dx"), model.index("dy")]] += offset[:, 0]
    return views, markers - shift


@pytest.mark.parametrize("name", ["jou", "imod"])
def test_a_solution_moved_by_a_symmetry_is_reported_as_the_original(solutions, name):
    result = solutions[name]
    model, nominal = result.model, np.radians(result.observations.tilts_deg)
    rule = result.settings.frame_rule(model)
    assert rule.mapped == (name == "imod")
    rng = np.random.default_rng(0)
    for _ in range(3):
        views, markers = moved(
            model,
            result.views,
            result.markers,
            0.02 * rng.standard_normal(4),
            1 + 0.01 * rng.standard_normal(),
            rng.normal(0, 30, 3),
        )
        # an exact symmetry: the same image positions, yet other parameters
        reference = project_all(model, result.views, result.markers)
        np.testing.assert_allclose(project_all(model, views, markers), reference, atol=1e-9)
        assert np.abs(views - result.views).max() > 1e-3
        again_views, again_markers = to_reporting_frame(model, views, markers, nominal, rule)
        np.testing.assert_allclose(again_views, result.views, atol=1e-10)
        np.testing.assert_allclose(again_markers, result.markers, atol=1e-8)


def test_the_imod_frame_has_the_likeliest_tilts_and_stretches(solutions):
    """The frame map's criterion (models/imod.py ``likeliest_map``): no nearby x-z map lowers
    sum ((t' - t_nominal) / TILT_SPREAD_RAD)^2 + (e' / STRETCH_SPREAD)^2 over the views."""
    result = solutions["imod"]
    model, nominal = result.model, np.radians(result.observations.tilts_deg)
    tilt, stretch = model.index("tilt"), model.index("xstretch")

    def cost(views):
        return np.sum(
            ((views[:, tilt] - nominal) / imod.TILT_SPREAD_RAD) ** 2
            + (views[:, stretch] / imod.STRETCH_SPREAD) ** 2
        )

    least = cost(result.views)
    with jax.enable_x64(True):
        for direction in np.eye(4):
            for step in (-1e-4, 1e-4):
                views, _ = model.frame_map.apply(
                    jnp.asarray(result.views), jnp.zeros((1, 3)), step * direction
                )
                assert cost(np.asarray(views)) > least


@pytest.mark.parametrize("tilts", [(30.0, 60.0), (-10.0, 10.0), (-60.0, 60.0)])
def test_the_imod_frame_keeps_a_narrow_or_one_sided_series_true(tilts):
    """Tilts good to 0.2 degrees (the simulator's) stay near nominal and the specimen keeps its
    thickness on narrow and one-sided ranges, where the stretches alone do not fix the affine z
    (their least squares put a 30..60 degree series' tilts 3.8 degrees off and its specimen 62%
    too thick). Bounds: 5x the simulated tilt error; thickness within 5%."""
    series = simulate(
        n_views=11, n_markers=14, seed=11, tilt_range=tilts, model="imod", extra={"xstretch": (0.0, 0.01)}
    )
    result = align(series.observations, model="imod")
    assert result.converged
    assert np.abs(result.tilts_deg - series.observations.tilts_deg).max() < 1.0
    thickness = np.ptp(result.markers[:, 2]) / np.ptp(series.markers[:, 2])
    assert abs(thickness - 1) < 0.05, thickness


def test_the_frame_map_applies_only_where_it_is_exact():
    """The imod frame map needs a free x-stretch and tilt in every view (grouped stretches cannot
    follow it), solved tilts, and no beam tilt (which mixes the projected z into y)."""
    imod = get_model("imod")
    assert frame_rule(imod, {}, True).mapped
    assert not frame_rule(imod, {}, False).mapped
    assert not frame_rule(imod, {"xstretch": "group:5"}, True).mapped
    assert not frame_rule(imod, {"tilt": "linear:4"}, True).mapped
    assert frame_rule(imod, {"xstretch": np.full(5, -1)}, True).mapped  # labels: each view its own
    views = imod.neutral_views(5)
    views[:, imod.index("tilt")] = np.radians([-60.0, -30.0, 0.0, 30.0, 60.0]) + 0.01
    views[:, imod.index("xstretch")] = 0.01
    with jax.enable_x64(True):
        nominal = jnp.radians(jnp.array([-60.0, -30.0, 0.0, 30.0, 60.0]))
        assert np.abs(imod.frame_map.scalars(jnp.asarray(views), nominal, None)).max() > 1e-3
        views[:, imod.index("beamtilt")] = 0.002
        np.testing.assert_array_equal(imod.frame_map.scalars(jnp.asarray(views), nominal, None), 0.0)
