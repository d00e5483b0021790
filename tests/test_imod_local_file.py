"""IMOD's local alignment file: reader/writer on IMOD's shipped files, bad input, and tilt's
position-by-position application judged on the real sets (tests/data/imod-local/SOURCE.md)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, IMOD_SETS, load_resid_observations

from lmalign_jax.core.local_apply import fit_markers_through_local, patch_weights, project_through_local
from lmalign_jax.core.local_grid import patch_grid
from lmalign_jax.io import InputError
from lmalign_jax.io.imod import read_xf
from lmalign_jax.io.imod_local import LocalAlignment, read_local_xf, write_local_xf

LOCAL = Path(__file__).resolve().parent / "data" / "imod-local"
SHIPPED = {
    "BBa": ((2, 2), (235, 171), (149, 133), 20.2, 61),
    "BBb": ((2, 2), (186, 179), (130, 152), 20.2, 61),
    "midzone2a": ((4, 2), (429, 338), (346, 302), 1.0, 81),
    "midzone2b": ((2, 4), (377, 446), (294, 345), 1.0, 79),
}
#: Mean residual (px) of the measured points judged through IMOD's global transform with z factors,
#: and through its shipped local file (../shared/formats/imod-local-alignment.md records the same for
#: axis a; axis b measured here the same way).
IMOD_MEAN_PX = {
    "BBa": (0.3143, 0.2949),
    "BBb": (0.3022, 0.2811),
    "midzone2a": (0.6522, 0.5865),
    "midzone2b": (0.6511, 0.5875),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_reads_imods_shipped_file_and_writes_it_back_byte_for_byte(name, tmp_path):
    path = LOCAL / f"{name}local.xf"
    local = read_local_xf(path)
    n_patches, start, spacing, pixel, n_views = SHIPPED[name]
    assert (local.n_patches, local.start, local.spacing, local.n_views) == (
        n_patches,
        start,
        spacing,
        n_views,
    )
    assert local.pixel_size == pytest.approx(pixel)
    assert local.z_factors is not None and local.delta_xtilt_deg is None
    # Every transform is a near-identity refinement of the global alignment.
    assert np.abs(local.transforms[..., :2] - np.eye(2)).max() < 0.05
    write_local_xf(tmp_path / "out.xf", local)
    assert (tmp_path / "out.xf").read_bytes() == path.read_bytes()
    again = read_local_xf(tmp_path / "out.xf", n_views=n_views)
    np.testing.assert_array_equal(again.transforms, local.transforms)
    np.testing.assert_array_equal(again.z_factors, local.z_factors)


def test_writer_round_trips_any_view_count_and_old_headers(tmp_path):
    rng = np.random.default_rng(0)
    for n_views, fields in ((1, 6), (10, 8), (23, 9)):
        xf = np.concatenate(
            [
                np.eye(2) + 0.01 * rng.standard_normal((6, n_views, 2, 2)),
                rng.normal(0, 3, (6, n_views, 2, 1)),
            ],
            -1,
        )
        local = LocalAlignment(
            (3, 2),
            (100, 80),
            (200, 150),
            0.0 if fields < 8 else 1.5,
            np.round(rng.normal(0, 0.3, (6, n_views)), 2),
            np.round(xf, 3),
            header_fields=fields,
        )
        write_local_xf(tmp_path / "l.xf", local)
        back = read_local_xf(tmp_path / "l.xf")
        assert back.n_views == n_views and back.header_fields == fields
        np.testing.assert_allclose(back.transforms, local.transforms, atol=5e-4)
        np.testing.assert_allclose(back.delta_tilt_deg, local.delta_tilt_deg, atol=1e-9)
        write_local_xf(tmp_path / "m.xf", back)
        assert (tmp_path / "m.xf").read_bytes() == (tmp_path / "l.xf").read_bytes()


BAD = {
    "header": ("2 2 235 171 149\n", 1, "header needs"),
    "one patch": ("1 2 235 171 149 133 0 1.0 0\n", 1, "at least 2 patches"),
    "word": ("2 2 235 abc 149 133 0 1.0 0\n", 1, "Ystart is not an integer"),
    "negative pixel": ("2 2 235 171 149 133 0 -2.5 0\n", 1, "pixel size must be positive (A) or 0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_header_names_file_line_and_problem(case, tmp_path):
    text, line, problem = BAD[case]
    path = tmp_path / "bad.xf"
    path.write_text(text + "0.0\n" * 8)
    with pytest.raises(InputError) as e:
        read_local_xf(path)
    assert e.value.line == line and problem in e.value.problem and str(path) in str(e.value)


def test_malformed_body_and_grid_mismatch_are_named(tmp_path):
    lines = (LOCAL / "BBalocal.xf").read_text().splitlines()
    bad = tmp_path / "bad.xf"
    bad.write_text("\n".join(lines[:3] + ["  0.05 x 0.02"] + lines[4:]) + "\n")
    with pytest.raises(InputError) as e:
        read_local_xf(bad, n_views=61)
    assert e.value.line == 4 and "not a number" in e.value.problem and "patch 0" in e.value.problem
    with pytest.raises(
        InputError,
        match="grid does not match the alignment: the file holds 2 x 2 patches of 61 views, the "
        "alignment has 60 views",
    ):
        read_local_xf(LOCAL / "BBalocal.xf", n_views=60)
    bad.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match="do not make 2 x 2 patch blocks"):
        read_local_xf(bad)


def test_patch_grid_of_imods_solved_markers_is_imods_header():
    """tiltalign's grid rule, applied to its own solved marker positions, gives its header."""
    for name in SHIPPED:
        stem, _ = IMOD_SETS[name]
        xy = np.loadtxt(DATA / f"{stem}fid.xyz", usecols=(1, 2))
        n_patches, start, spacing, _ = patch_grid(xy, (700, 700), (0.5, 0.5))
        assert (n_patches, start, spacing) == SHIPPED[name][:3]


