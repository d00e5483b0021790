"""IMOD's automatic grouping of views: which views share a value ("group:N") or carry the nodes
of a linearly interpolated one ("linear:N").

tiltalign's automapping (its Rot/Tilt/Mag/XStretch/SkewOption 3-8 and their Local* forms;
routines ``setGrpSize``, ``groupList`` and ``analyze_maps`` in IMOD's ``flib/tiltalign``, read
for this description, not copied) divides the views into sets of *about* N consecutive views:

- each view has a relative group size ``g`` (mean 1 over the views): 1, or for some parameters
  ``cos(min(|tilt|, 80 deg)) ** power`` normalised, so groups are smaller at high tilt (tilt
  and compression linear 1, x-stretch 1.5, skew blocks 1; see ``ProjectionModel.group_size_power``);
- a view counts ``1 / (g N)`` of a set; the number of sets is that total rounded to the
  nearest whole number (at least 1), and set k ends at the last view whose running total is
  within 0.01 of k / (number of sets) of the total; the last set ends at the last view;
- where some view has fewer than ``FEW_POINTS`` observed points (in the series, or in a local
  patch), only views with that many count, so each set holds about N views that can determine a
  value; the others join the set they fall in;
- the sums are single precision, step for step as tiltalign's, which decides ties (a total of
  x.5 sets: 15 views by 6 make 3 sets; a running total on a set's reach).

Blocks give one value per set. Linear grouping puts a value (a *node*) at the first view of
each set and at the last view, unless the last set has only one or two views (they take the
value of their set's first view), and interpolates linearly in view number between nodes.
On a real 121-view series this reproduces tiltalign's logged variable mapping exactly, and it
agrees with a line-by-line single-precision transliteration of ``groupList`` on 8,064 cases
(``tests/test_grouping.py``). The relative sizes are computed in double precision and then
rounded to single, so a tie that tiltalign's own single-precision cosines decide may rarely
fall the other way.
"""

from __future__ import annotations

import numpy as np

#: Fewest points a view needs to count toward a set (tiltalign's threshold).
FEW_POINTS = 3
#: How far past its share of the total a set may reach (tiltalign's tolerance, in sets).
SLACK = 0.01
#: Tilts beyond this count as this for the relative group size (degrees).
MAX_SIZE_TILT_DEG = 80.0


def relative_sizes(tilts_deg, power: float) -> np.ndarray | None:
    """(n_views,) relative group size per view, ``cos(tilt) ** power`` with |tilt| capped at
    ``MAX_SIZE_TILT_DEG``, normalised to mean 1; None for ``power`` 0 (equal groups)."""
    if not power:
        return None
    tilts = np.minimum(np.abs(np.radians(np.asarray(tilts_deg, np.float64))), np.radians(MAX_SIZE_TILT_DEG))
    sizes = np.cos(tilts) ** power
    return sizes * sizes.size / sizes.sum()


def group_sizes(model, name: str, mode, tilts_deg) -> np.ndarray | None:
    """(n_views,) relative group sizes of parameter ``name`` of ``model`` (a
    ``ProjectionModel``) in ``mode`` for tilts ``tilts_deg``: :func:`relative_sizes` to the
    model's power (``ProjectionModel.group_size_power``); None for equal groups, for modes that
    do not group views, and when no tilts are given."""
    if tilts_deg is None or not isinstance(mode, str) or not mode.startswith(("group:", "linear:")):
        return None
    return relative_sizes(tilts_deg, model.group_power(name, mode.startswith("linear:")))


def automap_sets(n_views: int, size: int, sizes=None, counts=None) -> np.ndarray:
    """(n_views,) int: the set (0, 1, ...) each view falls in, sets of consecutive views of
    about ``size`` views each (module docstring).

    Args:
        sizes: (n_views,) relative group sizes (:func:`relative_sizes`); None: equal.
        counts: (n_views,) observed points per view; None: every view counts.
    """
    # tiltalign's single-precision arithmetic, step for step: it decides the ties (a total of
    # x.5 sets, a running total at a set's reach), e.g. 15 views by 6 make 3 sets, not 2
    f32 = np.float32
    relative = np.ones(n_views, f32) if sizes is None else np.asarray(sizes, f32)
    share = f32(1.0) / (relative * f32(size))
    counted = np.ones(n_views, bool) if counts is None else np.asarray(counts) >= FEW_POINTS
    few = not counted.all()
    total = f32(0.0)
    for value in share[counted]:
        total = f32(total + value)
    n_sets = max(1, int(np.floor(float(total) + 0.5)))
    labels = np.zeros(n_views, int)
    start, end, label = 0, -1, 0
    running = f32(0.0)  # total through ``end``
    with_next = f32(0.0)  # the few-points walk: total through the next counted view after ``end``
    for k in range(1, n_sets + 1):
        reach = f32(f32(f32(k) * total) / f32(n_sets)) + f32(SLACK)
        if not few:
            while end + 1 < n_views and f32(running + share[end + 1]) <= reach:
                end += 1
                running = f32(running + share[end])
        else:
            while end < n_views - 1 and with_next <= reach:
                end += 1  # to the next counted view (uncounted ones on the way join the set)
                while end < n_views - 1 and not counted[end]:
                    end += 1
                running = f32(running + share[end])
                after = end + 1
                while after < n_views - 1 and not counted[after]:
                    after += 1
                if after < n_views and counted[after]:
                    with_next = f32(running + share[after])
                else:  # no counted view left: the set runs to the end
                    end = n_views - 1
        if k == n_sets:
            end = n_views - 1
        if end >= start:
            labels[start : end + 1] = label
            label += 1
            start = end + 1
    return labels


def set_starts(labels: np.ndarray) -> np.ndarray:
    """The first view of each set of :func:`automap_sets`'s labels, in order."""
    labels = np.asarray(labels)
    return np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])


def linear_node_views(n_views: int, size: int, sizes=None, counts=None) -> np.ndarray:
    """The views carrying a linear grouping's values, sorted: each set's first view, and the
    last view unless the last set has at most two views (module docstring)."""
    labels = automap_sets(n_views, size, sizes, counts)
    starts = set_starts(labels)
    if n_views - starts[-1] > 2:
        starts = np.r_[starts, n_views - 1]
    return starts
