"""The disk cache of compiled computations: a reloaded solve gives the traced solve's numbers
bit for bit, damaged entries are rebuilt, and nothing is written unless the cache is switched on."""

import contextlib
import hashlib
import io as _io
import os
import pickle
import struct
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import DATA

from lmalign_jax import LMConfig, cli, compiled_cache, get_model, simulate
from lmalign_jax.core.problem import build_problem
from lmalign_jax.solve import least_squares

ROOT = DATA.parent.parent


@pytest.fixture
def cache(tmp_path):
    """The cache switched on in a fresh folder for one test, and off again afterwards."""
    compiled_cache.disable()
    compiled_cache.enable(tmp_path / "exported")
    yield tmp_path / "exported"
    compiled_cache.disable()


def _entries(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(compiled_cache.SUFFIX))


def _forget_loaded():
    """What a new process sees: the disk entries, nothing in memory."""
    compiled_cache._loaded.clear()


@pytest.fixture(scope="module")
def problem():
    series = simulate(n_views=11, n_markers=6, missing_fraction=0.1, seed=7)
    m = get_model("jou")
    views = series.views.copy()
    views[:, m.index("rotation")] += 0.02
    markers = series.markers + np.array([2.0, -1.0, 4.0])
    return build_problem(m, series.observations, views, markers, {"scale": "group:3"}, np.ones((6, 3), bool))


def _solve(p):
    return jax.device_get(
        least_squares(p.fn, p.x0, p.structure, eliminate=p.eliminate, config=LMConfig(max_iterations=30))
    )


def _must_not_compile(*args, **kwargs):
    raise AssertionError("compiled again instead of loading the stored executable")


def _assert_same_bits(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))


def test_compiled_and_reloaded_solve_equals_the_traced_one(problem, cache, monkeypatch):
    compiled_cache.disable()
    traced = _solve(problem)
    assert int(traced.iterations) > 1  # a real solve, not the start point
    compiled_cache.enable(cache)
    compiled = _solve(problem)  # compiles, stores, runs the compiled executable
    (entry,) = _entries(cache)
    _forget_loaded()
    monkeypatch.setattr(compiled_cache, "_compile", _must_not_compile)
    reloaded = _solve(problem)  # deserialized from disk, as in a new process: no compile
    assert _entries(cache) == [entry]
    _assert_same_bits(traced, compiled)
    _assert_same_bits(traced, reloaded)


@partial(jax.jit, static_argnames=("power",))
def _weighted_power_sum(x, w, *, power):
    """A small computation for the cache's own bookkeeping (cheap to compile)."""
    return {"sum": jnp.sum(w * x**power), "max": jnp.max(x)}