def test_weights_are_bilinear_between_centres_and_constant_outside():
    local = read_local_xf(LOCAL / "BBalocal.xf")
    xy = np.array(
        [[235.0 - 0.5, 171.0 - 0.5], [235 + 149 - 0.5, 171 + 133 - 0.5], [0, 0], [309.5 - 0.5, 237.5]]
    )
    patches, weights = patch_weights(local, xy)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    assert weights[0, 0] == 1.0 and weights[1, 3] == 1.0 and weights[2, 0] == 1.0
    np.testing.assert_allclose(weights[3], [0.25, 0.25, 0.25, 0.25], atol=0.01)
    assert patches.min() >= 0 and patches.max() <= 3


def test_projection_without_local_file_is_the_rigid_projection():
    xyz = np.array([[10.0, -20.0, 30.0]])
    tilts = np.array([-30.0, 0.0, 45.0])
    pos = project_through_local(None, xyz, tilts, (512, 512))
    t = np.radians(tilts)
    np.testing.assert_allclose(pos[:, 0, 0], 10 * np.cos(t) + 30 * np.sin(t))
    np.testing.assert_allclose(pos[:, 0, 1], -20.0)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_imods_shipped_local_file_lowers_the_residual_as_imod_reports(name):
    """Measured points through IMOD's .tltxf, each marker fitted through tilt's reading of the
    files: the figures the format notes record (a test of the reader and of tilt's formulas; any
    sign or order error raises them, see the notes' table)."""
    obs = load_resid_observations(name)
    stem, size = IMOD_SETS[name]
    a, d = read_xf(DATA / f"{stem}.tltxf")
    c = np.asarray(size) / 2
    aligned = np.where(obs.mask[..., None], np.einsum("vij,vmj->vmi", a, obs.xy - c) + d[:, None], 0.0)
    zfac = np.loadtxt(LOCAL / f"{name}.zfac")
    start = np.loadtxt(DATA / f"{stem}fid.xyz", usecols=(1, 2, 3)) - [c[0], c[1], 0.0]
    local = read_local_xf(LOCAL / f"{name}local.xf", n_views=obs.n_views)
    means = []
    for transform in (None, local):
        _, r = fit_markers_through_local(
            transform, aligned, obs.mask, obs.tilts_deg, size, start, z_factors=zfac
        )
        means.append(np.nanmean(np.hypot(r[..., 0], r[..., 1])))
    np.testing.assert_allclose(means, IMOD_MEAN_PX[name], atol=6e-5)


