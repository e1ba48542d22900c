"""A sweep on a Ray cluster this machine reaches by address only: the local stack (`resnet-orch up`) in a home of its
own, the client in another home, as a laptop reaches a cluster through a port-forward (docs/cluster.md). The driver
runs from the job's uploaded working dir; `submit --wait`, `status` and `cancel` follow its trials through the
progress copy it keeps in the sweep's S3 storage. `down` leaves no process of the cluster behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.stack import local_stack as stack

pytestmark = pytest.mark.slow

RESNET_ORCH = str(Path(sys.executable).with_name("resnet-orch"))

# The tiny CI model on 32 px crops of the generated images: a whole trial in seconds on one CPU.
_SWEEP = """
name: {name}
grid: {{residual: [true, false]}}
model: {{arch: test_resnet, num_classes: 8}}
recipe: {{image_size: 32, resize_size: 36, batch_size: 4, epochs: {epochs}, steps_per_epoch: 2, precision: fp32}}
data: {{train: {shards}, val: {shards}, allow_val_equals_train: true, num_threads: 1}}
resources: {{workers: 1, cpus_per_worker: 1}}
storage: s3://{bucket}/sweeps
tracking: {{experiment: {name}, registered_model: {name}}}
"""


def resnet_orch(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RESNET_ORCH, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _processes(state: stack.StackState) -> list[psutil.Process]:
    """Every live process of the stack: each service's leader and all its descendants (job drivers, Ray workers)."""
    found = []
    for record in state.services.values():
        try:
            leader = psutil.Process(record.pid)
            found += [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[stack.StackState]:
    """The local stack, started and stopped through the CLI; after `down` none of its processes may be left."""
    env = {**os.environ, "RESNET_ORCH_HOME": str(tmp_path / "cluster-home"), "RAY_AUTH_MODE": "token"}
    started = resnet_orch("up", "--num-cpus", "2", env=env)
    state, _ = stack.status(tmp_path / "cluster-home")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert state is not None
        yield state
    finally:
        seen = _processes(state) if state is not None else []
        stopped = resnet_orch("down", env=env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    _, alive = psutil.wait_procs(seen, timeout=30)
    assert [p.pid for p in alive if _running(p)] == []


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sweep_id(stdout: str) -> str:
    (sweep_id,) = [line.removeprefix("sweep id: ") for line in stdout.splitlines() if line.startswith("sweep id: ")]
    return sweep_id


def _status(sweep_id: str, env: dict[str, str]) -> dict[str, Any]:
    done = resnet_orch("status", sweep_id, "--json", env=env)
    assert done.returncode == 0, done.stderr
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


def test_submit_status_cancel_by_address(
    cluster: stack.StackState, tiny_images_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = cluster.services[stack.RAY].url
    # The client knows the cluster's S3 and MLflow, and its Ray only by the --address below.
    client_env = {k: v for k, v in cluster.client_env().items() if not k.startswith("RAY_")}
    for key, value in client_env.items():
        monkeypatch.setenv(key, value)
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    env = {**os.environ, "RESNET_ORCH_HOME": str(tmp_path / "client-home"), "COLUMNS": "200"}
    from pipelines.sharding import shard_dataset

    shards = f"s3://{cluster.bucket}/data/tiny"
    shard_dataset(tiny_images_dir, shards, shard_bytes=60_000)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(_SWEEP.format(name="remote-e2e", epochs=2, shards=shards, bucket=cluster.bucket))

    submitted = resnet_orch("submit", str(sweep_file), "--address", url, "--wait", env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    sweep_id = _sweep_id(submitted.stdout)
    assert f"dashboard: {url}" in submitted.stdout
    record = json.loads((tmp_path / "client-home" / "sweeps" / sweep_id / "record.json").read_text())
    assert record["local"] is False  # a head this home did not start: the driver ran from the job's working dir

    status = _status(sweep_id, env)
    assert status["state"] == "SUCCEEDED"
    trials = status["trials"]
    assert [(t["id"], t["state"], t["attempts"]) for t in trials] == [
        ("000-residual", "SUCCEEDED", 1),
        ("001-plain", "SUCCEEDED", 1),
    ]
    mlflow_client = MlflowClient(tracking_uri=client_env["MLFLOW_TRACKING_URI"])
    best = {}
    for trial in trials:
        assert trial["metrics"]["epoch"] == 1  # the last of 2 epochs, 0-based
        assert trial["metrics"]["step"] == 4
        # What `status` read back from the sweep's storage is what the driver logged to MLflow, epoch by epoch.
        history = mlflow_client.get_metric_history(trial["mlflow_run_id"], "val_top1_err")
        assert [m.step for m in history] == [2, 4]
        assert trial["metrics"]["val_top1_err"] == history[-1].value
        best[trial["id"]] = f"{100 * min(m.value for m in history):.2f}"
    table = resnet_orch("status", sweep_id, env=env)
    assert table.returncode == 0, table.stderr
    rows = [line.split("│")[1:-1] for line in table.stdout.splitlines() if line.startswith("│")]
    # trial, model, residual, shortcut, state, attempt, workers, preemptions, epoch, best top-1 err %
    assert [[cell.strip() for cell in row][:10] for row in rows] == [
        ["000-residual", "test_resnet", "yes", "B", "SUCCEEDED", "1", "1/1", "0", "1", best["000-residual"]],
        ["001-plain", "test_resnet", "no", "B", "SUCCEEDED", "1", "1/1", "0", "1", best["001-plain"]],
    ]
    experiment = mlflow_client.get_experiment_by_name("remote-e2e")
    assert experiment is not None
    assert {r.info.status for r in mlflow_client.search_runs([experiment.experiment_id])} == {"FINISHED"}

    # A long sweep: followed while it runs, then cancelled from here.
    sweep_file.write_text(_SWEEP.format(name="remote-cancel", epochs=500, shards=shards, bucket=cluster.bucket))
    submitted = resnet_orch("submit", str(sweep_file), "--address", url, env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    sweep_id = _sweep_id(submitted.stdout)
    deadline = time.monotonic() + 300
    while "epoch" not in (running := _status(sweep_id, env))["trials"][0]["metrics"]:
        assert time.monotonic() < deadline, resnet_orch("logs", sweep_id, env=env).stdout[-3000:]
        time.sleep(2)
    assert running["state"] == "RUNNING"
    assert running["trials"][0]["state"] == "RUNNING"

    cancelled = resnet_orch("cancel", sweep_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"sweep {sweep_id}: CANCELLED"
    status = _status(sweep_id, env)  # read back from the sweep's storage, where `cancel` wrote it too
    assert status["state"] == "CANCELLED"
    assert [t["state"] for t in status["trials"]] == ["CANCELLED", "CANCELLED"]
    from ray.job_submission import JobSubmissionClient

    assert JobSubmissionClient(url).get_job_status(sweep_id).value == "STOPPED"
    run = mlflow_client.get_run(status["trials"][0]["mlflow_run_id"])
    assert run.info.status == "KILLED"
