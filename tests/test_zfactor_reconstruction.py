"""Reconstruction with an alignment's z factors (luther's heights scaled apart from x and y):
``reconstruct --alignment`` samples each marker where the record's own model projects it, as
IMOD's tilt does with the exported ``.xf`` and ``.zfac``, and beads drawn through known z factors
come out in place only with them."""

import numpy as np
import pytest
from helpers import bead_views

from lmalign_jax.core.local_apply import local_projection_matrices, patch_weights, uniform_patches
from lmalign_jax.simulation.phantom import locate_peaks

N, NZ, SIGMA = 64, 24, 1.2
TILTS = np.linspace(-60.0, 60.0, 31)
BEADS = np.array([[-20.0, -18, 9], [18, -20, -10], [-16, 20, 8], [20, 16, -9], [0, 0, 10], [6, -8, -6]])


def sampled(z_factors, tilts, xyz, size, x_tilts=None):
    """Positions (V, n, 2) of centred points through the z factors' patches (and X-axis tilts,
    degrees), blended as the reconstruction blends them."""
    grid, mats, shifts = uniform_patches(*local_projection_matrices(None, tilts, x_tilts, z_factors), size)
    patches, weights = patch_weights(grid, xyz[:, :2] + np.asarray(size) / 2)
    pos = np.einsum("pvij,nj->pvni", mats, xyz) + shifts[:, :, None]
    n = np.arange(len(xyz))
    return np.einsum("nk,knvi->vni", weights, pos[patches.T, :, n[None, :]])


def tilt_z_factors() -> np.ndarray:
    """(V, 2) z factors growing with the tilt, as a luther fit's do: up to 0.6 px in x and 0.4 in
    y at z = 10."""
    s = np.sin(np.radians(TILTS))
    return np.column_stack([0.06 * s, -0.05 * s * s])


def noise_stack(folder, seed: int):
    """A white-noise stack of TILTS.size N x N views written as ``folder/s.mrc``; its generator."""
    import mrcfile

    rng = np.random.default_rng(seed)
    with mrcfile.new(folder / "s.mrc") as m:
        m.set_data(rng.standard_normal((TILTS.size, N, N)).astype(np.float32))
    return rng


@pytest.fixture(scope="module")
def luther_record(tmp_path_factory):
    """``lmalign align --model luther`` of a series whose z scales apart from x and y (mag_z sd
    0.02, free): the record's path."""
    from helpers import align_observations

    from lmalign_jax import simulate

    series = simulate(n_views=31, n_markers=30, model="luther", extra={"mag_z": (1.0, 0.02)}, seed=2)
    folder = tmp_path_factory.mktemp("luther")
    return align_observations(series.observations, folder, "--model", "luther", "--mode", "mag_z=free")


def aligned_markers(record):
    """(k, m, 2) the record's solved markers projected by its model and mapped by its .xf, on the
    fitted views."""
    from lmalign_jax import get_model
    from lmalign_jax.workflow.record_markers import model_projection

    keep = ~record.views.excluded
    projected = model_projection(record, get_model(record.model_name), keep)  # (k, m, 2) centred
    xf = record.xf[keep]
    return np.einsum("kij,kmj->kmi", xf[:, :, :2], projected) + xf[:, None, :, 2]


def test_a_luther_record_is_sampled_where_its_model_projects_each_marker(luther_record):
    """The record carries z factors, and through them every solved marker is sampled at the
    model's projection mapped by the record's .xf (to 1e-6 px); without them it misses by the
    height term."""
    from lmalign_jax.report import read_record
    from lmalign_jax.workflow.alignment_inputs import read_alignment_json

    path = luther_record
    alignment = read_alignment_json(str(path))
    assert alignment.z_factors is not None and np.abs(alignment.z_factors).max() > 1e-3
    record = read_record(str(path))
    keep = ~record.views.excluded
    aligned = aligned_markers(record)
    xyz = record.markers.xyz
    tilts = alignment.tilts_deg[keep]
    with_z = sampled(alignment.z_factors[keep], tilts, xyz, (2048, 2048))
    without = sampled(None, tilts, xyz, (2048, 2048))
    np.testing.assert_allclose(with_z, aligned, rtol=0, atol=1e-6)
    miss = np.sqrt(np.mean((without - aligned) ** 2))
    height = np.sqrt(np.mean((xyz[None, :, 2, None] * alignment.z_factors[keep][:, None, :]) ** 2))
    assert miss == pytest.approx(height, rel=1e-6) and miss > 0.05


