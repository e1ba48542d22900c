"""What the connected Ray cluster can grow to: its node types and their max counts, read where Ray keeps them.

The sweep driver sizes its concurrency from this (`capacity.plan`), never from the nodes that happen to be up at
submit. Sources, first found wins:

1. the GCS's cluster config (`ray._private.state.state.get_cluster_config()`: node groups with min/max counts), the
   one Ray Train and Ray Data read for the same question, where the autoscaler reports it;
2. the autoscaling config file of the head's autoscaler (`ray start --head --autoscaling-config=FILE`: the cluster
   launcher's `~/ray_bootstrap_config.yaml`, Ray's fake multi-node provider), found through the autoscaler process
   of this cluster on the driver's node (a Ray job's driver runs on the head);
3. on KubeRay, the RayCluster resource itself, read with Ray's own KubeRay reader (what the in-cluster autoscaler
   reads) when the head pod names it (`RESNET_ORCH_RAYCLUSTER`, `RESNET_ORCH_NAMESPACE`) and its service account
   may `get` it (infra/k8s/namespace.yaml grants that).

A head whose autoscaler runs without a config (`ray start --head` alone, the local stack) cannot add nodes: its node
types are its nodes. Where none of these is readable the shape says so and `capacity.plan` falls back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE
from orchestrator.sweep.capacity import ClusterShape, NodeType

logger = logging.getLogger(__name__)

RAYCLUSTER_ENV = "RESNET_ORCH_RAYCLUSTER"
NAMESPACE_ENV = "RESNET_ORCH_NAMESPACE"
# Ray marks its head node with this resource.
_HEAD_MARKER = "node:__internal_head__"
# The resources a trial's placement depends on; the rest (memory, node:<ip>) would split identical nodes apart.
_PLACEMENT_RESOURCES = ("CPU", "GPU", TRIAL_DRIVER_RESOURCE)


def node_types_from_config(config: Mapping[str, Any], source: str) -> ClusterShape:
    """The shape an autoscaling config describes (cluster-launcher format, also what KubeRay's reader produces)."""
    head_type = config.get("head_node_type")
    node_types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        if name == head_type:
            node_types.append(NodeType(name, resources, max_count=1, min_count=1))
        else:
            node_types.append(
                NodeType(
                    name,
                    resources,
                    max_count=int(spec.get("max_workers", config.get("max_workers", 0))),
                    min_count=int(spec.get("min_workers", 0)),
                )
            )
    max_workers = config.get("max_workers")
    return ClusterShape(
        node_types=tuple(node_types),
        alive_nodes=0,
        source=source,
        max_worker_nodes=None if max_workers is None else int(max_workers),
        head_type=head_type,
    )


def node_types_from_nodes(nodes: list[Mapping[str, float]], source: str) -> ClusterShape:
    """The shape of a cluster that cannot add nodes: its alive nodes' resources, identical nodes grouped."""
    groups: dict[tuple[bool, tuple[tuple[str, float], ...]], int] = {}
    for resources in nodes:
        key = (_HEAD_MARKER in resources, tuple((k, float(resources.get(k, 0.0))) for k in _PLACEMENT_RESOURCES))
        groups[key] = groups.get(key, 0) + 1
    node_types = []
    head_type = None
    for index, ((is_head, amounts), count) in enumerate(sorted(groups.items(), reverse=True)):
        name = "head" if is_head else f"nodes-{index}"
        head_type = name if is_head else head_type
        node_types.append(NodeType(name, dict(amounts), max_count=count, min_count=count))
    return ClusterShape(
        node_types=tuple(node_types), alive_nodes=len(nodes), source=source, max_worker_nodes=None, head_type=head_type
    )


def node_types_from_cluster_config(cluster_config: Any, source: str) -> ClusterShape:
    """The shape in the GCS's `autoscaler_pb2.ClusterConfig` (max_count -1: no limit)."""
    node_types = tuple(
        NodeType(
            group.name,
            {k: float(v) for k, v in group.resources.items()},
            max_count=None if group.max_count < 0 else int(group.max_count),
            min_count=int(group.min_count),
        )
        for group in cluster_config.node_group_configs
    )
    heads = [t.name for t in node_types if _HEAD_MARKER in t.resources]
    return ClusterShape(node_types=node_types, alive_nodes=0, source=source, head_type=heads[0] if heads else None)


def autoscaler_process_config(gcs_address: str) -> tuple[bool, Path | None]:
    """(found, config): whether this cluster's autoscaler runs on this node, and the config file it was given.

    The autoscaler is `python .../autoscaler/.../monitor.py --gcs-address=ADDRESS [--autoscaling-config=FILE]`.
    """
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if not any(arg.endswith("monitor.py") and "autoscaler" in arg for arg in cmdline):
            continue
        args = dict(arg.split("=", 1) for arg in cmdline if arg.startswith("--") and "=" in arg)
        if args.get("--gcs-address") != gcs_address:
            continue
        config = args.get("--autoscaling-config")
        return True, Path(config).expanduser() if config else None
    return False, None


def _kuberay_config(name: str, namespace: str) -> dict[str, Any]:
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

    raycluster = KubernetesHttpApiClient(namespace=namespace).get(f"rayclusters/{name}")
    config: dict[str, Any] = _derive_autoscaling_config_from_ray_cr(raycluster)
    return config


def read_shape() -> ClusterShape:
    """The connected cluster's shape (call after `ray.init`)."""
    import ray

    alive = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    shape = _read_node_types(ray.get_runtime_context().gcs_address, alive)
    return ClusterShape(
        node_types=shape.node_types,
        alive_nodes=len(alive),
        source=shape.source,
        max_worker_nodes=shape.max_worker_nodes,
        head_type=shape.head_type,
        alive_resources=ray.cluster_resources(),
    )


def _read_node_types(gcs_address: str, alive: list[Mapping[str, float]]) -> ClusterShape:
    from ray._private.state import state

    try:
        cluster_config = state.get_cluster_config()
    except Exception as exc:  # an older GCS without the key: fall through to the other sources
        logger.info("the GCS has no cluster config (%s)", exc)
        cluster_config = None
    if cluster_config is not None and cluster_config.node_group_configs:
        return node_types_from_cluster_config(cluster_config, "the GCS's cluster config")
    found, config_file = autoscaler_process_config(gcs_address)
    if found and config_file is not None:
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
            return node_types_from_config(config, f"the autoscaling config {config_file}")
        except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
            logger.warning("cannot read the autoscaling config %s: %s", config_file, exc)
    elif found:
        return node_types_from_nodes(alive, "its nodes (no autoscaling config: it cannot add nodes)")
    name, namespace = os.environ.get(RAYCLUSTER_ENV), os.environ.get(NAMESPACE_ENV)
    if name and namespace:
        try:
            return node_types_from_config(_kuberay_config(name, namespace), f"RayCluster {namespace}/{name}")
        except Exception as exc:  # no RBAC, API server unreachable: the fallback below, with the reason logged
            logger.warning("cannot read RayCluster %s/%s: %s", namespace, name, exc)
            return ClusterShape(None, len(alive), f"RayCluster {namespace}/{name} not readable: {exc}")
    return ClusterShape(None, len(alive), "no autoscaler of this cluster on the driver's node")
