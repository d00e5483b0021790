"""``python -m benchmarks``: the benchmark runner (see run.py)."""

from benchmarks.run import main

if __name__ == "__main__":
    main()
