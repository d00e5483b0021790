"""Bead tracking (lmalign_jax.track.tracking, ``lmalign track``, ``lmalign align STACK.mrc``) against
the simulator's truth.

One small raw stack (31 views of 256 x 256 px, 12 gold beads as Gaussians of sigma 1.5 px, white
noise, per-view shifts of ~4 px, rotation -12 deg) is tracked once per module. Tolerances:

* centring: the Cramer-Rao bound of one coordinate of a Gaussian bead of peak ``A`` and width
  ``s`` under white noise ``sigma_n`` is ``sigma_n / (A sqrt(pi / 2))`` (the Fisher information
  ``A^2 / sigma_n^2 * integral (dg/dx)^2 = A^2 pi / (2 sigma_n^2)``, independent of ``s``); a
  matched filter reaches it, the averaged template's own noise adds a little: 1.5x is allowed.
* found points: a (bead, view) point counts as visible and unambiguous when the bead's true centre
  is at least one diameter inside the image and no other bead is within 2.5 diameters (the
  tracker leaves out points whose neighbour is within 2 diameters of its prediction).
* alignment: the error of a solved alignment is the RMS misfit of the true bead positions mapped
  by its ``.xf`` into the aligned frame, fitted per bead by a 3-D point through its solved tilts
  (gauge-free). Tracked beads must come within 1.2x of the same solver on the true positions plus
  Gaussian noise of the measured centring RMS, averaged over 4 noise draws (issue #14).
"""

from __future__ import annotations

import json
import math
import os

import mrcfile
import numpy as np
import pytest

import lmalign_jax as L
from lmalign_jax.cli import main
from lmalign_jax.io import read_imod_model
from lmalign_jax.simulation.phantom import bead_phantom, project_stack, series_alignment
from lmalign_jax.track.tracking import FOUND, choose_beads, is_blank, seed_view, track_beads
from lmalign_jax.workflow.batch_list import scan_folder
from lmalign_jax.workflow.batch_series import Prepared, prepare

N_VIEWS, SIZE, N_BEADS = 31, 256, 12
BEAD_SIGMA = 1.5
DIAMETER = BEAD_SIGMA / 0.301  # a Gaussian bead's diameter by find_beads' scale rule
PEAK = math.sqrt(2.0 * math.pi) * BEAD_SIGMA  # line integral through a bead of density 1
NOISE = 0.5  # "good dose": peak / noise ~ 7.5


def crlb_px(noise=NOISE, peak=PEAK):
    return noise / (peak * math.sqrt(math.pi / 2.0))


@pytest.fixture(scope="module")
def series():
    s = L.simulate(
        n_views=N_VIEWS,
        n_markers=N_BEADS,
        image_size=(SIZE, SIZE),
        thickness_px=40.0,
        noise_px=0.0,
        missing_fraction=0.0,
        shift_px=4.0,
        rotation_deg=-12.0,
        seed=3,
    )
    a, d, tilts = series_alignment(s)
    phantom = bead_phantom(s.markers, box=(180.0, 180.0, 40.0), bead_sigma=BEAD_SIGMA, n_blobs=3, seed=3)
    stack = project_stack(phantom, a, d, tilts, (SIZE, SIZE), noise=NOISE, seed=1)
    return s, stack


@pytest.fixture(scope="module")
def tracked(series):
    s, stack = series
    track = track_beads(stack, s.observations.tilts_deg, DIAMETER)
    truth = s.observations.xy  # (views, beads, 2) true raw positions
    first = np.argmax(track.found, axis=0)
    ids = np.array(
        [int(np.argmin(np.linalg.norm(truth[v] - track.xy[v, b], axis=1))) for b, v in enumerate(first)]
    )
    return track, truth, ids


def test_no_track_mixes_two_beads(tracked):
    track, truth, ids = tracked
    assert len(set(ids.tolist())) == ids.size  # one true bead per track
    err = np.linalg.norm(track.xy - truth[:, ids], axis=2)[track.found]
    assert np.max(err) < 1.0  # beads are >= 4 px apart: a jump would be seen


