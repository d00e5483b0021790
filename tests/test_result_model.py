"""A result keeps the ProjectionModel it was fitted with and the settings it ran with.

Every consumer (report, standard errors, differentiation, a warm start) uses that object, so a
model that is not registered works end to end, and one that reuses a registered name is never
swapped for the registry's.
"""

import ast
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from lmalign_jax import MODELS, align, get_model, simulate
from lmalign_jax.analysis import alignment_function, uncertainty
from lmalign_jax.core import AlignmentSettings
from lmalign_jax.core.frame import project_all
from lmalign_jax.report import build_record, expand_to_file_views, format_summary

JOU = get_model("jou")
#: A magnification the registry's jou does not have: at a solution of this model, jou's
#: predictions are off by 5% of a marker's distance from the centre (tens of pixels).
MAGNIFICATION = 1.05
NOISE_PX = 0.5


def magnified_project(view, xyz):
    """jou's projection, magnified about the image centre."""
    return JOU.project(view, xyz) * MAGNIFICATION


@pytest.fixture(scope="module")
def series():
    return simulate(n_views=21, n_markers=10, seed=3, missing_fraction=0.1, noise_px=NOISE_PX).observations


def test_unregistered_model_is_reported_and_has_standard_errors(series):
    custom = dataclasses.replace(JOU, name="jou-copy", description="an unregistered copy of jou")
    assert custom.name not in MODELS
    result = align(series, model=custom)
    assert result.model is custom and result.model_name == "jou-copy"
    assert result.converged
    # sigma estimated from ~700 coordinates is within 20% of the simulated noise
    assert result.sigma_px == pytest.approx(NOISE_PX, rel=0.2)

    errors = uncertainty(result)
    assert errors.model is custom
    assert errors.sigma_px == pytest.approx(result.sigma_px, rel=1e-6)
    assert np.all(errors.parameter_se("tilt") > 0)

    fv = expand_to_file_views(result, np.arange(series.n_views), series.tilts_deg)
    record = build_record(
        result, fv, marker_ids=list(range(series.n_markers)), inputs={}, options={}, errors=errors
    )
    assert record["model"]["name"] == "jou-copy"
    assert record["model"]["description"] == "an unregistered copy of jou"
    assert "model jou-copy: an unregistered copy of jou" in format_summary(record)


@pytest.fixture(scope="module")
def model():
    """A custom model named "jou" with another projection (a 5% magnification)."""
    return dataclasses.replace(JOU, project=magnified_project, description="jou, magnified")


@pytest.fixture(scope="module")
def fitted(model):
    truth = simulate(model=model, n_views=21, n_markers=10, seed=5, missing_fraction=0.1, noise_px=NOISE_PX)
    return truth.observations, align(truth.observations, model=model)


class TestNamesake:
    """A custom model named "jou" with another projection is fitted, reported and refined as itself."""

    def test_the_object_wins_over_the_registry(self, model, fitted):
        obs, result = fitted
        assert model.name == "jou" and model != JOU
        assert result.model is model
        assert result.converged
        # the fit reaches the noise: sigma estimated from ~700 coordinates is within 20% of it
        assert result.sigma_px == pytest.approx(NOISE_PX, rel=0.2)
        # the registry's jou at this solution is far off: a substitution could not go unseen
        registry = np.where(
            obs.mask[..., None], project_all(JOU, result.views, result.markers) - obs.centered_xy, 0.0
        )
        assert np.sqrt(np.sum(registry**2) / (2 * obs.n_observed)) > 20 * NOISE_PX

    def test_standard_errors_use_the_fitted_model(self, model, fitted):
        _, result = fitted
        errors = uncertainty(result)
        assert errors.model is model
        assert errors.sigma_px == pytest.approx(result.sigma_px, rel=1e-6)

    def test_differentiable_function_uses_the_fitted_model(self, fitted):
        obs, result = fitted
        with jax.enable_x64(True):
            views, markers = alignment_function(result)(obs.xy, obs.tilts_deg)
        # re-solved from the optimum it stays there (what tests/test_differentiable.py checks;
        # the registry's jou would move every parameter)
        np.testing.assert_allclose(np.asarray(views)[:, :3], result.views[:, :3], rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.asarray(markers)[:, 2], result.markers[:, 2], rtol=0, atol=1e-6)

    def test_a_start_of_another_model_of_that_name_is_refused(self, fitted):
        obs, result = fitted
        with pytest.raises(ValueError, match=r"expected 'jou' \(another model of that name\)"):
            align(obs, start=result, stages=("joint",))


def test_settings_record_the_run_and_grouped_tilts_get_the_frame(series):
    """Tilt modes given as group labels (these crashed the reporting frame before). A group's
    tilts share one change from their nominal angles."""
    labels = np.arange(series.n_views) // 3
    weights = np.where(series.mask, 1.0, np.nan)
    result = align(series, modes={"tilt": labels}, ref_view=4, weights=weights)
    settings = result.settings
    assert settings.modes.keys() == set(JOU.parameters) and settings.modes["tilt"] is labels
    assert settings.stages == ("initial", "main", "tilt", "joint") and settings.dtype == "float64"
    assert settings.ref_view == 4 and settings.weights is weights and settings.bucket is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ref_view = 0

    assert result.converged
    change = result.tilts_deg - series.tilts_deg
    for group in np.unique(labels):
        np.testing.assert_allclose(change[labels == group], change[labels == group][0], rtol=0, atol=1e-12)
    assert abs(np.mean(change)) < 1e-9


def test_labels_that_fix_every_view_count_as_fixed():
    assert not AlignmentSettings(modes={"tilt": np.full(5, -2)}).tilts_solved
    assert AlignmentSettings(modes={"tilt": np.array([-2, -2, 0, 0, -1])}).tilts_solved
    assert not AlignmentSettings(modes={"tilt": "fixed"}).tilts_solved
    assert not AlignmentSettings(stages=("initial", "main")).tilts_solved


PACKAGE = Path(__file__).resolve().parent.parent / "lmalign_jax"


def test_no_private_name_is_imported_across_packages():
    """A module imports only public names (and public modules) from another subpackage."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            target = (
                *package[: len(package) - node.level + 1],
                *(node.module.split(".") if node.module else ()),
            )
            if target[:2] == package[:2]:
                continue  # the same subpackage (or the same top-level module)
            names = [*target[1:], *(alias.name for alias in node.names)]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                offenders.append(f"{path.relative_to(PACKAGE)}: {'.'.join(target)} {private}")
    assert not offenders, offenders
