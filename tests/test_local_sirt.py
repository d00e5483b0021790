"""SIRT through a local alignment: the re-projector is the exact transpose of the local
back-projector (<A x, y> = <x, A^T y>), the weighted residual falls every iteration, and beads
drawn where a known local file puts them come back in place (as in test_local_backprojection)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_local_backprojection import BEADS, NZ, SIGMA, TILTS, known_local, sampling

from lmalign_jax.core.local_apply import project_through_local
from lmalign_jax.recon.local_sirt import local_backprojector, sirt_local, sirt_local_streamed
from lmalign_jax.recon.sirt import SirtOptions
from lmalign_jax.simulation.phantom import locate_peaks

N = 64


def test_the_reprojector_is_the_transpose_of_the_local_backprojector():
    with jax.enable_x64(True):
        back = local_backprojector(sampling(known_local()), (NZ, N, N), jnp.float64)
        rng = np.random.default_rng(0)
        y = jnp.asarray(rng.standard_normal((TILTS.size, N, N)))
        x = jnp.asarray(rng.standard_normal((NZ, N, N)))
        (ax,) = jax.linear_transpose(back, y)(x)
        lhs, rhs = float(jnp.vdot(ax, y)), float(jnp.vdot(x, back(y)))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + abs(rhs))


def test_local_sirt_puts_the_beads_in_place_and_lowers_its_residual():
    local = known_local()
    pos = project_through_local(local, BEADS, TILTS, (N, N))
    c = np.arange(N) + 0.5 - N / 2
    dx = c[None, None, None, :] - pos[:, :, 0, None, None]
    dy = c[None, None, :, None] - pos[:, :, 1, None, None]
    stack = np.exp(-(dx**2 + dy**2) / (2 * SIGMA**2)).sum(axis=1).astype(np.float32)
    unit = np.tile(np.eye(2), (TILTS.size, 1, 1))
    vol, res = sirt_local(stack, unit, np.zeros((TILTS.size, 2)), TILTS, sampling(local), NZ, SirtOptions(10))
    assert np.all(np.diff(res) < 0) and res[-1] < 0.5 * res[0]
    _, dist = locate_peaks(vol, BEADS)
    print("distance", dist.round(2))
    assert np.all(dist < 0.5)


@pytest.mark.parametrize("positivity", [False, True])
def test_the_streamed_local_sirt_is_the_whole_volume_one(positivity, tmp_path):
    """Slab by slab (each iteration projects every slab into one residual stack, then updates each
    slab from it) the iterate is the whole-volume SIRT's, to float32 rounding."""
    rng = np.random.default_rng(2)
    stack = rng.standard_normal((TILTS.size, N, N)).astype(np.float32) + 1.0
    ang = np.radians(rng.uniform(-2, 2, TILTS.size))
    a = np.stack([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]).transpose(2, 0, 1)
    d = rng.uniform(-3, 3, (TILTS.size, 2))
    options = SirtOptions(4, positivity=positivity)
    whole, res_whole = sirt_local(stack, a, d, TILTS, sampling(known_local()), NZ, options)
    streamed, res_streamed = sirt_local_streamed(
        stack, a, d, TILTS, sampling(known_local()), NZ, options, slab_rows=12, scratch_dir=str(tmp_path)
    )
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=2e-5 * np.abs(whole).max())
    np.testing.assert_allclose(res_streamed, res_whole, rtol=1e-4)
    assert not list(tmp_path.iterdir())  # the scratch files are gone


def test_local_sirt_without_room_for_its_scratch_volumes_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """--local with --sirt keeps the iterate and C in two scratch volumes of the tomogram's size
    beside it: a disk with room for the tomogram alone is refused before any work (it died of a
    SIGBUS part-way through, leaving its scratch folder and the temporary volume), and a disk that
    fills up meanwhile (the scratch blocks are allocated first) is a one-line error, with nothing
    left behind."""
    import errno
    import os
    import shutil

    import mrcfile

    from lmalign_jax.io import InputError
    from lmalign_jax.io.imod_local import LocalAlignment, write_local_xf
    from lmalign_jax.io.mrc_volume import volume_bytes
    from lmalign_jax.workflow.alignment_inputs import Alignment
    from lmalign_jax.workflow.reconstruction import reconstruct_to_file

    n, views, nz = 32, 9, 8
    tilts = np.linspace(-60.0, 60.0, views)
    with mrcfile.new(tmp_path / "s.mrc") as m:
        m.set_data(np.random.default_rng(0).standard_normal((views, n, n)).astype(np.float32))
    xf = np.tile(np.eye(2, 3), (4, views, 1, 1))
    xf[..., 2] = 0.3  # not the global alignment: the local path
    write_local_xf(tmp_path / "l.xf", LocalAlignment((2, 2), (8, 8), (16, 16), 0.0, np.zeros((4, views)), xf))
    alignment = Alignment(
        np.tile(np.eye(2), (views, 1, 1)), np.zeros((views, 2)), tilts, "a", "a", "a", (n, n)
    )
    inputs = {"l.xf", "s.mrc"}

    def run():
        return reconstruct_to_file(
            str(tmp_path / "s.mrc"),
            alignment,
            str(tmp_path / "t.mrc"),
            thickness=nz,
            sirt_iterations=2,
            local_path=str(tmp_path / "l.xf"),
            quiet=True,
            warn=lambda _: None,
        )

    usage = shutil.disk_usage(tmp_path)
    one = volume_bytes((nz, n, n))
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=2 * one))
    with pytest.raises(
        InputError, match="the tomogram and --sirt's two scratch volumes of its size beside it"
    ):
        run()
    assert {p.name for p in tmp_path.iterdir()} == inputs
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=3 * one))

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(
        InputError, match="the disk filled up while writing the tomogram; nothing was written"
    ):
        run()
    assert {p.name for p in tmp_path.iterdir()} == inputs
    monkeypatch.undo()
    run()
    assert {p.name for p in tmp_path.iterdir()} == inputs | {"t.mrc"}
