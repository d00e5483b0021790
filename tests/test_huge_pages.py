"""The launcher's relaunch with transparent huge pages (lmalign_jax.cli.huge_pages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmalign_jax.cli import huge_pages

ROOT = Path(__file__).resolve().parent.parent

# a script that relaunches, then reports its environment, arguments and the page faults of a
# computation whose output, 64 MiB (16,384 pages of 4 KiB), XLA allocates afresh (numpy asks for
# huge pages for its own large arrays itself)
_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    from lmalign_jax.cli.huge_pages import relaunch_with_huge_pages
    relaunch_with_huge_pages()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: x + 1.0)
    x = jnp.zeros((64 << 20) // 4, jnp.float32)
    f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = f(x).block_until_ready()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "argv": sys.argv[1:],
                      "faults": faults, "pid": os.getpid()}))
    """
)


def _run(tmp_path, env_extra, args=("a b", "--x=1")):
    script = tmp_path / "probe.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.SWITCH)}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_wanted_only_where_the_kernel_gives_huge_pages_on_request():
    glibc = sys.platform.startswith("linux") and huge_pages._glibc_at_least(2, 35)
    assert huge_pages.wanted({}, mode="madvise") is glibc
    assert huge_pages.wanted({}, mode="always") is False
    assert huge_pages.wanted({}, mode="never") is False
    assert huge_pages.wanted({}, mode=None) is False or glibc
    assert huge_pages.wanted({huge_pages.SWITCH: "0"}, mode="madvise") is False
    assert huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, mode="madvise") is False


def test_kernel_mode_reads_the_selected_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert huge_pages._kernel_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert huge_pages._kernel_mode(str(f)) == "always"
    assert huge_pages._kernel_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not huge_pages.wanted({}), reason="this system gives no huge pages on request")
def test_relaunch_keeps_the_command_and_cuts_the_page_faults(tmp_path):
    off = _run(tmp_path, {huge_pages.SWITCH: "0"})
    on = _run(tmp_path, {"GLIBC_TUNABLES": "glibc.malloc.check=0"})
    assert off["tunables"] is None
    # the tunable is added to those already set, and the arguments arrive unchanged
    assert on["tunables"] == "glibc.malloc.check=0:glibc.malloc.hugetlb=1"
    assert on["argv"] == off["argv"] == ["a b", "--x=1"]
    # 4 KiB pages: one fault per page; 2 MiB pages: 512 times fewer (allow for pages the
    # kernel could not give as huge ones)
    assert off["faults"] >= 16384 * 0.9
    assert on["faults"] < 16384 / 4


def test_no_relaunch_for_code_given_on_the_command_line():
    code = (
        "from lmalign_jax.cli.huge_pages import relaunch_with_huge_pages as r; r(); "
        "import os; print(os.environ.get('GLIBC_TUNABLES'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.SWITCH)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
