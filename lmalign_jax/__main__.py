"""``python -m lmalign_jax``: the ``lmalign`` command line (through its launcher, which uses a
resident process when one serves this environment)."""

import sys

from .cli.resident import main

if __name__ == "__main__":
    sys.exit(main())