def test_finds_visible_unambiguous_points(tracked):
    track, truth, ids = tracked
    pos = truth[:, ids]
    inside = np.all((pos >= DIAMETER) & (pos <= SIZE - DIAMETER), axis=2)
    gaps = np.linalg.norm(pos[:, :, None] - truth[:, None, :], axis=3)
    gaps[:, np.arange(ids.size), ids] = np.inf
    clear = gaps.min(axis=2) >= 2.5 * DIAMETER
    wanted = inside & clear
    assert wanted.sum() > 0.5 * wanted.size  # the test means something
    found = track.found[wanted].mean()
    print(f"found {found:.3f} of {wanted.sum()} visible unambiguous points")
    assert found >= 0.95


def test_centring_error_near_the_cramer_rao_bound(tracked):
    track, truth, ids = tracked
    err = (track.xy - truth[:, ids])[track.found]
    rms = float(np.sqrt(np.mean((err - err.mean(axis=0)) ** 2)))
    print(f"centring RMS {rms:.3f} px per coordinate, bound {crlb_px():.3f} px")
    assert rms <= 1.5 * crlb_px()
    assert np.all(np.abs(err.mean(axis=0)) < 0.1)  # no bias: the template is centred


def test_no_view_lost(tracked):
    track, _, _ = tracked
    assert track.beads_per_view.min() >= 4
    assert track.reasons.dtype == np.int8 and np.all((track.reasons == FOUND) == track.found)


def test_dark_beads_are_tracked_the_same(series, tracked):
    """Gold is dark on a bright background in cryo-EM: the inverted stack gives the same tracks
    (the template is averaged from the beads themselves, so it carries their contrast)."""
    s, stack = series
    track = tracked[0]
    dark = track_beads(10.0 - stack, s.observations.tilts_deg, DIAMETER)
    assert np.array_equal(dark.found, track.found)
    np.testing.assert_allclose(dark.xy[dark.found], track.xy[track.found], atol=1e-3)


def _alignment_error(result, truth_xy):
    """RMS misfit of the true raw positions mapped by ``result.xf``, fitted per bead by a 3-D point."""
    xf = result.xf
    centre = np.asarray(result.observations.center)
    q = np.einsum("vij,vbj->vbi", xf[:, :, :2], truth_xy - centre) + xf[:, None, :, 2]
    t = np.radians(result.tilts_deg)
    design = np.stack([np.cos(t), np.sin(t)], axis=1)  # q_x = x cos t + z sin t
    fit_x = design @ np.linalg.lstsq(design, q[:, :, 0], rcond=None)[0]
    fit_y = np.mean(q[:, :, 1], axis=0, keepdims=True)
    return float(np.sqrt(np.mean((q[:, :, 0] - fit_x) ** 2 + (q[:, :, 1] - fit_y) ** 2) / 2.0))


def test_alignment_from_tracked_beads_matches_true_positions_plus_noise(series, tracked):
    s, _ = series
    track, truth, ids = tracked
    tilts = s.observations.tilts_deg
    keep = track.found.sum(axis=0) >= 2
    mask, true_xy = track.found[:, keep], truth[:, ids[keep]]
    err = (track.xy - truth[:, ids])[track.found]
    sigma = float(np.sqrt(np.mean((err - err.mean(axis=0)) ** 2)))
    obs = L.Observations(track.xy[:, keep], mask, tilts, (SIZE, SIZE))
    tracked_error = _alignment_error(L.align(obs), true_xy)
    rng = np.random.default_rng(7)
    reference = []
    for _ in range(4):
        noisy = true_xy + sigma * rng.standard_normal(true_xy.shape)
        reference.append(_alignment_error(L.align(L.Observations(noisy, mask, tilts, (SIZE, SIZE))), true_xy))
    print(
        f"alignment error {tracked_error:.4f} px from tracks, {np.mean(reference):.4f} px from truth + noise"
    )
    assert tracked_error <= 1.2 * float(np.mean(reference))


def _reference_error(true_xy, mask, tilts, sigma, draws=4, seed=7):
    """Mean alignment error of the same solver on the true positions plus Gaussian noise ``sigma``."""
    rng = np.random.default_rng(seed)
    errors = []
    for _ in range(draws):
        noisy = true_xy + sigma * rng.standard_normal(true_xy.shape)
        errors.append(_alignment_error(L.align(L.Observations(noisy, mask, tilts, (SIZE, SIZE))), true_xy))
    return float(np.mean(errors))


