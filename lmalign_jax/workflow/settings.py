"""How a series is aligned: model, parameter modes, stages, precision, robust loss (one object
shared by ``align``, ``batch`` and whatever aligns next)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import get_model

#: The solve's stages, in order (``--no-initial-stage``/``--no-joint-stage`` drop one).
STAGES = ("initial", "main", "tilt", "joint")


@dataclass(frozen=True)
class AlignSettings:
    """Settings of one alignment (picklable, for batch workers).

    ``modes``: parameter name -> mode (free | fixed | shared | group:N) for the parameters the
    user set; the model's defaults hold for the others. ``robust``: the loss of the reweighted
    fit (None: plain least squares); ``robust_group_size``: views per group for its scale.
    """

    model: str = "jou"
    modes: dict = field(default_factory=dict)
    stages: tuple = STAGES
    dtype: str = "float64"
    max_iterations: int = 200
    robust: str | None = None
    robust_group_size: int = 10

    def all_modes(self) -> dict:
        """Every view parameter's mode, as the .json record lists them."""
        model = get_model(self.model)
        return dict(zip(model.parameters, model.default_modes, strict=True)) | dict(self.modes)

    def record_options(self, rotation_deg, rotation_source: str, command, batch: dict | None = None) -> dict:
        """The record's ``options`` section: these settings, the starting rotation (degrees) and
        where it came from, the command line and (batch only) the batched solve's details."""
        options = {
            "model": get_model(self.model).name,
            "modes": self.all_modes(),
            "rotation_deg": rotation_deg,
            "rotation_source": rotation_source,
            "stages": list(self.stages),
            "dtype": self.dtype,
            "max_iterations": self.max_iterations,
            "command": list(command),
        }
        if batch is not None:
            options["batch"] = batch
        if self.robust is not None:
            options["robust"] = self.robust_record()
        return options

    def robust_record(self) -> dict | None:
        """The record's ``options.robust``: loss and group size, or None for least squares."""
        return (
            {"loss": self.robust, "group_size": self.robust_group_size} if self.robust is not None else None
        )
