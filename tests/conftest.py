"""Test configuration: float64 for the reference computations (the library itself never flips it),
and the command line's caches off unless a test turns them on in a folder of its own (an
in-process ``cli.main`` would otherwise switch them on for the rest of the worker, in the user's
cache folder)."""

import os

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)
os.environ.setdefault("LMALIGN_NO_COMPILATION_CACHE", "1")
os.environ.setdefault("LMALIGN_RESIDENT", "0")  # tests start their own resident process, never a developer's

# CI (CI=true) draws the same property-test examples every run, so that a run's outcome depends
# on the code alone; a developer's runs draw new ones each time, to find what CI would not.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


#: Room (memory mappings below the kernel's limit) that a worker keeps before a test module, and
#: after any test, by dropping JAX's compiled code. Every compiled executable holds about three
#: mappings (its code pages); a worker passed 21,000 at 13% of the suite and 61,500 at its end,
#: one module added 20,000 by itself, and Linux's default limit (vm.max_map_count) is 65,530:
#: past it an mmap fails inside XLA, which crashed a compile with a segmentation fault and hung a
#: device_get waiting on threads it could not start (two runs, 2026-12-06). .ci/run raises the
#: limit; elsewhere these keep the suite within the default.
ROOM_BEFORE_MODULE = 30_000
ROOM_AFTER_TEST = 15_000


def _room() -> int | None:
    """Memory mappings this process may still make (the kernel's limit less those it holds);
    None off Linux."""
    try:
        with open("/proc/sys/vm/max_map_count") as limit, open(f"/proc/{os.getpid()}/maps", "rb") as maps:
            return int(limit.read()) - sum(1 for _ in maps)
    except (OSError, ValueError):
        return None


def pytest_runtest_teardown(item, nextitem):
    """JAX's caches are cleared after a module's last test when fewer than
    :data:`ROOM_BEFORE_MODULE` mappings are left (modules rarely share compiled code), and after
    any test when fewer than :data:`ROOM_AFTER_TEST` are (the module's later tests then compile
    again)."""
    room = _room()
    last_of_module = nextitem is None or nextitem.path != item.path
    if room is not None and room < (ROOM_BEFORE_MODULE if last_of_module else ROOM_AFTER_TEST):
        jax.clear_caches()


def pytest_runtest_setup(item):
    """The caches stay off for every test, whatever an earlier one did to the switch (a helper
    that deleted it once turned them on for the rest of its worker, in the user's cache folder)."""
    os.environ.setdefault("LMALIGN_NO_COMPILATION_CACHE", "1")


#: Seconds of test time per module (sum of setup, call and teardown; ``pytest --durations=0`` on
#: 2 cores, 2026-12-04, commit e026002, a quiet machine: 1,046 s of test time in 545 s), for the
#: modules over 15 s. The slowest run first: with
#: one pytest-xdist worker per core taking whole files (``--dist loadfile``, with xdist's own
#: reordering by number of tests turned off in pyproject.toml), longest-first keeps both workers
#: busy to the end instead of leaving one file of a minute or more to a single worker at the end.
#: Other modules follow in their usual order. A stale entry only makes the order less good.
SLOW_MODULES = {
    "test_batch.py": 97,
    "test_uncertainty.py": 70,
    "test_differentiable.py": 59,
    "test_notebook.py": 57,
    "test_local_backprojection.py": 49,
    "test_outputs_pinned.py": 49,
    "test_solver.py": 47,
    "test_benchmarks_quick.py": 46,
    "test_resident.py": 42,
    "test_compare.py": 34,
    "test_align.py": 32,
    "test_reprojector.py": 26,
    "test_compiled_cache.py": 26,
    "test_deformation.py": 25,
    "test_compare_local.py": 23,
    "test_cli_large.py": 22,
    "test_models.py": 21,
    "test_cli_imod.py": 21,
    "test_misregistration.py": 20,
    "test_local_alignment.py": 20,
    "test_cli_robust_compare.py": 17,
    # measured alone (-n0), 2026-12-06: its Dask worker is a process since then
    "test_distributed.py": 24,
}


def pytest_collection_modifyitems(items):
    """Slowest modules first (:data:`SLOW_MODULES`); a stable sort keeps each module's own order."""
    items.sort(key=lambda item: -SLOW_MODULES.get(item.path.name, 0))