def test_reconstruct_to_file_applies_the_alignments_z_factors(tmp_path):
    """Beads drawn at tilt's ``(x cos t + z (sin t + xz), y + z yz)``: reconstructed with the z
    factors they land within 0.5 voxel (the noise-free sampling error), without them off by the
    height term; the command says it applies them."""
    import mrcfile

    from lmalign_jax.workflow.alignment_inputs import Alignment
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    s = np.sin(np.radians(TILTS))
    zfac = np.column_stack([0.06 * s, -0.05 * s * s])  # up to 0.6 px in x, 0.4 in y at z = 10
    pos = sampled(zfac, TILTS, BEADS, (N, N))
    stack = bead_views(pos, N, SIGMA)
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(stack)
    unit = np.tile(np.eye(2), (TILTS.size, 1, 1))
    notes, found = [], {}
    for name, given in (("z", zfac), ("plain", None)):
        alignment = Alignment(unit, np.zeros((TILTS.size, 2)), TILTS, "a.json", "a.json", "a.json", (N, N))
        alignment.z_factors = given
        out = tmp_path / f"{name}.mrc"
        reconstruct_to_file(str(tmp_path / "s.mrc"), alignment, str(out), thickness=NZ, note=notes.append)
        with mrcfile.open(out) as m:
            found[name] = locate_peaks(np.array(m.data), BEADS)[1]
    assert "the alignment's z factors" in notes[0] and "z factors" not in notes[1]
    print("distance with", found["z"].round(2), "without", found["plain"].round(2))
    assert np.all(found["z"] < 0.5) and np.mean(found["plain"]) > 2 * np.mean(found["z"])


def test_reconstruct_reads_imods_zfac_beside_the_xf_and_tlt(tmp_path):
    """``lmalign reconstruct --xf --tlt --zfac``: tilt's ZFACTORFILE applied (the beads above in
    place); a z-factor file of another length, one with a value that is no height correction, or
    one given with --alignment is refused in one line naming the file (and line), nothing
    written."""
    import mrcfile
    from helpers import run_cli

    from lmalign_jax.export.imod import write_zfac
    from lmalign_jax.io import write_tlt, write_xf

    zfac = tilt_z_factors()
    pos = sampled(zfac, TILTS, BEADS, (N, N))
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(bead_views(pos, N, SIGMA))
    write_xf(tmp_path / "s.xf", np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)))
    write_tlt(tmp_path / "s.tlt", TILTS)
    write_zfac(tmp_path / "s.zfac", zfac)
    base = ["reconstruct", tmp_path / "s.mrc", "--thickness", NZ]
    files = ["--xf", tmp_path / "s.xf", "--tlt", tmp_path / "s.tlt"]
    rc, out, err = run_cli([*base, *files, "--zfac", tmp_path / "s.zfac", "--out", tmp_path / "z.mrc"])
    assert rc == 0, err
    assert "the alignment's z factors" in out + err
    with mrcfile.open(tmp_path / "z.mrc") as m:
        assert np.all(locate_peaks(np.array(m.data), BEADS)[1] < 0.5)

    write_zfac(tmp_path / "short.zfac", zfac[:-1])
    big = zfac.copy()
    big[4, 1] = 3.0
    write_zfac(tmp_path / "big.zfac", big)
    (tmp_path / "a.json").write_text("{}")
    for given, message in (
        ([*files, "--zfac", tmp_path / "short.zfac"], "short.zfac: has 30 z factor lines but the stack"),
        ([*files, "--zfac", tmp_path / "big.zfac"], "big.zfac:5: z factors -0.0416795 3 are not a height"),
        (["--alignment", tmp_path / "a.json", "--zfac", tmp_path / "s.zfac"], "--zfac goes with --xf/--tlt"),
    ):
        rc, _, err = run_cli([*base, *given, "--out", tmp_path / "bad.mrc"])
        assert rc == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad.mrc").exists()