@pytest.fixture(scope="module")
def lost_views_stack(series):
    """The module's stack with view 9 (1-based) replaced by pure noise and view 21 blanked (zeros)."""
    s, stack = series
    damaged = np.array(stack, dtype=np.float32, copy=True)
    rng = np.random.default_rng(0)
    damaged[8] = float(np.mean(stack[8])) + NOISE * rng.standard_normal(damaged[8].shape)
    damaged[20] = 0.0
    return damaged


def test_views_where_every_bead_is_lost_are_returned_and_left_out(series, lost_views_stack):
    """A blank and a pure-noise view: the tracking names them (with a reason), tracks every other
    view as well as without them (the views beyond are correlated directly with the last tracked
    one), and ``observations()`` leaves them out so that ``lm.align`` runs on the result."""
    s, _ = series
    truth, tilts = s.observations.xy, s.observations.tilts_deg
    track = track_beads(lost_views_stack, tilts, DIAMETER)
    assert track.lost_views.tolist() == [8, 20]
    assert all("fewer than 3" in why for why in track.lost_reasons)
    assert not track.found[[8, 20]].any() and np.all(track.reasons[track.found] == FOUND)
    first = np.argmax(track.found, axis=0)
    ids = np.array(
        [int(np.argmin(np.linalg.norm(truth[v] - track.xy[v, b], axis=1))) for b, v in enumerate(first)]
    )
    assert len(set(ids.tolist())) == ids.size
    err = (track.xy - truth[:, ids])[track.found]
    assert np.max(np.linalg.norm(err, axis=1)) < 1.0
    other = np.setdiff1d(np.arange(N_VIEWS), [8, 20])
    assert track.beads_per_view[other].min() >= 4  # no other view lost
    obs = track.observations()
    views, beads = track.fit_selection()
    assert views.tolist() == other.tolist() and obs.n_views == N_VIEWS - 2
    result = L.align(obs)
    true_xy = truth[np.ix_(views, ids[beads])]
    sigma = float(np.sqrt(np.mean((err - err.mean(axis=0)) ** 2)))
    tracked_error = _alignment_error(result, true_xy)
    reference = _reference_error(true_xy, obs.mask, obs.tilts_deg, sigma)
    print(f"alignment error {tracked_error:.4f} px from tracks, {reference:.4f} px from truth + noise")
    assert tracked_error <= 1.2 * reference


