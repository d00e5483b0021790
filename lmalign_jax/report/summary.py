"""The tiltalign-style text summary of an alignment record (what ``lmalign align`` prints)."""

from __future__ import annotations

import math


def _f(value, fmt: str, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-".rjust(width)
    return format(value, fmt).rjust(width)


def _table_parameters(record: dict) -> list[str]:
    """View parameters worth a column besides tilt and rotation: those not fixed, no shifts."""
    modes = record["options"].get("modes", {})
    skip = {"tilt", "rotation", "dx", "dy"}
    return [p for p in record["model"]["parameters"] if p not in skip and modes.get(p, "free") != "fixed"]


def format_summary(record: dict, *, per_view: bool = True) -> str:
    """A tiltalign-style log of the record: stages, per-view table, residual lines, worst points."""
    s, inp, opt = record["summary"], record["inputs"], record["options"]
    out = []
    sw = record.get("software", {})
    out.append(
        f" {sw.get('name', 'lmalign')} {sw.get('version', '')}, "
        f"model {record['model']['name']}: {record['model']['description']}"
    )
    out.append(
        f" Markers:  {inp.get('markers')} ({inp.get('markers_format')}): {inp.get('n_markers')} markers,"
        f" {s['n_points']} points fitted"
        + (
            f"; dropped markers {inp['dropped_markers']} (seen in < 2 views)"
            if inp.get("dropped_markers")
            else ""
        )
    )
    n_ex = len(inp.get("excluded_views", []))
    out.append(
        f" Tilts:    {inp.get('tilts')}: {inp.get('n_views')} views"
        + (
            f", {n_ex} excluded (views {_ranges(inp['excluded_views'])}, 1-based)"
            if n_ex
            else ", none excluded"
        )
    )
    size = inp.get("image_size")
    if size:
        out.append(f" Image:    {size[0]:g} x {size[1]:g} px (from {inp.get('image_size_source')})")
    rot = opt.get("rotation_deg")
    out.append(
        f" Rotation: tilt axis {_f(rot, '.2f', 0)} deg to start ({opt.get('rotation_source')}),"
        f" solved mean {s['rotation_mean_deg']:.2f} deg"
    )
    out.append("")
    out.append(" stage     iterations  accepted   seconds    rms px    free  status")
    for st in record["stages"]:
        out.append(
            f" {st['name']:<8}{st['iterations']:>12d}{st['accepted']:>10d}{_f(st['seconds'], '.2f', 10)}"
            f"{_f(st['rms_residual_px'], '.4f', 10)}{st['n_free']:>8d}  {st['status']}"
        )
    if per_view:
        extra = _table_parameters(record)
        units = record["model"]["units"]
        out.append("")
        head = (
            " view  nominal     tilt  deltilt  rotation"
            + "".join(f"{p[:9]:>10}" for p in extra)
            + "  points  mean resid"
        )
        out.append(head)
        for v in record["views"]:
            line = f" {v['view_number']:>4}{v['nominal_tilt_deg']:>9.2f}"
            if v["excluded"]:
                out.append(
                    line + f"{v['tilt_deg']:>9.2f}      excluded: transform interpolated from neighbours"
                )
                continue
            line += f"{v['tilt_deg']:>9.2f}{v['delta_tilt_deg']:>9.2f}{v['parameters']['rotation']:>10.2f}"
            for p in extra:
                line += _f(v["parameters"][p], ".2f" if units[p] == "deg" else ".4f", 10)
            line += f"{v['n_points']:>8d}{_f(v['mean_residual_px'], '.3f', 12)}"
            out.append(line)
    out.append("")
    out.append(
        f" Residual error mean and sd: {_f(s['mean_residual_px'], '.3f', 9)} "
        f"{_f(s['sd_residual_px'], '.3f', 9)} {s['n_points']:>8d} points"
    )
    out.append(
        f" RMS residual per coordinate: {_f(s['rms_residual_px'], '.3f', 8)} px  (noise-floor factor"
        f" {s['noise_floor_factor']:.3f}: noise estimate {_f(s['sigma_px'], '.3f', 0)} px per coordinate)"
    )
    out.extend(_misregistration_lines(record.get("misregistration")))
    worst = record["worst_points"]
    if worst:
        out.append("")
        out.append(
            f" {len(worst)} points with the largest residuals "
            f"(mean {_f(s['mean_residual_px'], '.3f', 0)}, sd {_f(s['sd_residual_px'], '.3f', 0)}):"
        )
        out.append("   marker   view         X         Y       dx       dy    resid     SDs")
        for p in worst:
            out.append(
                f" {p['marker_id']:>8d} {p['view_number']:>6d}{p['x']:>10.2f}{p['y']:>10.2f}"
                f"{p['dx']:>9.2f}{p['dy']:>9.2f}"
                f"{p['residual_px']:>9.3f}{_f(p['sds_above_mean'], '.2f', 8)}"
            )
    truth = record.get("truth")
    if truth:
        out.append("")
        out.append(" Compared with the known truth of the synthetic series:")
        for line in truth.get("lines", []):
            out.append("   " + line)
    out.append("")
    out.append(f" Status: {s['status']}")
    return "\n".join(out) + "\n"


def _misregistration_lines(section) -> list[str]:
    """The predicted misregistration and the near-degenerate directions, when the record has them."""
    if not section:
        return []
    grid = section["map"]
    plane = [v for row in grid["xy_map_px"] for v in row if v is not None]
    profile = grid["z_profile_px"]
    lines = [
        f" Predicted misregistration (1 sd of a point's projection, RMS over views):"
        f" {_f(section['at_centre_px'], '.3f', 0)} px at the tomogram centre,"
        f" up to {_f(max(plane, default=None), '.3f', 0)} px over the x-y map at z = 0,"
        f" {_f(profile[0], '.3f', 0)} / {_f(profile[-1], '.3f', 0)} px at z = {grid['z_px'][0]:.0f} /"
        f" {grid['z_px'][-1]:.0f} px"
    ]
    for d in section["near_degenerate"]:
        lines.append(f" Near-degenerate: {d['text']}")
    return lines


def _ranges(numbers) -> str:
    """[1, 2, 3, 7] -> '1-3,7'."""
    numbers = sorted(int(n) for n in numbers)
    parts, start = [], None
    for k, n in enumerate(numbers):
        if start is None:
            start = n
        if k + 1 == len(numbers) or numbers[k + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(parts)
