"""Starting the command line imports only what every run needs: the figure's matplotlib, Dask and
tqdm load when a command uses them, and the export cache stays off until the CLI asks."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
import lmalign_jax.cli
from lmalign_jax import compiled_cache
lazy = ("matplotlib", "dask", "distributed", "tqdm")
print(json.dumps({"loaded": sorted(m for m in lazy if m in sys.modules), "cache": compiled_cache.folder()}))
"""


def test_cli_import_leaves_heavy_optional_modules_unloaded():
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"loaded": [], "cache": None}
