"""The local Ray head, the one way this project starts Ray outside a cluster: `ray start --head --block` with its
dashboard, as a service of the local stack (`local_stack.py` records, checks and stops it, for `up` and for
`submit` on the embedded default alike).

Every port is a free one and the temp dir is private, so this head never becomes the machine's "current cluster"
that a plain `ray.init()` elsewhere would attach to (Ray writes `ray_current_cluster` into the temp dir it was
given). `in_process_ray` is the Ray that tests and benchmarks start inside their own process to call `run_trial`
directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.stack import processes
from orchestrator.stack.processes import LOOPBACK, ServiceRecord, environment, free_port

logger = logging.getLogger(__name__)

# Each Tune trial driver holds one unit of this instead of a CPU, so trial drivers never starve their own worker
# groups of CPUs (an endless WorkerGroupStartupTimeoutError otherwise). Declared on the head we start; a remote
# cluster must declare it on at least one node (docs/cluster.md).
TRIAL_DRIVER_RESOURCE = "resnet_orch_trial_driver"
TRIAL_DRIVER_SLOTS = 1000

# Every port `ray start --head` would otherwise take at a fixed default (10001, 52365, ...), besides the GCS and
# dashboard ports that clients need to know.
_OTHER_PORTS = (
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)


class RayHeadError(RuntimeError):
    """The local Ray head could not be started."""


@dataclass(frozen=True)
class HeadLaunch:
    """A `ray start --head` command line, the ports it was given and the environment it must run with."""

    cmd: list[str]
    env: dict[str, str]  # overrides on top of the caller's environment
    gcs_port: int
    dashboard_port: int


def head_launch(
    ray_exe: str, temp_dir: Path, *, host: str = LOOPBACK, num_cpus: int | None = None, block: bool = False
) -> HeadLaunch:
    """The `ray start --head` command line of the local head (see `start`), every port free.

    `host` is the node IP and the dashboard's interface; `block=True` keeps `ray start` in the foreground as the
    parent of every Ray process, so signalling it tears the whole head down.
    """
    gcs_port, dashboard_port = free_port(), free_port()
    cmd = [
        ray_exe,
        "start",
        "--head",
        *(["--block"] if block else []),
        f"--node-ip-address={host}",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        f"--dashboard-host={host}",
        f"--dashboard-port={dashboard_port}",
        # Every port free: the defaults (10001, 52365, ...) collide with any other Ray on the host.
        *(f"--{flag}={free_port()}" for flag in _OTHER_PORTS),
        f"--temp-dir={temp_dir}",
        # `resnet-orch submit` schedules each trial driver on this resource, never on a CPU.
        f"--resources={json.dumps({TRIAL_DRIVER_RESOURCE: TRIAL_DRIVER_SLOTS})}",
        "--disable-usage-stats",
        *([f"--num-cpus={num_cpus}"] if num_cpus is not None else []),
    ]
    env = {
        # The dashboard's and autoscaler's Prometheus exporters default to fixed ports 44227/44217.
        "DASHBOARD_METRIC_PORT": str(free_port()),
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        # A one-node cluster has nowhere to drain to; Ray's default waits 30 s on SIGTERM.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    if is_loopback(host):
        # Ray rewrites a 127.0.0.1 node IP to the host's routable IP and then listens on every interface; this
        # switch (Ray's default on macOS) keeps the node IP and every Ray server on loopback.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return HeadLaunch(cmd, env, gcs_port, dashboard_port)


def is_loopback(host: str) -> bool:
    return host in (LOOPBACK, "localhost", "::1")


def short_temp_dir(owner: Path) -> Path:
    """A Ray temp dir for `owner` short enough for Ray's Unix sockets, the same for the same owner."""
    # Unix socket paths are capped at 107 bytes and Ray nests `session_<date>_<pid>/sockets/plasma_store` under its
    # temp dir, so it lives under a short /tmp path derived from the owner rather than inside it.
    digest = hashlib.sha1(str(owner).encode()).hexdigest()[:10]
    return Path("/tmp") / f"resnet-orch-ray-{digest}"


