"""Test configuration: float64 for the reference computations (the library itself never flips it),
and the command line's caches off unless a test turns them on in a folder of its own (an
in-process ``cli.main`` would otherwise switch them on for the rest of the worker, in the user's
cache folder)."""

import os

import jax

jax.config.update("jax_enable_x64", True)
os.environ.setdefault("LMALIGN_NO_COMPILATION_CACHE", "1")
os.environ.setdefault("LMALIGN_RESIDENT", "0")  # tests start their own resident process, never a developer's
