"""IMOD's surface analysis: IMOD's own figures on real data, known slabs, bad input, and the CLI.

Real data: two tiltalign logs (tests/data/empiar10164-ts01, tests/data/imod-goulbourne8a) list the
solved 3-D fiducial positions and the surface analysis IMOD computed from them; ours, from the
same positions, must print the same figures. Simulated slabs: beads on one plane or two parallel
planes, tilted by a known tilt offset and X-axis tilt; the analysis must recover them within the
standard errors it predicts.
"""

import contextlib
import io as _io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from lmalign_jax import cli
from lmalign_jax.analysis.surfaces import analyze_surfaces
from lmalign_jax.export import read_xtilt
from lmalign_jax.io import read_tilts
from lmalign_jax.report.record import read_record

DATA = Path(__file__).parent / "data"
EMPIAR_LOG = DATA / "empiar10164-ts01" / "220728_TS_01_align.log"
GOULBOURNE_LOG = DATA / "imod-goulbourne8a" / "goulbourne8a_align.log"


def log_points(path: Path) -> np.ndarray:
    """The '3-D point coordinates (with centroid zero)' table of a tiltalign log, (n, 3)."""
    lines = path.read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if "3-D point coordinates" in line) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append([float(v) for v in line.split()[1:4]])
    return np.array(rows)


def log_surface_block(path: Path) -> list[str]:
    """The lines of the log's SURFACE ANALYSIS block, up to its first empty line after the figures
    (lines holding one space, IMOD's empty list-directed writes, are inside the block)."""
    lines = path.read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if "SURFACE ANALYSIS" in line)
    end = next(k for k in range(start + 6, len(lines)) if lines[k] == "")
    return lines[start:end]


def figure(block: list[str], label: str) -> str:
    """The number printed after ``label =`` (first occurrence), as printed."""
    for line in block:
        m = re.match(rf"\s*{re.escape(label)}\s*=\s*(\S+)", line)
        if m:
            return m.group(1)
    raise AssertionError(f"{label!r} not in the block")


