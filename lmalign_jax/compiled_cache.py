"""A disk cache of compiled JAX computations, so a new process neither traces, lowers nor compiles
a computation it (or an earlier process) has already run with the same shapes.

``call(jitted, *args, **static)`` returns ``jitted(*args, **static)``. Unless the cache is on it
is exactly that call. Once ``enable(folder)`` is called (the ``lmalign`` command line does; the
library never does by itself), the first call of each (function, static options, argument shapes
and dtypes) lowers and compiles the computation on flat arguments and stores the compiled
executable (``jax.experimental.serialize_executable``) in ``folder``; later calls, in any process,
load it and run it directly. Tracing and lowering again, and even a hit in JAX's persistent
compilation cache, cost a warm command more than its solve (0.4 s and 0.3 s on a small real set);
loading the executables costs a fraction of that, plus registering JAX's LAPACK kernels once
(which lowering would have done). The executable is the one the traced call compiles, so results
are the same numbers. This is done on the CPU backend only; on an accelerator the call is made
directly and JAX's own persistent cache skips the compile.

Entries are keyed by the function's module and name, its static options, the tree structure,
shapes, dtypes and weak types of its arguments, the JAX and jaxlib versions, the backend and
its platform version, this machine's CPU (model and instruction-set flags: compiled CPU code is
specific to them, and a cache folder may be shared by machines of a cluster), ``XLA_FLAGS``,
the default matmul precision, the default float width (x64 on or off) and a digest of this
package's source (and of the source file of any function from outside it): changing the code,
the machine or JAX never reuses an old entry. The least recently used entries beyond
``MAX_ENTRIES`` are removed. A corrupt, truncated or unreadable entry is ignored and rebuilt;
each entry is written to a temporary file and renamed into place, so processes running at once
never read half an entry. A call the cache cannot key (a static option that is not a plain value
or a module-level function, a traced argument, a computation that cannot be serialized) is
simply made directly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import struct
import sys
import tempfile
import types
from pathlib import Path

import jax
import numpy as np

#: First bytes of every entry; bump the digit when the layout below changes.
MAGIC = b"LMALIGN-EXECUTABLE-3\n"
SUFFIX = ".jaxexec"
#: Entries kept in a folder; past this the least recently used are removed when one is added.
MAX_ENTRIES = 500

_folder: str | None = None
#: key -> a jitted callable of the flat argument leaves returning the result tree.
_loaded: dict[str, object] = {}
#: keys whose compile or serialization failed in this process (made directly from then on).
_uncacheable: set[str] = set()


def enable(folder: str | os.PathLike) -> str:
    """Keep compiled computations in ``folder`` (created if needed) from now on; returns it."""
    global _folder
    os.makedirs(folder, exist_ok=True)
    _folder = os.fspath(folder)
    return _folder


def disable() -> None:
    """Stop reading and writing the cache (computations already loaded in memory are dropped)."""
    global _folder
    _folder = None
    _loaded.clear()
    _uncacheable.clear()


def folder() -> str | None:
    """The cache folder, or None when the cache is off."""
    return _folder


class _Unkeyable(Exception):
    """A static option or argument that cannot be named the same way in another process."""


def _describe(value) -> str:
    """A process-independent text for a static option: plain values, module-level functions,
    partials and frozen dataclasses of those."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset)):
        items = sorted(map(_describe, value)) if isinstance(value, frozenset) else map(_describe, value)
        return f"{type(value).__name__}({', '.join(items)})"
    if isinstance(value, functools.partial):
        kwargs = ", ".join(f"{k}={_describe(v)}" for k, v in sorted(value.keywords.items()))
        return f"partial({_describe(value.func)}, {_describe(value.args)}, {kwargs})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and value.__dataclass_params__.frozen:
        fields = ", ".join(
            f"{f.name}={_describe(getattr(value, f.name))}" for f in dataclasses.fields(value) if f.compare
        )
        return f"{type(value).__module__}:{type(value).__qualname__}({fields})"
    wrapped = getattr(value, "__wrapped__", None)  # a jitted function
    if isinstance(value, types.FunctionType) or (
        wrapped is not None and isinstance(wrapped, types.FunctionType)
    ):
        qualname = getattr(value, "__qualname__", "")
        if "<" in qualname:  # a lambda or a function defined inside another: not nameable
            raise _Unkeyable(qualname)
        module = value.__module__ or ""
        if module == __package__ or module.startswith(__package__ + "."):
            return f"{module}:{qualname}"  # covered by source_digest()
        return f"{module}:{qualname}:{_module_digest(module)}"
    raise _Unkeyable(type(value).__name__)


@functools.cache
def _module_digest(module: str) -> str:
    """SHA-256 of the source file of a module outside this package (so editing it re-keys)."""
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (OSError, TypeError):
        raise _Unkeyable(f"no source file for module {module!r}") from None


