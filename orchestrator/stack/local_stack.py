"""The local stack: a Ray head with its dashboard, an MLflow server and a SeaweedFS S3 endpoint.

It mirrors the cluster layout of docs/cluster.md on one machine: Ray for compute, MLflow for tracking
with its artifacts in S3. `up` starts each service as a long-lived process that leads its own session
(so `down` can signal its whole process group), records pids, ports and URLs in a state file under
RESNET_ORCH_HOME (default ~/.resnet-orch), and waits until each one answers its health check. A second
`up` reuses every service that still answers. Everything listens on 127.0.0.1 unless told otherwise.

    state, started = up()          # started: which services were (re)started rather than reused
    status()                       # [Health(name, healthy, detail), ...]
    down()                         # stops them and waits until their ports are closed
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from orchestrator.stack.ray_head import RayHeadError, ensure_auth_token, gcs_healthy, head_launch, short_temp_dir
from orchestrator.stack.seaweedfs import SeaweedFS, free_port
from orchestrator.sweep.layout import orch_home

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BUCKET = "resnet-orch"
S3, MLFLOW, RAY = "s3", "mlflow", "ray"
# MLflow's artifacts live in S3 and its server is told the S3 endpoint at start, so S3 comes first.
START_ORDER = (S3, MLFLOW, RAY)
_STATE_VERSION = 1
# Ray puts Unix sockets under <temp-dir>/session_<timestamp>_<pid>/sockets/; Linux caps a socket path at
# 107 bytes, and the session suffix takes about 60 of them.
_MAX_RAY_TEMP_DIR_LEN = 40


class StackError(RuntimeError):
    """A stack service could not be started, checked or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServiceRecord:
    """One running service as `up` left it: enough to health-check it and to stop it."""

    name: str
    pid: int  # also its process-group id: every service is started in a new session
    url: str
    ports: tuple[int, ...]  # the ports `down` waits on until they are closed
    log: str
    # The leader's start time: a pid reused by another process (after the service died, or after a
    # reboot) never matches, so `down` never signals a stranger.
    identity: str