def test_a_flattened_records_z_factors_are_in_the_frame_of_its_tilts(luther_record):
    """``align --flatten`` adds the surface analysis' tilt change c to the .tlt: the volume (and
    tilt's z) is then the solved one turned by c. The z factors are regressed in that frame: the
    markers, turned, sampled through the flattened tilts and those factors land within a quarter
    of their miss without z factors (the rest, about |xz| sin c |x|, is not a function of the
    turned height, which is all tilt's z factors can follow). Regressed on the solved height
    against the flattened tilts (a mixed frame, what was computed before) they missed by more
    than without any."""
    import dataclasses

    from lmalign_jax.report import read_record
    from lmalign_jax.workflow.record_markers import z_factors

    record = read_record(str(luther_record))
    keep = ~record.views.excluded
    aligned = aligned_markers(record)
    x, y, z = record.markers.xyz.T

    def miss(zf, tilts, xyz):
        return np.sqrt(np.mean((sampled(zf, tilts, xyz, (2048, 2048)) - aligned) ** 2))

    for change in (1.0, 4.0):
        flat = dataclasses.replace(
            record,
            tilts_deg=record.tilts_deg + change,
            surfaces={**(record.surfaces or {}), "flattened": True, "tilt_angle_change_deg": change},
        )
        c = np.radians(change)
        turned = np.column_stack([x * np.cos(c) - z * np.sin(c), y, x * np.sin(c) + z * np.cos(c)])
        tilts = flat.tilts_deg[keep]
        none = miss(None, tilts, turned)
        assert miss(z_factors(flat)[keep], tilts, turned) < none / 4
        t = np.radians(tilts)[:, None]
        mixed_ideal = np.stack([x * np.cos(t) + z * np.sin(t), np.broadcast_to(y, t.shape[:1] + y.shape)], -1)
        mixed = np.einsum("m,kmi->ki", z, aligned - mixed_ideal) / np.sum(z * z)
        assert miss(mixed, tilts, turned) > none


def test_a_local_file_without_z_factors_drops_the_alignments_as_tilt_does(tmp_path):
    """With z factors and --local: a local file carrying none gives its patches none, as IMOD's
    tilt does (its patches were fitted without them), with a warning; one carrying its own
    is applied with them (no warning)."""

    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf
    from lmalign_jax.workflow.alignment_inputs import Alignment
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    rng = noise_stack(tmp_path, 0)
    zfac = tilt_z_factors()
    xf = np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1))
    xf[..., 2] = rng.uniform(-0.5, 0.5, (4, TILTS.size, 2))
    for name, own in (("none.xf", None), ("own.xf", np.broadcast_to(zfac, (4, TILTS.size, 2)).copy())):
        local = LocalAlignment((2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, TILTS.size)), xf, z_factors=own)
        write_local_xf(tmp_path / name, local)
        alignment = Alignment(
            np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)), TILTS, "a", "a", "a", (N, N)
        )
        alignment.z_factors = zfac
        warnings = []
        reconstruct_to_file(
            str(tmp_path / "s.mrc"),
            alignment,
            str(tmp_path / f"{name}.mrc"),
            thickness=NZ,
            local_path=str(tmp_path / name),
            quiet=True,
            warn=warnings.append,
        )
        dropped = [w for w in warnings if "has no z factors: as IMOD's tilt does" in w]
        assert len(dropped) == (own is None), warnings


def test_an_imod_models_rounding_is_no_z_factor(tmp_path):
    """An imod-model record (stretch and skew act on the image, after the projection) has z
    factors of float32 rounding only (~1e-7): not applied (the reconstruction takes the global
    path)."""
    from helpers import align_observations

    from lmalign_jax import simulate
    from lmalign_jax.report import read_record
    from lmalign_jax.workflow.alignment_inputs import read_alignment_json
    from lmalign_jax.workflow.record_markers import z_factors

    series = simulate(n_views=31, n_markers=30, seed=3)
    path = align_observations(series.observations, tmp_path, "--model", "imod")
    raw = z_factors(read_record(str(path)))
    assert raw is None or np.abs(raw).max() < 1e-5
    assert read_alignment_json(str(path)).z_factors is None


