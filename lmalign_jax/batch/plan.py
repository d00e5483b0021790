"""How a batch is laid out: shape buckets, slots per kernel call and device, and the padding and
stacking of series into those slots (host side, NumPy).

A series falls into a *bucket* by its view and marker counts rounded up and is padded to the
bucket's shape ``(V, M)``: padded views and markers get weight 0 and are neither free nor tied,
so they are identity rows of the normal equations (see :mod:`lmalign_jax.batch.runner`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ..core.problem import is_linear, linear_nodes, mode_labels
from ..models import ProjectionModel
from ..solve import Structure, Variables

__all__ = [
    "DEFAULT_BATCH_PER_DEVICE",
    "DEFAULT_BUCKET",
    "SERIES_AXIS",
    "Plan",
    "bucket_shape",
    "global_slot_count",
    "make_plan",
    "padding_rules",
    "stack_padded",
]

#: Default bucket: series whose view and marker counts round up to the same multiples of 8.
DEFAULT_BUCKET = (8, 8)
#: Series per kernel call and device, when ``batch_size`` is not given.
DEFAULT_BATCH_PER_DEVICE = 32
SERIES_AXIS = "series"


def bucket_shape(n_views: int, n_markers: int, bucket=DEFAULT_BUCKET) -> tuple[int, int]:
    """The bucket of a series: its ``(views, markers)`` rounded up to multiples of ``bucket``.

    ``bucket``: an int (both steps), a pair ``(view_step, marker_step)``, or ``"exact"``
    (one bucket per distinct shape). ``"max"`` (one bucket for the whole batch) is resolved by
    :func:`lmalign_jax.batch.align_batch`, which knows every shape and pads each bucket to its largest member.
    """
    if bucket == "exact":
        return int(n_views), int(n_markers)
    steps = (bucket, bucket) if isinstance(bucket, int | np.integer) else tuple(bucket)
    if len(steps) != 2 or not all(isinstance(s, int | np.integer) and s >= 1 for s in steps):
        raise ValueError(
            f"bucket must be a positive int, a pair of positive ints, 'exact' or 'max', got {bucket!r}"
        )
    return int(math.ceil(n_views / steps[0]) * steps[0]), int(math.ceil(n_markers / steps[1]) * steps[1])


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """How a batch is laid out: the model and modes, precision, slots per call, devices."""

    model: ProjectionModel
    modes: dict
    dtype: object  # jnp.float64 or jnp.float32
    per_device: int  # slots per device and call
    width: int  # series per vmap
    devices: tuple
    mesh: Mesh | None

    @property
    def capacity(self) -> int:
        return self.per_device * len(self.devices)

    def slots(self, n: int) -> np.ndarray:
        """Slot of each of ``n`` series: dealt round-robin over the devices to balance them."""
        j = np.arange(n)
        return (j % len(self.devices)) * self.per_device + j // len(self.devices)

    def counts(self, n: int) -> np.ndarray:
        """Series per device for a chunk of ``n``."""
        d = np.arange(len(self.devices))
        return np.maximum((n - d + len(self.devices) - 1) // len(self.devices), 0).astype(np.int32)


def padding_rules(shape: tuple[int, int], n_slots: int):
    """How each solver input is padded to the bucket ``shape``: per field of ``Variables`` and
    ``Structure``, a function giving a leaf's padded shape, and the fill value (weight 0, not
    free, not tied: padded views and markers are identity rows of the normal equations)."""
    v, m = shape
    return (
        Variables(lambda a: (v, a.shape[1]), lambda b: (m, b.shape[1]), lambda g: (n_slots,)),
        Variables(0, 0, 0),
        Structure(
            pair_data=lambda d: d.shape[:-2] + (v, m),
            weights=lambda w: (v, m),
            free_a=lambda f: (v, f.shape[1]),
            tie_a=lambda t: (v, t.shape[1]),
            free_b=lambda f: (m, f.shape[1]),
            free_g=lambda f: (n_slots,),
            const=lambda c: c.shape,
            tie_blend=lambda t: (v, t.shape[1]),
        ),
        Structure(0, 0, False, -1, False, False, 0, tie_blend=(-1, 1.0, 0.0)),  # (tie2, frac, offset)
    )


def stack_padded(trees, slots, capacity: int, shapes, fills):
    """Stack same-structured pytrees into (capacity, ...) arrays, each leaf padded by field.

    ``shapes``/``fills`` are NamedTuples of the trees' type giving, per field, the padded shape
    of a leaf and the fill value (a tuple: one per leaf); slots not in ``slots`` hold the fill.
    """
    fields = []
    for f, to_shape, fill in zip(trees[0]._fields, shapes, fills, strict=True):
        columns = [jax.tree_util.tree_leaves(getattr(t, f)) for t in trees]
        treedef = jax.tree_util.tree_structure(getattr(trees[0], f))
        leaves = []
        for j, first in enumerate(columns[0]):
            first = np.asarray(first)
            padded = to_shape(first)
            buf = np.full(
                (capacity, *padded), fill[j] if isinstance(fill, tuple) else fill, dtype=first.dtype
            )
            for slot, col in zip(slots, columns, strict=True):
                buf[(slot, *(slice(0, s) for s in np.shape(col[j])))] = np.asarray(col[j])
            leaves.append(buf)
        fields.append(jax.tree_util.tree_unflatten(treedef, leaves))
    return type(trees[0])(*fields)


def global_slot_count(model: ProjectionModel, modes: dict, n_views: int) -> int:
    """Global slots of the problem layout for ``n_views`` views in groups of equal size (groups
    IMOD sizes by tilt, ``core.grouping``, may make a few more: callers take the larger of this
    and their problems' own)."""
    total = 0
    for name in model.parameters:
        if is_linear(modes[name]):  # its nodes, and the reference view wherever it falls
            total += linear_nodes(n_views, int(modes[name].split(":")[1]), None).size + 1
            continue
        labels = mode_labels(name, modes[name], n_views)
        total += np.unique(labels[labels >= 0]).size
    return total


def make_plan(m, modes, dtype, batch_size, vmap_width, devices) -> Plan:
    """The layout of a batch from ``align_batch``'s options (``devices``: None, an int or devices).

    Raises ValueError on a bad device count, batch size or vmap width.
    """
    if devices is None:
        devices = tuple(jax.local_devices())
    elif isinstance(devices, int):
        available = jax.local_devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}: there are {len(available)} local devices")
        devices = tuple(available[:devices])
    else:
        devices = tuple(devices)
        if not devices:
            raise ValueError("devices must name at least one device")
    per_device = DEFAULT_BATCH_PER_DEVICE if batch_size is None else int(batch_size)
    width = (1 if devices[0].platform == "cpu" else per_device) if vmap_width is None else int(vmap_width)
    if per_device < 1 or width < 1:
        raise ValueError(f"batch_size and vmap_width must be at least 1, got {batch_size} and {vmap_width}")
    if width > 1 and len(devices) > 1 and devices[0].platform == "cpu":
        # Observed with jax 0.10.2: the vmapped solve sharded over several host devices
        # never returns (all threads idle), while vmap_width=1 runs normally.
        raise ValueError(
            f"vmap_width={width} over {len(devices)} CPU devices hangs in XLA's CPU runtime; "
            "use vmap_width=1 (the CPU default)"
        )
    mesh = Mesh(np.array(devices), (SERIES_AXIS,)) if len(devices) > 1 else None
    jdtype = jnp.float64 if dtype == "float64" else jnp.float32
    return Plan(m, modes, jdtype, math.ceil(per_device / width) * width, width, devices, mesh)
