"""``lmalign demo``: align a built-in synthetic series and compare with its truth, then reconstruct a
small synthetic stack with its solved alignment and check where the beads appear."""

from __future__ import annotations

import os
import textwrap

import mrcfile
import numpy as np

from .. import io
from ..core.align import align as align_observations
from ..io.outputs import OutputSet
from ..simulation.phantom import fit_similarity, locate_peaks
from ..workflow import AlignSettings, check_output_folder
from ..workflow.alignment_inputs import Alignment
from ..workflow.reconstruction import reconstruct_to_file
from .align import align_and_report
from .common import EXIT_FAILED, EXIT_OK, HelpFormatter, Progress, note, seed_number, warn
from .simulate import (
    SERIES_OUTPUTS,
    STACK_OUTPUTS,
    settings_record,
    simulate_series,
    write_series,
    write_stack,
)

#: The alignment part: a realistic series of marker positions (no images).
DEMO_SERIES = dict(
    views=61,
    markers=30,
    tilt_range=[-60.0, 60.0],
    image_size=[2048, 2048],
    thickness=300.0,
    rotation=-12.0,
    shift=15.0,
    noise=0.5,
    missing=0.1,
    outliers=0.0,
)
#: The reconstruction part: a small stack of gold beads.
DEMO_STACK = dict(
    views=41,
    markers=12,
    tilt_range=[-60.0, 60.0],
    image_size=[256, 256],
    thickness=40.0,
    rotation=-12.0,
    shift=3.0,
    noise=0.5,
    missing=0.0,
    outliers=0.0,
    stack=True,
    pixel_size=10.0,
)
DEMO_TOMO_THICKNESS = 64
#: Largest distance, in voxels, between a bead and its expected voxel for the demo to pass.
MAX_BEAD_ERROR_VOX = 1.0


def run_demo(args) -> int:
    options = DEMO_SERIES | {"seed": args.seed}
    out = OutputSet(args.out_dir, "demo_input")
    check_output_folder(out, SERIES_OUTPUTS, ())
    check_output_folder(
        OutputSet(args.out_dir, "demo_tomo"), (*SERIES_OUTPUTS, *STACK_OUTPUTS, ".xf", ".tlt"), ()
    )
    series = simulate_series(options)
    note(
        f"demo: a synthetic tilt series of {options['views']} views x {options['markers']} markers, "
        f"{options['noise']} px noise, {options['missing']:.0%} of the points missing at high tilt (seed "
        f"{args.seed})"
    )
    with out:
        csv, tlt = write_series(series, out, settings_record(options))
        out.commit()
    status = align_and_report(
        csv,
        tlt,
        AlignSettings(),
        out_dir=args.out_dir,
        prefix="demo",
        image_size=(2048.0, 2048.0),
        command=["lmalign", "demo", *getattr(args, "argv", [])[1:]],
        quiet=args.quiet,
        truth=series,
    )
    return max(status, demo_reconstruction(args.out_dir, args.seed))


def demo_reconstruction(out_dir: str, seed: int) -> int:
    """Simulate a small stack, align its markers, reconstruct ``demo.rec.mrc``, find the beads."""
    sim = DEMO_STACK | {"seed": seed}
    n, (nx, ny), n_markers = sim["views"], sim["image_size"], sim["markers"]
    note(
        f"demo: reconstruction: a synthetic stack of {n} views of {nx} x {ny} px with {n_markers} gold beads "
        f"(seed {seed})"
    )
    series = simulate_series(sim)
    with Progress(f"lmalign: aligning {n} views x {n_markers} markers ..."):
        result = align_observations(series.observations)
    if not result.converged:
        print(f"lmalign: error: the demo stack's alignment did not converge ({result.status})")
        return EXIT_FAILED
    out = OutputSet(out_dir, "demo_tomo")
    with out:
        write_series(series, out, settings_record(sim))
        stack = write_stack(series, out, pixel_size=sim["pixel_size"], thickness=sim["thickness"], seed=seed)
        io.write_xf(out.stage(".xf"), result.xf[:, :, :2], result.xf[:, :, 2])
        io.write_tlt(out.stage(".tlt"), result.tilts_deg)
        written = out.commit()
    rec = os.path.join(out_dir, "demo.rec.mrc")
    alignment = Alignment(
        result.xf[:, :, :2],
        result.xf[:, :, 2],
        result.tilts_deg,
        "the solved alignment",
        out.path(".xf"),
        out.path(".tlt"),
    )
    info = reconstruct_to_file(stack, alignment, rec, thickness=DEMO_TOMO_THICKNESS, warn=warn, note=note)
    with mrcfile.mmap(rec, mode="r") as mrc:
        volume = np.asarray(mrc.data)
    found, err_solved = locate_peaks(volume, result.markers)
    truth_in_frame = fit_similarity(series.markers, result.markers)  # the truth, gauge removed
    err_truth = np.linalg.norm(found - truth_in_frame, axis=1)
    nz, nyv, nxv = info["shape"]
    worst = float(max(np.max(err_solved), np.max(err_truth)))
    ok = bool(np.all(np.isfinite(err_solved))) and worst < MAX_BEAD_ERROR_VOX
    print(
        f"\n Reconstruction of a synthetic stack ({n} views of {nx} x {ny} px, {n_markers} gold beads), "
        f"aligned on its markers (rms residual {result.rms_residual_px:.3f} px):"
    )
    print(
        f"   lmalign reconstruct {stack} --xf {out.path('.xf')} --tlt {out.path('.tlt')} --thickness "
        f"{DEMO_TOMO_THICKNESS} --out {rec}"
    )
    print(f"   {nz} x {nyv} x {nxv} voxels in {info['seconds']:.1f} s")
    print(
        "   beads at their expected voxels (the solved marker positions): max distance "
        f"{np.max(err_solved):.2f} voxel, mean {np.mean(err_solved):.2f}"
    )
    print(
        "   beads vs their true positions (after the alignment's gauge: common shift, scale, rotation): max "
        f"distance {np.max(err_truth):.2f} voxel, mean {np.mean(err_truth):.2f}"
    )
    print(" Wrote " + ", ".join([*written, rec]))
    if not ok:
        print(
            f"lmalign: error: a bead of the demo tomogram is {worst:.2f} voxels from where it should be "
            f"(limit {MAX_BEAD_ERROR_VOX:g})"
        )
        return EXIT_FAILED
    return EXIT_OK


def add_demo(sub):
    p = sub.add_parser(
        "demo",
        help="align a built-in synthetic example, reconstruct one, compare with the truth",
        formatter_class=HelpFormatter,
        description=textwrap.fill(
            "Make a realistic synthetic tilt series (61 views, 30 markers, 0.5 px noise, 10% of the points "
            "missing at high tilt), write its marker and tilt files (demo_input.*), align it as 'lmalign "
            "align' would, write every output (demo.*), print the summary and compare the result with the "
            "known truth. Then simulate a small raw stack of gold beads (41 views of 256 x 256 px, 12 "
            "beads; demo_tomo.*), align its markers, reconstruct it with the solved alignment into "
            f"demo.rec.mrc ({DEMO_TOMO_THICKNESS} px thick) and check that every bead appears at its "
            "expected voxel. Exit status 1 if anything does not match.",
            95,
        ),
        epilog="example:\n  lmalign demo --out-dir lmalign-demo",
    )
    p.add_argument(
        "--out-dir", default="lmalign-demo", metavar="DIR", help="output folder (created if missing)"
    )
    p.add_argument("--seed", type=seed_number, default=0, help="random seed of the synthetic series")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-view table in the summary")
    p.set_defaults(run=run_demo)
