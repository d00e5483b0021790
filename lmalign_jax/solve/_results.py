"""Outcomes of a solve, as data."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.IntEnum):
    """Why a solve stopped. Each member carries a message for people."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITERATIONS = 2
    FAILED = 3

    @property
    def message(self) -> str:
        return {
            Status.RUNNING: "still running",
            Status.CONVERGED: "converged",
            Status.MAX_ITERATIONS: "stopped at the iteration limit before converging",
            Status.FAILED: "failed: the cost is not finite or no step could reduce it",
        }[self]


@dataclass(frozen=True)
class LMConfig:
    """Levenberg-Marquardt settings.

    max_iterations: cap on damping trials (accepted + rejected steps).
    cost_tol: stop when an accepted step lowers the cost by less than cost_tol * cost.
    step_tol: stop when the proposed step h has |h| <= step_tol * (|x| + step_tol).
    gradient_tol: stop when max |J^T r| <= gradient_tol * (1 + cost).
    initial_damping: lambda at the start, relative to the normal-matrix diagonal (Marquardt).
    Tolerances of None pick a default for the floating-point type (float64 / float32).
    """

    max_iterations: int = 200
    cost_tol: float | None = None
    step_tol: float | None = None
    gradient_tol: float | None = None
    initial_damping: float = 1e-6

    def tolerances(self, dtype) -> tuple[float, float, float]:
        single = dtype.itemsize <= 4
        defaults = (1e-6, 1e-5, 1e-6) if single else (1e-12, 1e-10, 1e-12)
        given = (self.cost_tol, self.step_tol, self.gradient_tol)
        return tuple(d if g is None else g for g, d in zip(given, defaults, strict=True))
