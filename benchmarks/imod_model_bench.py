"""Write and read an IMOD fiducial model: the package's writer/reader beside imodmodel's own.

The model is what ``lmalign export --to imod`` writes as ``P_erase.fid`` for 151 views x M markers
with ids 100,001 + 7 k (IMOD contour numbers, so the model holds 170,000 contours for 10,000
markers, most of them empty placeholders that keep the ids). Timed, median of ``--repeat`` runs
each, the sides taking turns:

- ours: ``io.imod_model.write_imod_model`` / ``read_imod_model`` (headers by imodmodel, contours in
  bulk);
- imodmodel: one ``Contour`` per contour number and ``imodmodel.writers.write_model`` (how the
  package wrote models before commit 8048b38), and ``imodmodel.read`` (its parser
  and DataFrame, one pydantic object per contour).

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.imod_model_bench [--markers 10000] [--repeat 3]

Writes ``benchmarks/results/<date>-<host>-<cpu|gpu>-imod-model.json`` (or ``--out``) with the
machine, load, versions and commit (``common.environment``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings

import numpy as np

from .common import environment, machine_slug

N_VIEWS = 151


def marker_set(n_markers: int):
    from lmalign_jax.io import MarkerSet

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 8192, (N_VIEWS, n_markers, 2))
    ids = tuple(100_001 + 7 * k for k in range(n_markers))
    return MarkerSet(xy=xy, mask=np.ones((N_VIEWS, n_markers), bool), marker_ids=ids, image_size=(8192, 8192))


def write_with_imodmodel(path: str, markers) -> None:
    """One imodmodel ``Contour`` per contour number (empty ones for the gaps), then its writer."""
    from imodmodel.models import Contour, ImodModel, ModelHeader, Object, ObjectHeader
    from imodmodel.writers import write_model

    from lmalign_jax.io.markerset import contour_numbers

    numbers = contour_numbers(markers.marker_ids)
    column = {cid: k for k, cid in enumerate(numbers)}
    contours = []
    for cid in range(1, max(numbers) + 1):
        k = column.get(cid)
        views = np.nonzero(markers.mask[:, k])[0] if k is not None else np.zeros(0, int)
        pts = np.column_stack([markers.xy[views, k], views]) if k is not None else np.zeros((0, 3))
        contours.append(Contour(points=pts.reshape(-1, 3)))
    obj = Object(header=ObjectHeader(name="fiducials", flags=1 << 3), contours=contours)
    obj.update_sizes()
    model = ImodModel(header=ModelHeader(xmax=8192, ymax=8192, zmax=N_VIEWS), objects=[obj])
    with warnings.catch_warnings(), open(path, "wb") as f:
        warnings.simplefilter("ignore", DeprecationWarning)
        write_model(f, model)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markers", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="results JSON (default under benchmarks/results/)")
    args = ap.parse_args(argv)
    import imodmodel

    from lmalign_jax.io.imod_model import read_imod_model, write_imod_model

    meta = environment(quick=False)
    markers = marker_set(args.markers)
    times = {k: [] for k in ("ours_write", "imodmodel_write", "ours_read", "imodmodel_read")}
    with tempfile.TemporaryDirectory() as d:
        ours, theirs = os.path.join(d, "ours.fid"), os.path.join(d, "theirs.fid")
        for _ in range(args.repeat):
            times["ours_write"].append(timed(lambda: write_imod_model(ours, markers)))
            times["imodmodel_write"].append(timed(lambda: write_with_imodmodel(theirs, markers)))
            times["ours_read"].append(timed(lambda: read_imod_model(ours)))
            times["imodmodel_read"].append(timed(lambda: imodmodel.read(ours)))
            print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
        identical = open(ours, "rb").read() == open(theirs, "rb").read()
        size = os.path.getsize(ours)
    meta["loadavg_end"] = list(os.getloadavg())
    rows = {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}
    report = {
        "meta": meta,
        "case": {"views": N_VIEWS, "markers": args.markers, "contours": 100_001 + 7 * (args.markers - 1),
                 "points": N_VIEWS * args.markers, "bytes": size, "files_identical": identical},
        "rows": rows,
    }  # fmt: skip
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"{meta['date']}-{machine_slug(meta)}-imod-model.json"
    )
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    for k, r in rows.items():
        print(f"{k:>16}: {r['median_s']:7.2f} s (runs {', '.join(f'{t:.2f}' for t in r['runs_s'])})")
    print(f"same bytes: {identical}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