def test_align_a_stack_with_lost_views(series, lost_views_stack, tmp_path, capsys):
    """The command line leaves the lost views out by the same rule, says why, and still writes a
    transform for every view (interpolated for the lost ones)."""
    s, _ = series
    with mrcfile.new(tmp_path / "lost.mrc") as mrc:
        mrc.set_data(lost_views_stack)
    (tmp_path / "lost.rawtlt").write_text("".join(f"{t:.2f}\n" for t in s.observations.tilts_deg))
    args = ["align", str(tmp_path / "lost.mrc"), "--tilts", str(tmp_path / "lost.rawtlt")]
    code = main(
        [
            *args,
            "--bead-diameter",
            repr(DIAMETER),
            "--out-dir",
            str(tmp_path / "out"),
            "--no-figure",
            "--no-errors",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "view 9 (1-based" in err and "view 21 (1-based" in err and "lost" in err
    assert len((tmp_path / "out" / "lost.xf").read_text().splitlines()) == N_VIEWS
    record = json.loads((tmp_path / "out" / "lost_track.json").read_text())
    assert record["lost_views"] == [9, 21] and "fewer than 3" in record["views"][8]["lost"]
    aligned = json.loads((tmp_path / "out" / "lost.json").read_text())
    assert aligned["inputs"]["excluded_views"] == [9, 21]  # 1-based


def test_seed_view_passes_over_blank_views():
    """The tracking starts on the view nearest 0 deg that is not blank (one value in every pixel)."""
    tilts = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
    stack = np.ones((5, 8, 8), dtype=np.float32)
    stack[[1, 3, 4], 2, 2] = 2.0
    assert is_blank(stack[0]) and is_blank(np.zeros((4, 4))) and not is_blank(stack[1])
    assert seed_view(stack, tilts) == 1  # views 2 (0 deg) blank; -3 before +3 at equal distance
    stack[1] = 0.0
    assert seed_view(stack, tilts) == 3
    assert seed_view(np.zeros((5, 8, 8)), tilts) == 2  # all blank: the nearest 0 deg


def test_blank_views_are_lost_as_weak_and_said_blank(series, tmp_path, capsys):
    """A dark (all-zero) view nearest 0 deg and a dark first view, with --bead-diameter (which
    crashed on a division by zero): ``lmalign track`` finds the beads on the next view, loses
    both dark views and says why (weak points, blank view: not "crowded")."""
    s, stack = series
    dark = np.array(stack, dtype=np.float32, copy=True)
    nearest = int(np.argmin(np.abs(s.observations.tilts_deg)))
    dark[[0, nearest]] = 0.0
    with mrcfile.new(tmp_path / "dark.mrc") as mrc:
        mrc.set_data(dark)
    (tmp_path / "dark.rawtlt").write_text("".join(f"{t:.2f}\n" for t in s.observations.tilts_deg))
    args = ["track", str(tmp_path / "dark.mrc"), "--tilts", str(tmp_path / "dark.rawtlt")]
    code = main([*args, "--bead-diameter", "5", "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"view {nearest + 1} (tilt 0 deg, the nearest 0) is blank" in err
    record = json.loads((tmp_path / "out" / "dark_track.json").read_text())
    assert record["seed_view"] != nearest + 1 and record["beads_tracked"] >= 4
    assert record["lost_views"] == [1, nearest + 1]
    for v in (0, nearest):
        view = record["views"][v]
        assert view["beads_found"] == 0 and "the view is blank" in view["lost"], view
        left_out = view["left_out"]
        assert left_out.get("weak", 0) > left_out.get("crowded", 0), view  # a flat window is no rival bead
        assert f"view {v + 1} (1-based" in err
    # every view blank: one line, exit 2, nothing written
    with mrcfile.new(tmp_path / "blank.mrc") as mrc:
        mrc.set_data(np.full(dark.shape, 3.0, dtype=np.float32))
    code = main(
        [
            "track",
            str(tmp_path / "blank.mrc"),
            *args[2:],
            "--bead-diameter",
            "5",
            "--out-dir",
            str(tmp_path / "b"),
        ]
    )
    assert code == 2
    assert "blank.mrc: every view is blank" in _error(capsys)
    assert not (tmp_path / "b").exists()


def test_choose_beads_spreads_and_drops_close_pairs():
    pos = np.array([[50.0, 50.0], [56.0, 50.0], [150.0, 150.0], [52.0, 150.0], [150.0, 52.0], [100.0, 100.0]])
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    chosen = choose_beads(pos, scores, (200, 200), 5.0, 4)
    assert 0 not in chosen and 1 not in chosen  # 6 px apart < 2 diameters
    assert set(chosen.tolist()) == {2, 3, 4, 5}
    assert choose_beads(pos, scores, (200, 200), 5.0, 2).tolist() == [2, 3]  # strongest, then farthest


@pytest.fixture(scope="module")
def stack_files(series, tmp_path_factory):
    s, stack = series
    folder = tmp_path_factory.mktemp("trk")
    with mrcfile.new(folder / "ts.mrc") as mrc:
        mrc.set_data(stack.astype(np.float32))
        mrc.voxel_size = 10.0
    (folder / "ts.rawtlt").write_text("".join(f"{t:.2f}\n" for t in s.observations.tilts_deg))
    return folder


def test_align_a_stack_in_one_command(stack_files, tracked, capsys):
    """``lmalign align STACK.mrc`` tracks (as ``lmalign track`` does) and aligns; its .fid reads back."""
    folder = stack_files
    out = folder / "one"
    code = main(
        [
            "align",
            str(folder / "ts.mrc"),
            "--tilts",
            str(folder / "ts.rawtlt"),
            "--bead-diameter",
            repr(DIAMETER),
            "--out-dir",
            str(out),
            "--no-figure",
            "--no-errors",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    for suffix in (".fid", ".csv", "_track.json", "_track.png", ".xf", ".tlt", ".json"):
        assert (out / f"ts{suffix}").is_file()
    model = read_imod_model(out / "ts.fid")
    track = tracked[0]
    assert model.image_size == (SIZE, SIZE) and model.n_views == N_VIEWS
    assert (
        abs(int(model.mask.sum()) - int(track.found.sum())) <= 0.02 * track.found.sum()
    )  # diameter 5 vs 4.98
    record = json.loads((out / "ts_track.json").read_text())
    # beads_tracked counts the beads with points, as the marker files hold them (audit: it counted
    # beads chosen on the seed view that were left with none)
    with_points = [b for b in record["beads"] if b["n_views"] > 0]
    assert record["beads_tracked"] == len(with_points) == model.n_markers and len(record["views"]) == N_VIEWS
    assert record["beads_tracked"] + record["beads_without_points"] == len(record["beads"])
    assert sum(v["beads_found"] for v in record["views"]) == int(model.mask.sum())


def _error(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_input_messages(stack_files, tmp_path, capsys):
    folder = stack_files
    tilts = str(folder / "ts.rawtlt")
    text = tmp_path / "not.mrc"
    text.write_text("hello\n")
    assert (
        main(["track", str(text), "--tilts", tilts, "--bead-diameter", "5", "--out-dir", str(tmp_path)]) == 2
    )
    message = _error(capsys)
    assert "not.mrc" in message and "not a readable MRC file" in message
    short = tmp_path / "short.rawtlt"
    short.write_text("0\n3\n")
    assert main(["track", str(folder / "ts.mrc"), "--tilts", str(short), "--out-dir", str(tmp_path)]) == 2
    assert "has 2 tilt angles but the stack" in _error(capsys)
    args = ["track", str(folder / "ts.mrc"), "--tilts", tilts, "--out-dir", str(tmp_path)]
    assert main([*args, "--bead-diameter", "1.5"]) == 2
    assert "outside 2 px" in _error(capsys)
    noise = tmp_path / "noise.mrc"
    with mrcfile.new(noise) as mrc:
        mrc.set_data(np.random.default_rng(0).standard_normal((N_VIEWS, 64, 64)).astype(np.float32))
    assert (
        main(["track", str(noise), "--tilts", tilts, "--bead-diameter", "5", "--out-dir", str(tmp_path)]) == 2
    )
    message = _error(capsys)
    assert "no bead-like features found in view 16" in message and "5 px" in message
    assert "--bead-diameter" in message
    assert main(["track", str(noise), "--tilts", tilts, "--bead-nm", "5", "--out-dir", str(tmp_path)]) == 2
    assert "no pixel size, so --bead-nm cannot be converted" in _error(capsys)
    assert main([*args, "--bead-nm", "5", "--bead-diameter", "5"]) == 2
    assert "not both" in _error(capsys)
    assert not list(tmp_path.glob("*.fid"))  # nothing half-written


def test_too_few_beads_tracked_says_where_beads_were_found(tmp_path, capsys):
    """Beads on the view nearest 0 deg only (the others pure noise): the message says how many
    beads were tracked and in which views any were found."""
    rng = np.random.default_rng(4)
    stack = rng.standard_normal((5, 128, 128)).astype(np.float32) * 0.3
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    for x, y in ((30.0, 30.0), (90.0, 35.0), (40.0, 95.0), (95.0, 90.0), (64.0, 64.0)):
        stack[2] += PEAK * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * BEAD_SIGMA**2))
    with mrcfile.new(tmp_path / "few.mrc") as mrc:
        mrc.set_data(stack)
    (tmp_path / "few.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    args = [
        "track",
        str(tmp_path / "few.mrc"),
        "--tilts",
        str(tmp_path / "few.rawtlt"),
        "--bead-diameter",
        "5",
    ]
    assert main([*args, "--out-dir", str(tmp_path / "out")]) == 2
    message = _error(capsys)
    assert "only 0 of 5 beads were tracked through 3 or more views" in message, message
    assert "found in views 3 (1-based)" in message
    assert not (tmp_path / "out").exists()


def test_batch_finds_and_tracks_a_stack_series(stack_files, tracked, tmp_path):
    """A folder's NAME.mrc + NAME.rawtlt without markers is a series; ``prepare`` tracks it as
    ``lmalign track`` does and reads the model it wrote."""
    specs = scan_folder(str(stack_files))
    assert [(s.name, os.path.basename(s.markers)) for s in specs] == [("ts", "ts.mrc")]
    item = prepare(specs[0], out_dir=str(tmp_path), tracking={"bead_diameter_px": DIAMETER})
    assert isinstance(item, Prepared), item
    assert item.observations.n_observed == int(tracked[0].found.sum()) and item.stack == specs[0].markers
    for suffix in (".fid", ".csv", "_track.json", "_track.png"):
        assert (tmp_path / "ts" / f"ts{suffix}").is_file()
