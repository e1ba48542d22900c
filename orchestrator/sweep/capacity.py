"""How many trials of a sweep run at once, and whether one can run at all: decided from what the cluster can grow to.

Pure logic over a `ClusterShape` (read from Ray and its autoscaler by `sweep.autoscaler`), unit-tested without Ray.
A trial is `workers` identical bundles of {CPU: cpus_per_worker, GPU: gpus_per_worker}. Ray Train places them with
PACK, so one trial's workers may span nodes but each worker sits on one node: a node of a type holds
`slots_per_node` workers, and the largest cluster holds the sum of its nodes' slots.

* Node types known (the autoscaler's config; on a cluster without one, its own nodes): a worker that no node type
  can hold, or a trial with more workers than the largest cluster holds, is refused before any trial starts, with
  the reason. At most as many trials run at once as the largest cluster holds (and `max_concurrent_trials`): the
  ones that do not fit now wait for the autoscaler's nodes as pending placement groups.
* Node types unknown (no autoscaler config readable from the driver): nothing is refused that might fit;
  `max_concurrent_trials`, else every trial, is started, and trials whose workers find no room wait as pending
  placement groups, which the autoscaler sees as demand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE
from orchestrator.sweep.config import ResourcesConfig

# Resource amounts are floats (fractional GPUs): 8 / 0.1 must count as 80 slots, not 79.
_EPS = 1e-9


class SchedulingError(RuntimeError):
    """The cluster cannot run this sweep as configured (the message says why and what to change)."""


@dataclass(frozen=True)
class NodeType:
    """One kind of node the cluster has or can add: its resources per node and how many of it there can be."""

    name: str
    resources: Mapping[str, float]
    max_count: int | None  # None: no limit
    min_count: int = 0

    def describe(self) -> str:
        shown = {"CPU": self.resources.get("CPU", 0.0)}
        shown.update({k: v for k, v in self.resources.items() if k in ("GPU", TRIAL_DRIVER_RESOURCE) and v})
        count = "unlimited" if self.max_count is None else f"{self.min_count}..{self.max_count}"
        return f"{self.name} ({_fmt(shown)}) x {count}"


@dataclass(frozen=True)
class ClusterShape:
    """What the sweep driver knows of its cluster."""

    node_types: tuple[NodeType, ...] | None  # None: the autoscaler's node types are not readable here
    alive_nodes: int
    source: str  # where the node types come from, for messages
    # The autoscaling config's cluster-wide `max_workers` (worker nodes, the head not counted); None: no such cap.
    max_worker_nodes: int | None = None
    head_type: str | None = None  # the node type of the head (always exactly one, never a worker)
    # Resources of the nodes up now, summed: where the node types are unknown, the trial drivers' resource is looked
    # for here.
    alive_resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def max_nodes(self) -> float:
        """How many nodes the largest cluster has (inf: no limit, or not known)."""
        if self.node_types is None:
            return math.inf
        return sum(count for _, count in self.largest(lambda node_type: 1))

    def largest(self, value: Callable[[NodeType], float]) -> list[tuple[NodeType, float]]:
        """The nodes of the largest cluster as (type, count): the head, then the worker types under the cluster-wide
        cap, those of the highest `value` per node first (optimal when every node of a type is worth the same)."""
        if self.node_types is None:
            return []
        chosen = [(t, 1.0) for t in self.node_types if t.name == self.head_type]
        left: float = math.inf if self.max_worker_nodes is None else self.max_worker_nodes
        for node_type in sorted((t for t in self.node_types if t.name != self.head_type), key=value, reverse=True):
            count = min(math.inf if node_type.max_count is None else node_type.max_count, left)
            if count > 0:
                chosen.append((node_type, count))
                left -= count
        return chosen


@dataclass(frozen=True)
class Plan:
    """How many trials run at once, and why (for the driver's log)."""

    max_concurrent: int
    why: str


def worker_bundle(resources: ResourcesConfig) -> dict[str, float]:
    """What one worker of a trial reserves on its node (Ray Train's `resources_per_worker`)."""
    bundle = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker > 0:
        bundle["GPU"] = resources.gpus_per_worker
    return bundle


def slots_per_node(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many bundles fit on one node of these resources."""
    fits = math.inf
    for name, need in bundle.items():
        if need > 0:
            fits = min(fits, math.floor(node.get(name, 0.0) / need + _EPS))
    return 0 if fits == math.inf else int(fits)


def plan(resources: ResourcesConfig, shape: ClusterShape, *, max_concurrent: int | None, trials: int) -> Plan:
    """How many of `trials` trials run at once on a cluster of this shape; `SchedulingError` when none ever can."""
    cap = min(trials, max_concurrent or trials)
    limit = "" if max_concurrent is None else f" (max_concurrent_trials: {max_concurrent})"
    if shape.node_types is None:
        if shape.alive_resources.get(TRIAL_DRIVER_RESOURCE, 0) < 1:
            raise SchedulingError(_no_driver_resource())
        return Plan(
            cap,
            f"{cap} trials at once{limit}: the cluster's node types are not readable ({shape.source}); trials "
            "whose workers find no room wait for nodes",
        )
    bundle = worker_bundle(resources)
    nodes = shape.largest(lambda t: slots_per_node(t.resources, bundle))
    types = ", ".join(t.describe() for t in shape.node_types)
    if not any(slots_per_node(t.resources, bundle) for t in shape.node_types):
        raise SchedulingError(
            f"one worker needs {_fmt(bundle)} and no node of this cluster can ever hold it (node types from "
            f"{shape.source}: {types}); lower `resources.cpus_per_worker`/`gpus_per_worker` or add a node type that "
            "holds one worker"
        )
    worker_slots = sum(slots_per_node(t.resources, bundle) * count for t, count in nodes)
    if worker_slots < resources.min_workers:
        raise SchedulingError(
            f"one trial needs {resources.min_workers} workers x {_fmt(bundle)} but the largest this cluster can grow "
            f"to holds {int(worker_slots)} (node types from {shape.source}: {types}); lower `resources.workers` or "
            "raise the node types' max workers"
        )
    driver_slots = sum(t.resources.get(TRIAL_DRIVER_RESOURCE, 0.0) * count for t, count in nodes)
    if driver_slots < 1:
        raise SchedulingError(_no_driver_resource())
    # An elastic trial wants its range's max, but runs as soon as its min fits.
    fits = min(max(worker_slots // resources.max_workers, 1), math.floor(driver_slots + _EPS))
    concurrent = int(min(fits, cap))
    grown = "unlimited" if math.isinf(worker_slots) else str(int(worker_slots))
    return Plan(
        concurrent,
        f"{concurrent} trials at once{limit}: the cluster can grow to {grown} workers of {_fmt(bundle)} "
        f"({shape.source})",
    )


def check_storage(storage: str, shape: ClusterShape, *, shared_filesystem: bool) -> None:
    """Refuse a local-path storage on a cluster that has, or may get, more than one node (`SchedulingError`).

    A trial restarted on another node reads its checkpoints from the storage, and the sweep's progress copy lives
    there too: a path on one node's disk is not there for the others.
    """
    if storage.startswith("s3://") or shared_filesystem:
        return
    if shape.alive_nodes > 1:
        why = f"this cluster has {shape.alive_nodes} nodes"
    elif shape.node_types is None:
        why = f"this cluster may add nodes (its autoscaler's node types are not readable: {shape.source})"
    elif shape.max_nodes > 1:
        grown = "any number of" if math.isinf(shape.max_nodes) else str(int(shape.max_nodes))
        why = f"this cluster can grow to {grown} nodes ({shape.source})"
    else:
        return
    raise SchedulingError(
        f"storage {storage} is a local path, but {why}: a trial restarted on another node would not find its "
        "checkpoints there. Set `storage: s3://BUCKET/PREFIX` in the sweep file (or `shared_filesystem: true` when "
        "that path is a filesystem every node mounts, e.g. NFS or EFS)"
    )


def _no_driver_resource() -> str:
    return (
        f"the cluster has no `{TRIAL_DRIVER_RESOURCE}` resource that trial drivers reserve instead of CPUs; "
        f"start its head with --resources='{{\"{TRIAL_DRIVER_RESOURCE}\": 1000}}' (docs/cluster.md)"
    )


def _fmt(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in resources.items())
