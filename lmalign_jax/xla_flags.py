"""XLA compiler flags that this package's entry points set before JAX's first computation.

jaxlib 0.10.2 and 0.11.0 hand some CPU dot and multiply-reduce fusions to XNNPACK's
``__ynn_fusion`` kernels by default, which can crash the process (a segmentation fault on an
Eigen worker thread, so Python's traceback shows wherever the main thread happened to be) or
hang (jax-ml/jax issues 39257 and 40412; the fix is in XNNPACK, after those releases): the
installed 0.10.2 segfaults on 40412's reproducer here. The solves, covariances and reporting
frames of this package compile to such fusions (of rank 3 at most in the tests' dumps, where
the reports' crashes were of rank 7; none of ours is known to crash: the test workers' crashes
of 2026-12-06 were the memory-mapping limit, tests/conftest.py). The flag
``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no fusion type) keeps XLA's own kernels,
the code path of 0.10.1, at a measured cost (``benchmarks/xla_flags_bench.py``: the 4k local
alignment 6-27% slower), taken so that no shape of a user's data can reach the upstream crash.

XLA reads ``XLA_FLAGS`` once, when JAX starts its backend, and rejects a flag it does not know
(the process aborts), so the flag is added only for the jaxlib releases known to need it and
only when the caller has not set it. The library never calls :func:`apply` on import; the
``lmalign`` command, the test suite and the benchmarks do, before any computation.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import MutableMapping

__all__ = ["YNN_FUSION_OFF", "YNN_AFFECTED", "apply", "needs_ynn_fusion_off", "with_workarounds"]

#: The flag that turns XNNPACK fusion off in XLA's CPU compiler.
YNN_FUSION_OFF = "--xla_cpu_experimental_ynn_fusion_type="
#: jaxlib releases [first, end) that fuse into XNNPACK by default and know the flag.
YNN_AFFECTED = ((0, 10, 2), (0, 12, 0))


def _release(version: str) -> tuple[int, ...] | None:
    """(major, minor, micro) of a version string such as ``0.10.2`` or ``0.11.0.dev20260701``."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return None if match is None else tuple(int(p or 0) for p in match.groups())


def needs_ynn_fusion_off(jaxlib_version: str) -> bool:
    """Whether this jaxlib release fuses into XNNPACK by default (and knows the flag)."""
    release = _release(jaxlib_version)
    return release is not None and YNN_AFFECTED[0] <= release < YNN_AFFECTED[1]


def with_workarounds(flags: str, jaxlib_version: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with :data:`YNN_FUSION_OFF` appended where this jaxlib
    needs it and ``flags`` does not already choose a fusion type (the caller's choice stands)."""
    if not needs_ynn_fusion_off(jaxlib_version) or "xla_cpu_experimental_ynn_fusion_type" in flags:
        return flags
    return f"{flags} {YNN_FUSION_OFF}".strip()


def _installed_jaxlib() -> str | None:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def apply(environ: MutableMapping[str, str] | None = None) -> bool:
    """Add the workarounds for the installed jaxlib to ``environ["XLA_FLAGS"]`` (default
    ``os.environ``). Takes effect only before JAX starts its backend (its first computation).
    Returns whether ``XLA_FLAGS`` changed."""
    environ = os.environ if environ is None else environ
    version = _installed_jaxlib()
    if version is None:
        return False
    before = environ.get("XLA_FLAGS", "")
    after = with_workarounds(before, version)
    if after != before:
        environ["XLA_FLAGS"] = after
    return after != before