def test_a_record_without_a_parameter_is_named_and_a_non_finite_view_is_interpolated(luther_record):
    """A record whose views lack one of its model's parameters is an InputError naming the record
    and the parameter (it was a KeyError); a view whose parameters are not finite was not solved
    and gets z factors interpolated in tilt from its neighbours, while the others keep theirs."""
    import dataclasses

    from lmalign_jax.io import InputError
    from lmalign_jax.report import read_record
    from lmalign_jax.workflow.record_markers import z_factors

    record = read_record(str(luther_record))
    whole = z_factors(record)
    params = dict(record.views.parameters)
    del params["mag_z"]
    lacking = dataclasses.replace(record, views=dataclasses.replace(record.views, parameters=params))
    with pytest.raises(InputError, match=r"s\.json: its luther views lack the parameter\(s\) mag_z$"):
        z_factors(lacking)
    params = {name: np.array(v, float) for name, v in record.views.parameters.items()}
    params["mag_x"][5] = np.nan
    nan = z_factors(dataclasses.replace(record, views=dataclasses.replace(record.views, parameters=params)))
    others = np.arange(len(whole)) != 5
    np.testing.assert_allclose(nan[others], whole[others], rtol=0, atol=1e-12)
    # interpolated in nominal tilt from its neighbours, as an excluded view's .xf
    nominal = record.views.nominal_tilts_deg
    w = (nominal[5] - nominal[4]) / (nominal[6] - nominal[4])
    np.testing.assert_allclose(nan[5], (1 - w) * whole[4] + w * whole[6], rtol=0, atol=1e-12)
    assert np.abs(nan[5] - whole[5]).max() > 1e-4


def test_sirt_beyond_memory_drops_the_z_factors_with_a_warning(tmp_path):
    """SIRT through the z factors holds the aligned views whole: where --memory cannot, the
    z factors are dropped with a warning that says how to keep them, and the SIRT is made."""

    from lmalign_jax.workflow.alignment_inputs import Alignment
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    noise_stack(tmp_path, 1)
    alignment = Alignment(
        np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)), TILTS, "a.json", "a", "a", (N, N)
    )
    alignment.z_factors = np.full((TILTS.size, 2), 0.03)
    warnings = []
    reconstruct_to_file(
        str(tmp_path / "s.mrc"),
        alignment,
        str(tmp_path / "t.mrc"),
        thickness=NZ,
        sirt_iterations=2,
        memory_gb=3e-4,
        quiet=True,
        warn=warnings.append,
    )
    assert any(
        w.startswith("a.json: its z factors are not applied with --sirt within --memory (they need about ")
        and w.endswith("raise --memory or --bin more to apply them)")
        for w in warnings
    ), warnings
    assert (tmp_path / "t.mrc").is_file()


def _unit_alignment(zfac=None):
    from lmalign_jax.workflow.alignment_inputs import Alignment

    alignment = Alignment(
        np.tile(np.eye(2), (TILTS.size, 1, 1)), np.zeros((TILTS.size, 2)), TILTS, "a", "a", "a", (N, N)
    )
    alignment.z_factors = zfac
    return alignment


def test_a_unit_local_file_drops_the_z_factors_as_a_near_unit_one_does(tmp_path):
    """With z factors and a local file without any, tilt gives every patch none: a unit file and
    one a 1e-4 px shift away from it made different volumes (the unit file was taken for the
    global alignment first, keeping the z factors; audit, 6.6% apart). Both now drop them, with the
    warning, and agree to the shift's effect; with the z factors in the file, the unit file is the
    global alignment and its volume is the global one with them."""
    import mrcfile

    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    noise_stack(tmp_path, 1)
    zfac = tilt_z_factors()
    unit = np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1))
    near = unit.copy()
    near[..., 0, 2] = 1e-4
    volumes = {}
    for name, xf, own in (
        ("unit", unit, None),
        ("near", near, None),
        ("unit-z", unit, np.broadcast_to(zfac, (4, TILTS.size, 2)).copy()),
        ("global", None, None),
        ("global-z", None, None),
    ):
        local_path = None
        if xf is not None:
            local_path = str(tmp_path / f"{name}.xf")
            local = LocalAlignment(
                (2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, TILTS.size)), xf, z_factors=own
            )
            write_local_xf(local_path, local)
        warnings = []
        reconstruct_to_file(
            str(tmp_path / "s.mrc"),
            _unit_alignment(None if name == "global" else zfac),
            str(tmp_path / f"{name}.mrc"),
            thickness=NZ,
            local_path=local_path,
            quiet=True,
            warn=warnings.append,
        )
        assert any("has no z factors" in w for w in warnings) == (name in ("unit", "near")), (name, warnings)
        with mrcfile.open(tmp_path / f"{name}.mrc") as m:
            volumes[name] = np.array(m.data)
    sd = volumes["global"].std()
    assert np.abs(volumes["unit"] - volumes["global"]).max() < 1e-5 * sd
    assert np.abs(volumes["near"] - volumes["unit"]).max() < 1e-3 * sd
    assert np.abs(volumes["unit-z"] - volumes["global-z"]).max() < 1e-5 * sd
    assert np.abs(volumes["global-z"] - volumes["global"]).max() > 0.1 * sd


