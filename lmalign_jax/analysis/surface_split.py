"""Sorting beads onto two parallel surfaces, and whether they separate at all (:mod:`.surfaces`).

The split: from four starting splits (the middle and the widest empty band of z, about the
one-plane fit and in raw z) assign each bead to the nearer of the two parallel planes and refit
until nothing changes, keep the split with the least squared residual, then move single beads to
the other surface while that lowers it. The separation statistic ``D = (c_top - c_bottom) / s``
(``s``: residual SD about the two planes) of the data is judged against the same statistic, with
the same split, on beads drawn uniformly through one slab at the same x, y
(:func:`null_separations`). The reasons are in :mod:`.surfaces`' docstring.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["least_squares", "null_separations", "parallel_planes", "plane_design", "separation_of", "split"]


def plane_design(xy: np.ndarray, use_y: bool, group=None) -> np.ndarray:
    """Design matrix (n, k) of ``z = a x [+ b y] + c [+ d top]`` at positions ``xy`` (n, 2);
    ``group`` (n,) bool: 1 for the beads on the top surface (two parallel planes)."""
    cols = [xy[:, 0]] + ([xy[:, 1]] if use_y else []) + [np.ones(len(xy))]
    if group is not None:
        cols.append(group.astype(np.float64))
    return np.stack(cols, axis=1)


def least_squares(design: np.ndarray, z: np.ndarray):
    """(coefficients, residuals ``z - design @ coefficients``) of the least-squares fit."""
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    return coef, z - design @ coef


def parallel_planes(xyz: np.ndarray, top: np.ndarray):
    """Coefficients (a, b, c_bottom, c_top - c_bottom), residuals and design of two parallel planes."""
    design = plane_design(xyz[:, :2], True, top)
    coef, resid = least_squares(design, xyz[:, 2])
    return coef, resid, design


def _middle(v: np.ndarray) -> np.ndarray:
    return v > (v.max() + v.min()) / 2.0


def _widest_gap(v: np.ndarray) -> np.ndarray:
    ordered = np.sort(v)
    k = int(np.argmax(np.diff(ordered)))
    return v > (ordered[k] + ordered[k + 1]) / 2.0


def _flip_refine(base: np.ndarray, z: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``top`` (n,) improved by moving single beads to the other surface while that lowers the
    two planes' squared residual. Assigning each bead to the nearer plane can stop with a bead on
    the wrong surface whose pull tilts both planes towards it (a 16-bead slab slanted 10 deg:
    residual 8,246 px^2 against 29 for the true split); one flip at a time, all flips tried in one
    batched solve, undoes that. ``base`` (n, 3): columns x, y, 1."""
    n = len(z)
    flips = np.eye(n, dtype=bool)
    rss_now = math.inf
    for _ in range(n):
        groups = (top[None, :] ^ flips).astype(np.float64)  # (candidate, bead)
        counts = groups.sum(axis=1)
        design = np.concatenate([np.broadcast_to(base, (n, n, 3)), groups[:, :, None]], axis=2)
        coef = np.linalg.pinv(design) @ z  # (candidate, 4)
        rss = np.sum((z - np.einsum("cnk,ck->cn", design, coef)) ** 2, axis=1)
        rss[(counts == 0) | (counts == n)] = math.inf
        if not math.isfinite(rss_now):
            g = top.astype(np.float64)
            d = np.column_stack([base, g])
            r = z - d @ (np.linalg.pinv(d) @ z)
            rss_now = float(r @ r)
        best = int(np.argmin(rss))
        if not rss[best] < rss_now * (1.0 - 1e-9):
            break
        top, rss_now = top ^ flips[best], float(rss[best])
    return top


def split(xyz: np.ndarray, dev: np.ndarray) -> np.ndarray:
    """Top-surface mask (n,) of the two-parallel-plane split with the least squared residual."""
    z = xyz[:, 2]
    best, best_rss = None, math.inf
    for start in (_middle(dev), _widest_gap(dev), _middle(z), _widest_gap(z)):
        top = start
        for _ in range(100):
            if top.all() or not top.any():
                break
            coef, _, _ = parallel_planes(xyz, top)
            level = z - coef[0] * xyz[:, 0] - coef[1] * xyz[:, 1]
            lower, upper = sorted((coef[2], coef[2] + coef[3]))
            new = np.abs(level - upper) < np.abs(level - lower)
            if new.all() or not new.any() or np.array_equal(new, top):
                break
            top = new
        if top.all() or not top.any():
            continue
        coef, resid, _ = parallel_planes(xyz, top)
        if coef[3] < 0:  # the group called top lies below
            top = ~top
            coef, resid, _ = parallel_planes(xyz, top)
        rss = float(resid @ resid)
        if rss < best_rss:
            best, best_rss = top, rss
    if best is None:
        return None
    best = _flip_refine(plane_design(xyz[:, :2], True), z, best)
    if parallel_planes(xyz, best)[0][3] < 0:
        best = ~best
    return best


def separation_of(xyz: np.ndarray, top: np.ndarray) -> float:
    coef, resid, _ = parallel_planes(xyz, top)
    sd = math.sqrt(float(resid @ resid) / (len(xyz) - 4))
    return float(coef[3]) / sd if sd > 0 else math.inf


def null_separations(xy: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Separation statistic (draws,) of beads drawn uniformly through one slab at the given
    x, y (points, 2); the same split as the data get, on normal equations (x, y centred) for
    speed."""
    rng = np.random.default_rng(seed)
    n = len(xy)
    centred = xy - xy.mean(axis=0)
    base = np.column_stack([centred, np.ones(n)])  # (n, 3)
    base_pinv = np.linalg.pinv(base)
    out = np.empty(draws)
    for k in range(draws):
        z = rng.uniform(0.0, 1.0, n)
        dev = z - base @ (base_pinv @ z)
        out[k] = _separation_fast(base, z, dev)
    return out


def _separation_fast(base: np.ndarray, z: np.ndarray, dev: np.ndarray) -> float:
    """``separation_of(split(...))`` for one draw: best of the four starts by squared residual."""

    def solve(top):
        g = top.astype(np.float64)
        design = np.column_stack([base, g])
        coef = np.linalg.solve(design.T @ design, design.T @ z)
        return coef, z - design @ coef

    best_rss, best_top = math.inf, None
    for start in (_middle(dev), _widest_gap(dev), _middle(z), _widest_gap(z)):
        top = start
        coef = resid = None
        for _ in range(100):
            if top.all() or not top.any():
                break
            try:
                coef, resid = solve(top)
            except np.linalg.LinAlgError:  # the split lines up with x, y: not a candidate
                top = np.ones_like(top)
                break
            level = z - base[:, :2] @ coef[:2]
            lower, upper = sorted((coef[2], coef[2] + coef[3]))
            new = np.abs(level - upper) < np.abs(level - lower)
            if new.all() or not new.any() or np.array_equal(new, top):
                break
            top = new
        if top.all() or not top.any():
            continue
        coef, resid = solve(top)
        rss = float(resid @ resid)
        if rss < best_rss:
            best_rss, best_top = rss, top
    if best_top is None:
        return 0.0
    top = _flip_refine(base, z, best_top)
    design = np.column_stack([base, top.astype(np.float64)])
    coef = np.linalg.pinv(design) @ z
    resid = z - design @ coef
    rss = float(resid @ resid)
    sd = math.sqrt(rss / (len(z) - 4))
    return abs(float(coef[3])) / sd if sd > 0 else math.inf
