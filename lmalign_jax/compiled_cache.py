"""A disk cache of traced and lowered JAX computations, so a new process neither traces nor lowers
a computation it (or an earlier process) has already run with the same shapes.

``call(jitted, *args, **static)`` returns ``jitted(*args, **static)``. Unless the cache is on it
is exactly that call. Once ``enable(folder)`` is called (the ``lmalign`` command line does; the
library never does by itself), the first call of each (function, static options, argument shapes
and dtypes) exports the computation with ``jax.export`` and stores its serialized StableHLO in
``folder``; later calls, in any process, load it and only compile it, which JAX's persistent
compilation cache then skips too. The exported module is the one the traced call compiles, so
results are the same numbers.

Entries are keyed by the function's module and name, its static options, the tree structure,
shapes, dtypes and weak types of its arguments, the JAX and jaxlib versions, the backend, the
default float width (x64 on or off) and a digest of this package's source (and of the source
file of any function from outside it): changing the code or upgrading JAX never reuses an old
entry. The least recently used entries beyond ``MAX_ENTRIES`` are removed. A corrupt, truncated
or unreadable entry is ignored and rebuilt; each entry is written to a temporary file and
renamed into place, so processes running at once never read half an entry. A call the cache
cannot key (a static option that is not a plain value or a module-level function, a traced
argument, an unexportable computation) is simply made directly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
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
MAGIC = b"LMALIGN-EXPORT-1\n"
SUFFIX = ".jaxexport"
#: Entries kept in a folder; past this the least recently used are removed when one is added.
MAX_ENTRIES = 500

_folder: str | None = None
#: key -> a jitted callable of the flat argument leaves returning the result tree.
_loaded: dict[str, object] = {}
#: keys whose export failed in this process (made directly from then on).
_unexportable: set[str] = set()


def enable(folder: str | os.PathLike) -> str | None:
    """Keep exported computations in ``folder`` (created if needed) from now on; returns it, or
    None when JAX cannot serialize them here (the optional ``flatbuffers`` package is missing)."""
    global _folder
    if importlib.util.find_spec("flatbuffers") is None:
        return None
    os.makedirs(folder, exist_ok=True)
    _folder = os.fspath(folder)
    return _folder


def disable() -> None:
    """Stop reading and writing the cache (computations already loaded in memory are dropped)."""
    global _folder
    _folder = None
    _loaded.clear()
    _unexportable.clear()


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


def _leaf_spec(leaf) -> jax.ShapeDtypeStruct:
    if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
        raise _Unkeyable(type(leaf).__name__)  # traced, or a Python scalar (weakly typed)
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
        ):
            return super().find_class(module, name)
        if module == "lmalign_jax" or module.startswith("lmalign_jax."):
            cls = super().find_class(module, name)
            if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
                return cls
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a cache entry")


def _encode(exported, out_tree) -> bytes:
    tree = pickle.dumps(out_tree)
    module = bytes(exported.serialize())
    body = struct.pack("<QQ", len(tree), len(module)) + tree + module
    return MAGIC + hashlib.sha256(body).digest() + body


def _decode(blob: bytes):
    """(Exported, out_tree) from an entry; raises ValueError on anything unexpected."""
    head = len(MAGIC) + 32 + 16
    if len(blob) < head or not blob.startswith(MAGIC):
        raise ValueError("not an entry of this version")
    checksum, body = blob[len(MAGIC) : len(MAGIC) + 32], blob[len(MAGIC) + 32 :]
    if hashlib.sha256(body).digest() != checksum:
        raise ValueError("checksum mismatch")
    n_tree, n_module = struct.unpack("<QQ", body[:16])
    if 16 + n_tree + n_module != len(body):
        raise ValueError("truncated")
    out_tree = _TreeUnpickler(io.BytesIO(body[16 : 16 + n_tree])).load()
    exported = jax.export.deserialize(bytearray(body[16 + n_tree :]))
    return exported, out_tree


def _runner(exported, out_tree):
    flat_call = jax.jit(exported.call)
    return lambda leaves: jax.tree.unflatten(out_tree, flat_call(*leaves))


def _load(path: str):
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        run = _runner(*_decode(blob))
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


def _export(jitted, in_tree, specs, static: dict):
    """Trace and lower ``jitted`` on flat leaves: (Exported, out_tree)."""
    out_trees = []

    def flat(*leaves):
        out = jitted(*jax.tree.unflatten(in_tree, leaves), **static)
        out_leaves, out_tree = jax.tree.flatten(out)
        out_trees.append(out_tree)
        return out_leaves

    flat.__name__ = getattr(jitted, "__name__", "f")
    exported = jax.export.export(jax.jit(flat))(*specs)
    return exported, out_trees[0]


def call(jitted, *args, **static):
    """``jitted(*args, **static)``, through the cache when it is on (see the module docstring).

    ``args`` are pytrees of arrays; ``static`` are the jitted function's static keyword options.
    """
    if _folder is None:
        return jitted(*args, **static)
    leaves, in_tree = jax.tree.flatten(args)
    try:
        key, specs = _key(jitted, leaves, in_tree, static)
    except _Unkeyable:
        return jitted(*args, **static)
    if key in _unexportable:
        return jitted(*args, **static)
    run = _loaded.get(key)
    if run is None:
        path = os.path.join(_folder, key + SUFFIX)
        run = _load(path)
        if run is None:
            try:
                exported, out_tree = _export(jitted, in_tree, specs, static)
                blob = _encode(exported, out_tree)
            except Exception:  # noqa: BLE001 - not exportable: call it directly, as without the cache
                _unexportable.add(key)
                return jitted(*args, **static)
            _store(path, blob)
            _prune(_folder)
            run = _runner(exported, out_tree)
        _loaded[key] = run
    return run(leaves)