def assert_printed(value: float, printed: str) -> None:
    """``value`` rounds to ``printed`` (half a unit of its last digit, plus IMOD's float32)."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    tolerance = 0.5 * 10.0**-decimals * (1 + 1e-4) + 1e-6 * abs(value)
    assert abs(value - float(printed)) <= tolerance, (value, printed)


# --------------------------------------------------------------------------- IMOD on real data


def test_empiar_log_one_plane_matches_imod_line_for_line():
    """EMPIAR-10164 TS_01 (IMOD 4.11, 16 beads, 8x binned, AngleOffset 9.02): every figure."""
    block = log_surface_block(EMPIAR_LOG)
    analysis = analyze_surfaces(log_points(EMPIAR_LOG), 1, binning=8, tilt_offset_deg=9.02)
    one = analysis.one_plane
    assert one.n_points == int(figure(block, "# of points")) == 16
    assert_printed(one.mean_residual_px, figure(block, "Mean residual"))
    assert_printed(one.adjusted_slope, figure(block, "Adjusted slope"))
    assert_printed(one.x_axis_tilt_deg, figure(block, "X axis tilt needed"))
    assert_printed(one.tilt_angle_change_deg, figure(block, "Incremental tilt angle change"))
    assert_printed(analysis.total_tilt_angle_change_deg, figure(block, "Total tilt angle change"))
    assert_printed(
        analysis.thickness_px, figure(block, "Unbinned thickness needed to contain centers of all fiducials")
    )
    # Our lines are IMOD's, character for character, up to the Z shift (which IMOD takes
    # relative to a tilt-axis position it does not print; tests/data/empiar10164-ts01/SOURCE.md).
    ours = analysis.imod_log_lines()
    k = next(i for i, line in enumerate(ours) if "SURFACE ANALYSIS" in line)
    assert ours[k : k + len(block) - 2] == block[:-2]
    assert ours[-2].startswith(" Incremental unbinned shift needed to center range of fiducials in Z =")


def test_goulbourne_log_one_plane_matches_imod():
    """goulbourne8a (IMOD ~4.3, 468 points, AngleOffset 0.2): the figures that tiltalign printed."""
    block = log_surface_block(GOULBOURNE_LOG)
    analysis = analyze_surfaces(log_points(GOULBOURNE_LOG), 1, tilt_offset_deg=0.2)
    one = analysis.one_plane
    assert one.n_points == 468
    assert_printed(one.adjusted_slope, figure(block, "Adjusted slope"))
    assert_printed(one.mean_residual_px, figure(block, "Mean residual"))
    assert_printed(one.x_axis_tilt_deg, figure(block, "X axis tilt needed"))
    assert_printed(one.tilt_angle_change_deg, figure(block, "Incremental tilt angle change"))
    assert_printed(analysis.total_tilt_angle_change_deg, figure(block, "Total tilt angle change"))


# --------------------------------------------------------------------------- simulated slabs


def unlevel(level_xyz: np.ndarray, tilt_change_deg: float, x_tilt_deg: float) -> np.ndarray:
    """Positions whose levelling (IMOD's: about X by ``x_tilt_deg``, then about Y by
    ``tilt_change_deg``) gives ``level_xyz`` (n, 3)."""
    a = math.radians(-x_tilt_deg)  # IMOD's alpha = atan(slope in y) = -(X tilt needed)
    t = math.radians(tilt_change_deg)
    rot_x = np.array([[1, 0, 0], [0, math.cos(a), math.sin(a)], [0, -math.sin(a), math.cos(a)]])
    rot_y = np.array([[math.cos(t), 0, -math.sin(t)], [0, 1, 0], [math.sin(t), 0, math.cos(t)]])
    return level_xyz @ (rot_y @ rot_x)  # rows: (R^T applied) = x @ R for R = rot_y @ rot_x


def slab(rng, n, thickness, sigma, two_surfaces):
    xy = rng.uniform(-900, 900, (n, 2))
    z = rng.normal(0.0, sigma, n)
    top = np.zeros(n, bool)
    if two_surfaces:
        top = np.arange(n) % 3 != 0  # 2/3 on top: unequal counts
        z = z + np.where(top, thickness / 2, -thickness / 2)
    return np.column_stack([xy, z + 40.0]), top  # slab centred 40 px above the tilt axis


TILT_CHANGE, X_TILT = 3.0, -2.0


def test_one_plane_recovers_known_tilts_within_predicted_scatter():
    """200 slabs of 30 beads: the errors divided by the predicted SEs are N(0, 1) (mean within
    4/sqrt(200), SD within 4/sqrt(400) of 1)."""
    rng = np.random.default_rng(11)
    z_scores = []
    for _ in range(200):
        level, _ = slab(rng, 30, 0.0, 6.0, False)
        one = analyze_surfaces(unlevel(level, TILT_CHANGE, X_TILT), 1).one_plane
        z_scores.append(
            [
                (one.tilt_angle_change_deg - TILT_CHANGE) / one.tilt_angle_change_se_deg,
                (one.x_axis_tilt_deg - X_TILT) / one.x_axis_tilt_se_deg,
            ]
        )
    z_scores = np.array(z_scores)
    assert np.all(np.abs(z_scores.mean(axis=0)) < 4 / math.sqrt(200))
    assert np.all(np.abs(z_scores.std(axis=0) - 1) < 4 / math.sqrt(400))


def test_two_surfaces_recover_split_tilts_and_thickness():
    """60 slabs of 36 beads on two surfaces 120 px apart: every bead on its surface, and tilt
    change, X tilt and thickness within their predicted scatter."""
    rng = np.random.default_rng(5)
    thickness, sigma = 120.0, 4.0
    # the planes' z-intercept difference for a tilted slab: thickness / (normal's z component)
    vertical = thickness / (math.cos(math.radians(TILT_CHANGE)) * math.cos(math.radians(X_TILT)))
    z_scores = []
    for _ in range(60):
        level, top = slab(rng, 36, thickness, sigma, True)
        analysis = analyze_surfaces(
            unlevel(level, TILT_CHANGE, X_TILT), 2, separation_draws=19, significance=0.05
        )
        two = analysis.two_surfaces
        assert analysis.n_surfaces == 2 and analysis.note is None
        np.testing.assert_array_equal(analysis.surface, np.where(top, 2, 1))
        assert (two.n_bottom, two.n_top) == (12, 24)
        z_scores.append(
            [
                (two.tilt_angle_change_deg - TILT_CHANGE) / two.tilt_angle_change_se_deg,
                (two.x_axis_tilt_deg - X_TILT) / two.x_axis_tilt_se_deg,
                (two.thickness_px - vertical) / two.thickness_se_px,
            ]
        )
        # the range of bead centres contains both surfaces, centred near the slab's 40 px
        assert analysis.thickness_px > thickness
        assert abs(analysis.z_center_px - 40.0) < 6 * sigma
    z_scores = np.array(z_scores)
    assert np.all(np.abs(z_scores.mean(axis=0)) < 4 / math.sqrt(60))
    assert np.all(np.abs(z_scores.std(axis=0) - 1) < 4 / math.sqrt(120))


#: 16 beads on the two surfaces of a 150 px slab slanted 10.2 deg (tests/test_shared_tilt_offset.py's
#: slab, seed 103; x, y, z px): the top beads lie mostly at negative y, so the one-plane fit's y slope
#: takes up part of the separation and the nearer-plane rule stopped with bead 16 on the bottom.
SLANTED_SLAB = [
    [-276.0, 155.6, -27.1], [176.9, 86.0, 46.0], [-45.6, 142.7, -70.5], [34.1, -166.3, 70.7],
    [-62.7, 184.4, -63.1], [-318.8, -176.8, 134.2], [-284.3, 121.0, -24.3], [20.7, -199.1, 73.0],
    [-74.1, 217.6, -62.7], [-45.0, -108.0, 83.8], [-213.1, 297.7, -39.3], [64.9, 213.6, 66.8],
    [-54.6, 315.6, -66.1], [20.3, 190.5, 72.9], [69.1, -97.8, -87.8], [349.6, -222.4, 10.7],
]  # fmt: skip


def test_a_bead_pulling_both_planes_is_moved_to_its_surface():
    """Single flips refine the nearer-plane split: every bead on its own surface (alternating,
    bottom first) and the slant recovered within its standard error's scatter."""
    analysis = analyze_surfaces(np.array(SLANTED_SLAB), 2)
    assert analysis.n_surfaces == 2, analysis.note
    np.testing.assert_array_equal(analysis.surface, np.tile([1, 2], 8))
    two = analysis.two_surfaces
    assert abs(two.tilt_angle_change_deg - 10.235) < 4 * two.tilt_angle_change_se_deg
    assert two.thickness_px == pytest.approx(150.0 / math.cos(math.radians(10.235)), abs=5.0)


