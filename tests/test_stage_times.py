"""A stage's reported seconds are what that stage cost: its whole solve, blocked until the answer
is ready, with the stages adding up to the alignment."""

import importlib
import time
import types

import pytest

from lmalign_jax import align, simulate

align_module = importlib.import_module("lmalign_jax.core.align")


@pytest.fixture(scope="module")
def series():
    return simulate(n_views=9, n_markers=5, missing_fraction=0.1, seed=12)


def test_stage_seconds_add_up_to_the_alignment(series, monkeypatch):
    """On a clock that moves only when the solver runs (1 s a solve) and a little at every
    reading, each stage shows its solve once and the stages add up to the whole call."""
    now = [0.0]

    def reading():
        now[0] += 1e-6
        return now[0]

    solve = align_module.least_squares

    def one_second_solve(*args, **kwargs):
        sol = solve(*args, **kwargs)
        now[0] += 1.0
        return sol

    monkeypatch.setattr(align_module, "time", types.SimpleNamespace(perf_counter=reading))
    monkeypatch.setattr(align_module, "least_squares", one_second_solve)
    began = reading()
    result = align(series.observations)
    total = reading() - began
    seconds = [st.seconds for st in result.stages]
    assert [st.name for st in result.stages] == ["initial", "main", "tilt", "joint"]
    assert all(1.0 < s < 1.001 for s in seconds), seconds
    assert total - 0.001 < sum(seconds) <= total


def test_each_stage_includes_its_blocked_solve(series, monkeypatch):
    """Real clock: a solve that takes at least 0.2 s shows at least that in its own stage, and the
    stages never claim more than the call took."""
    solve = align_module.least_squares

    def slow_solve(*args, **kwargs):
        time.sleep(0.2)
        return solve(*args, **kwargs)

    monkeypatch.setattr(align_module, "least_squares", slow_solve)
    began = time.perf_counter()
    result = align(series.observations)
    total = time.perf_counter() - began
    seconds = [st.seconds for st in result.stages]
    assert len(seconds) == 4 and all(s >= 0.2 for s in seconds), seconds
    assert sum(seconds) <= total
