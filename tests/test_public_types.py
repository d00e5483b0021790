"""The public API's jaxtyping annotations hold on real calls, and catch what they should.

The annotations (``Float[np.ndarray, "views markers 2"]`` ...) cost nothing at run time; here they
are checked with beartype on real objects, with one dimension memo per object so that ``views``
means the same number in every field.
"""

import typing

import numpy as np
import pytest
from beartype import beartype
from beartype.door import is_bearable
from jaxtyping import TypeCheckError, jaxtyped

import lmalign_jax as lm
from lmalign_jax.track import find_beads


def assert_fields_match_annotations(obj) -> None:
    """Every annotated field of the dataclass ``obj`` satisfies its annotation, dimensions shared."""
    hints = typing.get_type_hints(type(obj))
    with jaxtyped("context"):
        for name, hint in hints.items():
            value = getattr(obj, name)
            assert is_bearable(value, hint), (
                f"{type(obj).__name__}.{name}: {getattr(value, 'shape', value)!r} is not {hint}"
            )


@pytest.fixture(scope="module")
def solved():
    series = lm.simulate(n_views=15, n_markers=6, missing_fraction=0.1, seed=3)
    result = lm.align(series.observations)
    return series, result, lm.uncertainty(result)


def test_data_models_satisfy_their_annotations(solved):
    series, result, errors = solved
    for obj in (series, series.observations, result, errors):
        assert_fields_match_annotations(obj)


def test_a_shape_mismatch_between_fields_is_caught(solved):
    """The check is not vacuous: residuals for another number of views violate 'views'."""
    _, result, _ = solved
    hints = typing.get_type_hints(type(result))
    with jaxtyped("context"):
        assert is_bearable(result.views, hints["views"])
        assert not is_bearable(result.residuals[:-1], hints["residuals"])


def test_find_beads_annotations_hold_and_reject_a_stack():
    checked = jaxtyped(typechecker=beartype)(find_beads)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 48)).astype(np.float32)
    positions, scores = checked(image, 6.0)
    assert positions.shape[1] == 2 and scores.shape == positions.shape[:1]
    with pytest.raises(TypeCheckError):
        checked(np.stack([image, image]), 6.0)  # a stack is not one image
