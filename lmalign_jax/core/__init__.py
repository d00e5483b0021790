"""The alignment core: a parameterised problem, start values, the staged solve, its result.

``problem`` turns a projection model and observations into a masked least-squares problem
(parameter modes, gauge, scaling); ``settings`` checks the options and sets up each stage;
``initial`` and ``start`` give start values; ``align`` runs the paper's stages and the joint
finish; ``frame`` moves the answer to the reporting frame; ``result`` holds it, with the
model object and the settings it ran with. ``align_batch`` (lmalign_jax.batch) shares all
but ``align``.
"""

from .align import STAGES, align
from .result import AlignmentResult, StageReport
from .settings import AlignmentSettings

__all__ = ["STAGES", "AlignmentResult", "AlignmentSettings", "StageReport", "align"]