@functools.cache
def source_digest() -> str:
    """SHA-256 of this package's Python source (every .py file, with its relative path)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def _machine() -> str:
    """The backend's platform version and device kind, and on Linux the CPU's model name and
    instruction-set flags (compiled CPU code may use any of them)."""
    device = jax.devices()[0]
    parts = [device.client.platform_version, device.device_kind]
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(1 << 16)
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith(("model name", "flags", "Features", "CPU part")):
            parts.append(line)
        if line.strip() == "" and len(parts) > 2:
            break  # the first processor describes them all
    import platform  # noqa: PLC0415 - only where no /proc/cpuinfo

    parts += [platform.machine(), platform.processor()]
    return "\n".join(parts)


def _leaf_spec(leaf) -> jax.ShapeDtypeStruct:
    if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
        raise _Unkeyable(type(leaf).__name__)  # traced, or a Python scalar (weakly typed)
    sharding = getattr(leaf, "sharding", None)  # entries run on the default device only
    if sharding is not None and sharding.device_set != {_default_device()}:
        raise _Unkeyable("an array placed on other devices")
    weak = bool(getattr(leaf, "weak_type", False))
    return jax.ShapeDtypeStruct(np.shape(leaf), jax.dtypes.canonicalize_dtype(leaf.dtype), weak_type=weak)


def _key(jitted, leaves, in_tree, static: dict) -> tuple[str, list]:
    specs = [_leaf_spec(leaf) for leaf in leaves]
    parts = [
        _describe(jitted),
        ", ".join(f"{k}={_describe(v)}" for k, v in sorted(static.items())),
        str(in_tree),
        ";".join(f"{s.shape}{s.dtype}{'w' if s.weak_type else ''}" for s in specs),
        jax.__version__,
        jax.lib.__version__,
        jax.default_backend(),
        _machine(),
        os.environ.get("XLA_FLAGS", ""),  # compiler options (JAX's own cache keys them too)
        str(jax.config.jax_default_matmul_precision),
        str(jax.dtypes.canonicalize_dtype(np.float64)),
        source_digest(),
    ]
    name = getattr(jitted, "__name__", "f").strip("_") or "f"
    return f"{name}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:40]}", specs


class _TreeUnpickler(pickle.Unpickler):
    """Unpickles a PyTreeDef and nothing else: JAX's tree classes and this package's NamedTuples."""

    def find_class(self, module, name):
        if (module, name) in (
            ("jaxlib._jax.pytree", "PyTreeDef"),
            ("jax._src.tree_util", "default_registry"),
            ("jax._src.tree_util", "tracing_registry"),
        ):
            return super().find_class(module, name)
        if module == "lmalign_jax" or module.startswith("lmalign_jax."):
            cls = super().find_class(module, name)
            if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
                return cls
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a cache entry")


def _encode(payload: bytes, exec_trees, out_tree) -> bytes:
    trees = pickle.dumps((exec_trees, out_tree))
    body = struct.pack("<QQ", len(trees), len(payload)) + trees + payload
    return MAGIC + hashlib.sha256(body).digest() + body


def _decode(blob: bytes):
    """(payload, (exec in_tree, exec out_tree), out_tree) from an entry; raises ValueError on
    anything unexpected."""
    head = len(MAGIC) + 32 + 16
    if len(blob) < head or not blob.startswith(MAGIC):
        raise ValueError("not an entry of this version")
    checksum, body = blob[len(MAGIC) : len(MAGIC) + 32], blob[len(MAGIC) + 32 :]
    if hashlib.sha256(body).digest() != checksum:
        raise ValueError("checksum mismatch")
    n_trees, n_payload = struct.unpack("<QQ", body[:16])
    if 16 + n_trees + n_payload != len(body):
        raise ValueError("truncated")
    exec_trees, out_tree = _TreeUnpickler(io.BytesIO(body[16 : 16 + n_trees])).load()
    return body[16 + n_trees :], exec_trees, out_tree


def _runner(compiled, out_tree):
    return lambda leaves: jax.tree.unflatten(out_tree, compiled(*leaves))


@functools.cache
def _custom_calls_ready() -> bool:
    """Register the LAPACK kernels a compiled CPU executable may call (Cholesky, triangular
    solves): JAX registers them while lowering, which a loaded executable skips, and running one
    without them crashes the process. False where that cannot be done (then nothing is loaded)."""
    try:
        from jaxlib import lapack  # noqa: PLC0415 - only when the cache is on

        lapack.prepare_lapack_call("potrf_ffi", np.dtype(np.float64))
    except Exception:  # noqa: BLE001 - another jaxlib: compile instead of loading
        return False
    return True


def _deserialize(payload: bytes, exec_trees, out_tree):
    from jax.experimental import serialize_executable  # noqa: PLC0415 - only when the cache is on

    if not _custom_calls_ready():
        raise RuntimeError("cannot prepare the custom calls a loaded executable needs")
    # compiled for the default device: loaded without devices named, it would expect its
    # arguments sharded over every local device (several with --xla_force_host_platform_device_count)
    loaded = serialize_executable.deserialize_and_load(
        payload, *exec_trees, execution_devices=[_default_device()]
    )
    return _runner(loaded, out_tree)


def _default_device():
    """The device a computation of unplaced arrays runs on."""
    device = jax.config.jax_default_device
    if device is None or isinstance(device, str):  # unset, or a platform name
        return jax.devices(device)[0]
    return device


def _load(path: str):
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        run = _deserialize(*_decode(blob))
    except Exception:  # noqa: BLE001 - any damage means: rebuild the entry
        return None
    try:
        os.utime(path)  # marks it used, for _prune
    except OSError:
        pass
    return run


def _prune(folder: str) -> None:
    """Remove the least recently used entries beyond ``MAX_ENTRIES`` (old code, old shapes)."""
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(SUFFIX) and not e.name.startswith(".")]
        entries.sort(key=lambda e: e.stat().st_mtime)
    except OSError:
        return
    for entry in entries[: max(len(entries) - MAX_ENTRIES, 0)]:
        try:
            os.unlink(entry.path)
        except OSError:
            pass


def _store(path: str, blob: bytes) -> None:
    """Write ``blob`` to ``path`` atomically; a cache that cannot be written is not an error."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=SUFFIX)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


