"""The concurrency/queueing decision without Ray: how many trials run at once on what a cluster can grow to, which
trial shapes are refused (and why), and which storage a multi-node cluster refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE
from orchestrator.sweep.capacity import (
    ClusterShape,
    NodeType,
    SchedulingError,
    check_storage,
    plan,
    slots_per_node,
)
from orchestrator.sweep.config import ResourcesConfig, load_sweep

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HEAD = NodeType("head", {"CPU": 0, TRIAL_DRIVER_RESOURCE: 1000}, max_count=1, min_count=1)


def _autoscaling(*workers: NodeType, max_worker_nodes: int | None = None, alive: int = 1) -> ClusterShape:
    return ClusterShape((HEAD, *workers), alive, "test config", max_worker_nodes=max_worker_nodes, head_type="head")


def test_slots_per_node_counts_whole_workers_by_the_scarcest_resource() -> None:
    assert slots_per_node({"CPU": 96, "GPU": 8}, {"CPU": 10, "GPU": 1}) == 8
    assert slots_per_node({"CPU": 96, "GPU": 8}, {"CPU": 16, "GPU": 1}) == 6
    assert slots_per_node({"CPU": 1}, {"CPU": 2}) == 0
    assert slots_per_node({"CPU": 4, "GPU": 1}, {"CPU": 1, "GPU": 0.1}) == 4
    assert slots_per_node({"CPU": 8, "GPU": 1}, {"CPU": 0.5, "GPU": 0.1}) == 10  # 1 / 0.1 is 10, not 9.999...


def test_a_head_with_no_cpus_and_workers_from_zero_runs_as_many_trials_as_the_cluster_can_grow_to() -> None:
    # Up now: only the head, with 0 CPUs. The old rule (what is up at submit) refused every trial.
    shape = _autoscaling(NodeType("cpu", {"CPU": 1}, max_count=5))
    two_workers = ResourcesConfig(workers=2, cpus_per_worker=1)
    decided = plan(two_workers, shape, max_concurrent=None, trials=4)
    assert decided.max_concurrent == 2  # 5 nodes x 1 worker = 5 workers: 2 trials of 2
    assert "grow to 5 workers of CPU 1" in decided.why
    assert plan(two_workers, shape, max_concurrent=1, trials=4).max_concurrent == 1
    assert plan(two_workers, shape, max_concurrent=None, trials=1).max_concurrent == 1


def test_the_cluster_wide_max_workers_caps_the_best_node_types_first() -> None:
    big = NodeType("big", {"CPU": 8}, max_count=2)
    small = NodeType("small", {"CPU": 2}, max_count=10)
    shape = _autoscaling(small, big, max_worker_nodes=3)
    # 3 worker nodes at most: both big ones (8 workers each) and one small one (2): 18 one-CPU workers, 4 trials of 4.
    assert plan(ResourcesConfig(workers=4), shape, max_concurrent=None, trials=10).max_concurrent == 4
    assert shape.max_nodes == 4  # the head and 3 workers


def test_the_shipped_64_gpu_sweep_fits_the_shipped_cluster_once() -> None:
    config = load_sweep(EXAMPLES / "table3_shortcuts.yaml")  # 8 workers x (1 GPU, 8 CPUs), at most 3 at once
    p4d = NodeType("gpu", {"CPU": 96, "GPU": 8}, max_count=8)
    assert plan(config.resources, _autoscaling(p4d), max_concurrent=3, trials=6).max_concurrent == 3
    # Two nodes: 16 GPU workers, two trials of 8.
    two = NodeType("gpu", {"CPU": 96, "GPU": 8}, max_count=2)
    assert plan(config.resources, _autoscaling(two), max_concurrent=None, trials=6).max_concurrent == 2


def test_a_worker_no_node_type_can_hold_is_refused_with_the_node_types() -> None:
    shape = _autoscaling(NodeType("cpu", {"CPU": 1}, max_count=4))
    with pytest.raises(SchedulingError) as info:
        plan(ResourcesConfig(workers=1, gpus_per_worker=1), shape, max_concurrent=None, trials=1)
    assert str(info.value) == (
        "one worker needs CPU 1, GPU 1 and no node of this cluster can ever hold it (node types from test config: "
        "head (CPU 0, resnet_orch_trial_driver 1000) x 1..1, cpu (CPU 1) x 0..4); lower "
        "`resources.cpus_per_worker`/`gpus_per_worker` or add a node type that holds one worker"
    )


def test_more_workers_than_the_largest_cluster_holds_is_refused() -> None:
    shape = _autoscaling(NodeType("cpu", {"CPU": 1}, max_count=3))
    with pytest.raises(SchedulingError, match=r"one trial needs 4 workers x CPU 1 but the largest this cluster can "):
        plan(ResourcesConfig(workers=4), shape, max_concurrent=None, trials=1)
    with pytest.raises(SchedulingError, match="holds 3 "):
        plan(ResourcesConfig(workers=4), shape, max_concurrent=None, trials=1)


def test_a_fixed_cluster_is_sized_by_its_nodes_one_worker_per_node_each() -> None:
    # Two 1-CPU nodes cannot hold a 2-CPU worker, although the cluster has 2 CPUs in total.
    nodes = NodeType("nodes", {"CPU": 1, TRIAL_DRIVER_RESOURCE: 1000}, max_count=2, min_count=2)
    shape = ClusterShape((nodes,), 2, "its nodes")
    with pytest.raises(SchedulingError, match="one worker needs CPU 2"):
        plan(ResourcesConfig(workers=1, cpus_per_worker=2), shape, max_concurrent=None, trials=1)
    assert plan(ResourcesConfig(workers=1), shape, max_concurrent=None, trials=5).max_concurrent == 2


def test_unknown_node_types_start_max_concurrent_trials_or_all_and_let_them_wait() -> None:
    shape = ClusterShape(None, 1, "not readable", alive_resources={TRIAL_DRIVER_RESOURCE: 1000})
    huge = ResourcesConfig(workers=64, gpus_per_worker=1)
    assert plan(huge, shape, max_concurrent=None, trials=5).max_concurrent == 5
    assert plan(huge, shape, max_concurrent=2, trials=5).max_concurrent == 2
    without_driver_resource = ClusterShape(None, 1, "not readable", alive_resources={"CPU": 8})
    with pytest.raises(SchedulingError, match=f"no `{TRIAL_DRIVER_RESOURCE}` resource"):
        plan(huge, without_driver_resource, max_concurrent=None, trials=5)


def test_trial_drivers_cap_concurrency_by_their_resource() -> None:
    head = NodeType("head", {"CPU": 0, TRIAL_DRIVER_RESOURCE: 2}, max_count=1, min_count=1)
    shape = ClusterShape((head, NodeType("cpu", {"CPU": 8}, max_count=10)), 1, "test", head_type="head")
    assert plan(ResourcesConfig(workers=1), shape, max_concurrent=None, trials=50).max_concurrent == 2


@pytest.mark.parametrize(
    ("shape", "refused"),
    [
        (ClusterShape((HEAD,), 1, "its nodes", head_type="head"), None),
        (ClusterShape((HEAD,), 2, "its nodes", head_type="head"), "this cluster has 2 nodes"),
        (_autoscaling(NodeType("cpu", {"CPU": 1}, max_count=3)), "this cluster can grow to 4 nodes (test config)"),
        (_autoscaling(NodeType("cpu", {"CPU": 1}, max_count=None)), "this cluster can grow to any number of nodes"),
        (ClusterShape(None, 1, "not readable"), "this cluster may add nodes"),
    ],
)
def test_local_storage_is_refused_where_another_node_may_run_a_trial(shape: ClusterShape, refused: str | None) -> None:
    check_storage("s3://bucket/runs", shape, shared_filesystem=False)
    check_storage("/mnt/efs/runs", shape, shared_filesystem=True)
    if refused is None:
        check_storage("/home/me/.resnet-orch/storage/x", shape, shared_filesystem=False)
        return
    with pytest.raises(SchedulingError) as info:
        check_storage("/home/me/.resnet-orch/storage/x", shape, shared_filesystem=False)
    message = str(info.value)
    assert message.startswith(f"storage /home/me/.resnet-orch/storage/x is a local path, but {refused}")
    assert "Set `storage: s3://BUCKET/PREFIX`" in message
