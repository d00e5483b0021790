"""The ``lmalign`` launcher and its resident process: a warm command in well under a second's overhead.

A warm ``lmalign align`` spends most of its time before and after the work: importing JAX, the
package and matplotlib (about 1.2 s here) and loading compiled computations. Users iterate
(exclude a view, re-run), so ``lmalign resident start`` keeps one process with everything
imported, listening on a Unix socket; each later ``lmalign`` command (this module's
:func:`main`, the console entry point) connects, hands over its arguments, working folder,
environment, umask and its stdin/stdout/stderr (the descriptors themselves, ``SCM_RIGHTS``),
and the resident process forks a child that runs the command exactly as a new process would
(:func:`lmalign_jax.cli._main.main`) and returns its exit status. Output goes straight to the
caller's terminal or files; Ctrl-C and termination are forwarded to the child.

Safety:

* the resident process imports modules only: JAX's backend (its threads) starts in each forked
  child, never before the fork;
* a caller uses a resident process only when it was started for the same package files (their
  modification times), Python, installed packages (site folders' modification times) and every
  environment variable read at import (``JAX_*``, ``XLA_*``, ``LMALIGN_*``, thread counts,
  matplotlib's): the socket's name is a hash of these, so after an update or with another
  setting the command simply runs in its own process;
* the socket lives in a folder only the user can open (checked), and the server also checks the
  peer's user id;
* the resident process exits after ``--idle-minutes`` without a command, or on
  ``lmalign resident stop``.

``LMALIGN_RESIDENT=0`` never uses one; ``LMALIGN_RESIDENT=1`` also starts one (after the
command) when none is running. This module imports only the standard library until it serves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from .huge_pages import relaunch_with_huge_pages
from .interrupts import STOPPED_STATUSES, deliver_lost_interrupts, exit_stopped

__all__ = ["main", "environment_key", "socket_path", "ping", "serve", "start", "stop", "supported"]

SWITCH = "LMALIGN_RESIDENT"
DEFAULT_IDLE_MINUTES = 30.0
#: Longest --idle-minutes taken: a week (a socket timeout of more than ~1.5e8 minutes overflows).
MAX_IDLE_MINUTES = 7 * 24 * 60.0
#: How often (s) a waiting resident process checks that its socket is still its own.
_OWNERSHIP_CHECK_S = 2.0
#: Environment variables read while importing (JAX's and XLA's settings, thread counts,
#: matplotlib's folders) or that change what a command does: a resident process serves only
#: callers with the same values.
KEYED_PREFIXES = ("JAX_", "XLA_", "LMALIGN_", "OPENBLAS_", "OMP_", "MKL_", "MPL", "CUDA_", "NVIDIA_")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The environment as the launcher found it, before any import changed it (JAX sets variables of
#: its own): what a resident process is started with.
_LAUNCH_ENVIRONMENT = dict(os.environ)
_HEADER = struct.Struct("!I")
#: Seconds a caller waits for the resident process to fork the command's process.
PID_TIMEOUT = 10.0


def environment_key(environ=None) -> str:
    """Hash of what a resident process must share with its caller (module docstring)."""
    environ = os.environ if environ is None else environ
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{os.getuid()}\0{_PACKAGE}\0".encode())
    for folder, _, files in sorted(os.walk(_PACKAGE)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(f"{path}\0{os.stat(path).st_mtime_ns}\0".encode())
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")) and os.path.isdir(entry):
            h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\0".encode())
    for name in sorted(environ):
        if name.startswith(KEYED_PREFIXES) and name != SWITCH:
            h.update(f"{name}={environ[name]}\0".encode())
    return h.hexdigest()[:24]


def _private_folder() -> str | None:
    """``$XDG_RUNTIME_DIR/lmalign_jax`` (or ``/tmp/lmalign_jax-<uid>``), created 0700; None when
    it exists but another user could open it."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and not os.path.isabs(base):  # the XDG spec: a relative path is invalid, ignored
        base = None
    folder = os.path.join(base, "lmalign_jax") if base else f"/tmp/lmalign_jax-{os.getuid()}"
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.stat(folder)
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return folder


#: Longest socket path the kernel takes (``sun_path`` is 108 bytes with its terminating zero).
MAX_SOCKET_PATH = 107


def socket_path(key: str | None = None) -> str | None:
    """The socket of the resident process for this environment (None: no private folder, or a
    path too long for a Unix socket)."""
    folder = _private_folder()
    if folder is None:
        return None
    path = os.path.join(folder, f"{key or environment_key()}.sock")
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def _connect(path: str | None, timeout: float | None = None) -> socket.socket | None:
    if path is None or not os.path.exists(path):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except ConnectionRefusedError:  # its process has gone: the name is stale
        s.close()
        try:
            os.unlink(path)
        except OSError:
            pass
        return None
    except OSError:
        s.close()
        return None
    return s