def test_two_surfaces_print_imod_blocks():
    rng = np.random.default_rng(1)
    level, _ = slab(rng, 20, 100.0, 3.0, True)
    analysis = analyze_surfaces(
        unlevel(level, 1.0, 0.5), 2, binning=2, separation_draws=19, significance=0.05
    )
    lines = analysis.imod_log_lines()
    assert " The following parameters are appropriate if fiducials ARE on two surfaces," in lines
    assert " On bottom surface:" in lines and " On top surface:" in lines
    assert any(re.fullmatch(r" Thickness at Z intercepts = +\d+\.\d", line) for line in lines)
    # batchruntomo reads '# of points': one number for all, then bottom and top
    assert [int(line.split("=")[1]) for line in lines if "# of points" in line] == [20, 7, 13]
    record = json.loads(json.dumps(analysis.to_dict()))
    assert record["n_surfaces"] == 2 and record["two_surfaces"]["n_top"] == 13


def test_one_layer_is_not_called_two_surfaces():
    """Beads spread through one slab: asked for two surfaces, the analysis says they do not
    separate and keeps the one-plane fit (the 1% one-slab test, fixed seed)."""
    rng = np.random.default_rng(2)
    xyz = np.column_stack([rng.uniform(-900, 900, (40, 2)), rng.uniform(-60, 60, 40)])
    analysis = analyze_surfaces(xyz, 2)
    assert analysis.n_surfaces == 1 and analysis.two_surfaces is None
    assert "do not separate into two surfaces" in analysis.note
    assert analysis.tilt_angle_change_deg == analysis.one_plane.tilt_angle_change_deg
    assert f" {analysis.note}" in analysis.imod_log_lines()


