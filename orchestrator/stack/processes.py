"""Process supervision for the local stack: start a server that outlives the command which started it, wait until it
answers, and stop it with everything it started, without ever signalling a process that merely reuses its pid.

Every server is started as the leader of a new session: its pid is also its process-group id, so stopping it reaches
every member of the group; its descendants are added because Ray workers and job drivers start sessions of their own.
A server is known by (pid, identity), the identity being the leader's start time, so a pid handed out again after the
server died (or after a reboot) never matches. Zombies count as gone: a container's PID 1 may never reap orphans.
Works where psutil does (Linux, macOS).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class ProcessError(RuntimeError):
    """A server could not be found, started or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServiceRecord:
    """One server as it was started: enough to health-check it and to stop it (the local stack's state file keeps
    one per service)."""

    name: str
    pid: int  # also its process-group id: every server is started in a new session
    url: str
    ports: tuple[int, ...]  # the ports `stop` waits on until they are closed
    log: str
    # The leader's start time: a pid reused by another process (after the server died, or after a
    # reboot) never matches, so `stop` never signals a stranger.
    identity: str

    @property
    def running(self) -> bool:
        """Whether the leader still runs (and is not a stranger holding its pid)."""
        return identity(self.pid) == self.identity != ""


# ---- where things are ---------------------------------------------------------------------------------------------


def executable(name: str, install: str = "pip install resnet-orch") -> str:
    """The console script `name` installed next to this interpreter (the project's venv), else the one on PATH;
    `install` is what the error message tells a user to run when there is neither."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(f"`{name}` is not installed next to {sys.executable} nor on PATH; {install}")
    return found


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a server, with this venv's executables first on PATH (a Ray job entrypoint
    such as `python ...` must resolve to this environment's Python) and `overrides` on top."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(overrides)
    return env


@contextlib.contextmanager
def environment(remove: tuple[str, ...] = (), **values: str) -> Iterator[None]:
    """While the context lasts, this process's environment has `values` set and the `remove` names unset; every
    variable it touched has its previous value (or absence) back afterwards."""
    saved = {key: os.environ.get(key) for key in (*remove, *values)}
    for key in remove:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_port(max_port: int = 65535) -> int:
    """A TCP port on 127.0.0.1 that is free right now (bound with port 0, then released)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port <= max_port:
            return port
    raise ProcessError(f"no free TCP port <= {max_port} found on {LOOPBACK}")


def connect_host(host: str) -> str:
    """Where a client on this machine connects to a server bound to `host`."""
    return LOOPBACK if host in ("0.0.0.0", "::") else host


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout_s: float = 3.0) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(path: str | os.PathLike[str], n: int = 30) -> str:
    """The last `n` lines of a log, for an error message."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---- starting ---------------------------------------------------------------------------------------------------


def spawn(cmd: list[str], env: dict[str, str], log: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    """Start `cmd` as the leader of a new session, its output appended to `log`: it outlives this process, and its
    pid doubles as the process-group id that `stop` signals."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def start(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    *,
    log: str | os.PathLike[str],
    url: str,
    ports: tuple[int, ...],
    probe: Callable[[], bool],
    timeout_s: float,
) -> ServiceRecord:
    """Spawn a server and wait until `probe()` says it answers; its record, to check and stop it later."""
    proc = spawn(cmd, env, log)
    record = ServiceRecord(name, proc.pid, url, ports, str(log), identity(proc.pid))
    wait_healthy(record, probe, timeout_s)
    return record


def wait_healthy(record: ServiceRecord, probe: Callable[[], bool], timeout_s: float) -> None:
    """Wait until `probe()` is true; stop the server and raise `ProcessError` (with its log's tail) if it exits first
    or does not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not record.running:
            raise ProcessError(f"{record.name} exited during start-up; log tail:\n{tail(record.log)}")
        if probe():
            return
        time.sleep(0.5)
    terminate(owned_pids(record), timeout_s=15)
    raise ProcessError(
        f"{record.name} did not answer at {record.url} within {timeout_s:.0f}s; log:\n{tail(record.log)}"
    )


# ---- who is who -------------------------------------------------------------------------------------------------


def _process(pid: int) -> psutil.Process | None:
    """The live process `pid`, or None when it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def identity(pid: int) -> str:
    """Start time of `pid` (seconds since the epoch): another process that later gets the same pid differs."""
    process = _process(pid)
    return f"{process.create_time():.2f}" if process is not None else ""


def _pid_alive(pid: int) -> bool:
    return _process(pid) is not None


def _live_group_members(pgid: int) -> set[int]:
    members = set()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.add(process.pid)
    return members


def owned_pids(record: ServiceRecord) -> set[int]:
    """Live processes of the server: its process group and the leader's descendants, never a stranger's."""
    current = identity(record.pid)
    if current and current != record.identity:
        # The pid now belongs to another process. Its group id can only have been reused once every
        # member of our group had exited (neither Linux nor macOS reuses a pid that is still a pgid).
        return set()
    pids = _live_group_members(record.pid)
    leader = _process(record.pid)
    if leader is not None:
        with contextlib.suppress(psutil.Error):
            pids |= {child.pid for child in leader.children(recursive=True)}
    return pids


# ---- stopping ---------------------------------------------------------------------------------------------------


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status when it is our own child (a server started and stopped by one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(pids: set[int], timeout_s: float) -> None:
    """SIGTERM every pid, wait, SIGKILL the ones left; returns once none is alive."""

    def send(sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def alive() -> list[int]:
        for pid in pids:
            _reap(pid)
        return [pid for pid in pids if _pid_alive(pid)]

    send(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive():
        logger.warning("processes %s ignored SIGTERM for %.0fs; sending SIGKILL", alive(), timeout_s)
        send(signal.SIGKILL)
        deadline = time.monotonic() + 15
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
    if alive():
        raise ProcessError(f"processes {alive()} survived SIGKILL")


def wait_ports_closed(record: ServiceRecord, timeout_s: float) -> None:
    """Return once no process accepts connections on the server's ports; `ProcessError` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        open_ports = [p for p in record.ports if port_open(p)]
        if not open_ports:
            return
        if time.monotonic() >= deadline:
            raise ProcessError(f"{record.name}: ports {open_ports} still accept connections after stopping it")
        time.sleep(0.2)


def stop(record: ServiceRecord, timeout_s: float = 60.0) -> None:
    """Stop the server and every process it started; return once its ports are closed."""
    # Its process group, plus every descendant: Ray workers and job drivers start sessions of their own
    # (JobSupervisor uses start_new_session), so the group alone would miss them.
    pids = owned_pids(record)
    logger.info("stopping %s (process group %d, %d processes)", record.name, record.pid, len(pids))
    terminate(pids, timeout_s)
    wait_ports_closed(record, timeout_s)
