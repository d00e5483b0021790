"""The alignment core: a parameterised problem, start values, the staged solve, its result.

``problem`` turns a projection model and observations into a masked least-squares problem
(parameter modes, gauge, scaling); ``initial`` gives start values; ``align`` runs the paper's
stages and the joint finish; ``result`` holds the answer in the reporting frame.
"""

from .align import STAGES, align
from .result import AlignmentResult, StageReport

__all__ = ["STAGES", "AlignmentResult", "StageReport", "align"]
