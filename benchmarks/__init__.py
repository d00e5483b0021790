"""Benchmark suite of lmalign_jax: ``python -m benchmarks [--quick] [--out FILE]`` (see README.md).

Nothing is imported here: the runner must set OPENBLAS_NUM_THREADS before numpy is imported.
"""
