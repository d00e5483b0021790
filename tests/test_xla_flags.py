"""lmalign_jax.xla_flags: XNNPACK fusion is turned off on the jaxlib releases whose fusions crash,
only there, without overriding a caller's choice, and by the command line before JAX starts.

The installed jaxlib is checked against the crash itself: a rank-7 float32 multiply-reduce that
jaxlib 0.10.2 hands to ``__ynn_fusion`` kills the process with a segmentation fault, or hangs, on
x86-64 (jax-ml/jax issue 40412); with the flag added by :func:`xla_flags.apply` the same program
runs and sums right.
"""

import importlib.metadata
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from lmalign_jax import xla_flags

JAXLIB = importlib.metadata.version("jaxlib")
AFFECTED = xla_flags.needs_ynn_fusion_off(JAXLIB)

#: The reproducer of jax-ml/jax issue 40412: a segmentation fault on jaxlib 0.10.2.
CRASHING_REDUCE = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from lmalign_jax import xla_flags
    if sys.argv[1] == "apply":
        xla_flags.apply()
    shape = (3, 1, 2, 2, 8, 8, 8)
    u = jax.random.normal(jax.random.PRNGKey(0), shape, dtype=jnp.float32)
    v = jax.random.normal(jax.random.PRNGKey(1), shape, dtype=jnp.float32)
    out = jax.jit(lambda a, b: jnp.sum(a * b, axis=3))(u, v)
    ref = jnp.einsum("abcdefg,abcdefg->abcefg", u, v, precision="highest")
    print(float(jnp.max(jnp.abs(out - ref))))
    """
)


@pytest.mark.parametrize(
    ("version", "needed"),
    [
        ("0.4.30", False),
        ("0.10.1", False),
        ("0.10.2", True),
        ("0.10.2.dev20260601", True),
        ("0.11.0", True),
        ("0.11.9", True),
        ("0.12.0", False),
        ("1.0", False),
        ("unknown", False),
    ],
)
def test_the_flag_is_added_for_the_affected_releases_only(version, needed):
    assert xla_flags.needs_ynn_fusion_off(version) is needed
    assert xla_flags.with_workarounds("", version) == (xla_flags.YNN_FUSION_OFF if needed else "")


def test_other_flags_are_kept_and_a_callers_choice_stands():
    device_count = "--xla_force_host_platform_device_count=2"
    assert xla_flags.with_workarounds(device_count, "0.10.2") == f"{device_count} {xla_flags.YNN_FUSION_OFF}"
    chosen = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla_flags.with_workarounds(chosen, "0.10.2") == chosen
    once = xla_flags.with_workarounds("", "0.10.2")
    assert xla_flags.with_workarounds(once, "0.10.2") == once  # idempotent


def test_apply_edits_the_given_environment():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply(environ) is AFFECTED
    assert environ["XLA_FLAGS"].endswith(xla_flags.YNN_FUSION_OFF) is AFFECTED
    assert xla_flags.apply(environ) is False  # already there (or not needed)
    empty = {}
    xla_flags.apply(empty)
    assert ("XLA_FLAGS" in empty) is AFFECTED


def _run(script, *args, env, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _without_xla_flags():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


@pytest.mark.skipif(not AFFECTED, reason=f"jaxlib {JAXLIB} does not fuse into XNNPACK by default")
def test_the_installed_jaxlib_fails_without_the_flag_and_runs_with_it():
    env = _without_xla_flags()
    if platform.machine() == "x86_64":  # where the upstream report has it crash or hang every time
        try:
            plain = _run(CRASHING_REDUCE, "plain", env=env, timeout=60).returncode
        except subprocess.TimeoutExpired:
            plain = "hung"
        assert plain != 0  # the upstream bug is there: the flag is needed
    fixed = _run(CRASHING_REDUCE, "apply", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert float(fixed.stdout.strip().splitlines()[-1]) < 1e-4  # float32 sums of 2 products


def test_the_command_line_sets_the_flags_before_jax_starts():
    script = textwrap.dedent(
        """
        import os
        from lmalign_jax.cli import main
        main(["--version"])
        import jax
        jax.numpy.zeros(1).block_until_ready()  # XLA starts, reading XLA_FLAGS now
        print(os.environ.get("XLA_FLAGS", ""))
        """
    )
    proc = _run(script, env=_without_xla_flags())
    assert proc.returncode == 0, proc.stderr
    assert (xla_flags.YNN_FUSION_OFF in proc.stdout) is AFFECTED
