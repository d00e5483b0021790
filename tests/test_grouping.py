"""IMOD's automatic grouping of views (``core.grouping``): which views share a value
("group:N") and which carry a linear grouping's nodes ("linear:N").

Known truth: the "Variable mappings" table a real tiltalign run logged for 121 views (rotation
linear by 5, magnification linear by 4 from a fixed view 1), and small cases worked by hand from
the rule in the module docstring.
"""

import re
from pathlib import Path

import numpy as np
import pytest

from lmalign_jax import get_model
from lmalign_jax.core.grouping import automap_sets, group_sizes, linear_node_views, relative_sizes
from lmalign_jax.core.problem import linear_blend, mode_labels, own_parameters

LOG = Path(__file__).parent / "data" / "imod-goulbourne8a" / "goulbourne8a_align.log"


#: The table's fields (tiltalign writes the view as i4, then 8-character fields): rotation, mag.
FIELDS = {"rotation": slice(7, 15), "mag": slice(38, 46)}


def logged_mapping(column: str) -> list[tuple]:
    """Per view (1-based, in order) of the log's mapping table: ("node", v), ("blend", v1, v2),
    ("to_fixed", v) or ("fixed",), for one of :data:`FIELDS`."""
    lines = LOG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "Variable mappings" in line) + 2
    entries = []
    for line in lines[start:]:
        if not re.match(r"\s+\d+\s", line):
            break
        field = line[FIELDS[column]].strip()
        if field == "fixed":
            entries.append(("fixed",))
        elif m := re.fullmatch(r"[a-z]+\s+(\d+)", field):
            entries.append(("node", int(m[1])))
        elif m := re.fullmatch(r"[a-z]\s*(\d+)\+\s*fix", field):
            entries.append(("to_fixed", int(m[1])))
        elif m := re.fullmatch(r"[a-z]\s*(\d+)\+\s*(\d+)", field):
            entries.append(("blend", int(m[1]), int(m[2])))
        else:
            raise AssertionError(f"unparsed mapping field {field!r} in {line!r}")
    return entries


def our_mapping(nodes, low, high, frac, fixed=()) -> list[tuple]:
    """The same description of our layout (views 1-based); ``fixed``: node views held fixed."""
    entries = []
    for v in range(low.size):
        a, b = nodes[low[v]] + 1, nodes[high[v]] + 1
        if low[v] == high[v]:
            entries.append(("fixed",) if a - 1 in fixed else ("node", a))
        elif a - 1 in fixed:
            entries.append(("to_fixed", b))
        else:
            entries.append(("blend", a, b))
    return entries


def test_linear_grouping_reproduces_a_real_tiltalign_mapping():
    rotation = logged_mapping("rotation")
    magnification = logged_mapping("mag")
    assert len(rotation) == len(magnification) == 121
    # RotOption 3, RotDefaultGrouping 5: no fixed view
    assert our_mapping(*linear_blend("rotation", "linear:5", 121)) == rotation
    # MagOption 3, MagDefaultGrouping 4, MagReferenceView 1: the value at view 1 is fixed
    nodes, low, high, frac = linear_blend("scale", "linear:4", 121, anchor=0)
    assert our_mapping(nodes, low, high, frac, fixed=(0,)) == magnification
    # the uneven end: IMOD gives the extra views to the sets before the last, not a short set
    assert linear_node_views(121, 5)[-3:].tolist() == [110, 116, 120]
    assert linear_node_views(121, 4)[-3:].tolist() == [112, 117, 120]


def test_interpolation_weights_follow_view_number():
    nodes, low, high, frac = linear_blend("rotation", "linear:5", 121)
    line = 0.02 * np.arange(121.0) - 1.0  # any line is reproduced from its values at the nodes
    at = line[nodes]
    np.testing.assert_allclose(frac * at[low] + (1 - frac) * at[high], line, atol=1e-12)


def test_groups_shrink_with_cos_tilt_worked_by_hand():
    # tilts -60..60 by 30, cos^1, about 2 views a set: shares 1/(2 g) = .746 .431 .373 .431 .746
    # (g = cos normalised to mean 1), total 2.73 -> 3 sets ending at running totals <= .919, 1.828
    tilts = np.array([-60.0, -30.0, 0.0, 30.0, 60.0])
    sizes = relative_sizes(tilts, 1.0)
    np.testing.assert_allclose(sizes, np.cos(np.radians(tilts)) * 5 / np.cos(np.radians(tilts)).sum())
    assert automap_sets(5, 2, sizes).tolist() == [0, 1, 1, 2, 2]
    # the last set has two views: no node at the last view, it takes its set's first value
    assert linear_node_views(5, 2, sizes).tolist() == [0, 1, 3]
    nodes, low, high, frac = linear_blend("tilt", "linear:2", 5, sizes=sizes)
    assert (low[3:] == 2).all() and (high[3:] == 2).all() and (frac[3:] == 1).all()


