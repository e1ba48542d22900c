"""Sweeps on an autoscaling multi-node cluster on this machine: Ray's fake multi-node provider behind a head with 0 CPUs
(as infra/k8s and infra/aws ship it), one worker node type of 1 CPU from 0 to 3 nodes, checkpoints on S3 (SeaweedFS).

* A sweep submitted through the Jobs API from another home scales the cluster up from zero (its trials wait for nodes
  meanwhile: `PENDING (waiting for nodes)`), puts each trial's two workers on two nodes, succeeds, and the cluster
  scales back down after idle. The dashboard's Jobs and Train views name the sweep and each trial.
* A whole node (raylet, workers, agents) is killed during a trial: the trial restarts on the surviving node and a
  new one from its last S3 checkpoint, and its per-step losses equal those of an identical trial that ran
  uninterrupted before it (1e-4).

The cluster is started and stopped by process (`tests.ray_clusters`), never with `ray stop`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.sweep.layout import load_sweep_record
from tests.ray_clusters import FakeAutoscaling, FakeNodeType, LocalCluster
from tests.sweep.remote_sweeps import dashboard_get, follow, newest_train_states, resnet_orch, running_past, submit

# A shared 2-core machine under load starts and stops a multi-node cluster slowly; 900 s cut one off in teardown.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CPU_NODES = FakeNodeType("cpu", cpus=1, max_workers=3)
# Dead nodes are noticed in seconds rather than the default ~30 s (the GCS's health checks of each raylet).
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


@pytest.fixture(scope="module")
def cluster(s3_server: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("fake-cluster")
    autoscaling = FakeAutoscaling([CPU_NODES], idle_timeout_s=6.0)
    with LocalCluster(root, head_cpus=0, autoscaling=autoscaling, env=FAST_HEALTH_CHECKS) as started:
        yield started


def _worker_groups(cluster: LocalCluster, *, alive: bool = False) -> dict[str, list[str]]:
    """placement group -> node ids of the Ray Train workers placed in it (every attempt of every trial so far, or
    the workers alive now)."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker"), *([("state", "=", "ALIVE")] if alive else [])]
    actors = list_actors(
        address=cluster.dashboard_url, filters=filters, detail=True, limit=10_000, raise_on_missing_output=False
    )
    groups: dict[str, list[str]] = {}
    for actor in actors:
        groups.setdefault(actor.placement_group_id or "", []).append(actor.node_id or "")
    return groups


def test_a_sweep_scales_the_cluster_up_from_zero_and_back_down(
    cluster: LocalCluster,
    tiny_shards_s3: str,
    s3_bucket: str,
    mlflow_server: str,
    remote_client: dict[str, str],
    tmp_path: Path,
) -> None:
    (head,) = cluster.wait_for_nodes(1)  # nothing but the head, which trains nothing
    assert head["is_head_node"] and head["resources_total"].get("CPU", 0) == 0
    sweep_id = submit(
        tmp_path,
        cluster,
        remote_client,
        name="autoscale",
        grid="{residual: [true, false]}",
        epochs=2,
        steps=3,
        every=3,
        shards=tiny_shards_s3,
        bucket=s3_bucket,
        mlflow=mlflow_server,
    )
    progress, seen, most_nodes = follow(sweep_id, cluster, remote_client, lambda p: p.state.value == "SUCCEEDED")

    assert [(t.id, t.state.value, t.attempts) for t in progress.trials] == [
        ("000-residual", "SUCCEEDED", 1),
        ("001-plain", "SUCCEEDED", 1),
    ]
    for trial in progress.trials:
        assert trial.metrics["step"] == 6  # 2 epochs x 3 steps
    # The first trial asked for two 1-CPU workers while no node had a CPU: it waited for the autoscaler's nodes.
    assert ("000-residual", "PENDING", "waiting for nodes") in seen
    # 3 one-CPU nodes hold one trial of 2 workers at a time: the driver ran them one after the other.
    assert most_nodes in (3, 4)  # the head and 2 or 3 worker nodes
    record = load_sweep_record(sweep_id)
    assert record.local is False
    log = resnet_orch("logs", sweep_id, env=remote_client).stdout
    assert f"sweep {sweep_id} admitted: 2 trials; 1 trials at once: the cluster can grow to 3 workers of CPU 1" in log

    # Each trial's two workers ran on two different worker nodes.
    head_id = head["node_id"]
    groups = _worker_groups(cluster)
    assert len(groups) == 2
    for nodes in groups.values():
        assert len(nodes) == 2 and len(set(nodes)) == 2 and head_id not in nodes

    # The dashboard names them: the Jobs view shows the sweep's driver job, the Train view each trial's run.
    from ray.job_submission import JobSubmissionClient

    job = JobSubmissionClient(cluster.dashboard_url).get_job_info(sweep_id)
    assert job.metadata == {"resnet_orch.sweep": sweep_id}
    runs = dashboard_get(cluster, "/api/train/v2/runs/v1")  # the Ray Train v2 runs of the Train view
    names = {run["name"] for run in runs["train_runs"]}
    assert {f"{sweep_id}.000-residual", f"{sweep_id}.001-plain"} <= names

    # Idle nodes go away (idle timeout 6 s): back to the head alone.
    cluster.wait_for_nodes(1, timeout_s=180)


def test_a_killed_node_restarts_the_trial_from_its_s3_checkpoint(
    cluster: LocalCluster,
    tiny_shards_s3: str,
    s3_bucket: str,
    mlflow_server: str,
    remote_client: dict[str, str],
    tmp_path: Path,
) -> None:

    # Two identical trials (same seed, data and world size), one after the other: the second loses a node.
    sweep_id = submit(
        tmp_path,
        cluster,
        remote_client,
        name="node-kill",
        grid="{seed: [7, 7]}",
        epochs=4,
        steps=8,
        every=4,
        shards=tiny_shards_s3,
        bucket=s3_bucket,
        mlflow=mlflow_server,
    )
    second = "001-seed7"
    follow(sweep_id, cluster, remote_client, running_past(second, 4))  # past its checkpoint of step 4
    head_id = next(n["node_id"] for n in cluster.alive_nodes() if n["is_head_node"])
    before = _worker_groups(cluster)
    (running,) = _worker_groups(cluster, alive=True).values()  # the second trial's two workers
    victim = running[0]
    assert victim != head_id and len(set(running)) == 2
    assert cluster.kill_node(victim) >= 2  # the raylet and at least the trial's worker on it

    progress, _, _ = follow(sweep_id, cluster, remote_client, lambda p: p.state.value == "SUCCEEDED")
    trials = {t.id: t for t in progress.trials}
    assert (trials["000-seed7"].attempts, trials[second].attempts) == (1, 2)
    assert trials[second].metrics["step"] == 32
    after = _worker_groups(cluster)
    restarted = [nodes for group, nodes in after.items() if group not in before]
    assert restarted and victim not in restarted[-1] and len(set(restarted[-1])) == 2

    # Per-step losses of the interrupted trial (the restart resumed them from its checkpoint) equal the reference's.
    states = newest_train_states(sweep_id, ("000-seed7", second), tmp_path)
    losses = {trial_id: state.step_losses for trial_id, state in states.items()}
    assert len(losses["000-seed7"]) == len(losses[second]) == 32
    assert max(abs(a - b) for a, b in zip(losses["000-seed7"], losses[second], strict=True)) <= 1e-4
    cluster.wait_for_nodes(1, timeout_s=180)