def _send(s: socket.socket, message: dict, fds=()) -> None:
    body = json.dumps(message).encode()
    if fds:
        socket.send_fds(s, [_HEADER.pack(len(body))], list(fds))
    else:
        s.sendall(_HEADER.pack(len(body)))
    s.sendall(body)


def _receive(conn: socket.socket, max_fds: int = 0) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, max_fds)
    while len(header) < _HEADER.size:
        more = conn.recv(_HEADER.size - len(header))
        if not more:
            raise ConnectionError("request cut short")
        header += more
    (size,) = _HEADER.unpack(header)
    body = b""
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ConnectionError("request cut short")
        body += more
    return json.loads(body), list(fds)


def _lines(s: socket.socket):
    """JSON replies, one per line, until the other end closes."""
    buffer = b""
    while True:
        try:
            more = s.recv(4096)
        except InterruptedError:
            continue
        if not more:
            return
        buffer += more
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def ping(key: str | None = None, timeout: float = 5.0) -> dict | None:
    """The resident process's state (pid, started, commands served), or None when none runs."""
    s = _connect(socket_path(key), timeout)
    if s is None:
        return None
    try:
        _send(s, {"op": "ping"})
        return next(_lines(s), None)
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def run_in_resident(argv: list[str]) -> int | None:
    """Run one command in the resident process; its exit status, or None when there is none to
    use (then nothing was run)."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return None  # a closed standard stream cannot be handed over
    try:
        cwd = os.getcwd()
    except OSError:  # a working folder removed under the caller: run here
        return None
    s = _connect(socket_path())
    if s is None:
        return None
    request = {"op": "run", "argv": argv, "cwd": cwd, "env": dict(os.environ), "umask": _umask()}
    try:
        _send(s, request, fds=(0, 1, 2))
    except OSError:
        s.close()
        return None
    s.settimeout(PID_TIMEOUT)  # a resident process that does not answer is not used
    replies = _lines(s)
    child = None
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    pending: list[int] = []  # signals that came before the command's process was known

    def forward(signum, _frame):
        if child is None:
            pending.append(signum)
            return
        try:
            os.kill(child, signum)
        except OSError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        for reply in replies:
            if "pid" in reply:
                child = int(reply["pid"])
                s.settimeout(None)  # the command itself may take as long as it takes
                for signum in pending:
                    forward(signum, None)
            elif "exit" in reply:
                return int(reply["exit"])
    except (OSError, ValueError):  # includes the timeout before the child answered
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        s.close()
    if child is None:
        for signum in pending:  # nothing ran: the caller's own handling of what came
            os.kill(os.getpid(), signum)
        return None  # the request was refused before anything ran
    print("lmalign: error: the command ended without an exit status (killed?)", file=sys.stderr)
    return 3


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def supported() -> bool:
    """Whether this system can host a resident process: Unix sockets that pass descriptors, fork
    and user ids (not Windows)."""
    return hasattr(os, "fork") and hasattr(os, "getuid") and hasattr(socket, "send_fds")


def main(argv=None) -> int:
    """The ``lmalign`` entry point: run the command in the resident process when one serves this
    environment, else here (:func:`lmalign_jax.cli._main.main`; called as the entry point, without
    ``argv``, after :func:`.huge_pages.relaunch_with_huge_pages`). Returns the exit status."""
    entry = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    switch = os.environ.get(SWITCH, "") if supported() else "0"
    if switch != "0" and argv[:1] != ["resident"]:
        code = run_in_resident(argv)
        if code is not None:
            return code
    if entry:  # the command runs here: with huge pages for its arrays (relaunches once)
        relaunch_with_huge_pages()
    try:  # Ctrl-C while JAX loads: neither lost in its collector callback nor a traceback
        with deliver_lost_interrupts():
            from . import main as run_here  # noqa: PLC0415 - the commands load only when run here

            code = run_here(argv)
    except KeyboardInterrupt:
        print("lmalign: interrupted; no output written", file=sys.stderr)
        code = 130
    if code in STOPPED_STATUSES:
        if entry:  # XLA may still be at work on its threads: no interpreter teardown under it
            exit_stopped(code)
        return code
    if switch in ("1", "auto") and argv[:1] != ["resident"] and ping() is None:
        start(DEFAULT_IDLE_MINUTES, wait=False)
    return code


# -- the resident process -------------------------------------------------------------------


def _preload() -> None:
    """Import what commands use (not JAX's backend: that starts threads, which a fork must not
    inherit)."""
    import jax.experimental.serialize_executable  # noqa: F401, PLC0415
    import matplotlib.backends.backend_agg  # noqa: F401, PLC0415
    import matplotlib.collections  # noqa: F401, PLC0415
    import matplotlib.figure  # noqa: F401, PLC0415
    import scipy.linalg  # noqa: F401, PLC0415 - JAX's LAPACK kernels come from here

    from . import build_parser  # noqa: PLC0415 - every command and what it imports

    build_parser()  # argparse's own lazy imports
    from jax._src import xla_bridge  # noqa: PLC0415

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("JAX's backend started while importing; forking would be unsafe")


def _run_child(conn: socket.socket, request: dict, fds: list[int], set_by_imports: dict) -> None:
    """In the forked child: become the caller's process and run its command (with the variables
    the imports set, as in a new process, where the caller did not set them). Never returns."""
    code = 3
    try:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name, value in set_by_imports.items():
            os.environ.setdefault(name, value)
        os.umask(int(request["umask"]))
        sys.stdin = open(0, encoding=sys.stdin.encoding, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)  # noqa: SIM115
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["lmalign", *argv]
        conn.sendall((json.dumps({"pid": os.getpid()}) + "\n").encode())
        from . import main as run_here  # noqa: PLC0415 - imported before the fork

        code = run_here(argv)
    except KeyboardInterrupt:
        code = 130
    except BaseException as e:  # noqa: BLE001 - a child must not return into the server's loop
        code = 3
        try:
            print(
                f"lmalign: error: the resident process could not run the command ({type(e).__name__}: {e}); "
                f"{SWITCH}=0 runs it in its own process",
                file=sys.stderr,
            )
        except BaseException:  # noqa: BLE001, S110 - no stream to say it on
            pass
    finally:
        try:
            import atexit  # noqa: PLC0415

            if code not in STOPPED_STATUSES:  # a stopped command: not JAX's teardown (exit_stopped)
                atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001, S110
            pass
        try:
            conn.sendall((json.dumps({"exit": int(code)}) + "\n").encode())
        except OSError:
            pass
        os._exit(int(code) & 0xFF)


def _same_user(conn: socket.socket) -> bool:
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1] == os.getuid()


def serve(idle_minutes: float = DEFAULT_IDLE_MINUTES) -> int:
    """Run the resident process until ``idle_minutes`` pass without a command or a stop request."""
    key = environment_key()  # before importing: JAX sets variables of its own (TF_CPP_MIN_LOG_LEVEL)
    before = dict(os.environ)
    _preload()
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    path = socket_path(key)
    if path is None:
        print("lmalign resident: no private folder for the socket", file=sys.stderr)
        return 2
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = os.path.join(os.path.dirname(path), f".{os.getpid()}")  # shorter than the final name
    server.bind(partial)
    os.chmod(partial, 0o600)
    os.replace(partial, path)  # a newer server takes the name over; the older one idles out
    inode = os.stat(path).st_ino
    server.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    state = {"pid": os.getpid(), "key": key, "started": time.time(), "served": 0}
    idle = max(1.0, 60.0 * float(idle_minutes))
    server.settimeout(min(idle, _OWNERSHIP_CHECK_S))
    last = time.monotonic()
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if time.monotonic() - last >= idle or not _still_ours(path, inode):
                    break  # idle, or a newer server took the name over (two started at once)
                continue
            last = time.monotonic()
            with conn:
                conn.settimeout(10.0)
                try:
                    request, fds = _receive(conn, max_fds=3)
                except (OSError, ValueError):
                    continue
                if not _same_user(conn):
                    for fd in fds:
                        os.close(fd)
                    continue
                op = request.get("op")
                if op == "run" and len(fds) == 3:
                    conn.settimeout(None)
                    if os.fork() == 0:
                        server.close()
                        _run_child(conn, request, fds, set_by_imports)
                    state["served"] += 1
                elif op == "ping":
                    conn.sendall((json.dumps(state) + "\n").encode())
                elif op == "stop":
                    conn.sendall((json.dumps({"stopped": os.getpid()}) + "\n").encode())
                    break
                for fd in fds:
                    os.close(fd)
    finally:
        server.close()
        try:
            if _still_ours(path, inode):  # not a newer server's
                os.unlink(path)
        except OSError:
            pass
    return 0


def _still_ours(path: str, inode: int) -> bool:
    """Whether the socket at ``path`` is still the one this process bound (inode ``inode``)."""
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def start(idle_minutes: float, *, wait: bool = True, timeout: float = 60.0) -> dict | None:
    """Start a resident process for this environment in the background (its own session, no
    terminal); with ``wait``, until it answers (its state), else None at once."""
    env = dict(_LAUNCH_ENVIRONMENT)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(_PACKAGE), env.get("PYTHONPATH")]))
    env.pop(SWITCH, None)
    subprocess.Popen(
        [sys.executable, "-m", "lmalign_jax.cli.resident", "--idle-minutes", str(idle_minutes)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    if not wait:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ping()
        if state is not None:
            return state
        time.sleep(0.1)
    return None


def stop() -> int | None:
    """Stop the resident process of this environment; its pid, or None when none was running."""
    s = _connect(socket_path(), 5.0)
    if s is None:
        return None
    try:
        _send(s, {"op": "stop"})
        reply = next(_lines(s), None)
        return None if reply is None else int(reply["stopped"])
    except (OSError, ValueError):
        return None
    finally:
        s.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lmalign_jax.cli.resident")
    parser.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES)
    sys.exit(serve(parser.parse_args().idle_minutes))
