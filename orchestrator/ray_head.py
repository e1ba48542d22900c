"""The local Ray head: start or reuse one per RESNET_ORCH_HOME, with its dashboard on 127.0.0.1.

Shared by `resnet-orch submit` (the embedded default) and the local stack. Every port is a free one and the temp
dir is private, so this head never becomes the machine's "current cluster" that a plain `ray.init()` elsewhere
would attach to (Ray writes `ray_current_cluster` into the temp dir it was given).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.services import free_port
from orchestrator.sweep import orch_home

logger = logging.getLogger(__name__)

# Each Tune trial driver holds one unit of this instead of a CPU, so trial drivers never starve their own worker
# groups of CPUs (an endless WorkerGroupStartupTimeoutError otherwise). Declared on the head we start; a remote
# cluster must declare it on at least one node (docs/cluster.md).
TRIAL_DRIVER_RESOURCE = "resnet_orch_trial_driver"
TRIAL_DRIVER_SLOTS = 1000


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
class RayHead:
    gcs_address: str
    dashboard_url: str
    temp_dir: str


def _head_file() -> Path:
    return orch_home() / "ray" / "head.json"


def _temp_dir() -> Path:
    # Unix socket paths are capped at 107 bytes and Ray nests `session_<date>_<pid>/sockets/plasma_store` under its
    # temp dir, so it lives under a short /tmp path derived from the home rather than inside it.
    digest = hashlib.sha1(str(orch_home()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"resnet-orch-ray-{digest}"


def _answers(dashboard_url: str) -> bool:
    try:
        # /api/gcs_healthz is exempt from token auth and answers 200 only while the GCS is up.
        with urllib.request.urlopen(f"{dashboard_url}/api/gcs_healthz", timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def running_head() -> RayHead | None:
    path = _head_file()
    if not path.is_file():
        return None
    head = RayHead(**json.loads(path.read_text(encoding="utf-8")))
    return head if _answers(head.dashboard_url) else None


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    # Ray 2.60's token auth stays on (brief); clients and the head agree through this variable.
    env.setdefault("RAY_AUTH_MODE", "token")
    return env


def start_head(num_cpus: int | None = None, timeout_s: float = 120.0) -> RayHead:
    """Start a head for this home (or return the running one)."""
    head = running_head()
    if head is not None:
        return head
    ray_exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_exe is None:
        raise RayHeadError("the `ray` executable is not on PATH; install the package (pip install -e .)")
    temp_dir = _temp_dir()
    gcs_port, dashboard_port = free_port(), free_port()
    # Make sure a token exists (~/.ray/auth_token, created only when missing) for the head and its clients.
    subprocess.run([ray_exe, "get-auth-token", "--generate"], env=ray_env(), capture_output=True, check=False)
    cmd = [
        ray_exe,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        # Every port free: the defaults (10001, 52365, ...) collide with any other Ray on the host.
        *(f"--{flag}={free_port()}" for flag in _OTHER_PORTS),
        f"--temp-dir={temp_dir}",
        f"--resources={json.dumps({TRIAL_DRIVER_RESOURCE: TRIAL_DRIVER_SLOTS})}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    logger.info("starting a local Ray head: %s", " ".join(cmd))
    env = ray_env()
    env.update(
        # The dashboard's and autoscaler's Prometheus exporters default to fixed ports 44227/44217.
        DASHBOARD_METRIC_PORT=str(free_port()),
        AUTOSCALER_METRIC_PORT=str(free_port()),
        # A one-node cluster has nowhere to drain to; Ray's default waits 30 s on SIGTERM.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        # Keep the node IP (and every Ray server) on loopback instead of the host's routable IP.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RayHeadError(f"`ray start --head` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    head = RayHead(
        gcs_address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        temp_dir=str(temp_dir),
    )
    deadline = time.monotonic() + timeout_s
    while not _answers(head.dashboard_url):
        if time.monotonic() > deadline:
            raise RayHeadError(f"the Ray dashboard at {head.dashboard_url} did not answer in {timeout_s:.0f} s")
        time.sleep(0.5)
    _head_file().parent.mkdir(parents=True, exist_ok=True)
    _head_file().write_text(json.dumps(asdict(head)), encoding="utf-8")
    return head


def stop_head() -> bool:
    """Stop this home's head only: the processes whose command line names its temp dir (never `ray stop`)."""
    path = _head_file()
    if not path.is_file():
        return False
    head = RayHead(**json.loads(path.read_text(encoding="utf-8")))
    import psutil

    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if head.temp_dir in cmdline or head.gcs_address in cmdline:
            mine.append(proc)
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(mine, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    path.unlink(missing_ok=True)
    return True