def test_tilt_groups_are_smaller_at_high_tilt():
    tilts = np.arange(-60.0, 61.0, 2.0)  # 61 views
    model = get_model("jou")
    sizes = group_sizes(model, "tilt", "linear:6", tilts)
    labels = automap_sets(61, 6, sizes)
    counts = np.bincount(labels)
    centre = np.abs(tilts[np.r_[0, np.flatnonzero(np.diff(labels)) + 1]])  # each set's first tilt
    assert counts[centre >= 44].mean() < counts[centre <= 20].mean() - 1
    # the number of sets is the shares' total, rounded
    assert counts.size == round(float((1 / (6 * sizes)).sum()))
    # rotation and scale, and blocks of tilt, are grouped evenly (tiltalign's powers)
    for name, mode in (("rotation", "linear:6"), ("scale", "linear:7"), ("tilt", "group:6")):
        assert group_sizes(model, name, mode, tilts) is None
    imod = get_model("imod")
    assert group_sizes(imod, "xstretch", "group:7", tilts) is not None  # cos^1.5
    assert group_sizes(imod, "skew", "linear:11", tilts) is None
    assert group_sizes(imod, "skew", "group:11", tilts) is not None


def test_blocks_share_the_remainder():
    # 61 views by 5: 12 sets of 5 or 6 views, not 12 of 5 and one of 1
    labels = mode_labels("scale", "group:5", 61)
    assert sorted(set(np.bincount(labels))) == [5, 6] and labels.max() == 11


def test_views_with_few_points_do_not_count():
    # views 2 and 3 have no points: each set still holds two views that do
    counts = np.array([5, 5, 0, 0, 5, 5, 5, 5])
    assert automap_sets(8, 2, counts=counts).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert automap_sets(8, 2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # no view counts: one set
    assert automap_sets(4, 2, counts=np.zeros(4)).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("n_views", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("size", [1, 2, 3, 10])
def test_every_series_length_gets_a_valid_layout(n_views, size):
    labels = automap_sets(n_views, size)
    assert labels[0] == 0 and (np.diff(labels) >= 0).all() and (np.diff(labels) <= 1).all()
    nodes, low, high, frac = linear_blend("rotation", f"linear:{size}", n_views, anchor=n_views // 2)
    assert nodes[0] == 0 and n_views // 2 in nodes
    assert ((frac >= 0) & (frac <= 1)).all()
    # each view's value lies between its nodes' (a constant is reproduced)
    np.testing.assert_allclose(frac + (1 - frac), 1.0)
    assert (nodes[low] <= np.arange(n_views)).all()


def test_ties_fall_as_tiltalign_s_single_precision_decides_them():
    """A total of x.5 sets, or a running total on a set's reach, is decided by tiltalign's
    float32 sums (checked against a line-by-line single-precision transliteration of its
    groupList over 8,064 cases): e.g. Etomo's 6 over a patch's 15 views makes 3 sets, not 2."""
    for n_views, size, expected in (
        (15, 6, [5, 5, 5]),
        (21, 6, [5, 5, 5, 6]),
        (45, 10, [11, 11, 11, 12]),
        (121, 50, [60, 61]),
    ):
        assert np.bincount(automap_sets(n_views, size)).tolist() == expected


def test_views_with_few_points_ride_along_in_the_global_fit_too():
    """As tiltalign does for the whole series: views 1 and 2 (2 points each) do not count, so
    the first set runs on to view 3 and holds two views that do (worked by hand: 4 counted views
    by 2 make 2 sets; reaches 1.01 and 2.01 sets)."""
    counts = np.array([5, 2, 2, 5, 5, 5])
    assert automap_sets(6, 2, counts=counts).tolist() == [0, 0, 0, 0, 1, 1]
    # and the points a view needs follow: with view 5 short, 5 counted views make 3 sets
    # (2.5 rounds up), view 0 alone in the first, so its rotation is its own (5 parameters)
    model = get_model("jou")
    tilts = np.linspace(-50, 50, 6)
    short_last = np.array([5, 5, 5, 5, 5, 2])
    assert own_parameters(model, {"rotation": "group:2"}, 6, tilts, short_last).tolist() == [5] + [4] * 5
    assert own_parameters(model, {"rotation": "group:2"}, 6, tilts).tolist() == [4] * 6
