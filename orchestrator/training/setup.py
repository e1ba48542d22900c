"""The pieces one rank sets up before its first step: where it runs and at what precision, its loaders, the model
and the checks that a trial config can train on its shards at all.

Each is a function of the trial config and this rank's place; `train_loop._Trainer` calls them in a fixed order
(seeding, model creation and loader creation consume random numbers in that order on every attempt).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from models import get_model
from orchestrator.sweep.config import TrialConfig
from orchestrator.sweep.data_check import check_num_classes
from orchestrator.training.checkpointing import RankState, TrainState
from pipelines.elastic_loader import ElasticLoader
from pipelines.loader import Loader, LoaderSpec
from pipelines.loader_factory import make_elastic_loader, make_loader
from pipelines.sharding import read_manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """This rank's place in the trial and how it computes there."""

    rank: int
    world: int
    device: torch.device
    # bf16 autocast needs no loss scaling (same exponent range as fp32), so there is no GradScaler.
    bf16: bool
    channels_last: bool

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def place(cfg: TrialConfig) -> Placement:
    """This rank's placement from the Ray Train context and the recipe; pins its GPU and its CPU thread count."""
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(device)
    recipe = cfg.recipe
    placement = Placement(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        device=device,
        bf16=recipe.precision == "bf16" or (recipe.precision == "auto" and on_gpu),
        channels_last=recipe.channels_last if recipe.channels_last is not None else on_gpu,
    )
    # A fixed thread count per worker: the same math in the same order on every run of the same seed.
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    configure_algorithms(recipe.deterministic, on_gpu)
    return placement


def configure_algorithms(deterministic: bool, on_gpu: bool) -> None:
    """`deterministic`: PyTorch's deterministic kernels only, cudnn.benchmark off (bit-exact GPU restarts); else
    cudnn.benchmark on, which times the convolution algorithms once per input shape and keeps the fastest."""
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = on_gpu and not deterministic
    if deterministic and on_gpu:
        # cuBLAS needs a fixed workspace for deterministic GEMMs; it reads this before its first handle.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def decode_threads(cfg: TrialConfig, on_gpu: bool) -> int:
    """Loader threads of one worker: `data.num_threads`, else its CPUs on a GPU worker (the GPU does the math) and
    half of them on a CPU worker, whose other half runs the model's `torch.set_num_threads` kernels."""
    if cfg.data.num_threads is not None:
        return cfg.data.num_threads
    cpus = max(1, int(cfg.resources.cpus_per_worker))
    return cpus if on_gpu else max(1, cpus // 2)


def broadcast(value: Any, device: torch.device) -> Any:
    """Rank 0's `value`, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


def build_model(cfg: TrialConfig, at: Placement) -> nn.Module:
    """The trial's model on this rank's device (channels_last where asked); seed the RNGs first for identical
    initial weights on every rank."""
    model: nn.Module = get_model(cfg.model.registry_name, **cfg.model.model_kwargs())
    model.to(at.device)
    if at.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def loader_spec(cfg: TrialConfig, split: str, uri: str, at: Placement) -> LoaderSpec:
    recipe = cfg.recipe
    return LoaderSpec(
        uri=uri,
        split=split,  # type: ignore[arg-type]
        batch_size=cfg.per_worker_batch,
        preset=recipe.preset,
        image_size=recipe.image_size,
        resize_size=recipe.resize_size,
        dtype="bfloat16" if at.bf16 else "float32",
        channels_last=at.channels_last,
        backend=cfg.data.backend,
        num_threads=decode_threads(cfg, at.on_gpu),
        prefetch_queue_depth=cfg.data.prefetch_queue_depth,
        seed=cfg.seed,
        # The paper and cifar presets subtract the training images' per-pixel mean, from the val images too.
        mean_image_uri=cfg.data.train,
    )


def views_per_image(cfg: TrialConfig, protocol: str) -> int:
    """How many views the final evaluation with `protocol` makes of each val image."""
    return 10 if protocol == "ten_crop" else 2 * len(cfg.recipe.eval.scales)


def build_final_loader(cfg: TrialConfig, at: Placement, protocol: str) -> Loader:
    """This rank's val loader for the final evaluation with `protocol`: about the per-worker batch of views a step."""
    if cfg.data.val is None:
        raise ValueError(f"recipe.eval.protocols lists {protocol} but data.val is not set")
    spec = loader_spec(cfg, "val", cfg.data.val, at).model_copy(
        update={
            "protocol": protocol,
            "scales": cfg.recipe.eval.scales if protocol == "multi_scale" else (),
            "batch_size": max(1, cfg.per_worker_batch // views_per_image(cfg, protocol)),
        }
    )
    return make_loader(LoaderSpec.model_validate(spec.model_dump()), at.rank, at.world, at.device)


def dataset_classes(uri: str) -> int:
    """The class count of the shard set at `uri` (its manifest's class map)."""
    return len(read_manifest(uri)["classes"])


def build_loaders(cfg: TrialConfig, at: Placement) -> tuple[Loader | ElasticLoader, Loader | None]:
    """(train loader, val loader or None) of this rank, after checking the model can output every class of each. An
    elastic trial's train loader yields each global step's micro-batches of this rank (`pipelines.global_order`)."""
    train_spec = loader_spec(cfg, "train", cfg.data.train, at)
    train: Loader | ElasticLoader = (
        make_elastic_loader(train_spec, cfg.resources.max_workers, at.rank, at.world, at.device)
        if cfg.resources.elastic
        else make_loader(train_spec, at.rank, at.world, at.device)
    )
    val = (
        make_loader(loader_spec(cfg, "val", cfg.data.val, at), at.rank, at.world, at.device)
        if cfg.data.val is not None
        else None
    )
    for split, uri in (("train", cfg.data.train), ("val", cfg.data.val)):
        if uri is not None:
            check_num_classes(cfg.model.resolved_num_classes, read_manifest(uri)["classes"], split, uri)
    return train, val


def steps_per_epoch(cfg: TrialConfig, train: Loader | ElasticLoader) -> int:
    """Optimizer steps per epoch: the train loader's batches per rank (an elastic trial's: its global steps), capped
    by `recipe.steps_per_epoch`."""
    steps = len(train)
    if cfg.recipe.steps_per_epoch is not None:
        steps = min(steps, cfg.recipe.steps_per_epoch)
    if steps == 0:
        raise ValueError(
            f"data.train {cfg.data.train}: no full batch of {cfg.per_worker_batch} per worker; "
            "lower recipe.batch_size or add data"
        )
    return steps


def state_of_rank(state: TrainState, rank: int, world: int, *, elastic: bool, path: str | None) -> RankState:
    """The saved state rank `rank` of a `world`-worker attempt resumes from. A fixed trial needs the same workers as
    the checkpoint's (each rank reads its own slice of the epoch). An elastic trial's loader state is the same on
    every rank (`pipelines.elastic_loader`), so any world size resumes it; a rank the checkpoint's group lacked takes
    rank 0's RNG streams (no step of the train loop draws from them: augmentation is seeded per sample)."""
    if elastic:
        return state.ranks[rank] if rank < len(state.ranks) else state.ranks[0]
    if len(state.ranks) != world:
        raise ValueError(
            f"the checkpoint at {path} was written by {len(state.ranks)} workers, this attempt has "
            f"{world}; resources.workers must stay the same to resume exactly"
        )
    return state.ranks[rank]
