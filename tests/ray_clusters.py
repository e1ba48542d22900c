"""Multi-node Ray on one machine for tests: a head (optionally autoscaling through Ray's fake multi-node provider) and
extra nodes, started and stopped by process, never with `ray stop` (which stops every Ray on the machine).

    with LocalCluster(tmp_path, autoscaling=FakeAutoscaling([FakeNodeType("cpu", cpus=1, max_workers=3)])) as c:
        c.dashboard_url, c.gcs_address      # for `resnet-orch submit --address`, JobSubmissionClient, `ray.init`
        c.wait_for_nodes(3)                 # alive nodes, the head included
        c.kill_node(node_id)                # SIGKILL one node's raylet and every process under it
        c.add_node(cpus=1)                  # a plain `ray start --address` node in a process group of its own
        c.head_metrics_port                 # the head's Prometheus export, http://127.0.0.1:PORT/metrics

* The head runs `ray start --head --block` with every port free, a private temp dir, 127.0.0.1 only, token auth,
  0 CPUs by default and the trial drivers' resource (as infra/k8s and infra/aws do).
* `FakeAutoscaling`: the head's autoscaler (`RAY_FAKE_CLUSTER=1`) launches each worker node inside its own process
  (Ray's fake multi-node provider: `ray._private.node.Node` at the head's GCS address), scales up for pending tasks,
  actors and placement groups and terminates nodes idle for `idle_timeout_s`. Each node gets a temp dir of its own
  (`OwnDiskFakeProvider`), as separate machines have: nodes sharing one would unpack a job's working dir over each
  other's (Ray's runtime-env agent re-extracts it on each node), deleting the directory a driver runs in. The config
  is written next to the logs; the sweep driver reads it as the cluster launcher's bootstrap config
  (`orchestrator.sweep.autoscaler`).
* `stop()` stops the head's process tree (the fake nodes are in it), each added node's, then any process left that
  runs in this cluster's temp dir: only what this cluster started. It returns what still runs after that; leaving the
  `with` block raises if anything does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from orchestrator.stack import processes, ray_head
from orchestrator.stack.processes import LOOPBACK, ServiceRecord, free_port
from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE, TRIAL_DRIVER_SLOTS

# A worker node as a process of its own: the node's processes are its children; it waits until it is stopped.
_NODE_SCRIPT = """
import json, signal, sys
from ray._private.node import Node
from ray._private.parameter import RayParams
Node(RayParams(**json.loads(sys.argv[1])), head=False, shutdown_at_exit=True, spawn_reaper=False)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
"""
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head node type
REPO_ROOT = Path(__file__).resolve().parent.parent
# Small object stores: several nodes share this machine's /dev/shm.
OBJECT_STORE_BYTES = 150_000_000


@dataclass(frozen=True)
class FakeNodeType:
    """A worker node type of the fake autoscaler."""

    name: str
    cpus: int
    max_workers: int
    min_workers: int = 0
    gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeAutoscaling:
    """The fake autoscaler's node types and timing."""

    node_types: list[FakeNodeType]
    idle_timeout_s: float = 6.0
    max_workers: int | None = None  # cluster-wide cap on worker nodes; default: the sum of the types'
    upscaling_speed: float = 1.0


