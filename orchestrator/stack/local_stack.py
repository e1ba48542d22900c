"""The local stack: a Ray head with its dashboard, an MLflow server and a SeaweedFS S3 endpoint.

It mirrors the cluster layout of docs/cluster.md on one machine: Ray for compute, MLflow for tracking
with its artifacts in S3. Each service is a long-lived process that leads its own session (`processes`),
recorded (pid, ports, URL) in one state file under RESNET_ORCH_HOME (`records`; default ~/.resnet-orch): the one record
of what runs for this home. `up` starts all three and waits until each answers its health check; `submit` on
the embedded default starts only the Ray head (`ensure_ray`), recorded the same way. A second `up` reuses every
service that still answers; `down` stops whatever is recorded. Everything listens on 127.0.0.1 unless told
otherwise.

    state, started = up()          # started: which services were (re)started rather than reused
    status()                       # (state, [Health(name, healthy, detail), ...])
    down()                         # stops them and waits until their ports are closed
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Collection, Mapping

from orchestrator.stack import mlflow_server, processes, ray_head
from orchestrator.stack.processes import ProcessError, ServiceRecord
from orchestrator.stack.ray_head import RayHeadError
from orchestrator.stack.records import (
    MLFLOW,
    RAY,
    S3,
    Health,
    StackError,
    StackPaths,
    StackState,
    load_state,
    locked,
    save_state,
)
from orchestrator.stack.seaweedfs import SeaweedFS
from pipelines.storage import S3Settings

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_HOST",
    "MLFLOW",
    "NOT_STARTED",
    "RAY",
    "S3",
    "Health",
    "StackError",
    "StackPaths",
    "StackState",
    "check_health",
    "down",
    "ensure_ray",
    "recorded",
    "status",
    "up",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = processes.LOOPBACK
DEFAULT_BUCKET = "resnet-orch"
# MLflow's artifacts live in S3 and its server is told the S3 endpoint at start, so S3 comes first.
START_ORDER = (S3, MLFLOW, RAY)
# The health detail of a service this home has no record of (e.g. S3 and MLflow when only `submit` started Ray).
NOT_STARTED = "not started"


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
    paths = _prepared(home)
    with locked(paths):
        previous = load_state(paths)
        return _bring_up(paths, previous, START_ORDER, host=host, bucket=bucket, num_cpus=num_cpus, timeout_s=timeout_s)


def ensure_ray(home: str | os.PathLike[str] | None = None, *, timeout_s: float = 180.0) -> ServiceRecord:
    """This home's Ray head: the recorded one if it answers, else one started now and recorded as the stack's Ray.

    What `submit` uses on the embedded default: the head it leaves running is listed by `stack status`, reused by
    `up` and stopped by `down`, like every other service of the stack.
    """
    paths = _prepared(home)
    with locked(paths):
        previous = load_state(paths)
        host, bucket = (previous.host, previous.bucket) if previous else (DEFAULT_HOST, DEFAULT_BUCKET)
        state, _ = _bring_up(paths, previous, (RAY,), host=host, bucket=bucket, num_cpus=None, timeout_s=timeout_s)
        return state.services[RAY]


def recorded(home: str | os.PathLike[str] | None = None) -> StackState | None:
    """The recorded state (None when nothing was started), without checking any service."""
    return load_state(StackPaths.from_env(home))


def status(home: str | os.PathLike[str] | None = None) -> tuple[StackState | None, list[Health]]:
    """The recorded stack (None when none was started) and the health of each of its services."""
    state = recorded(home)
    return state, (check_health(state) if state else [])


def down(home: str | os.PathLike[str] | None = None, *, timeout_s: float = 60.0) -> list[str]:
    """Stop every recorded service, wait until its ports are closed, forget the state; returns names stopped."""
    paths = StackPaths.from_env(home)
    if not paths.root.exists():
        return []
    with locked(paths):
        state = load_state(paths)
        if state is None:
            return []
        stopped = []
        for name in reversed(START_ORDER):
            record = state.services.get(name)
            if record is not None:
                _stop(record, timeout_s=timeout_s)
                stopped.append(name)
        paths.state_file.unlink()
        return stopped


def check_health(state: StackState, names: Collection[str] = START_ORDER) -> list[Health]:
    """One Health per service of `names`: its process group is alive and its endpoint answers."""
    checks = {S3: _s3_healthy, MLFLOW: _mlflow_healthy, RAY: _ray_healthy}
    result = []
    for name in START_ORDER:
        if name not in names:
            continue
        record = state.services.get(name)
        if record is None:
            result.append(Health(name, False, NOT_STARTED))
        elif not record.running:
            result.append(Health(name, False, f"process {record.pid} is gone (log: {record.log})"))
        else:
            ok, detail = checks[name](state, record)
            result.append(Health(name, ok, detail))
    return result


# ---------------------------------------------------------------------------------------------------
# Starting


def _prepared(home: str | os.PathLike[str] | None) -> StackPaths:
    paths = StackPaths.from_env(home)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    return paths


def _bring_up(
    paths: StackPaths,
    previous: StackState | None,
    wanted: Collection[str],
    *,
    host: str,
    bucket: str,
    num_cpus: int | None,
    timeout_s: float,
) -> tuple[StackState, list[str]]:
    """Start the `wanted` services that do not answer (reusing those that do); keep the other records as they are."""
    healthy = {h.name for h in check_health(previous, wanted) if h.healthy} if previous else set()
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
        if name not in wanted or (old is not None and name in healthy and not depends_on_restarted):
            if old is not None:
                records[name] = old
            continue
        if old is not None:
            _stop(old)
            save_state(paths, _state(paths, host, bucket, {**pending, **records}))
        records[name] = _start(name, paths, records, host=host, bucket=bucket, num_cpus=num_cpus, timeout_s=timeout_s)
        started.append(name)
        save_state(paths, _state(paths, host, bucket, {**pending, **records}))
    state = _state(paths, host, bucket, records)
    save_state(paths, state)
    return state, started


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
    try:
        if name == S3:
            return _start_s3(paths, bucket, timeout_s)  # SeaweedFS raises ProcessError too
        if name == MLFLOW:
            return mlflow_server.start(
                host=host,
                backend_store_uri=f"sqlite:///{paths.mlflow_db}",
                # Artifacts go through the server (proxied) into S3, as on the cluster (infra/k8s/mlflow.yaml).
                artifacts_destination=f"s3://{bucket}/mlflow",
                s3=_credentials(paths, endpoint_url=running[S3].url),
                log=paths.logs / f"{MLFLOW}.log",
                timeout_s=timeout_s,
            )
        # With the stack's S3 running, the head holds its keys as a cluster's nodes hold their own identity: a sweep
        # submitted by address from another home brings no secret (`sweep.job_env`); the endpoint is a job setting.
        identity = _credentials(paths).env() if S3 in running else {}
        return ray_head.start(
            paths.ray_temp_dir,
            paths.logs / f"{RAY}.log",
            host=host,
            num_cpus=num_cpus,
            timeout_s=timeout_s,
            node_env=identity,
        )
    except (ProcessError, RayHeadError) as e:
        raise StackError(str(e)) from None


def _start_s3(paths: StackPaths, bucket: str, timeout_s: float) -> ServiceRecord:
    creds = _credentials(paths)
    # Every `weed mini` port is picked free and bound to 127.0.0.1. The server is started but never stopped here:
    # it outlives this call and `down` stops it by its recorded pid.
    s3 = SeaweedFS(
        access_key=creds.access_key or "",
        secret_key=creds.secret_key or "",
        region=creds.region or "us-east-1",
        data_dir=paths.s3_data,
        startup_timeout_s=timeout_s,
    ).start()
    s3.create_bucket(bucket)
    return s3.record


def _state(paths: StackPaths, host: str, bucket: str, records: dict[str, ServiceRecord]) -> StackState:
    return StackState(
        host=host,
        bucket=bucket,
        ray_address=f"{processes.connect_host(host)}:{records[RAY].ports[0]}" if RAY in records else "",
        ray_temp_dir=str(paths.ray_temp_dir),
        credentials_file=str(paths.credentials_file),
        services=dict(records),
    )


def _credentials(paths: StackPaths, endpoint_url: str | None = None) -> S3Settings:
    """S3 keys of the local stack: kept from an earlier `up`, else from the AWS_* environment, else new."""
    if paths.credentials_file.exists():
        creds: dict[str, str] = json.loads(paths.credentials_file.read_text())
    else:
        env = S3Settings.from_env()
        creds = {
            "access_key": env.access_key or f"resnet-orch-{secrets.token_hex(4)}",
            "secret_key": env.secret_key or secrets.token_urlsafe(24),
            "region": env.region or "us-east-1",
        }
        # Readable by this user only: the secret key stays in this file (`stack env` prints it for `eval`).
        fd = os.open(paths.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
    return S3Settings(endpoint_url, creds["access_key"], creds["secret_key"], creds["region"])


# ---------------------------------------------------------------------------------------------------
# Health


def _s3_healthy(state: StackState, record: ServiceRecord) -> tuple[bool, str]:
    from botocore.exceptions import BotoCoreError, ClientError

    client = state.s3_settings().client(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    try:
        client.head_bucket(Bucket=state.bucket)
    except (BotoCoreError, ClientError) as e:
        return False, f"bucket s3://{state.bucket} at {record.url}: {e}"
    return True, f"bucket s3://{state.bucket} reachable"


def _mlflow_healthy(state: StackState, record: ServiceRecord) -> tuple[bool, str]:
    ok = mlflow_server.healthy(record.url)
    return ok, "GET /health -> 200" if ok else f"GET {record.url}/health failed"


def _ray_healthy(state: StackState, record: ServiceRecord) -> tuple[bool, str]:
    ok = ray_head.gcs_healthy(record.url)
    return ok, f"GCS {state.ray_address} up" if ok else f"GET {record.url}/api/gcs_healthz failed"


# ---------------------------------------------------------------------------------------------------
# Stopping


def _stop(record: ServiceRecord, timeout_s: float = 60.0) -> None:
    try:
        processes.stop(record, timeout_s)
    except ProcessError as e:
        raise StackError(str(e)) from None
