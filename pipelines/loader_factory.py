"""`make_loader(spec, rank, world_size, device)`: the one place that picks a `Loader` backend and builds it
(`make_elastic_loader`: an elastic trial's train loader, `pipelines.elastic_loader`).

It sits above `pipelines.loader` (the protocol, the spec and the epoch bookkeeping both backends share) and the two
backends that subclass it (`dali_loader`, `torch_loader`), so none of those imports another's subclasses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from pipelines.global_order import GlobalPlan
from pipelines.loader import EpochPlan, Loader, LoaderSpec, ShardSet

if TYPE_CHECKING:
    from pipelines.elastic_loader import ElasticLoader

logger = logging.getLogger(__name__)


def make_loader(spec: LoaderSpec, rank: int, world_size: int, device: torch.device) -> Loader:
    """The loader of `spec` for one DDP rank; `backend="auto"` uses DALI where it imports, else the
    torchvision fallback (logged as a warning)."""
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    shards = ShardSet.open(spec.uri)
    plan = EpochPlan(shards.num_samples, rank, world_size, spec.batch_size, spec.last_batch)
    if plan.batches == 0:
        raise ValueError(
            f"batch_size {spec.batch_size} x world_size {world_size} exceeds the {shards.num_samples} samples of "
            f"{spec.uri} with last_batch='drop'; lower batch_size or use last_batch='pad'"
        )
    backend = spec.backend
    if backend in ("auto", "dali"):
        try:
            import nvidia.dali  # noqa: F401
        except (ImportError, OSError) as exc:
            if backend == "dali":
                raise ImportError(f"backend='dali' but NVIDIA DALI cannot be imported ({exc})") from exc
            logger.warning("NVIDIA DALI cannot be imported (%s); using the torchvision fallback loader", exc)
            backend = "torch"
        else:
            backend = "dali"
    if backend == "dali":
        from pipelines.dali_loader import DaliLoader

        return DaliLoader(spec, shards, plan, device)
    from pipelines.torch_loader import TorchLoader

    return TorchLoader(spec, shards, plan, device)


def make_elastic_loader(
    spec: LoaderSpec, micro_batches: int, rank: int, world_size: int, device: torch.device
) -> ElasticLoader:
    """The train loader of one rank of an elastic trial: steps of `micro_batches` micro-batches of `spec.batch_size`,
    this rank's share of them at `world_size` (torch decoding; DALI reads per-rank slices, see `global_order`)."""
    if spec.backend == "dali":
        raise ValueError("backend='dali': the elastic loader reads by global index with torch; use backend='torch'")
    shards = ShardSet.open(spec.uri)
    plan = GlobalPlan(shards.num_samples, spec.batch_size, micro_batches, spec.last_batch)
    if plan.steps == 0:
        raise ValueError(
            f"a global batch of {plan.global_batch} exceeds the {shards.num_samples} samples of {spec.uri} with "
            "last_batch='drop'; lower batch_size or use last_batch='pad'"
        )
    from pipelines.elastic_loader import ElasticLoader

    return ElasticLoader(spec, shards, plan, rank, world_size, device)