def _small(n=5, power=2):
    x = np.linspace(0.5, 2.0, n)
    return compiled_cache.call(_weighted_power_sum, x, np.ones(n), power=power)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_damaged_entry_is_ignored_and_rebuilt(cache, damage):
    expected = jax.device_get(_small())
    assert np.isclose(expected["sum"], np.sum(np.linspace(0.5, 2.0, 5) ** 2))
    (entry,) = _entries(cache)
    path = cache / entry
    blob = path.read_bytes()
    damaged = {
        "truncate": blob[: len(blob) // 2],
        "flip": blob[:-100] + bytes([blob[-100] ^ 0xFF]) + blob[-99:],
        "garbage": os.urandom(len(blob)),
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    _forget_loaded()
    _assert_same_bits(expected, _small())
    assert path.read_bytes() != damaged and compiled_cache._decode(path.read_bytes())  # rewritten whole
    assert _entries(cache) == [entry] and not [p for p in os.listdir(cache) if p.startswith(".tmp-")]


def test_an_entry_with_foreign_objects_is_refused():
    """Only tree definitions are unpickled from an entry: anything else makes it a bad entry."""
    module = b"x" * 10
    tree = pickle.dumps(os.system)
    body = struct.pack("<QQ", len(tree), len(module)) + tree + module
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        compiled_cache._decode(compiled_cache.MAGIC + hashlib.sha256(body).digest() + body)


def test_shapes_dtypes_and_static_options_key_the_entries(cache):
    _small()
    _small()
    assert len(_entries(cache)) == 1
    _small(n=6)
    _small(power=3)
    compiled_cache.call(
        _weighted_power_sum, np.linspace(0.5, 2.0, 5, dtype=np.float32), np.ones(5, np.float32), power=2
    )
    assert len(_entries(cache)) == 4
    _forget_loaded()
    assert float(_small(power=3)["sum"]) == pytest.approx(np.sum(np.linspace(0.5, 2.0, 5) ** 3), rel=1e-12)
    assert len(_entries(cache)) == 4


def test_compiler_flags_and_the_machine_key_the_entries(cache, monkeypatch):
    """An executable compiled under other XLA flags, or on another CPU, is never loaded."""
    _small()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    _small()
    assert len(_entries(cache)) == 2
    compiled_cache._machine.cache_clear()
    monkeypatch.setattr(compiled_cache, "_machine", lambda: "another CPU")
    _small()
    assert len(_entries(cache)) == 3


PERSISTENT_THEN_OURS = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
from lmalign_jax import compiled_cache

jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
compiled_cache.enable(sys.argv[2])
jax.jit(lambda v: v + 1)(np.ones(3))  # JAX's cache in use before ours compiles (as in the CLI)


@jax.jit
def gram_plus_sine(x):
    return jnp.transpose(x) @ x + jnp.sin(x).T


x = np.linspace(0.0, 1.0, 900).reshape(30, 30)
print(float(np.asarray(compiled_cache.call(gram_plus_sine, x)).sum()))
"""


def test_an_executable_is_stored_whole_when_jax_has_it_cached(tmp_path):
    """A computation in JAX's persistent cache but not in ours (our entries removed, or keyed
    anew after an upgrade) is compiled afresh: one taken from JAX's cache serializes without its
    kernels, and the next process failed running it."""
    script = tmp_path / "probe.py"
    script.write_text(PERSISTENT_THEN_OURS)
    ours = tmp_path / "ours"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def run():
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "jax"), str(ours)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout.strip().splitlines()[-1])

    first = run()  # compiles: into JAX's cache and ours
    for entry in _entries(ours):
        os.unlink(ours / entry)
    assert run() == first  # JAX's cache has it, ours does not: stored again
    assert len(_entries(ours)) == 1
    assert run() == first  # loaded from ours and run


TWO_DEVICES = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
from lmalign_jax import compiled_cache

jax.config.update("jax_num_cpu_devices", 2)  # as lmalign batch sets it on a machine of 2 cores
compiled_cache.enable(sys.argv[1])


@jax.jit
def gram_plus_sine(x):
    return jnp.transpose(x) @ x + jnp.sin(x).T


x = np.linspace(0.0, 1.0, 900).reshape(30, 30)
print(float(np.asarray(compiled_cache.call(gram_plus_sine, x)).sum()))
if len(sys.argv) > 2:  # placed on another device: called directly, not through the entry
    on_second = jax.device_put(x, jax.devices()[1])
    print(float(np.asarray(compiled_cache.call(gram_plus_sine, on_second)).sum()))
"""


def test_an_entry_loads_in_a_process_with_several_cpu_devices(tmp_path):
    """An entry loaded in a process with two CPU devices expected its arguments sharded over both
    ("Expected args to execute_sharded_on_local_devices to have 2 shards"): every lmalign batch
    on a 2-core machine after the first one that stored an entry ended with exit 3. Entries run
    on the default device; arrays placed on another device are not looked up."""
    script = tmp_path / "probe.py"
    script.write_text(TWO_DEVICES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    results = []
    for extra in ([], ["placed"]):  # stores the entry, then loads it
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "ours"), *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results += [float(v) for v in done.stdout.split()]
    assert len(results) == 3 and len(set(results)) == 1 and len(_entries(tmp_path / "ours")) == 1


def test_least_recently_used_entries_are_removed_past_the_limit(cache, monkeypatch):
    monkeypatch.setattr(compiled_cache, "MAX_ENTRIES", 2)
    _small(n=5)
    first = _entries(cache)
    _small(n=6)
    os.utime(cache / first[0], (1, 1))  # long unused
    _small(n=7)
    assert len(_entries(cache)) == 2 and first[0] not in _entries(cache)


def test_unnameable_static_options_are_called_directly(cache):
    @jax.jit
    def double(x):
        return 2 * x

    assert float(compiled_cache.call(double, np.float64(2.0))) == 4.0  # defined in a function
    times = jax.jit(lambda x, *, k: k * x, static_argnames="k")
    assert float(compiled_cache.call(times, np.float64(2.0), k=3)) == 6.0  # a lambda
    assert _entries(cache) == []


def test_traced_arguments_bypass_the_cache(cache):
    """Inside a trace (a batch kernel) the computation is inlined, never exported."""
    assert (
        float(jax.jit(lambda x: compiled_cache.call(_weighted_power_sum, x, x, power=1)["sum"])(np.ones(3)))
        == 3.0
    )
    assert _entries(cache) == []


def test_off_unless_switched_on(tmp_path, monkeypatch):
    """The library writes no cache by itself; LMALIGN_NO_COMPILATION_CACHE keeps the CLI's off."""
    compiled_cache.disable()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _small()
    assert compiled_cache.folder() is None and os.listdir(tmp_path) == []
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")
    assert cli.enable_compilation_cache() is None and compiled_cache.folder() is None
    assert os.listdir(tmp_path) == []


BBA_ALIGN = [
    "align",
    str(DATA / "imod-bb" / "BBa.resid"),
    "--tilts",
    str(DATA / "imod-bb" / "BBa.tlt"),
    "--image-size",
    "512",
    "512",
    "--quiet",
    "--no-figure",
]
OUTPUTS = (".xf", ".tlt", ".resid", ".xyz")


def test_cli_outputs_are_byte_identical_through_the_cache(tmp_path, monkeypatch):
    """Real IMOD points: a traced run, a cold run that exports and a warm run that reloads (new
    processes, as a user runs them) write the same bytes; the warm run adds no entry."""
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")  # in this process: JAX's settings untouched
    compiled_cache.disable()
    with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
        assert cli.main([*BBA_ALIGN, "--out-dir", str(tmp_path / "traced")]) == 0
    env = {k: v for k, v in os.environ.items() if k != "LMALIGN_NO_COMPILATION_CACHE"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    entries = []
    for run in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, "-m", "lmalign_jax", *BBA_ALIGN, "--out-dir", str(tmp_path / run)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        entries.append(_entries(tmp_path / "cache" / "lmalign_jax" / "executables"))
    assert len(entries[0]) >= 4 and entries[1] == entries[0]  # solve, uncertainty, frame, projection
    for suffix in OUTPUTS:
        traced = (tmp_path / "traced" / f"BBa{suffix}").read_bytes()
        assert (
            traced
            == (tmp_path / "cold" / f"BBa{suffix}").read_bytes()
            == (tmp_path / "warm" / f"BBa{suffix}").read_bytes()
        )