def test_a_local_file_that_is_no_local_correction_is_named(tmp_path):
    """A local transform that moves the image's corners by more than its size, or z factors
    beyond 1, are not a local alignment: refused naming the file, patch and view (a shift of 1e7
    px asked for a 38 GB band, z factors of 1e7 for 193 GB; 50 passed silently; audit)."""
    import mrcfile

    from lmalign_jax.io import InputError
    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(np.zeros((TILTS.size, N, N), np.float32))
    zfac = tilt_z_factors()
    unit = np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1))
    shifted, scaled = unit.copy(), unit.copy()
    shifted[2, 6, 1, 2] = N + 1.0  # patch 2, view 7: a shift beyond the image
    scaled[1, 3, 0, 0] = 4.0  # patch 1, view 4: x scaled 4 times moves the corners by 1.5 N
    big_z = np.broadcast_to(zfac, (4, TILTS.size, 2)).copy()
    big_z[3, 9, 1] = 50.0
    cases = (
        (
            shifted,
            None,
            r"view 7 in patch 2 \(x 0, y 1\) moves the image's corners by up to 65 px, more than",
        ),
        (scaled, None, r"view 4 in patch 1 \(x 1, y 0\) moves the image's corners by up to 96 px, more than"),
        (unit, big_z, r"the yz factor of view 10 in patch 3 \(x 1, y 1\) is 50: not a height correction"),
    )
    for k, (xf, own, message) in enumerate(cases):
        path = tmp_path / f"l{k}.xf"
        local = LocalAlignment((2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, TILTS.size)), xf, z_factors=own)
        write_local_xf(path, local)
        with pytest.raises(InputError, match=message):
            reconstruct_to_file(
                str(tmp_path / "s.mrc"),
                _unit_alignment(zfac),
                str(tmp_path / "t.mrc"),
                thickness=NZ,
                local_path=str(path),
                quiet=True,
                warn=lambda _: None,
            )
        assert not (tmp_path / "t.mrc").exists()


def test_a_local_files_own_z_factors_apply_beside_a_records_small_ones(tmp_path):
    """A record whose z factors move no marker by 0.01 px has none applied alone, but its export
    writes them as the .zfac, with which tilt applies a local file's own: so does reconstruct (it
    ignored the file's, whatever their size; review)."""
    import mrcfile

    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    rng = noise_stack(tmp_path, 2)
    s = np.sin(np.radians(TILTS))
    own = np.broadcast_to(np.column_stack([0.06 * s, -0.05 * s * s]), (4, TILTS.size, 2)).copy()
    xf = np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1))
    xf[..., 2] = rng.uniform(-0.5, 0.5, (4, TILTS.size, 2))
    write_local_xf(
        tmp_path / "l.xf",
        LocalAlignment((2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, TILTS.size)), xf, z_factors=own),
    )
    small = np.full((TILTS.size, 2), 1e-6)
    volumes = {}
    for name, given, small_given in (("small", None, small), ("none", None, None), ("applied", small, None)):
        alignment = _unit_alignment(given)
        alignment.small_z_factors = small_given
        reconstruct_to_file(
            str(tmp_path / "s.mrc"),
            alignment,
            str(tmp_path / f"{name}.mrc"),
            thickness=NZ,
            local_path=str(tmp_path / "l.xf"),
            quiet=True,
            warn=lambda _: None,
        )
        with mrcfile.open(tmp_path / f"{name}.mrc") as m:
            volumes[name] = np.array(m.data)
    sd = volumes["none"].std()
    assert np.abs(volumes["small"] - volumes["applied"]).max() < 1e-5 * sd
    assert np.abs(volumes["small"] - volumes["none"]).max() > 0.1 * sd


def test_a_local_files_z_factors_left_unapplied_are_said(tmp_path):
    """Without global z factors (no --zfac) tilt ignores a local file's own; reconstruct did so
    silently (review): it says so and how to apply them."""

    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    noise_stack(tmp_path, 3)
    s = np.sin(np.radians(TILTS))
    xf = np.tile(np.eye(2, 3), (4, TILTS.size, 1, 1))
    xf[..., 2] = 0.2
    for name, own in (
        ("z", np.broadcast_to(np.column_stack([0.06 * s, 0 * s]), (4, TILTS.size, 2))),
        ("none", None),
    ):
        local = LocalAlignment((2, 2), (16, 16), (32, 32), 0.0, np.zeros((4, TILTS.size)), xf, z_factors=own)
        write_local_xf(tmp_path / f"{name}.xf", local)
        warnings = []
        reconstruct_to_file(
            str(tmp_path / "s.mrc"),
            _unit_alignment(None),
            str(tmp_path / f"{name}.mrc"),
            thickness=NZ,
            local_path=str(tmp_path / f"{name}.xf"),
            quiet=True,
            warn=warnings.append,
        )
        said = [
            w for w in warnings if "carries z factors, which (as IMOD's tilt does without a ZFACTORFILE)" in w
        ]
        assert len(said) == (own is not None), warnings


