"""Reading what a cluster can grow to from the configs its autoscaler reads: the shipped AWS cluster-launcher YAML
(through Ray's `prepare_config`, as `ray up` writes the head's bootstrap config) and the shipped KubeRay RayCluster
(through Ray's KubeRay reader); and the shape of a cluster that cannot add nodes. Each shape is then fed to the
scheduling decision with the shipped 64-GPU sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE
from orchestrator.sweep.autoscaler import node_types_from_config, node_types_from_nodes
from orchestrator.sweep.capacity import plan
from orchestrator.sweep.config import ResourcesConfig, parse_sweep

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _rayjob_sweep_resources() -> ResourcesConfig:
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "rayjob.yaml").read_text()))
    (sweeps,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return parse_sweep(yaml.safe_load(sweeps["data"]["resnet50-64gpu.yaml"])).resources


def _raycluster() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "raycluster.yaml").read_text()))
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    return cluster


def test_the_aws_launcher_config_grows_to_8_p4d_nodes() -> None:
    config = prepare_config(yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text()))
    shape = node_types_from_config(config, "bootstrap config")
    types = {t.name: t for t in shape.node_types or ()}
    assert (types["head"].max_count, types["head"].resources["CPU"]) == (1, 0)
    assert (types["gpu_p4d_spot"].min_count, types["gpu_p4d_spot"].max_count) == (0, 8)
    assert types["gpu_p5"].max_count == 0
    assert shape.max_worker_nodes == 8 and shape.max_nodes == 9
    resources = _rayjob_sweep_resources()  # 64 workers x (1 GPU, 10 CPUs): 8 per p4d node (96 CPUs, 8 GPUs)
    decided = plan(resources, shape, max_concurrent=None, trials=3)
    assert decided.max_concurrent == 1
    assert "grow to 64 workers of CPU 10, GPU 1" in decided.why


def test_the_kuberay_cluster_grows_to_64_gpus_and_hosts_the_trial_drivers() -> None:
    shape = node_types_from_config(_derive_autoscaling_config_from_ray_cr(_raycluster()), "RayCluster")
    types = {t.name: t for t in shape.node_types or ()}
    head = types[shape.head_type or ""]
    assert head.resources["CPU"] == 0 and head.resources[TRIAL_DRIVER_RESOURCE] == 1000
    assert (types["gpu-p4d"].max_count, types["gpu-p4d"].resources["GPU"]) == (8, 8)
    assert plan(_rayjob_sweep_resources(), shape, max_concurrent=None, trials=2).max_concurrent == 1
    # One more worker than 8 nodes x 8 GPUs: refused before anything starts.
    too_big = ResourcesConfig(workers=65, gpus_per_worker=1, cpus_per_worker=10)
    try:
        plan(too_big, shape, max_concurrent=None, trials=1)
    except RuntimeError as exc:
        assert "one trial needs 65 workers x CPU 10, GPU 1 but the largest this cluster can grow to holds 64" in str(
            exc
        )
    else:
        raise AssertionError("a 65-GPU trial on a 64-GPU cluster was not refused")


def test_a_cluster_without_autoscaler_config_is_its_nodes() -> None:
    head = {"CPU": 2.0, TRIAL_DRIVER_RESOURCE: 1000.0, "node:__internal_head__": 1.0, "memory": 1e9}
    worker = {"CPU": 1.0, "memory": 5e8, "node:127.0.0.2": 1.0}
    other = {"CPU": 1.0, "memory": 7e8, "node:127.0.0.3": 1.0}  # same placement resources: one group
    shape = node_types_from_nodes([head, worker, other], "its nodes")
    types = {t.name: t for t in shape.node_types or ()}
    assert shape.head_type == "head" and types["head"].max_count == 1
    (workers,) = [t for name, t in types.items() if name != "head"]
    assert (workers.max_count, workers.resources["CPU"]) == (2, 1.0)
    assert shape.max_nodes == 3 and shape.alive_nodes == 3
    # 2 (head) + 1 + 1 one-CPU workers: two trials of 2.
    assert plan(ResourcesConfig(workers=2), shape, max_concurrent=None, trials=5).max_concurrent == 2