# --------------------------------------------------------------------------- too few beads


def test_too_few_beads():
    xyz = np.array([[0.0, 0.0, 1.0], [100.0, 50.0, 2.0]])
    with pytest.raises(ValueError, match="at least 3 beads to fit a plane .* got 2"):
        analyze_surfaces(xyz, 1)
    three = np.array([[0.0, 0.0, 1.0], [100.0, 50.0, 2.0], [-50.0, 80.0, 0.0]])
    analysis = analyze_surfaces(three, 2)  # a slope in x only, as IMOD with 3 beads
    assert analysis.x_axis_tilt_deg is None and analysis.n_surfaces == 1
    lines = analysis.imod_log_lines()
    assert " Too few points to estimate X-axis tilt" in lines
    assert " There are too few points to analyze for distribution on two surfaces" in lines
    with pytest.raises(ValueError, match="n_surfaces must be 1 or 2"):
        analyze_surfaces(three, 3)
    with pytest.raises(ValueError, match="non-finite"):
        analyze_surfaces(np.vstack([three, [np.nan, 0, 0]]), 1)
    collinear = np.column_stack([np.arange(6.0) * 100, np.zeros(6), np.arange(6.0) * 2])
    assert analyze_surfaces(collinear, 2).x_axis_tilt_deg is None  # beads on a line: no y slope


# --------------------------------------------------------------------------- the command line


def align_flattened(d, *options):
    """``lmalign align --surfaces 2 --flatten`` (and ``options``) of 61 views x 30 beads on two
    tilted surfaces into folder ``d``: (d, exit status, stdout, stderr, which beads are on top)."""
    rng = np.random.default_rng(4)
    level, top = slab(rng, 30, 150.0, 3.0, True)
    level[:, :2] *= 0.8  # inside the image at every tilt
    markers = unlevel(level, TILT_CHANGE, X_TILT)
    tilts = np.linspace(-60, 60, 61)
    t = np.radians(tilts)[:, None]
    nx = ny = 2048
    x = markers[None, :, 0] * np.cos(t) + markers[None, :, 2] * np.sin(t) + nx / 2
    y = np.broadcast_to(markers[None, :, 1] + ny / 2, x.shape)
    x = x + rng.normal(0, 0.3, x.shape)
    y = y + rng.normal(0, 0.3, y.shape)
    rows = [f"{m},{v},{x[v, m]:.3f},{y[v, m]:.3f}" for m in range(30) for v in range(61)]
    (d / "in").mkdir()
    (d / "in" / "beads.csv").write_text("marker,view,x,y\n" + "\n".join(rows) + "\n")
    (d / "in" / "beads.rawtlt").write_text("".join(f"{a:.2f}\n" for a in tilts))
    args = ["align", d / "in" / "beads.csv", "--tilts", d / "in" / "beads.rawtlt", "--rotation", 0]
    args += ["--image-size", nx, ny]
    args += ["--out-dir", d, "--no-figure", "--no-errors", "--quiet", "--surfaces", 2, "--flatten", *options]
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return d, rc, out.getvalue(), err.getvalue(), top


@pytest.fixture(scope="module")
def flattened(tmp_path_factory):
    """``lmalign align --surfaces 2 --flatten`` on 61 views x 30 beads on two tilted surfaces."""
    return align_flattened(tmp_path_factory.mktemp("surfaces"))


