"""Driving sweeps on a `tests.ray_clusters.LocalCluster` as a user on another machine would: the `resnet-orch` CLI in a
home of its own that knows the cluster only by its dashboard address, and the sweep's progress read back from S3."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.sweep.layout import load_sweep_progress, load_sweep_record
from orchestrator.sweep.state import SweepProgress
from tests.ray_clusters import LocalCluster

if TYPE_CHECKING:
    from orchestrator.training.checkpointing import TrainState

RESNET_ORCH = str(Path(sys.executable).with_name("resnet-orch"))

# The tiny CI model on 32 px crops: `workers` workers of 1 CPU, checkpoints and progress on S3. These sweeps test
# where trials run, not what they learn: validating on the training shards is allowed on purpose.
SWEEP = """
name: {name}
grid: {grid}
model: {{arch: test_resnet, num_classes: 8}}
recipe: {{image_size: 32, resize_size: 36, batch_size: 4, epochs: {epochs}, steps_per_epoch: {steps}, precision: fp32}}
data: {{train: {shards}, val: {shards}, allow_val_equals_train: true, num_threads: 1}}
resources: {{workers: 2, cpus_per_worker: 1}}
checkpoint: {{every_steps: {every}, keep: 2}}
max_failures: 3
storage: s3://{bucket}/sweeps
tracking: {{uri: {mlflow}, experiment: {name}, registered_model: {name}}}
"""


def resnet_orch(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RESNET_ORCH, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def sweep_id_of(stdout: str) -> str:
    (sweep_id,) = [line.removeprefix("sweep id: ") for line in stdout.splitlines() if line.startswith("sweep id: ")]
    return sweep_id


def submit(tmp_path: Path, cluster: LocalCluster, client: dict[str, str], template: str = SWEEP, **fields: Any) -> str:
    """`resnet-orch submit --address <dashboard>` of `template` filled with `fields`; returns the sweep id."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(template.format(**fields), encoding="utf-8")
    submitted = resnet_orch("submit", str(sweep_file), "--address", cluster.dashboard_url, env=client)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    return sweep_id_of(submitted.stdout)


def running_past(trial_id: str, step: int) -> Callable[[SweepProgress], bool]:
    """A `follow` condition: trial `trial_id` is RUNNING and has reported step `step` or later."""

    def reached(progress: SweepProgress) -> bool:
        trial = progress.trial(trial_id)
        return trial.state.value == "RUNNING" and trial.metrics.get("step", 0) >= step

    return reached


def follow(
    sweep_id: str,
    cluster: LocalCluster,
    client: dict[str, str],
    until: Callable[[SweepProgress], bool],
    timeout_s: float = 900,
) -> tuple[SweepProgress, list[tuple[str, str, str | None]], int]:
    """Poll the sweep's progress (its S3 copy) until `until(progress)`; returns it, every (trial, state, waiting)
    seen, and the most nodes seen alive at once."""
    seen: list[tuple[str, str, str | None]] = []
    most_nodes = 0
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        progress = load_sweep_progress(sweep_id)
        nodes = len(cluster.alive_nodes())
        for trial in progress.trials:
            observed = (trial.id, trial.state.value, trial.waiting)
            if observed not in seen:
                seen.append(observed)
                print(f"{time.monotonic() - started:6.1f}s {nodes} nodes: {observed}")  # shown when a test fails
        most_nodes = max(most_nodes, nodes)
        if until(progress):
            return progress, seen, most_nodes
        if time.monotonic() > deadline or progress.state.is_terminal:
            logs = resnet_orch("logs", sweep_id, env=client).stdout[-4000:]
            raise AssertionError(f"sweep {sweep_id} is {progress.state}, not what was awaited; driver log:\n{logs}")
        time.sleep(0.3)


def dashboard_get(cluster: LocalCluster, path: str) -> Any:
    """GET a JSON endpoint of the cluster's dashboard with the token."""
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    request = urllib.request.Request(f"{cluster.dashboard_url}{path}", headers=get_auth_headers_if_auth_enabled({}))
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def newest_train_states(sweep_id: str, trial_ids: tuple[str, ...], into: Path) -> dict[str, TrainState]:
    """Each trial's state in its newest complete checkpoint in the sweep's S3 storage (downloaded under `into`)."""
    from orchestrator.training.checkpointing import latest_complete_checkpoint, read_checkpoint
    from orchestrator.training.trial import open_checkpoint
    from pipelines.storage import S3Settings

    fs = S3Settings.from_env().arrow_filesystem()
    storage = load_sweep_record(sweep_id).storage.removeprefix("s3://")
    states = {}
    for trial_id in trial_ids:
        latest = latest_complete_checkpoint(fs, f"{storage}/{sweep_id}.{trial_id}")
        assert latest is not None, f"no complete checkpoint of {trial_id}"
        local = open_checkpoint(f"s3://{latest}").to_directory(str(into / trial_id))
        _, states[trial_id] = read_checkpoint(Path(local))
    return states