#: JAX's persistent-cache hits seen while this module compiles (see :func:`_compile`).
_jax_cache_hits: list[int] = []
_listening = False


def _count_jax_cache_hits(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _jax_cache_hits.append(1)


def _compile(jitted, in_tree, specs, static: dict, name: str):
    """Trace, lower and compile ``jitted`` on flat leaves: (compiled, out_tree).

    The executable must be compiled afresh, never taken from JAX's persistent compilation cache:
    one loaded from there serializes without its kernels, and a process that loads it fails
    running it ("Function ... not found"; jax 0.10). The computation is named after the entry
    (``name``), so JAX's cache holds it only when an earlier store of this entry put it there;
    if JAX reports a hit all the same (our entry was removed, JAX's kept), it is compiled again
    under a name of its own."""
    global _listening
    if not _listening:
        jax.monitoring.register_event_listener(_count_jax_cache_hits)
        _listening = True
    out_trees = []

    def flat(*leaves):
        out = jitted(*jax.tree.unflatten(in_tree, leaves), **static)
        out_leaves, out_tree = jax.tree.flatten(out)
        out_trees.append(out_tree)
        return out_leaves

    for suffix in ("", "_" + os.urandom(8).hex()):
        flat.__name__ = name + suffix
        hits = len(_jax_cache_hits)
        compiled = jax.jit(flat).lower(*specs).compile()
        if len(_jax_cache_hits) == hits:
            return compiled, out_trees[-1]
    raise RuntimeError("JAX's persistent cache answered a computation of a fresh name")


def _serialize(compiled, out_tree) -> bytes:
    from jax.experimental import serialize_executable  # noqa: PLC0415 - only when the cache is on

    payload, exec_in_tree, exec_out_tree = serialize_executable.serialize(compiled)
    return _encode(bytes(payload), (exec_in_tree, exec_out_tree), out_tree)


def call(jitted, *args, **static):
    """``jitted(*args, **static)``, through the cache when it is on (see the module docstring).

    ``args`` are pytrees of arrays; ``static`` are the jitted function's static keyword options.
    """
    if _folder is None or jax.default_backend() != "cpu":
        # elsewhere JAX's own persistent cache still skips the compile
        return jitted(*args, **static)
    leaves, in_tree = jax.tree.flatten(args)
    try:
        key, specs = _key(jitted, leaves, in_tree, static)
    except _Unkeyable:
        return jitted(*args, **static)
    if key in _uncacheable:
        return jitted(*args, **static)
    run = _loaded.get(key)
    if run is None:
        path = os.path.join(_folder, key + SUFFIX)
        run = _load(path)
        if run is None:
            try:
                compiled, out_tree = _compile(jitted, in_tree, specs, static, key.replace("-", "_"))
                blob = _serialize(compiled, out_tree)
            except Exception:  # noqa: BLE001 - not serializable: call it directly, as without the cache
                _uncacheable.add(key)
                return jitted(*args, **static)
            _store(path, blob)
            _prune(_folder)
            run = _runner(compiled, out_tree)
        _loaded[key] = run
    return run(leaves)
