"""`data shard --address` and `data check --full --address` on a real two-node Ray cluster on this machine: a head
with one CPU and a second node with one CPU joined to it, so the shard tasks run on both nodes."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack import processes, ray_head
from orchestrator.stack.processes import LOOPBACK, ServiceRecord
from pipelines.sharding import MANIFEST_NAME, shard_dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
# A shared 2-core machine under load registers a raylet in more than Ray's default 30 s.
_SLOW_MACHINE = {"RAY_raylet_start_wait_time_s": "180"}


def _client_env() -> dict[str, str]:
    """A Ray client's environment for the token-auth cluster: set before Ray is imported, in a process of its own."""
    return processes.child_env(RAY_AUTH_MODE="token", **_SLOW_MACHINE)


def _alive_nodes(address: str) -> int:
    code = f"import ray; ray.init(address={address!r}); print(sum(n['Alive'] for n in ray.nodes()))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=_client_env(), capture_output=True, text=True, timeout=120, check=False
    )
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = processes.executable("resnet-orch")
    return subprocess.run(
        [exe, "data", *args], env=_client_env(), capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ray-cluster")
    # The project's head keeps every server on loopback (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), which Ray allows for
    # one node only; this test head goes without that switch (its GCS then listens on every interface, token auth on)
    # so that a second node can join it.
    ray_exe = processes.executable("ray")
    ray_head.ensure_auth_token(ray_exe)
    launch = ray_head.head_launch(ray_exe, ray_head.short_temp_dir(tmp), num_cpus=1, block=True)
    env = processes.child_env(
        RAY_AUTH_MODE="token",
        **_SLOW_MACHINE,
        **{k: v for k, v in launch.env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},
    )
    url = f"http://{LOOPBACK}:{launch.dashboard_port}"
    head = processes.start(
        "ray",
        launch.cmd,
        env,
        log=tmp / "head.log",
        url=url,
        ports=(launch.gcs_port, launch.dashboard_port),
        probe=lambda: ray_head.gcs_healthy(url),
        timeout_s=300,
    )
    address = f"{LOOPBACK}:{launch.gcs_port}"
    cmd = [
        ray_exe,
        "start",
        "--block",
        f"--address={address}",
        f"--node-ip-address={LOOPBACK}",
        "--num-cpus=1",
        "--disable-usage-stats",
    ]
    node: ServiceRecord | None = None
    try:
        node_proc = processes.spawn(cmd, _client_env(), tmp / "node.log")
        node = ServiceRecord(
            "ray-node", node_proc.pid, "", (), str(tmp / "node.log"), processes.identity(node_proc.pid)
        )
        deadline = time.monotonic() + 180
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline, processes.tail(tmp / "node.log")
            time.sleep(2)
        yield address
    finally:
        if node is not None:
            processes.stop(node)
        processes.stop(head)


def test_shard_over_two_nodes_is_byte_identical_and_check_full_agrees(
    two_node_cluster: str, tiny_images_dir: Path, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    shard_dataset(tiny_images_dir, str(local), shard_bytes=60_000)
    spread = tmp_path / "spread"
    result = _cli("shard", str(tiny_images_dir), str(spread), "--shard-size", "60k", "--address", two_node_cluster)
    assert result.returncode == 0, result.stdout + result.stderr
    names = sorted(p.name for p in local.iterdir() if p.name != MANIFEST_NAME)
    assert len([n for n in names if n.endswith(".tar")]) >= 3  # several tasks to spread
    assert names == sorted(p.name for p in spread.iterdir() if p.name != MANIFEST_NAME)
    match, mismatch, errors = filecmp.cmpfiles(local, spread, names, shallow=False)
    assert (match, mismatch, errors) == (names, [], [])
    shards_of = {k: v for k, v in json.loads((local / MANIFEST_NAME).read_text()).items() if k != "created"}
    assert shards_of == {k: v for k, v in json.loads((spread / MANIFEST_NAME).read_text()).items() if k != "created"}

    result = _cli("check", str(spread), "--full", "--json", "--address", two_node_cluster)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["mode"], report["samples"], report["records"], report["classes"]) == ("full", 48, 48, 8)
    assert set(report["per_class"].values()) == {6}
