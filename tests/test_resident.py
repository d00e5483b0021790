"""The resident process (lmalign_jax.cli.resident): a command run through it behaves as in its own
process (same files byte for byte, output, exit status, working folder, signals), it serves only
callers of the same environment, and it goes away when idle or asked."""

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(run_dir: str, **extra) -> dict:
    """A user's environment: no LMALIGN_RESIDENT, and no XLA_FLAGS."""
    env = {k: v for k, v in os.environ.items() if k not in ("LMALIGN_RESIDENT", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=run_dir, OPENBLAS_NUM_THREADS="1", **extra)
    return env


def _lmalign(args, env, cwd, **kw):
    return subprocess.run(
        [sys.executable, "-m", "lmalign_jax", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def _status(env, cwd) -> str:
    return _lmalign(["resident", "status"], env, cwd).stdout


def _served(env, cwd) -> int:
    out = _status(env, cwd)
    assert "commands served" in out, out
    return int(out.split(",")[-1].split()[0])


@pytest.fixture(scope="module")
def resident():
    """A resident process in a private runtime folder (short path: Unix sockets take 107 bytes)."""
    run_dir = tempfile.mkdtemp(prefix="lmr", dir="/tmp")
    env = _env(run_dir)
    work = Path(tempfile.mkdtemp(prefix="lmr-work"))
    started = _lmalign(["resident", "start", "--idle-minutes", "5"], env, work)
    assert started.returncode == 0, started.stderr
    assert "ready" in started.stdout
    try:
        yield env, work
    finally:
        stopped = _lmalign(["resident", "stop"], env, work)
        assert "stopped pid" in stopped.stdout, stopped.stdout + stopped.stderr


def test_launcher_starts_without_jax_or_numpy():
    probe = "import sys, lmalign_jax.cli.resident; print(sorted({'jax', 'numpy'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=_env("/tmp"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_a_command_writes_the_same_files_as_in_its_own_process(resident):
    env, work = resident
    args = ["simulate", "--views", "11", "--markers", "6", "--seed", "4"]
    before = _served(env, work)
    here = _lmalign([*args, "--out-dir", "here"], dict(env, LMALIGN_RESIDENT="0"), work)
    there = _lmalign([*args, "--out-dir", "there"], env, work)  # relative: the caller's folder
    assert here.returncode == there.returncode == 0, there.stderr
    assert _served(env, work) == before + 1
    names = sorted(p.name for p in (work / "here").iterdir())
    assert names == sorted(p.name for p in (work / "there").iterdir()) and names
    for name in names:
        assert (work / "here" / name).read_bytes() == (work / "there" / name).read_bytes(), name
    assert here.stdout.replace("here", "there") == there.stdout


def test_bad_input_gives_the_same_message_and_status(resident):
    env, work = resident
    args = ["align", "missing.fid", "--tilts", "missing.tlt"]
    here = _lmalign(args, dict(env, LMALIGN_RESIDENT="0"), work)
    there = _lmalign(args, env, work)
    assert here.returncode == there.returncode == 2
    assert here.stderr == there.stderr and there.stderr.startswith("lmalign: error:")
    assert not list(work.glob("missing*"))


def test_help_and_version_come_through(resident):
    env, work = resident
    version = _lmalign(["--version"], env, work)
    assert version.returncode == 0 and version.stdout.startswith("lmalign_jax ")


def test_another_environment_is_not_served(resident):
    """A variable read while importing (here JAX's precision switch) makes another environment:
    the command runs in its own process, and the resident one serves nothing."""
    env, work = resident
    before = _served(env, work)
    other = dict(env, JAX_ENABLE_X64="1")
    assert "none running" in _status(other, work)
    done = _lmalign(["--version"], other, work)
    assert done.returncode == 0
    assert _served(env, work) == before


def test_ctrl_c_reaches_the_command(resident):
    """SIGINT to the caller is forwarded: the command stops as it would in its own process."""
    env, work = resident
    cmd = [
        "simulate",
        "--stack",
        "--realistic",
        "--image-size",
        "2048",
        "2048",
        "--views",
        "121",
        "--out-dir",
        "big",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmalign_jax", *cmd],
        env=env,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not list((work / "big").glob("*.mrc")) if (work / "big").exists() else True


def test_a_stale_socket_is_removed_and_the_command_runs_here():
    run_dir = tempfile.mkdtemp(prefix="lms", dir="/tmp")
    env = _env(run_dir)
    key = subprocess.run(
        [sys.executable, "-c", "from lmalign_jax.cli import resident as r; print(r.socket_path())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(key)
    dead.close()  # the name exists, nobody listens
    done = _lmalign(["--version"], env, run_dir)
    assert done.returncode == 0 and done.stdout.startswith("lmalign_jax ")
    assert not os.path.exists(key)


def test_an_idle_resident_process_exits_and_removes_its_socket():
    run_dir = tempfile.mkdtemp(prefix="lmi", dir="/tmp")
    env = _env(run_dir)
    started = _lmalign(["resident", "start", "--idle-minutes", "0.02"], env, run_dir)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("pid")[1].split()[0])
    # watched through /proc, not `resident status`: a status call is a connection, which counts as
    # activity and restarts the 1.2 s idle clock (calls under 0.7 s apart would keep it alive)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _gone(pid):
        time.sleep(0.2)
    assert _gone(pid)
    assert not list(Path(run_dir).rglob("*.sock"))
    assert "none running" in _status(env, run_dir)


def _gone(pid: int) -> bool:
    """No such process, or one that has exited and waits to be reaped (a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


def test_a_folder_others_can_open_is_refused(tmp_path):
    """The socket's folder must be the user's alone: with a group- or world-open folder the
    launcher does not use (or start) a resident process."""
    run_dir = tempfile.mkdtemp(prefix="lmo", dir="/tmp")
    os.makedirs(os.path.join(run_dir, "lmalign_jax"), mode=0o777)
    os.chmod(os.path.join(run_dir, "lmalign_jax"), 0o777)
    env = _env(run_dir)
    done = _lmalign(["resident", "start"], env, tmp_path)
    assert done.returncode == 2 and "private folder" in done.stderr
    probe = "from lmalign_jax.cli import resident as r; import json; print(json.dumps(r.socket_path()))"
    path = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(path) is None


def test_a_folder_the_child_cannot_enter_gives_one_line(resident):
    """The caller's folder exists for the caller but not for the resident process's child (here:
    a request naming a missing folder, as a race would): one error line, exit 3, nothing run."""
    env, work = resident
    probe = (
        "import os, sys\n"
        "from lmalign_jax.cli import resident as r\n"
        "s = r._connect(r.socket_path())\n"
        "r._send(s, {'op': 'run', 'argv': ['--version'], 'cwd': '/no/such/folder', 'env': dict(os.environ),"
        " 'umask': 18}, fds=(0, 1, 2))\n"
        "print([reply for reply in r._lines(s)])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=work, capture_output=True, text=True)
    assert {"exit": 3} in ast.literal_eval(done.stdout), done.stdout
    assert done.stderr.count("\n") == 1 and "could not run the command" in done.stderr


def test_switch_one_starts_a_resident_process_after_the_command():
    """``LMALIGN_RESIDENT=1``: the command runs in its own process, then leaves a resident
    process behind, which serves the next command of the same environment."""
    run_dir = tempfile.mkdtemp(prefix="lma", dir="/tmp")
    env = _env(run_dir, LMALIGN_RESIDENT="1")
    plain = dict(env)
    plain.pop("LMALIGN_RESIDENT")
    try:
        assert _lmalign(["--version"], env, run_dir).returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "commands served" not in _status(plain, run_dir):
            time.sleep(0.5)
        assert _served(plain, run_dir) == 0
        assert _lmalign(["--version"], plain, run_dir).stdout.startswith("lmalign_jax ")
        assert _served(plain, run_dir) == 1
    finally:
        _lmalign(["resident", "stop"], plain, run_dir)


def test_bad_resident_options_get_one_line(capsys, monkeypatch):
    """A non-positive idle time, and a system without fork and Unix sockets, are refused with one
    line and exit 2; nothing is started."""
    from lmalign_jax import cli
    from lmalign_jax.cli import resident_command

    for value in ("0", "inf", "1e9"):  # inf: the server's socket timeout overflowed, exit 3 a minute later
        assert cli.main(["resident", "start", "--idle-minutes", value]) == 2
        bound = "--idle-minutes must be positive and at most 10080 (a week)"
        assert capsys.readouterr().err == f"lmalign: error: {bound}, got {float(value):g}\n"
    monkeypatch.setattr(resident_command, "supported", lambda: False)
    assert cli.main(["resident", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmalign: error: a resident process needs Unix sockets and fork")
    assert err.count("\n") == 1


def test_a_relative_runtime_folder_is_ignored(tmp_path):
    """The XDG spec calls a relative XDG_RUNTIME_DIR invalid. It was used as given: the server,
    started in /, made its socket under /relative while the launcher looked in ./relative, so
    start failed after a minute and left a server behind (audit)."""
    probe = "from lmalign_jax.cli import resident as r; import json; print(json.dumps(r.socket_path()))"
    env = _env("relative_xdg")
    path = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )
    assert path == os.path.join(f"/tmp/lmalign_jax-{os.getuid()}", os.path.basename(path))
    assert not (tmp_path / "relative_xdg").exists()


def test_a_server_whose_socket_is_taken_over_exits():
    """Two starts at once: the newer server takes the socket's name; the older one, which no
    command can reach any more, went on running until idle (30 min by default). It now exits
    within seconds."""
    run_dir = tempfile.mkdtemp(prefix="lmt", dir="/tmp")
    env = _env(run_dir)
    first = _lmalign(["resident", "start", "--idle-minutes", "5"], env, run_dir)
    assert first.returncode == 0, first.stderr
    old = int(first.stdout.split("pid")[1].split()[0])
    newer = None
    try:
        newer = subprocess.Popen(
            [sys.executable, "-m", "lmalign_jax.cli.resident", "--idle-minutes", "5"],
            env=env,
            cwd="/",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and f"pid {newer.pid}" not in _status(env, run_dir):
            time.sleep(0.2)
        assert f"pid {newer.pid}" in _status(env, run_dir)
        while time.monotonic() < deadline and not _gone(old):
            time.sleep(0.2)
        assert _gone(old)
        assert f"pid {newer.pid}" in _status(env, run_dir)  # the newer one's socket left alone
    finally:
        _lmalign(["resident", "stop"], env, run_dir)
        if not _gone(old):
            os.kill(old, signal.SIGTERM)
        if newer is not None:
            newer.wait(timeout=60)
