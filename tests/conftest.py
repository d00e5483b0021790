"""Test configuration: float64 for the reference computations (the library itself never flips it)."""

import jax

jax.config.update("jax_enable_x64", True)
