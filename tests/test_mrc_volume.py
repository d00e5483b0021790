"""Header statistics of the volumes io.mrc_volume writes."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from lmalign_jax.io.mrc_volume import create_volume, stream_volume


def _large_volume():
    """Finite float32 values ~1e20, whose squares overflow float32 (but not their rms)."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((4, 6, 8)) * 1e20).astype(np.float32)


@pytest.mark.parametrize("layout", ["zyx", "imod-tilt"])
def test_streamed_header_statistics_of_large_values(tmp_path, layout):
    """The rms of values ~1e20 is finite and right (was inf, with numpy's overflow warning)."""
    vol = _large_volume()
    path = tmp_path / "v.mrc"
    with stream_volume(path, vol.shape, 1.0, layout=layout) as out:
        out.write_rows(0, vol[:, :4])
        out.write_rows(4, vol[:, 4:])
    v64 = vol.astype(np.float64)
    with mrcfile.open(path) as mrc:
        h = mrc.header
        assert np.isfinite(h.rms) and h.rms == pytest.approx(v64.std(), rel=1e-5)
        assert h.dmean == pytest.approx(v64.mean(), rel=1e-4, abs=1e-4 * v64.std())
        assert (h.dmin, h.dmax) == (vol.min(), vol.max())


def test_created_header_statistics_of_large_values(tmp_path):
    vol = _large_volume()
    path = tmp_path / "v.mrc"
    with create_volume(path, vol.shape, 1.0) as out:
        out[:] = vol
    with mrcfile.open(path) as mrc:
        assert mrc.header.rms == pytest.approx(vol.astype(np.float64).std(), rel=1e-5)


@pytest.mark.parametrize("which", [1, 2], ids=["temporary's close", "final close"])
def test_an_interrupt_in_a_close_stays_an_interrupt(tmp_path, monkeypatch, which):
    """Ctrl-C landing in a close (the close is done, then Python raises): in the final one, the
    cleanup closed the same descriptor again and its EBADF replaced the interrupt, which a command
    reports as 'cannot write: Bad file descriptor', exit 2; in the first (of the new temporary
    file), the temporary file was left behind. The interrupt goes on and nothing is left."""
    import os

    from lmalign_jax.io import mrc_volume

    vol = _large_volume()
    real_close, closed = os.close, []

    def interrupted_close(fd):
        real_close(fd)
        closed.append(fd)
        if len(closed) == which:
            raise KeyboardInterrupt

    monkeypatch.setattr(mrc_volume.os, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt):
        with stream_volume(tmp_path / "v.mrc", vol.shape, 1.0) as out:
            out.write_rows(0, vol)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