def test_a_grid_outside_the_stack_is_named_with_the_pixel_size_trap():
    from lmalign_jax.io.imod_local import check_local_grid

    path = LOCAL / "midzone2alocal.xf"
    local = read_local_xf(path)
    check_local_grid(path, local, (1950, 1024))
    with pytest.raises(InputError, match="grid does not match the stack.*outside the 512 x 512 image"):
        check_local_grid(path, local, (512, 512))
    # Header pixel 1.0 (a model without a pixel size) against a stack of 2.5 A pixels: tilt would
    # rescale the grid by 1 / 2.5, which still fits; against 0.5 A pixels it leaves the image.
    check_local_grid(path, local, (1950, 1024), pixel_size=2.5)
    with pytest.raises(InputError, match=r"rescaled by header pixel 1 / stack pixel 0.5"):
        check_local_grid(path, local, (1950, 1024), pixel_size=0.5)


def test_a_grid_partly_outside_the_image_is_taken_as_tilt_takes_it():
    """align lays its grid over the markers' solved positions, which lie outside the image where a
    bead enters the field only at high tilt (BBa's reach x = 527 of 512); tilt holds the outer
    patches' weights beyond the grid, so such a grid is valid (align's own files were refused). A
    grid mostly outside, or far outside, is still named."""
    import dataclasses

    from lmalign_jax.io.imod_local import check_local_grid

    path = LOCAL / "BBalocal.xf"
    local = read_local_xf(path)
    check_local_grid(path, dataclasses.replace(local, start=(-54, 171)), (512, 512))
    check_local_grid(path, dataclasses.replace(local, start=(235, 171), spacing=(290, 133)), (512, 512))
    with pytest.raises(InputError, match="3 of 4 outside the 512 x 512 image"):
        check_local_grid(path, dataclasses.replace(local, start=(500, 400)), (512, 512))
    with pytest.raises(InputError, match="farther than 0.5 of its size outside"):
        check_local_grid(path, dataclasses.replace(local, start=(-300, 171)), (512, 512))


def test_tilts_pixel_scaling_is_applied_to_grid_and_shifts():
    from lmalign_jax.io.imod_local import pixel_scale, scaled_to_stack

    local = read_local_xf(LOCAL / "BBalocal.xf")  # header pixel 20.2 A
    assert scaled_to_stack(local, 20.2) is local and scaled_to_stack(local, 0.0) is local
    binned = scaled_to_stack(local, 40.4)  # the same specimen in a stack binned by 2
    assert pixel_scale(local, 40.4) == 0.5 and pixel_scale(binned, 40.4) == 1.0
    # the same pixel to the header's precision (f12.5 against a float32 stack header): no scaling
    same = dataclasses.replace(local, pixel_size=2.17)
    assert pixel_scale(same, float(np.float32(2.17))) == 1.0 and pixel_scale(same, 2.17002) != 1.0
    assert binned.start == (117.5, 85.5) and binned.spacing == (74.5, 66.5)
    np.testing.assert_array_equal(binned.transforms[..., :2], local.transforms[..., :2])
    np.testing.assert_array_equal(binned.transforms[..., 2], 0.5 * local.transforms[..., 2])
    np.testing.assert_array_equal(binned.delta_tilt_deg, local.delta_tilt_deg)
