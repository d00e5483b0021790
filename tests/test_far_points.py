"""A point far outside the image is an error in the marker file, said before any solve; one a
little outside is only a warning (a bead at the edge, an image size that is off)."""

from helpers import DATA, run_cli


def _resid_with(tmp_path, line: int, text: str):
    lines = (DATA / "imod-bb" / "BBa.resid").read_text().splitlines()
    lines[line - 1] = text
    path = tmp_path / "BBa.resid"
    path.write_text("\n".join(lines) + "\n")
    return path


def _align(tmp_path, resid):
    tilts = DATA / "imod-bb" / "BBa.tlt"
    args = ["--image-size", "512", "512", "--no-figure", "--no-errors", "--out-dir", tmp_path / "o"]
    return run_cli(["align", resid, "--tilts", tilts, *args])


def test_a_point_far_outside_the_image_is_refused(tmp_path):
    """The audit's case: 1e30 px in line 50 of BBa.resid ended in 'error: Singular matrix'."""
    rc, _, err = _align(tmp_path, _resid_with(tmp_path, 50, "  1e30  1e30  48  0 0"))
    assert rc == 2
    assert "BBa.resid: marker 1 in view 49 (1-based) is at (1e+30, 1e+30), more than 10 image sizes" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_point_just_outside_the_image_is_a_warning(tmp_path):
    rc, _, err = _align(tmp_path, _resid_with(tmp_path, 50, "  -3.0  247.91  48  0 0"))
    assert rc == 0, err
    assert "1 of 1403 points lie outside the 512 x 512 image" in err
