"""Generic damped Gauss-Newton (Levenberg-Marquardt) for bipartite least squares.

Knows nothing of tomography: two block sets A and B, a residual for each pair, global slots
tied to A entries, masks for missing pairs and fixed entries, and a Schur-complement step.
"""

from ._covariance import (
    Factorization,
    InverseBlocks,
    block_covariances,
    effective_parameters,
    factored_solve,
    factorize,
    inverse_blocks,
    leverages,
    variances,
)
from ._dense import dense_step
from ._implicit import gauss_newton_solve, solve_implicit
from ._linearize import Linearization, cost, linearize, pair_jacobians, pair_residuals, regularization_of
from ._lm import Solution, least_squares
from ._problem import (
    Structure,
    Variables,
    choose_elimination,
    count_free,
    effective_a,
    make_structure,
    pad_problem,
    tie_weights,
    unpad,
)
from ._results import LMConfig, Status
from ._schur import damped_step

__all__ = [
    "Factorization",
    "InverseBlocks",
    "LMConfig",
    "Linearization",
    "Solution",
    "Status",
    "Structure",
    "Variables",
    "block_covariances",
    "choose_elimination",
    "cost",
    "count_free",
    "damped_step",
    "dense_step",
    "effective_a",
    "effective_parameters",
    "factored_solve",
    "factorize",
    "gauss_newton_solve",
    "inverse_blocks",
    "least_squares",
    "leverages",
    "linearize",
    "make_structure",
    "pad_problem",
    "pair_jacobians",
    "pair_residuals",
    "regularization_of",
    "solve_implicit",
    "tie_weights",
    "unpad",
    "variances",
]