def test_cli_prints_stores_and_flattens(flattened):
    d, rc, out, err, top = flattened
    assert rc == 0, err
    assert " SURFACE ANALYSIS:" in out and " On top surface:" in out
    assert re.search(r"Suggested reconstruction thickness: \d+ unbinned px", out)
    record = json.loads((d / "beads.json").read_text())
    surfaces = record["surfaces"]
    assert surfaces["flattened"] is True and surfaces["n_surfaces"] == 2
    np.testing.assert_array_equal(surfaces["surface"], np.where(top, 2, 1))
    two = surfaces["two_surfaces"]
    # the solved beads keep the specimen's tilt: the analysis finds it within its predicted error
    assert abs(two["tilt_angle_change_deg"] - TILT_CHANGE) < 4 * two["tilt_angle_change_se_deg"]
    assert abs(two["x_axis_tilt_deg"] - X_TILT) < 4 * two["x_axis_tilt_se_deg"]
    # the .tlt is the solved tilts plus the change; the .xtilt carries -(X tilt) (IMOD tilt's sign)
    solved = np.array([v["tilt_deg"] for v in record["views"]])
    np.testing.assert_allclose(read_tilts(d / "beads.tlt"), solved + two["tilt_angle_change_deg"], atol=0.006)
    np.testing.assert_allclose(read_xtilt(d / "beads.xtilt"), -two["x_axis_tilt_deg"], atol=0.006)
    assert "beads.xtilt" in record["outputs"]
    # and the summary gives the value written, not only the tilt with the opposite sign (audit)
    flat = two["x_axis_tilt_deg"]
    assert f"X-axis tilt {flat:.2f} deg (tilt's XAXISTILT; written as {-flat:.2f}," in out
    # reconstruct --alignment reads the flattened tilts back from the record
    back = read_record(str(d / "beads.json"))
    np.testing.assert_allclose(back.tilts_deg, solved + two["tilt_angle_change_deg"])


def test_reconstruct_places_a_flattened_records_beads_level(flattened):
    """``reconstruct --alignment`` of the flattened record applies its .tlt and its .xtilt's
    X-axis tilt (as tilt does with the two files): its solved beads land on level surfaces,
    both slopes within 4 predicted SEs of 0; with the .tlt alone they keep the X tilt."""
    from helpers import surface_slopes, volume_points

    from lmalign_jax.workflow.alignment_inputs import read_alignment_json

    d, rc, *_ = flattened
    assert rc == 0
    alignment = read_alignment_json(str(d / "beads.json"))
    np.testing.assert_allclose(alignment.x_tilts_deg, read_xtilt(d / "beads.xtilt"), atol=0.006)
    record = read_record(str(d / "beads.json"))
    two = record.surfaces["two_surfaces"]
    solved = np.array([v["tilt_deg"] for v in json.loads((d / "beads.json").read_text())["views"]])
    top = np.asarray(record.surfaces["surface"]) == 2
    slopes = np.degrees(np.arctan(surface_slopes(volume_points(alignment, solved, record.markers.xyz), top)))
    print(
        "levelled slopes (deg)",
        slopes.round(3),
        "se",
        two["tilt_angle_change_se_deg"],
        two["x_axis_tilt_se_deg"],
    )
    assert (
        abs(slopes[0]) < 4 * two["tilt_angle_change_se_deg"]
        and abs(slopes[1]) < 4 * two["x_axis_tilt_se_deg"]
    )
    alignment.x_tilts_deg = None
    kept = np.degrees(np.arctan(surface_slopes(volume_points(alignment, solved, record.markers.xyz), top)))
    assert kept[1] == pytest.approx(-two["x_axis_tilt_deg"], abs=0.01)


