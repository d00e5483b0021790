"""Test configuration: float64 for the reference computations (the library itself never flips it),
and the command line's caches off unless a test turns them on in a folder of its own (an
in-process ``cli.main`` would otherwise switch them on for the rest of the worker, in the user's
cache folder)."""

import os

import jax

jax.config.update("jax_enable_x64", True)
os.environ.setdefault("LMALIGN_NO_COMPILATION_CACHE", "1")
os.environ.setdefault("LMALIGN_RESIDENT", "0")  # tests start their own resident process, never a developer's


#: Seconds of test time per module (sum of setup, call and teardown; ``pytest --durations=0`` on
#: 2 cores, 2026-12-03, commit 5922072), for the modules over 30 s. The slowest run first: with
#: one pytest-xdist worker per core taking whole files (``--dist loadfile``, with xdist's own
#: reordering by number of tests turned off in pyproject.toml), longest-first keeps both workers
#: busy to the end instead of leaving one file of a minute or more to a single worker at the end.
#: Other modules follow in their usual order. A stale entry only makes the order less good.
SLOW_MODULES = {
    "test_batch.py": 161,
    "test_uncertainty.py": 130,
    "test_differentiable.py": 119,
    "test_benchmarks_quick.py": 105,
    "test_outputs_pinned.py": 90,
    "test_notebook.py": 85,
    "test_align.py": 81,
    "test_solver.py": 81,
    "test_local_backprojection.py": 71,
    "test_resident.py": 67,
    "test_compiled_cache.py": 58,
    "test_cli_large.py": 53,
    "test_compare.py": 51,
    "test_deformation.py": 50,
    "test_misregistration.py": 47,
    "test_result_model.py": 47,
    "test_reprojector.py": 42,
    "test_cli_robust_compare.py": 42,
    "test_cli_imod.py": 41,
    "test_models.py": 41,
    "test_local_alignment.py": 39,
    "test_cli_reconstruct.py": 36,
    "test_track_find.py": 34,
    "test_distributed.py": 33,
    "test_io_fuzz.py": 31,
}


def pytest_collection_modifyitems(items):
    """Slowest modules first (:data:`SLOW_MODULES`); a stable sort keeps each module's own order."""
    items.sort(key=lambda item: -SLOW_MODULES.get(item.path.name, 0))