class LocalCluster:
    """A Ray cluster on this machine (see the module docstring); a context manager that always stops it."""

    def __init__(
        self,
        root: Path,
        *,
        head_cpus: int = 0,
        head_resources: dict[str, float] | None = None,
        autoscaling: FakeAutoscaling | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.temp_dir = ray_head.short_temp_dir(root)
        self.head_cpus = head_cpus
        self.head_resources = (
            {TRIAL_DRIVER_RESOURCE: float(TRIAL_DRIVER_SLOTS)} if head_resources is None else head_resources
        )
        self.autoscaling = autoscaling
        self.env = env or {}
        self.head: ServiceRecord | None = None
        self.nodes: list[ServiceRecord] = []
        self.gcs_address = ""
        self.dashboard_url = ""
        self.head_metrics_port = 0
        self.config_file = root / "autoscaling.yaml"

    # ---- starting ------------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        left = self.stop()
        if left and exc == (None, None, None):
            raise RuntimeError(f"processes of the cluster still running after stop: {[p.pid for p in left]}")

    def base_env(self) -> dict[str, str]:
        """The environment every process of this cluster runs with (a client connecting with `ray.init` too)."""
        return {
            "RAY_AUTH_MODE": "token",
            # Keep 127.0.0.1 as every node's IP (worker nodes resolve theirs from the head's process environment).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            **self.env,
        }

    def start(self, timeout_s: float = 180.0) -> None:
        ray_exe = processes.executable("ray")
        ray_head.ensure_auth_token(ray_exe)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        launch = ray_head.head_launch(ray_exe, self.temp_dir, num_cpus=self.head_cpus, block=True)
        # head_launch declares the trial drivers' resource; this head declares `head_resources` instead.
        cmd = [arg for arg in launch.cmd if not arg.startswith("--resources=")]
        cmd += [f"--resources={json.dumps(self.head_resources)}", f"--object-store-memory={OBJECT_STORE_BYTES}"]
        self.gcs_address = f"{LOOPBACK}:{launch.gcs_port}"
        (port,) = [arg.split("=", 1)[1] for arg in cmd if arg.startswith("--metrics-export-port=")]
        self.head_metrics_port = int(port)  # the head node's Prometheus export: http://127.0.0.1:PORT/metrics
        env = processes.child_env(**{**launch.env, **self.base_env()})
        if self.autoscaling is not None:
            self.config_file.write_text(yaml.safe_dump(self._autoscaling_config()), encoding="utf-8")
            cmd.append(f"--autoscaling-config={self.config_file}")
            # The autoscaler imports `OwnDiskFakeProvider` from this file.
            pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
            env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", PYTHONPATH=pythonpath)
        self.dashboard_url = f"http://{LOOPBACK}:{launch.dashboard_port}"
        url = self.dashboard_url
        self.head = processes.start(
            "ray-head",
            cmd,
            env,
            log=self.root / "head.log",
            url=url,
            ports=(launch.gcs_port, launch.dashboard_port),
            probe=lambda: ray_head.gcs_healthy(url),
            timeout_s=timeout_s,
        )
        nodes = 1 + sum(t.min_workers for t in self.autoscaling.node_types) if self.autoscaling else 1
        self.wait_for_nodes(nodes, timeout_s=timeout_s)

    def _autoscaling_config(self) -> dict[str, Any]:
        assert self.autoscaling is not None
        head_resources = {"CPU": self.head_cpus, **self.head_resources}
        node_types: dict[str, Any] = {
            HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0},
        }
        for t in self.autoscaling.node_types:
            resources = {"CPU": t.cpus, "GPU": t.gpus, "object_store_memory": OBJECT_STORE_BYTES, **t.resources}
            node_types[t.name] = {
                "resources": resources,
                "node_config": {},
                "min_workers": t.min_workers,
                "max_workers": t.max_workers,
            }
        max_workers = self.autoscaling.max_workers
        if max_workers is None:
            max_workers = sum(t.max_workers for t in self.autoscaling.node_types)
        return {
            "cluster_name": f"fake-{self.temp_dir.name}",
            "max_workers": sum(t.max_workers for t in self.autoscaling.node_types)
            if max_workers is None
            else max_workers,
            "upscaling_speed": self.autoscaling.upscaling_speed,
            "idle_timeout_minutes": self.autoscaling.idle_timeout_s / 60.0,
            "provider": {
                "type": "external",
                "module": f"{__name__}.OwnDiskFakeProvider",
                # The provider starts worker nodes at this GCS address (its default is port 6379).
                "gcs_address": self.gcs_address,
                "node_temp_dir_prefix": str(self.temp_dir),
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": node_types,
            "head_node_type": HEAD_TYPE,
            "auth": {},
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def add_node(self, cpus: int = 1, resources: dict[str, float] | None = None, timeout_s: float = 120.0) -> str:
        """Join a node to the head, in a process group of its own (its raylet and everything under it); returns its
        node id. Started as Ray's fake provider starts its nodes (`ray._private.node.Node`): `ray start --address`
        refuses to join a loopback-only head."""
        before = {n["node_id"] for n in self.alive_nodes()}
        params = {
            "num_cpus": cpus,
            "resources": resources or {},
            "gcs_address": self.gcs_address,
            "redis_address": self.gcs_address,
            "node_ip_address": LOOPBACK,
            "object_store_memory": OBJECT_STORE_BYTES,
            "min_worker_port": 0,
            "max_worker_port": 0,
            "dashboard_agent_listen_port": 0,
            "metrics_export_port": free_port(),
        }
        cmd = [sys.executable, "-c", _NODE_SCRIPT, json.dumps(params)]
        index = len(self.nodes)
        record = processes.start(
            f"ray-node-{index}",
            cmd,
            processes.child_env(**self.base_env()),
            log=self.root / f"node-{index}.log",
            url=self.dashboard_url,
            ports=(),
            probe=lambda: len({n["node_id"] for n in self.alive_nodes()} - before) > 0,
            timeout_s=timeout_s,
        )
        self.nodes.append(record)
        (added,) = {n["node_id"] for n in self.alive_nodes()} - before
        return added

    # ---- looking -------------------------------------------------------------------------------------------------

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes, from the state API: node_id, is_head_node, resources_total, ..."""
        from ray.util.state import list_nodes
        from ray.util.state.exception import RayStateApiException

        try:
            # Dead nodes count in the API's total but not in its filtered answer: not a truncation to refuse.
            nodes = list_nodes(
                address=self.dashboard_url,
                filters=[("state", "=", "ALIVE")],
                detail=True,
                raise_on_missing_output=False,
            )
        except (ConnectionError, OSError, RuntimeError, RayStateApiException):  # the dashboard is (re)starting
            return []
        return [dict(vars(node)) for node in nodes]

    def wait_for_nodes(self, count: int, timeout_s: float = 180.0, *, at_most: bool = False) -> list[dict[str, Any]]:
        """Wait until exactly `count` nodes are alive (at most `count` with `at_most`); returns them."""
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.alive_nodes()
            if len(nodes) == count or (at_most and nodes and len(nodes) <= count):
                return nodes
            if self.head is not None and not _pid_running(self.head.pid):
                # `ray start --head --block` gave up (its raylet did not register in time): nothing will come up.
                raise processes.ProcessError(f"the Ray head exited; its log: {self.root / 'head.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} nodes alive after {timeout_s:.0f}s, waiting for {count}")
            time.sleep(0.5)

    def node_processes(self, node_id: str) -> list[psutil.Process]:
        """The raylet of `node_id` and every process under it (its workers, agents)."""
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info.get("cmdline") or []
            if cmdline and cmdline[0].endswith("/raylet") and f"--node_id={node_id}" in cmdline:
                with contextlib.suppress(psutil.Error):
                    return [process, *process.children(recursive=True)]
        return []

    def kill_node(self, node_id: str) -> int:
        """SIGKILL a whole node: its raylet, its workers and its agents at once; returns how many processes."""
        found = self.node_processes(node_id)
        if not found:
            raise LookupError(f"no raylet of node {node_id} on this machine")
        for process in found:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(found, timeout=30)
        return len(found)

    # ---- stopping ------------------------------------------------------------------------------------------------

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: the head's and added nodes' process trees and anything running in its
        temp dirs (a worker whose raylet was killed)."""
        found: dict[int, psutil.Process] = {}
        for record in [*self.nodes, *([self.head] if self.head else [])]:
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(record.pid)
                found.update({p.pid: p for p in [leader, *leader.children(recursive=True)]})
        for process in psutil.process_iter(["cmdline"]):
            if process.pid != os.getpid() and str(self.temp_dir) in " ".join(process.info["cmdline"] or []):
                found[process.pid] = process
        return [p for p in found.values() if _running(p)]

    def stop(self) -> list[psutil.Process]:
        """Stop every process of this cluster; returns those still running afterwards (a test asserts none)."""
        seen = self.processes()
        for record in [*self.nodes, *([self.head] if self.head else [])]:
            with contextlib.suppress(processes.ProcessError):
                processes.stop(record, timeout_s=30)
        self.nodes, self.head = [], None
        # Anything left that runs in this cluster's temp dirs is this cluster's (a worker whose raylet was killed).
        stray = self.processes()
        if stray:
            processes.terminate({p.pid for p in stray}, timeout_s=15)
        for node_dir in self.temp_dir.parent.glob(f"{self.temp_dir.name}-*"):
            shutil.rmtree(node_dir, ignore_errors=True)
        _, alive = psutil.wait_procs(seen, timeout=30)
        return [p for p in {p.pid: p for p in [*alive, *self.processes()]}.values() if _running(p)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pid_running(pid: int) -> bool:
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


def _own_disk_provider() -> type:
    """`OwnDiskFakeProvider`, defined where the autoscaler loads it (Ray is imported in its process only)."""
    import ray._private.parameter
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    class OwnDiskFakeProvider(FakeMultiNodeProvider):  # type: ignore[misc]
        """Ray's fake multi-node provider, each worker node in a temp dir of its own (`<prefix>-<node number>`)."""

        def _create_node_with_resources_and_labels(self, *args: Any, **kwargs: Any) -> None:
            prefix = self.provider_config["node_temp_dir_prefix"]
            with self.lock:
                temp_dir = f"{prefix}-{self._next_node_id + 1}"
                make_params = ray._private.parameter.RayParams

                def own_temp_dir(**params: Any) -> Any:
                    return make_params(**params, temp_dir=temp_dir)

                # The provider builds the node's parameters itself; only the temp dir is added (the lock above keeps
                # the autoscaler's other threads off this module attribute meanwhile).
                ray._private.parameter.RayParams = own_temp_dir
                try:
                    super()._create_node_with_resources_and_labels(*args, **kwargs)
                finally:
                    ray._private.parameter.RayParams = make_params

    return OwnDiskFakeProvider


def __getattr__(name: str) -> Any:
    if name == "OwnDiskFakeProvider":
        return _own_disk_provider()
    raise AttributeError(name)
