"""The projection-model contract shared by every model variant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

#: How a view parameter's value relates to image displacement; sets its solver scaling.
#: "angle" (radians) and "ratio" (dimensionless, e.g. a scale) move a point by about
#: (marker radius) pixels per unit; "length" parameters are pixels already.
PARAMETER_KINDS = ("angle", "ratio", "length")


class FrameMap(NamedTuple):
    """An exact symmetry of a model that the reporting frame uses to report a solution in one
    reproducible frame, whatever values the stages left in the gauge's fixed entries
    (``core.frame.reporting_frame``): a linear map of the specimen's x-z plane, whose four
    entries (the map minus the identity, row-major) are ``scalars``.

    needs: parameters that must be free in every view (and the tilts solved) for the map to be
        exact, e.g. a per-view x-stretch that takes up how the map lengthens each projection.
    scalars: ``scalars(views (n, k), nominal_tilts_rad (n,), view_mask (n,) or None) -> (4,)``:
        the map to the frame the model reports in (the mask: the real views of a padded
        series); zeros where the map would not be exact or is undetermined. Traceable.
    apply: ``apply(views (n, k), xyz (m, 3), scalars (4,)) -> (views, xyz)``: the exactly
        equivalent solution. Traceable; the zero scalars leave the solution unchanged.
    """

    needs: tuple[str, ...]
    scalars: Callable
    apply: Callable


@dataclass(frozen=True)
class ProjectionModel:
    """A projection model: image position of a marker in a view, plus its metadata.

    Attributes:
        name: registry name.
        parameters: names of the per-view parameters, in vector order.
        kinds: one of ``PARAMETER_KINDS`` per parameter (units: radians, ratio, pixels).
        neutral: value of each parameter for an ideal microscope (scale 1, shifts 0, ...).
        default_modes: default mode of each parameter: "free" (one value per view), "shared"
            (one value for all views) or "fixed".
        gauge: parameters whose value at the reference view is held fixed when free, to
            remove the exact symmetries of the model (MODEL.md, "Gauge freedoms").
        gauge_marker_z: whether one marker's z must be held fixed (z translation of the
            specimen trades against the shifts).
        far_gauge: groups of parameters held at the *far* view (largest nominal |tilt|) when
            every member of the group is free per view there: symmetries the reference view
            cannot fix because they vanish at zero tilt (MODEL.md, "Gauge freedoms").
        project: ``project(view, xyz) -> (2, ...)``: view parameters (k, ...) in model
            units (radians, ratios, pixels) and marker positions (3, ...) in pixels relative
            to the specimen centre -> image positions (2, ...) relative to the image centre,
            pixels. A pure, differentiable JAX function written elementwise over the
            trailing dimensions (unpack rows, use ``geometry``'s helpers, stack the result),
            which must broadcast: the solver passes views (k, n_views, 1) and markers
            (3, 1, n_markers), so anything depending on a view alone is computed per view.
        tilt_offset: optional ``tilt_offset(views (n, k), xyz (m, 3), delta) ->
            (views, xyz)``: the exactly equivalent solution with every tilt increased by
            ``delta`` radians (the specimen rotated about the tilt axis), or None when the
            model has no such exact symmetry.
        frame_map: optional :class:`FrameMap`: a symmetry the reporting frame uses
            instead of ``tilt_offset`` when its needed parameters are free (the imod model's
            affine z, whose gauge entries would otherwise keep the values earlier stages left).
        shift_parameters: names of the two parameters added to the projected position
            (dx, dy), or None if the model has no shift.
        regularization: optional ``regularization(views (n_views, k)) -> (n_rows,)``: extra
            residual rows (pixel-like units, added to the least-squares cost) that depend on
            the view parameters alone, in model units, e.g. a smoothness penalty across
            neighbouring views. A pure, differentiable JAX function. The solver adds their
            Gauss-Newton matrix to its dense view system; markers are still eliminated.
        group_size_power: ``(name, block power, linear power)`` for the parameters whose
            groups IMOD makes smaller at high tilt when it groups views ("group:N",
            "linear:N"): relative group size ``cos(tilt) ** power`` (``core.grouping``); a
            parameter not listed, or power 0, gets groups of equal size. tiltalign's: tilt
            linear 1, compression linear 1, x-stretch 1.5, skew blocks 1.
        z_translation_symmetry: whether moving every marker along z, traded against the
            shifts, is an exact symmetry (the reporting frame then moves the markers' mean z
            to 0; models whose image terms depend on the projected position, e.g. a warp, set
            False).
        xy_translation_symmetry: the same for a move in x and y (the reporting frame then puts
            the specimen origin's image at the image centre in the view nearest 0 degrees);
            False for models whose terms depend on the markers' x, y (a warp, a dome).
        scale_symmetry: whether scaling every marker by f and every view's "scale" by 1 / f is
            exact (the reporting frame then sets the scale of the view nearest 0 degrees to 1);
            False for models with terms in the markers' x, y (a warp, a dome).
    """

    name: str
    parameters: tuple[str, ...]
    kinds: tuple[str, ...]
    neutral: tuple[float, ...]
    default_modes: tuple[str, ...]
    gauge: tuple[str, ...]
    gauge_marker_z: bool
    project: Callable
    tilt_offset: Callable | None = None
    frame_map: FrameMap | None = None
    far_gauge: tuple[tuple[str, ...], ...] = ()
    shift_parameters: tuple[str, str] | None = ("dx", "dy")
    regularization: Callable | None = None
    z_translation_symmetry: bool = True
    xy_translation_symmetry: bool = True
    scale_symmetry: bool = True
    group_size_power: tuple[tuple[str, float, float], ...] = (("tilt", 0.0, 1.0),)
    description: str = field(default="", compare=False)

    def __post_init__(self):
        k = len(self.parameters)
        for attr in ("kinds", "neutral", "default_modes"):
            if len(getattr(self, attr)) != k:
                raise ValueError(
                    f"model {self.name!r}: {attr} has {len(getattr(self, attr))} entries, expected {k}"
                )
        for kind in self.kinds:
            if kind not in PARAMETER_KINDS:
                raise ValueError(f"model {self.name!r}: unknown parameter kind {kind!r}")
        far = tuple(name for group in self.far_gauge for name in group)
        sized = tuple(entry[0] for entry in self.group_size_power)
        mapped = self.frame_map.needs if self.frame_map is not None else ()
        named = self.gauge + far + sized + mapped + (self.shift_parameters or ()) + ("rotation", "tilt")
        for name in named:
            if name not in self.parameters:
                raise ValueError(f"model {self.name!r}: parameter {name!r} is not one of {self.parameters}")

    @property
    def n_parameters(self) -> int:
        return len(self.parameters)

    def index(self, name: str) -> int:
        """Position of parameter ``name`` in the view vector."""
        try:
            return self.parameters.index(name)
        except ValueError:
            raise ValueError(
                f"model {self.name!r} has no parameter {name!r}; it has {', '.join(self.parameters)}"
            ) from None

    def group_power(self, name: str, linear: bool) -> float:
        """The power of cos(tilt) that sizes IMOD's groups of ``name`` (``group_size_power``)
        for linear (True) or block (False) grouping; 0 for equal groups."""
        for entry, block, line in self.group_size_power:
            if entry == name:
                return line if linear else block
        return 0.0

    def neutral_views(self, n_views: int) -> np.ndarray:
        """Neutral view parameters, shape (n_views, k)."""
        return np.tile(np.asarray(self.neutral, dtype=np.float64), (n_views, 1))
