"""The settings of a local alignment (``core.local``): which increments a patch solves and how
they are grouped, how a patch weighs its markers, and which patches keep their solution.

A module of its own so that the command line and the comparison can build and check the settings
without the solve's module.
"""

from __future__ import annotations

import dataclasses

from ..solve import LMConfig
from .problem import mode_labels

__all__ = ["ETOMO_MODES", "INCREMENTS", "JOINT_DISTORTION", "PER_VIEW_MODES", "WEIGHTINGS", "LocalOptions"]

#: Local increments a model can take: name -> (base parameter it is added to, kind).
INCREMENTS = {"rotation": "angle", "tilt": "angle", "scale": "ratio", "xstretch": "ratio", "skew": "angle"}


#: Etomo's grouping of the local increments, linear as its LocalRotOption 3, LocalTiltOption 5
#: and LocalMagOption 3 make it (LocalRotDefaultGrouping 6, LocalTiltDefaultGrouping 6,
#: LocalMagDefaultGrouping 7): LocalOptions' default (until c6a869e, blocks of those sizes).
ETOMO_MODES = (("rotation", "linear:6"), ("tilt", "linear:6"), ("scale", "linear:7"))
#: How a patch weighs its markers: by tilt's share of the patch at each marker, or all fully.
WEIGHTINGS = ("blend", "even")
#: Every increment free per view (the default until 2026-12-04): lowers the residual more, and
#: fits more noise.
PER_VIEW_MODES = (("rotation", "free"), ("tilt", "free"), ("scale", "free"))
#: The distortion a joint refinement (``LocalOptions.joint``) adds to the patches' maps where the
#: modes leave it unnamed: skew linearly by 11 views as Etomo groups it, x-stretch linearly by 7
#: (Etomo's blocks of 7, the ``modes`` docstring below, left a doming specimen at 3.65x the rigid
#: level where linear gives 2.5x: a deformation that grows with the view is no staircase). The
#: file's maps hold any affine map, whatever the model's own parameters.
JOINT_DISTORTION = (("xstretch", "linear:7"), ("skew", "linear:11"))


@dataclasses.dataclass(frozen=True)
class LocalOptions:
    """Settings of a local alignment (IMOD's names in brackets; grid defaults are Etomo's).

    patch_size: (nx, ny) target patch size, pixels [TargetPatchSizeXandY].
    overlap: (fx, fy) fractional overlap of neighbouring patches [MinSizeOrOverlapXandY].
    min_fids: (total, each surface) markers a patch must hold [MinFidsTotalAndEachSurface].
    fix_markers: hold the markers at the global solution [FixXYZCoordinates].
    modes: local increment -> "free", "group:N", "linear:N" or "fixed" [Local*Option,
        Local*DefaultGrouping]; increments the model lacks are ignored. Default
        :data:`ETOMO_MODES`, Etomo's grouping: rotation and tilt increments in tiltalign's sets
        of about 6 views, scale 7, interpolated linearly between (``core.grouping``; where Etomo
        also solves distortion it adds x-stretch in blocks of about 7 and skew linearly by 11,
        LocalXStretchOption and LocalSkewOption 3, for models that have them: pass
        ``xstretch="group:7"``, ``skew="linear:11"`` to match it). Grouped, the
        increments fit less noise: on IMOD's midzone2a set they predict held-out points better
        than the global alignment, where increments free per view (:data:`PER_VIEW_MODES`, which
        lower the residual more) predict them worse (benchmarks/README, "Grouped local
        increments"). A view with fewer points in a patch than its own per-view increments and
        local shift need (two coordinates a point) keeps the global increments there; only its
        shift is fitted.
    weighting: "blend" (default) weighs each marker of a patch by the share tilt gives the patch
        at the marker's position (module docstring); "even" weighs all fully, as tiltalign does.
    significance: keep a patch's local solution only if the patch's fit with every marker
        weighted fully lowers its sum of squares by more than fitting noise would: ``delta SS /
        sigma^2 > p + significance sqrt(2 p)`` (p that fit's free parameters; under a rigid
        specimen delta SS / sigma^2 is about chi-square with p degrees of freedom, mean p, sd
        sqrt(2 p); a robust fit's weights w scale it by ``lam = sum w^2 / sum w``); sigma^2 from
        the global fit. Otherwise the patch keeps the global solution. None keeps every patch's
        solution, as IMOD does (which fits noise: more parameters always lower the residual).
        With blend weights the test's fit is solved beside the blend one, in the same call: the
        blend dilutes the evidence (its own test kept fewer patches in compare's leave-out folds,
        and predicted midzone2a's held-out points worse). The blend fit itself is guarded only
        against having as many parameters as the coordinates it weighs.
    joint: refine the kept patches together, least squares on the positions tilt blends from
        them (``core.local_joint``), after each is solved alone: a patch solved alone fits the
        local slope of a deformation that curves across the field, and the blend of two slopes
        doubles the curvature between patch centres. The increments are grouped as ``modes`` say,
        with :data:`JOINT_DISTORTION` where they do not name x-stretch and skew. Kept only where
        BIC favours it over the patches alone (``local_joint.refine_kept_patches``). Not done for
        a model whose projection varies with height beyond tilt's formula (z factors).
    config: the solver's settings. Each patch starts at the global solution, a few steps from its
        optimum: cost changes below 1e-9 of the cost (a parameter change far below its standard
        error) end it, which on the 4k benchmark takes 0.7 s where the float64 defaults take 2 s,
        with the same drops to 0.1 sigma^2.
    """

    patch_size: tuple[int, int] = (700, 700)
    overlap: tuple[float, float] = (0.5, 0.5)
    min_fids: tuple[int, int] = (8, 3)
    fix_markers: bool = True
    modes: tuple[tuple[str, str], ...] = ETOMO_MODES
    weighting: str = "blend"
    significance: float | None = 3.0
    joint: bool = True
    config: LMConfig = LMConfig(cost_tol=1e-9, step_tol=1e-7, gradient_tol=1e-9)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"patch weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}"
            )
        if min(self.patch_size) < 1:
            raise ValueError(f"patch size must be positive, got {self.patch_size}")
        if not all(0 <= f < 1 for f in self.overlap):
            raise ValueError(f"patch overlap must be in [0, 1), got {self.overlap}")
        if self.min_fids[0] < 1 or self.min_fids[1] < 0:
            raise ValueError(f"minimum markers must be >= 1 in all and >= 0 per surface, got {self.min_fids}")
        for name, mode in self.modes:
            if name not in INCREMENTS:
                raise ValueError(f"no local increment {name!r}; choose from {', '.join(INCREMENTS)}")
            mode_labels(name, mode, 1)

    def to_dict(self) -> dict:
        """The settings that shape the answer, as JSON values (the record's and compare's)."""
        return {
            "patch_size": list(self.patch_size),
            "overlap": list(self.overlap),
            "min_fids": list(self.min_fids),
            "fix_markers": self.fix_markers,
            "modes": {name: mode for name, mode in self.modes},
            "weighting": self.weighting,
            "significance": self.significance,
            "joint": self.joint,
        }

    def joint_modes(self) -> dict:
        """The modes of a joint refinement's increments: ``modes``, and :data:`JOINT_DISTORTION`
        for x-stretch and skew where ``modes`` does not name them."""
        return {**dict(JOINT_DISTORTION), **dict(self.modes)}
