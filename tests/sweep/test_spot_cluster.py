"""A spot reclaim on a multi-node cluster on this machine: a trial's node is drained for preemption with a deadline
through the GCS's drain API (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`, what the autoscaler and Ray's
own node-killer tests call), then killed at the deadline as the cloud would.

Two identical trials (same seed, data, world size) run one after the other on three 1-CPU nodes (two workers a
trial); the second one's node is reclaimed. Its workers see the notice at the next step boundary and write one
just-in-time checkpoint; Ray Train restarts the group at the deadline on the surviving node and the spare, within
`max_preemptions` (`max_failures: 0` shows the preemption is not charged to it), and the restart resumes at the
just-in-time checkpoint's step. The interrupted trial's per-step losses equal the uninterrupted one's (1e-4);
`status` and MLflow show one preemption, the second attempt and the live worker count.

Started and stopped by process (`tests.ray_clusters`), never with `ray stop`.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack import processes
from orchestrator.stack.seaweedfs import SeaweedFS
from tests.ray_clusters import LocalCluster
from tests.sweep.remote_sweeps import follow, newest_train_states, resnet_orch, running_past, submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ENV = {
    # Dead nodes are noticed in seconds; the preemption watcher polls the GCS's draining nodes every 0.5 s (5 s).
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5",
}
# 500 learnable training images, 2 per worker and step: 125 steps an epoch; checkpoints only at epoch ends (and
# on the notice), so the just-in-time one is the only mid-epoch checkpoint.
STEPS_PER_EPOCH = 125
EPOCHS = 3
DEADLINE_S = 5
SWEEP = """
name: spot
grid: {{seed: [7, 7]}}
model: {{arch: test_resnet, base_width: 8, num_classes: 10}}
recipe: {{image_size: 32, resize_size: 40, batch_size: 4, epochs: {epochs}, lr: 0.1, precision: fp32}}
data: {{train: {train}, val: {val}, num_threads: 1}}
resources: {{workers: 2, cpus_per_worker: 1}}
checkpoint: {{every_steps: 100000, keep: 2}}
max_failures: 0
max_preemptions: 1
storage: s3://{bucket}/sweeps
tracking: {{uri: {mlflow}, experiment: spot, registered_model: spot}}
"""


@pytest.fixture
def cluster(s3_server: SeaweedFS, tmp_path: Path) -> Iterator[LocalCluster]:
    started = LocalCluster(tmp_path / "cluster", head_cpus=0, env=ENV)
    try:
        # A shared machine under load starts a head slowly, and Ray gives its raylet 30 s to register (at a load of 30
        # on 2 cores the head died so): a head that does not come up is started again, twice at most.
        for tries_left in (2, 1, 0):
            try:
                started.start(timeout_s=300)
                break
            except (TimeoutError, processes.ProcessError):
                started.stop()
                if not tries_left:
                    raise
        # Two nodes for a trial's two workers, and the spare a reclaimed node's workers move to (the replacement
        # an autoscaler would bring; up beforehand, so the restart does not wait for a node to start).
        for _ in range(3):
            for tries_left in (2, 1, 0):  # a node's raylet has the same 30 s to register
                try:
                    started.add_node(cpus=1, timeout_s=300)
                    break
                except processes.ProcessError:
                    if not tries_left:
                        raise
        yield started
    finally:
        left = started.stop()
    assert not left, f"processes of the cluster still running after stop: {[p.pid for p in left]}"


def cells(line: str) -> list[str]:
    """The cells of one row of `status`'s table."""
    return [cell.strip() for cell in line.strip().strip("│┃").split("│" if "│" in line else "┃")]


def _alive_worker_nodes(cluster: LocalCluster) -> list[str]:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    actors = list_actors(address=cluster.dashboard_url, filters=filters, detail=True, raise_on_missing_output=False)
    return [actor.node_id or "" for actor in actors]


