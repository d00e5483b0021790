"""Checking and completing ``lmalign simulate``'s options: the defaults that depend on ``--stack``
and ``--realistic``, and the refusals (one line, exit 2) of values that cannot make a series
``lmalign align`` accepts."""

from __future__ import annotations

import math

import numpy as np

from ..io.markerset import IMAGE_SIZE_RULE, MAX_CELLS, MAX_VIEWS, image_size_ok
from ..workflow.series import FAR_OUTSIDE, check_rotation
from .common import MIN_MARKERS, UsageError

__all__ = ["check_in_view", "check_simulate_args", "default_shift", "resolve_defaults"]

#: Per-view shift sd with --realistic: a misalignment of tens of pixels between views.
REALISTIC_SHIFT_PX = 20.0

#: Defaults of the options that depend on --stack: (without, with).
SIZE_DEFAULTS = {
    "views": (61, 41),
    "markers": (30, 12),
    "image_size": ([2048, 2048], [256, 256]),
    "thickness": (300.0, 40.0),
}


def default_shift(image_size) -> float:
    """Per-view shift sd: 15 px for 2048-px images, scaled with the image size, 3 to 15 px."""
    return float(min(15.0, max(3.0, 15.0 * min(image_size) / 2048.0)))


def resolve_defaults(args) -> None:
    """Fill in the options left None whose defaults depend on --stack and --realistic."""
    stack = bool(getattr(args, "stack", False))
    for name, (plain, with_stack) in SIZE_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, with_stack if stack else plain)
    realistic = bool(getattr(args, "realistic", False))
    if getattr(args, "missing", None) is None:
        args.missing = 0.0 if realistic else 0.1
    if getattr(args, "shift", None) is None:
        args.shift = REALISTIC_SHIFT_PX if realistic else default_shift(args.image_size)


#: (flag, attribute) of every number option that must be finite.
FLOAT_FLAGS = (
    ("--noise", "noise"),
    ("--missing", "missing"),
    ("--outliers", "outliers"),
    ("--tilt-range", "tilt_range"),
    ("--rotation", "rotation"),
    ("--shift", "shift"),
    ("--thickness", "thickness"),
    ("--pixel-size", "pixel_size"),
    ("--dose", "dose"),
    ("--bead-diameter", "bead_diameter"),
    ("--close-pairs", "close_pairs"),
    ("--background", "background"),
)


def check_simulate_args(args) -> None:
    """A UsageError naming the first option whose value cannot make a series align accepts."""
    for flag, name in FLOAT_FLAGS:
        value = getattr(args, name, None)
        values = value if isinstance(value, list | tuple) else [value]
        bad = [v for v in values if v is not None and not math.isfinite(v)]
        if bad:
            raise UsageError(f"{flag} must be a finite number, got {' '.join(f'{v:g}' for v in values)}")
    check_rotation(args.rotation)
    low, high = args.tilt_range
    if not all(abs(round(t, 3)) < 90 for t in (low, high)):  # as the .rawtlt writes them (%9.3f)
        raise UsageError(
            f"--tilt-range must lie between -90 and 90 degrees, exclusive (align refuses a tilt of "
            f"+-90 or beyond), got {low:g} {high:g}"
        )
    if round(low, 3) == round(high, 3) and args.views > 1:  # as the .rawtlt writes them
        raise UsageError(
            f"--tilt-range MIN and MAX must differ: {args.views} views all at {round(low, 3) + 0.0:g} "
            "degrees leave the markers' heights (z) undetermined (align refuses such a series), got "
            f"{low:g} {high:g}"
        )
    if args.image_size is not None and not image_size_ok(args.image_size):
        nx, ny = args.image_size
        raise UsageError(f"--image-size must be {IMAGE_SIZE_RULE}, got {nx} {ny}")
    far = FAR_OUTSIDE * max(args.image_size) if args.image_size else math.inf
    for flag, name in (("--noise", "noise"), ("--shift", "shift"), ("--thickness", "thickness")):
        if abs(getattr(args, name)) > far:
            raise UsageError(
                f"{flag} {getattr(args, name):g} is more than {FAR_OUTSIDE} image sizes ({far:g} px): the "
                "markers would fall far outside the image, where align refuses them"
            )
    if args.views < 3 or args.markers < MIN_MARKERS:
        raise UsageError(f"--views must be >= 3 and --markers >= {MIN_MARKERS}")
    if args.views > MAX_VIEWS or args.views * args.markers > MAX_CELLS:  # as align's readers
        raise UsageError(
            f"--views {args.views} x --markers {args.markers}: align takes at most {MAX_VIEWS} views and "
            f"{MAX_CELLS:,} view x marker cells"
        )
    if args.noise < 0 or not 0 <= args.missing < 1 or not 0 <= args.outliers < 1:
        raise UsageError("--noise must be >= 0, --missing and --outliers in [0, 1)")
    if args.thickness < 0 or args.shift < 0:
        raise UsageError("--thickness and --shift must be >= 0")
    realistic_given = [flag for flag, name in REALISTIC_FLAGS if getattr(args, name, None) is not None]
    if realistic_given and not getattr(args, "realistic", False):
        raise UsageError(f"{', '.join(realistic_given)}: only with --realistic")
    if getattr(args, "realistic", False):
        if not args.stack:
            raise UsageError("--realistic describes the image stack: add --stack")
        _check_realistic_args(args)
    pixel = getattr(args, "pixel_size", None)
    if pixel is not None and not (math.isfinite(pixel) and pixel > 0):
        raise UsageError(f"--pixel-size must be positive, got {pixel:g}")


#: (flag, attribute) of the options that only --realistic uses.
REALISTIC_FLAGS = (
    ("--dose", "dose"),
    ("--bead-diameter", "bead_diameter"),
    ("--close-pairs", "close_pairs"),
    ("--background", "background"),
    ("--ice", "ice"),
)
#: Their defaults.
REALISTIC_DEFAULTS = {"dose": 30.0, "bead_diameter": 8.0, "close_pairs": 0.2, "background": 1.0, "ice": None}


def _check_realistic_args(args) -> None:
    for name, value in REALISTIC_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if not (math.isfinite(args.dose) and args.dose >= 0):
        raise UsageError(f"--dose must be >= 0 electrons per pixel (0: no noise), got {args.dose:g}")
    if not (math.isfinite(args.bead_diameter) and 2.0 <= args.bead_diameter <= 0.1 * min(args.image_size)):
        raise UsageError(
            "--bead-diameter must be between 2 px and a tenth of the image "
            f"({0.1 * min(args.image_size):g} px), got {args.bead_diameter:g}"
        )
    if not 0 <= args.close_pairs <= 1 or not (math.isfinite(args.background) and args.background >= 0):
        raise UsageError("--close-pairs must be in [0, 1] and --background >= 0")
    if args.ice is not None and args.ice < 0:
        raise UsageError(f"--ice must be >= 0, got {args.ice}")


def check_in_view(obs, args) -> None:
    """A UsageError when simulated points fall where align refuses them (``FAR_OUTSIDE``)."""
    centre = np.asarray(obs.image_size, dtype=float) / 2
    far = obs.mask & np.any(np.abs(obs.xy - centre) > FAR_OUTSIDE * max(obs.image_size), axis=-1)
    if far.any():
        raise UsageError(
            f"{int(far.sum())} simulated point(s) fall more than {FAR_OUTSIDE} image sizes from the "
            f"{obs.image_size[0]:g} x {obs.image_size[1]:g} image, where align refuses them; choose a "
            f"smaller --noise ({args.noise:g}), --shift ({args.shift:g}) or --thickness ({args.thickness:g})"
        )
