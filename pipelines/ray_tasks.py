"""Run one function over many items: in this process, or as one Ray task per item on a Ray cluster.

`data shard --address` and `data check --full --address` spread their shards this way: Ray schedules the tasks over
every node's CPUs, retries a task whose node died, and the caller sees results in completion order (to show progress
and to record each shard as it finishes). Every node must see the same source and destination (S3, or a shared
folder) and have this project installed, as the nodes of `infra/` do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def run_tasks(
    fn: Callable[[Item], Result], items: Sequence[Item], *, address: str | None, cpus_per_task: float = 1.0
) -> Iterator[tuple[int, Result]]:
    """(index into `items`, fn(item)) for every item, as each finishes. `address` None: in this process, in order;
    else the Ray cluster at `address` ("auto", or the head's host:port), one task per item."""
    if address is None:
        for i, item in enumerate(items):
            yield i, fn(item)
        return
    import ray

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=cpus_per_task, max_retries=3)(fn)
        pending = {remote.remote(item): i for i, item in enumerate(items)}
        logger.info("%d tasks on the Ray cluster at %s", len(pending), address)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
    finally:
        if connected_here:
            ray.shutdown()