def test_align_export_imod_twice_calls_no_zfac_stale(tmp_path):
    """A second ``align --export imod`` of a luther series into the same folder warned that the
    .zfac (and .xtilt) were from an earlier run, then exported them anew (review): the files the
    export writes next are not stale; a .zfac no step of the run writes still is."""
    from helpers import align_observations, run_cli

    from lmalign_jax import simulate

    series = simulate(n_views=21, n_markers=20, model="luther", extra={"mag_z": (1.0, 0.02)}, seed=5)
    path = align_observations(series.observations, tmp_path, "--model", "luther", "--mode", "mag_z=free")
    base = ["align", tmp_path / "s.csv", "--tilts", tmp_path / "s.rawtlt", "--image-size", 2048, 2048]
    base += [
        "--out-dir",
        path.parent,
        "--no-figure",
        "--no-errors",
        "--model",
        "luther",
        "--mode",
        "mag_z=free",
    ]
    for _ in range(2):
        rc, _, err = run_cli([*base, "--export", "imod"])
        assert rc == 0 and "earlier run" not in err, err
    assert (path.parent / "s.zfac").exists()
    rc, _, err = run_cli(base)  # no export: the .zfac left from before is stale, and said to be
    assert rc == 0 and "s.zfac are from an earlier run and were not updated" in err, err


def test_a_flattened_luther_records_xf_and_zfac_place_every_marker_exactly(tmp_path):
    """``align --flatten`` of a luther series: the solved .xf with z factors regressed in the
    turned frame missed by the turned height's x part (|x| sin c |xz|, which no z factor holds;
    review); the .xf and z factors are now fitted together in the .tlt's frame, so the turned
    markers, through the flattened tilts and the record's z factors, land where the record's .xf
    puts the model's projection of them, to 1e-6 px. With the .xtilt's X-axis tilt a applied, as
    tilt and reconstruct apply it: the markers turned back by a, the z factors multiplying the
    tilted height (regressed on the untilted one they missed by |y| sin a |xz|)."""
    from helpers import align_observations

    from lmalign_jax import simulate
    from lmalign_jax.report import read_record
    from lmalign_jax.workflow.alignment_inputs import read_alignment_json
    from lmalign_jax.workflow.record_markers import z_factors

    series = simulate(n_views=31, n_markers=30, model="luther", extra={"mag_z": (1.0, 0.02)}, seed=2)
    path = align_observations(
        series.observations, tmp_path, "--model", "luther", "--mode", "mag_z=free", "--flatten"
    )
    record = read_record(str(path))
    change = record.surfaces["tilt_angle_change_deg"]
    assert record.surfaces["flattened"] is True and abs(change) > 0.05
    keep = ~record.views.excluded
    aligned = aligned_markers(record)  # the record's .xf after the model's projection
    x, y, z = record.markers.xyz.T
    c = np.radians(change)
    turned_x, turned_z = x * np.cos(c) - z * np.sin(c), x * np.sin(c) + z * np.cos(c)
    alignment = read_alignment_json(str(path))
    a = np.radians(alignment.x_tilts_deg[0])
    assert np.all(alignment.x_tilts_deg == alignment.x_tilts_deg[0]) and abs(a) > np.radians(0.05)
    volume = np.column_stack(  # Rx(-a): the volume point tilt projects where the marker was seen
        [turned_x, y * np.cos(a) + turned_z * np.sin(a), -y * np.sin(a) + turned_z * np.cos(a)]
    )
    tilts, x_tilts = record.tilts_deg[keep], alignment.x_tilts_deg[keep]
    placed = sampled(z_factors(record)[keep], tilts, volume, (2048, 2048), x_tilts)
    print("largest miss", np.abs(placed - aligned).max(), "X-axis tilt", np.degrees(a))
    assert np.abs(placed - aligned).max() < 1e-6