@pytest.mark.parametrize("model", ["shape", "warp"])
def test_a_flattened_deformation_records_sampling_is_in_the_frame_of_its_tlt(model, tmp_path):
    """A flattened ``--model shape`` or ``warp`` record: the sampling reconstruct applies takes
    each fitted view at the .tlt's tilt (the solved tilt plus the change; it took the solved one,
    so only the X tilt was levelled) and its X-axis tilt; the shape's beads come out level, both
    slopes within 4 predicted SEs of 0."""
    from helpers import surface_slopes

    from lmalign_jax.core.local_apply import patch_weights, with_x_tilts
    from lmalign_jax.core.shape_apply import shape_patches
    from lmalign_jax.workflow.alignment_inputs import read_alignment_json

    d, rc, _, err, top = align_flattened(tmp_path, "--model", model)
    assert rc == 0, err
    alignment = read_alignment_json(str(d / "beads.json"))
    np.testing.assert_allclose(alignment.x_tilts_deg, read_xtilt(d / "beads.xtilt"), atol=0.006)
    if model == "warp":
        np.testing.assert_allclose(alignment.warp.tilts_deg, alignment.tilts_deg, atol=1e-9)
        return
    parameters, fitted = alignment.shape
    assert fitted.all()
    np.testing.assert_allclose(parameters["tilt"], alignment.tilts_deg, atol=1e-9)
    # each bead where the reconstruction's patches put it: the point whose projections through
    # them meet its aligned observations (fixed point of the patch weights)
    record = read_record(str(d / "beads.json"))
    xf = np.concatenate([alignment.xf_A, alignment.xf_shift[:, :, None]], -1)
    grid, mats, shifts = shape_patches(*alignment.shape, alignment.tilts_deg, xf, (2048, 2048))
    mats = with_x_tilts(mats, alignment.x_tilts_deg)
    rows = np.loadtxt(d / "in" / "beads.csv", delimiter=",", skiprows=1)
    observed = np.zeros((61, 30, 2))
    observed[rows[:, 1].astype(int), rows[:, 0].astype(int)] = rows[:, 2:] - 1024.0
    aligned = np.einsum("vij,vnj->vni", alignment.xf_A, observed) + alignment.xf_shift[:, None]
    placed = []
    for m in range(30):
        point = np.array([*aligned[:, m].mean(axis=0), 0.0])
        for _ in range(4):
            patches, weights = patch_weights(grid, point[None, :2] + 1024.0)
            matrix = np.einsum("k,kvij->vij", weights[0], mats[patches[0]])
            shift = np.einsum("k,kvi->vi", weights[0], shifts[patches[0]])
            point = np.linalg.lstsq(matrix.reshape(-1, 3), (aligned[:, m] - shift).ravel(), rcond=None)[0]
        placed.append(point)
    slopes = np.degrees(np.arctan(surface_slopes(np.array(placed), top)))
    two = record.surfaces["two_surfaces"]
    print("shape record, levelled slopes (deg)", slopes.round(3))
    assert (
        abs(slopes[0]) < 4 * two["tilt_angle_change_se_deg"]
        and abs(slopes[1]) < 4 * two["x_axis_tilt_se_deg"]
    )


def test_fields_satisfy_their_annotations():
    import typing

    from beartype.door import is_bearable
    from jaxtyping import jaxtyped

    from lmalign_jax.analysis import SurfaceAnalysis

    rng = np.random.default_rng(3)
    analysis = analyze_surfaces(slab(rng, 12, 80.0, 2.0, True)[0], 2, separation_draws=19, significance=0.05)
    hints = typing.get_type_hints(SurfaceAnalysis)
    with jaxtyped("context"):
        for name, hint in hints.items():
            assert is_bearable(getattr(analysis, name), hint), name
    with jaxtyped("context"):
        assert is_bearable(analysis.surface, hints["surface"])
        assert not is_bearable(analysis.surface, hints["residuals_px"])  # ints are not floats


def test_export_carries_the_flattening_and_the_surface_block(flattened, tmp_path):
    """``lmalign export --to imod`` of a flattened record: the same levelled .tlt and .xtilt as
    ``align --flatten`` wrote, and IMOD's surface-analysis block in align.log."""
    d, rc, *_ = flattened
    assert rc == 0
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["export", str(d / "beads.json"), "--to", "imod", "--out-dir", str(tmp_path)])
    assert code == 0, err.getvalue()
    np.testing.assert_allclose(read_tilts(tmp_path / "beads.tlt"), read_tilts(d / "beads.tlt"), atol=1e-6)
    np.testing.assert_allclose(read_xtilt(tmp_path / "beads.xtilt"), read_xtilt(d / "beads.xtilt"), atol=1e-6)
    log = (tmp_path / "align.log").read_text()
    assert " SURFACE ANALYSIS:" in log and " On top surface:" in log
    assert log.index("Residual error mean and sd:") < log.index(" SURFACE ANALYSIS:")