def ensure_auth_token(ray_exe: str) -> None:
    """Make sure a token exists for `ray start` and its clients: the head runs with token auth on (Ray 2.60's
    default for clusters), so a dashboard or job API reachable from elsewhere is never open."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    # Creates ~/.ray/auth_token only when there is none, the same file every local Ray client reads.
    env = processes.child_env()
    env.setdefault("RAY_AUTH_MODE", "token")
    done = subprocess.run(
        [ray_exe, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RayHeadError(f"`ray get-auth-token --generate` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    # Ray writes the file with the umask's permissions (0644 by default). The head listens on 127.0.0.1, which every
    # user of this machine reaches: the token is what keeps them from running code as this user, so it is ours alone.
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.stat().st_uid == os.getuid():
        token.chmod(0o600)


def gcs_healthy(dashboard_url: str) -> bool:
    # /api/gcs_healthz is exempt from token auth and answers 200 only while the GCS is up.
    return processes.http_ok(f"{dashboard_url}/api/gcs_healthz")


@contextlib.contextmanager
def in_process_ray(num_cpus: int, *, trial_drivers: bool = False) -> Iterator[None]:
    """A Ray started inside this process for `run_trial` called directly (tests, benchmarks), shut down after.

    No head and no dashboard, unless `trial_drivers=True`: then it is what a sweep's Tune driver
    (`sweep.scheduling.run_sweep`, run in this process) needs of a head: the trial-driver resource, and the dashboard
    that serves the state API, found through RAY_ADDRESS while the context lasts (as in a Ray job's driver). Its
    workers inherit this process's environment (e.g. the AWS_* variables of an S3 server started before).
    """
    import ray

    # Token auth stays on without our help: with RAY_AUTH_MODE unset, `ray.init` turns it on for a new cluster and
    # refreshes the config Ray cached at import (setting the variable here, after `import ray`, would split the
    # modes of this process and its GCS).
    if not trial_drivers:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    dashboard_port = free_port()
    with environment(DASHBOARD_METRIC_PORT=str(free_port()), AUTOSCALER_METRIC_PORT=str(free_port())):
        ray.init(
            num_cpus=num_cpus,
            resources={TRIAL_DRIVER_RESOURCE: TRIAL_DRIVER_SLOTS},
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            dashboard_port=dashboard_port,
        )
    try:
        with environment(RAY_ADDRESS=f"http://{LOOPBACK}:{dashboard_port}"):
            yield
    finally:
        ray.shutdown()


def start(
    temp_dir: Path,
    log: Path,
    *,
    host: str = LOOPBACK,
    num_cpus: int | None = None,
    timeout_s: float = 180.0,
    node_env: Mapping[str, str] | None = None,
) -> ServiceRecord:
    """Start a Ray head (with dashboard) that outlives this process; returns it once its GCS answers.

    `--block` keeps `ray start` as the parent of every Ray process: stopping it (`processes.stop`) tears them all
    down. On loopback the head stays a one-node cluster by design; multi-node Ray is infra/k8s or infra/aws.
    `node_env`: the node's own settings and identity (as a cluster node has its instance role), inherited by every
    worker process; a job may override them.
    """
    ray_exe = processes.executable("ray")
    temp_dir.mkdir(parents=True, exist_ok=True)
    ensure_auth_token(ray_exe)
    launch = head_launch(ray_exe, temp_dir, host=host, num_cpus=num_cpus, block=True)
    env = processes.child_env(**(node_env or {}), RAY_AUTH_MODE="token", **launch.env)
    url = f"http://{processes.connect_host(host)}:{launch.dashboard_port}"
    ports = (launch.gcs_port, launch.dashboard_port)
    logger.info("starting a local Ray head: %s", " ".join(launch.cmd))
    return processes.start(
        "ray", launch.cmd, env, log=log, url=url, ports=ports, probe=lambda: gcs_healthy(url), timeout_s=timeout_s
    )