@dataclass(frozen=True)
class StackState:
    """What the state file records about a running stack."""

    host: str
    bucket: str
    ray_address: str  # GCS address, for `ray.init(address=...)` and `ray start --address=...`
    ray_temp_dir: str
    credentials_file: str
    services: dict[str, ServiceRecord]

    def to_json(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StackState:
        services = {
            name: ServiceRecord(**{**record, "ports": tuple(record["ports"])})
            for name, record in data["services"].items()
        }
        fields = {f.name for f in dataclasses.fields(cls)} - {"services"}
        return cls(services=services, **{k: data[k] for k in fields})

    def client_env(self) -> dict[str, str]:
        """Environment that points Ray, MLflow, boto3 and DALI clients at this stack."""
        creds = json.loads(Path(self.credentials_file).read_text())
        return {
            "RAY_ADDRESS": self.ray_address,
            "RAY_API_SERVER_ADDRESS": self.services[RAY].url,
            "RAY_AUTH_MODE": "token",
            "MLFLOW_TRACKING_URI": self.services[MLFLOW].url,
            "MLFLOW_S3_ENDPOINT_URL": self.services[S3].url,
            "AWS_ENDPOINT_URL": self.services[S3].url,
            "AWS_ACCESS_KEY_ID": creds["access_key"],
            "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
            "AWS_REGION": creds["region"],
            "AWS_DEFAULT_REGION": creds["region"],
        }


@dataclass(frozen=True)
class Health:
    name: str
    healthy: bool
    detail: str


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state, logs and data under RESNET_ORCH_HOME."""

    root: Path

    @classmethod
    def from_env(cls, home: str | os.PathLike[str] | None = None) -> StackPaths:
        base = Path(home).expanduser().resolve() if home else orch_home()
        return cls(base / "stack")

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "stack.lock"

    @property
    def credentials_file(self) -> Path:
        return self.root / "s3-credentials.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def s3_data(self) -> Path:
        return self.root / "s3"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def ray_temp_dir(self) -> Path:
        candidate = self.root / "ray"
        return candidate if len(str(candidate)) <= _MAX_RAY_TEMP_DIR_LEN else short_temp_dir(self.root)


# ---------------------------------------------------------------------------------------------------
# Public API


def up(
    home: str | os.PathLike[str] | None = None,
    *,
    host: str = DEFAULT_HOST,
    bucket: str = DEFAULT_BUCKET,
    num_cpus: int | None = None,
    timeout_s: float = 180.0,
) -> tuple[StackState, list[str]]:
    """Start the stack, or reuse what already runs; returns the state and the services (re)started."""
    paths = StackPaths.from_env(home)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    with _locked(paths):
        previous = _load_state(paths)
        healthy = {h.name for h in check_health(previous) if h.healthy} if previous else set()
        if previous is not None and (previous.host, previous.bucket) != (host, bucket):
            # A stack bound elsewhere or with another bucket is not what was asked for: replace it all.
            healthy = set()
        # Services of the previous state not dealt with yet stay recorded, so that a failure part-way
        # still leaves every running process in the state file for `down` to stop.
        pending = dict(previous.services) if previous is not None else {}
        records: dict[str, ServiceRecord] = {}
        started: list[str] = []
        for name in START_ORDER:
            old = pending.pop(name, None)
            depends_on_restarted = name == MLFLOW and S3 in started
            if old is not None and name in healthy and not depends_on_restarted:
                records[name] = old
                continue
            if old is not None:
                _stop_service(old)
                _save_state(paths, _state(paths, host, bucket, {**pending, **records}))
            records[name] = _start(
                name, paths, records, host=host, bucket=bucket, num_cpus=num_cpus, timeout_s=timeout_s
            )
            started.append(name)
            _save_state(paths, _state(paths, host, bucket, {**pending, **records}))
        state = _state(paths, host, bucket, records)
        _save_state(paths, state)
        return state, started


def status(home: str | os.PathLike[str] | None = None) -> tuple[StackState | None, list[Health]]:
    """The recorded stack (None when none was started) and the health of each of its services."""
    state = _load_state(StackPaths.from_env(home))
    return state, (check_health(state) if state else [])


def down(home: str | os.PathLike[str] | None = None, *, timeout_s: float = 60.0) -> list[str]:
    """Stop every recorded service, wait until its ports are closed, forget the state; returns names stopped."""
    paths = StackPaths.from_env(home)
    if not paths.root.exists():
        return []
    with _locked(paths):
        state = _load_state(paths)
        if state is None:
            return []
        stopped = []
        for name in reversed(START_ORDER):
            record = state.services.get(name)
            if record is not None:
                _stop_service(record, timeout_s=timeout_s)
                stopped.append(name)
        paths.state_file.unlink()
        return stopped


def check_health(state: StackState) -> list[Health]:
    """One Health per recorded service: its process group is alive and its endpoint answers."""
    checks = {S3: _s3_healthy, MLFLOW: _mlflow_healthy, RAY: _ray_healthy}
    result = []
    for name in START_ORDER:
        record = state.services.get(name)
        if record is None:
            result.append(Health(name, False, "not started"))
        elif not _leader_alive(record):
            result.append(Health(name, False, f"process {record.pid} is gone (log: {record.log})"))
        else:
            ok, detail = checks[name](state, record)
            result.append(Health(name, ok, detail))
    return result


# ---------------------------------------------------------------------------------------------------
# Starting


def _start(
    name: str,
    paths: StackPaths,
    running: Mapping[str, ServiceRecord],
    *,
    host: str,
    bucket: str,
    num_cpus: int | None,
    timeout_s: float,
) -> ServiceRecord:
    logger.info("starting %s", name)
    if name == S3:
        return _start_s3(paths, bucket, timeout_s)
    if name == MLFLOW:
        return _start_mlflow(paths, host, bucket, running[S3], timeout_s)
    return _start_ray(paths, host, num_cpus, timeout_s)


def _start_s3(paths: StackPaths, bucket: str, timeout_s: float) -> ServiceRecord:
    creds = _credentials(paths)
    # The data engineer's launcher picks every `weed mini` port free and binds them to 127.0.0.1. It is
    # started but never stopped here: the process outlives this call and `down` stops it by its pid.
    s3 = SeaweedFS(
        access_key=creds["access_key"],
        secret_key=creds["secret_key"],
        region=creds["region"],
        data_dir=paths.s3_data,
        startup_timeout_s=timeout_s,
    ).start()
    s3.create_bucket(bucket)
    if s3.pid is None or s3.port is None:
        raise StackError(f"SeaweedFS reported no process after start; see {paths.s3_data / 'weed.log'}")
    log = str(paths.s3_data / "weed.log")
    return ServiceRecord(S3, s3.pid, s3.endpoint_url, (s3.port,), log, _identity(s3.pid))


def _start_mlflow(paths: StackPaths, host: str, bucket: str, s3: ServiceRecord, timeout_s: float) -> ServiceRecord:
    creds = _credentials(paths)
    port = free_port()
    cmd = [
        _venv_executable("mlflow"),
        "server",
        f"--host={host}",
        f"--port={port}",
        f"--backend-store-uri=sqlite:///{paths.mlflow_db}",
        # Artifacts go through the server (proxied) into S3, as on the cluster (infra/k8s/mlflow.yaml).
        f"--artifacts-destination=s3://{bucket}/mlflow",
        # One worker: the local stack serves one user, and the default of 4 costs ~1 GiB.
        "--workers=1",
    ]
    env = _child_env(
        MLFLOW_S3_ENDPOINT_URL=s3.url,
        AWS_ENDPOINT_URL=s3.url,
        AWS_ACCESS_KEY_ID=creds["access_key"],
        AWS_SECRET_ACCESS_KEY=creds["secret_key"],
        AWS_DEFAULT_REGION=creds["region"],
        # The server's job runner (7 huey consumer processes) serves GenAI scorers; training never uses it.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    url = f"http://{_connect_host(host)}:{port}"
    record = _spawn(MLFLOW, cmd, env, paths, url, (port,))
    _wait_healthy(record, lambda: _http_ok(f"{url}/health"), timeout_s)
    return record


def _start_ray(paths: StackPaths, host: str, num_cpus: int | None, timeout_s: float) -> ServiceRecord:
    ray_exe = _venv_executable("ray")
    temp_dir = paths.ray_temp_dir
    temp_dir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_auth_token(ray_exe)
    except RayHeadError as e:
        raise StackError(str(e)) from None
    # --block keeps `ray start` as the parent of every Ray process: SIGTERM to it tears them all down. On loopback
    # the head stays a one-node cluster by design; multi-node Ray is infra/k8s or infra/aws.
    launch = head_launch(ray_exe, temp_dir, host=host, num_cpus=num_cpus, block=True)
    env = _child_env(RAY_AUTH_MODE="token", **launch.env)
    url = f"http://{_connect_host(host)}:{launch.dashboard_port}"
    record = _spawn(RAY, launch.cmd, env, paths, url, (launch.gcs_port, launch.dashboard_port))
    _wait_healthy(record, lambda: gcs_healthy(url), timeout_s)
    return record


def _spawn(
    name: str, cmd: list[str], env: dict[str, str], paths: StackPaths, url: str, ports: tuple[int, ...]
) -> ServiceRecord:
    log_path = paths.logs / f"{name}.log"
    with open(log_path, "ab") as log:
        # A new session: the service outlives this CLI call, and its pid doubles as its process-group id.
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return ServiceRecord(name, proc.pid, url, ports, str(log_path), _identity(proc.pid))


def _wait_healthy(record: ServiceRecord, probe: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _leader_alive(record):
            raise StackError(f"{record.name} exited during start-up; log tail:\n{_tail(record.log)}")
        if probe():
            return
        time.sleep(0.5)
    _terminate(_owned_pids(record), timeout_s=15)
    raise StackError(f"{record.name} did not answer at {record.url} within {timeout_s:.0f}s; log:\n{_tail(record.log)}")


def _state(paths: StackPaths, host: str, bucket: str, records: dict[str, ServiceRecord]) -> StackState:
    return StackState(
        host=host,
        bucket=bucket,
        ray_address=f"{_connect_host(host)}:{records[RAY].ports[0]}" if RAY in records else "",
        ray_temp_dir=str(paths.ray_temp_dir),
        credentials_file=str(paths.credentials_file),
        services=dict(records),
    )


def _credentials(paths: StackPaths) -> dict[str, str]:
    """S3 keys of the local stack: from the AWS_* environment, else kept from an earlier `up`, else new."""
    if paths.credentials_file.exists():
        creds: dict[str, str] = json.loads(paths.credentials_file.read_text())
        return creds
    creds = {
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID") or f"resnet-orch-{secrets.token_hex(4)}",
        "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY") or secrets.token_urlsafe(24),
        "region": os.environ.get("AWS_REGION") or "us-east-1",
    }
    fd = os.open(paths.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return creds


# ---------------------------------------------------------------------------------------------------
# Health


def _s3_healthy(state: StackState, record: ServiceRecord) -> tuple[bool, str]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    creds = json.loads(Path(state.credentials_file).read_text())
    client = boto3.client(
        "s3",
        endpoint_url=record.url,
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        region_name=creds["region"],
        config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )
    try:
        client.head_bucket(Bucket=state.bucket)
    except (BotoCoreError, ClientError) as e:
        return False, f"bucket s3://{state.bucket} at {record.url}: {e}"
    return True, f"bucket s3://{state.bucket} reachable"


def _mlflow_healthy(state: StackState, record: ServiceRecord) -> tuple[bool, str]:
    ok = _http_ok(f"{record.url}/health")
    return ok, "GET /health -> 200" if ok else f"GET {record.url}/health failed"


def _ray_healthy(state: StackState, record: ServiceRecord) -> tuple[bool, str]:
    ok = gcs_healthy(record.url)
    return ok, f"GCS {state.ray_address} up" if ok else f"GET {record.url}/api/gcs_healthz failed"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------------------------------------------
# Stopping


def _stop_service(record: ServiceRecord, timeout_s: float = 60.0) -> None:
    # Its process group, plus every descendant: Ray workers and job drivers start sessions of their own
    # (JobSupervisor uses start_new_session), so the group alone would miss them.
    pids = _owned_pids(record)
    logger.info("stopping %s (process group %d, %d processes)", record.name, record.pid, len(pids))
    _terminate(pids, timeout_s)
    _wait_ports_closed(record, timeout_s)


def _terminate(pids: set[int], timeout_s: float) -> None:
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
        raise StackError(f"processes {alive()} survived SIGKILL")


def _wait_ports_closed(record: ServiceRecord, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        open_ports = [p for p in record.ports if _port_open(p)]
        if not open_ports:
            return
        time.sleep(0.2)
    raise StackError(f"{record.name}: ports {open_ports} still accept connections after stopping it")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((DEFAULT_HOST, port)) == 0


# ---------------------------------------------------------------------------------------------------
# Processes (psutil: Linux and macOS). Zombies count as gone: a container's PID 1 may never reap orphans.


def _process(pid: int) -> psutil.Process | None:
    """The live process `pid`, or None when it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _identity(pid: int) -> str:
    """Start time of `pid` (seconds since the epoch): another process that later gets the same pid differs."""
    process = _process(pid)
    return f"{process.create_time():.2f}" if process is not None else ""


def _pid_alive(pid: int) -> bool:
    return _process(pid) is not None


def _leader_alive(record: ServiceRecord) -> bool:
    return _identity(record.pid) == record.identity != ""


def _live_group_members(pgid: int) -> set[int]:
    members = set()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.add(process.pid)
    return members


def _owned_pids(record: ServiceRecord) -> set[int]:
    """Live processes of the service: its process group and the leader's descendants, never a stranger's."""
    current = _identity(record.pid)
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


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status when it is our own child (an `up` and `down` in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _venv_executable(name: str) -> str:
    """The console script installed next to this interpreter (the project's venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not installed next to {sys.executable} nor on PATH; pip install resnet-orch")
    return found


def _child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    # Ray job entrypoints (`python ...`, `resnet-orch ...`) must resolve to this environment's executables.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(overrides)
    return env


def _connect_host(host: str) -> str:
    """Where a client on this machine connects to a server bound to `host`."""
    return DEFAULT_HOST if host in ("0.0.0.0", "::") else host


def _tail(path: str, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _load_state(paths: StackPaths) -> StackState | None:
    if not paths.state_file.exists():
        return None
    try:
        data = json.loads(paths.state_file.read_text())
        if data.get("version") != _STATE_VERSION:
            raise KeyError("version")
        return StackState.from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise StackError(
            f"{paths.state_file} is not a stack state this version understands ({e}); stop the processes it "
            "lists by hand, then delete the file"
        ) from e


def _save_state(paths: StackPaths, state: StackState) -> None:
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2))
    tmp.replace(paths.state_file)  # atomic: a reader never sees half a state file


@contextlib.contextmanager
def _locked(paths: StackPaths) -> Iterator[None]:
    """One `up`/`down` at a time per RESNET_ORCH_HOME."""
    with open(paths.lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