def test_a_preempted_node_costs_at_most_one_step_and_not_max_failures(
    cluster: LocalCluster,
    learnable_shards_s3: tuple[str, str],
    s3_bucket: str,
    mlflow_server: str,
    remote_client: dict[str, str],
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    from orchestrator.sweep.tracking import metric_history

    train, val = learnable_shards_s3
    sweep_id = submit(
        tmp_path,
        cluster,
        remote_client,
        SWEEP,
        epochs=EPOCHS,
        train=train,
        val=val,
        bucket=s3_bucket,
        mlflow=mlflow_server,
    )
    second = "001-seed7"
    follow(sweep_id, cluster, remote_client, running_past(second, STEPS_PER_EPOCH))  # closed an epoch
    running = _alive_worker_nodes(cluster)
    assert len(set(running)) == 2, running
    victim = running[-1]
    drained = subprocess.run(
        [
            processes.executable("ray"),
            "drain-node",
            f"--address={cluster.gcs_address}",
            f"--node-id={victim}",
            "--reason=DRAIN_NODE_REASON_PREEMPTION",
            "--reason-message=spot instance reclaimed",
            f"--deadline-remaining-seconds={DEADLINE_S}",
        ],
        env=processes.child_env(**cluster.base_env()),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert drained.returncode == 0, drained.stdout + drained.stderr
    drained_at = time.monotonic()
    time.sleep(max(0.0, drained_at + DEADLINE_S - time.monotonic()))
    # The reclaim itself, unless Ray got there first: at the deadline Ray Train stops the drained node's workers,
    # and a drained raylet with nothing left to run shuts itself down.
    with contextlib.suppress(LookupError):
        cluster.kill_node(victim)

    progress, _, _ = follow(sweep_id, cluster, remote_client, lambda p: p.state.value == "SUCCEEDED")
    trials = {t.id: t for t in progress.trials}
    reference, preempted = trials["000-seed7"], trials[second]
    assert (reference.attempts, preempted.attempts) == (1, 2)
    assert (reference.metrics["preemptions"], preempted.metrics["preemptions"]) == (0, 1)
    assert reference.workers == preempted.workers == "2/2"
    total = EPOCHS * STEPS_PER_EPOCH
    assert preempted.metrics["step"] == total
    assert victim not in _alive_worker_nodes(cluster)
    shown = resnet_orch("status", sweep_id, env=remote_client)
    lines = shown.stdout.splitlines()
    header = next(cells(line) for line in lines if "preemptions" in line)
    row = dict(zip(header, next(cells(line) for line in lines if second in line), strict=True))
    assert (row["workers"], row["preemptions"], row["attempt"]) == ("2/2", "1", "2"), shown.stdout

    # MLflow: the preemption is counted at the just-in-time report's step, a mid-epoch step (no other checkpoint is);
    # the second attempt's reports follow it.
    client = MlflowClient(mlflow_server)
    run_id = preempted.mlflow_run_id
    assert run_id is not None
    counted = metric_history(client, run_id, "preemptions")
    jit_step = next(step for step, value in counted if value == 1)
    assert {value for step, value in counted if step < jit_step} == {0}
    assert {value for step, value in counted if step >= jit_step} == {1}
    # Mid-epoch (no epoch-end checkpoint coincides with it), after the first epoch closed; how far into the rest of
    # the run depends on how long the drain took to reach the workers.
    assert jit_step % STEPS_PER_EPOCH != 0 and STEPS_PER_EPOCH < jit_step < total
    attempts = metric_history(client, run_id, "attempt")
    assert {value for step, value in attempts if step <= jit_step} == {0}
    assert {value for step, value in attempts if step > jit_step} == {1}
    assert {value for _, value in metric_history(client, run_id, "workers")} == {2}

    # The restart resumed at the just-in-time checkpoint's step, and reproduced the uninterrupted trial's losses.
    states = newest_train_states(sweep_id, ("000-seed7", second), tmp_path)
    final = states[second]
    assert (final.report["attempt"], final.report["resumed_from_step"], final.preemptions) == (1, jit_step, 1)
    assert len(states["000-seed7"].step_losses) == len(final.step_losses) == total
    assert max(abs(a - b) for a, b in zip(states["000-seed7"].step_losses, final.step_losses, strict=True)) <= 1e-4
    assert final.epoch_sizes == states["000-seed7"].epoch_sizes == [500] * EPOCHS
