"""What the train loop sees: `Batch(images, labels)` from a `Loader`, built by `pipelines.loader_factory.make_loader`.

Epoch semantics (both backends):

* Order is a deterministic function of (seed, epoch, rank, world_size): the shard files are permuted
  with `(seed, epoch)` (the same on every rank), then rank r reads the contiguous sample range
  `[N*r // W, N*(r+1) // W)` of that order (DALI's sharding rule), shuffled within a buffer seeded with
  `(seed, epoch, rank)`. Augmentation randomness is seeded the same way, so it is reproducible too. The DALI
  backend builds one pipeline at the epoch it starts at and runs it through the later epochs (`dali_loader`): its
  epoch e is that function of the start epoch and e, reshuffled by the buffer within the same rank range.
* `last_batch="pad"` (default): every sample of the epoch is seen exactly once across ranks. Every rank
  yields `ceil(ceil(N / W) / batch_size)` full batches; positions past a rank's real samples carry
  label `IGNORE_INDEX` (-100, CrossEntropyLoss's default ignore_index), see `Batch.valid`.
  `last_batch="drop"`: every rank yields `floor(floor(N / W) / batch_size)` batches of real samples;
  the tail of each rank's range is not seen in that epoch (each sample at most once).
* `set_epoch(e)` moves to the start of epoch e, unless the loader stands part-way through epoch e (after
  `load_state_dict` of a mid-epoch state), where it keeps the position. A loader that has yielded all of epoch e
  starts it again, so `set_epoch(0)` before every validation pass reads the whole set every time.
  `__iter__` yields the rest of the current epoch.
* `state_dict()` is per rank (rank, world size, seed, epoch, next batch and, for DALI, the pipeline's
  checkpoint): save every rank's state and give each rank back its own, then `set_epoch`; the next batch is then
  exactly the one that would have come, at an epoch's end too (the DALI pipeline lives across epochs, so its state
  at an epoch boundary is part of what comes next).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines import presets
from pipelines.sharding import read_manifest
from pipelines.storage import StorageError, parse_uri

Backend = Literal["auto", "dali", "torch"]
STATE_VERSION = 1


@dataclass(frozen=True)
class Batch:
    """images: float N x 3 x H x W (channels_last memory format when asked; N x 10 x 3 x H x W for
    10-crop validation); labels: int64 [N], `IGNORE_INDEX` at padding positions.

    Multi-scale validation views differ in size from image to image: they come in `views`, where `views[v][i]` is
    view v of sample i (3 x H x W; v = 2 * scale index, + 1 for the mirror image), and `images` is empty (N x 0)."""

    images: torch.Tensor
    labels: torch.Tensor
    views: tuple[tuple[torch.Tensor, ...], ...] = ()

    @property
    def valid(self) -> torch.Tensor:
        """Bool mask of real (non-padding) samples: use it for accuracy/counts."""
        return self.labels != presets.IGNORE_INDEX

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum().item())


@runtime_checkable
class Loader(Protocol):
    samples_per_epoch: int  # global, across all ranks

    def __len__(self) -> int: ...  # batches per epoch on this rank (known up front)
    def samples_in_batches(self, batches: int) -> int: ...  # real samples, all ranks, in each rank's first batches
    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LoaderSpec(BaseModel):
    """What to load and how; validated at construction (errors name the field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(description="shard set written by `resnet-orch data shard`: local path or s3://bucket/prefix")
    split: Literal["train", "val"] = "train"
    batch_size: int = Field(gt=0, description="per rank")
    preset: presets.Preset = "standard"
    image_size: int = Field(default=presets.TRAIN_SIZE, gt=0)
    resize_size: int = Field(default=presets.VAL_RESIZE, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    channels_last: bool = False
    backend: Backend = "auto"
    num_threads: int | None = Field(
        default=None, gt=0, description="DALI / decode threads; default: the CPUs this process may run on"
    )
    seed: int = Field(default=0, ge=0)
    last_batch: Literal["pad", "drop"] = "pad"
    shuffle: bool | None = Field(default=None, description="default: True for train, False for val")
    shuffle_buffer: int = Field(default=1024, gt=0, description="DALI initial_fill: samples mixed in memory")
    protocol: presets.Protocol = Field(default="center", description="val only: the views of each image")
    scales: tuple[int, ...] = Field(default=(), description="multi_scale: the shorter sides, e.g. (224, 256, 384)")
    mean_image_uri: str | None = Field(
        default=None, description="paper/cifar: the training shard set whose mean image is subtracted; default `uri`"
    )
    prefetch_queue_depth: int = Field(default=2, gt=0, description="batches DALI prepares ahead (bench/pipeline.py)")
    read_ahead: bool = Field(default=False, description="DALI: read each whole shard into memory when it is opened")

    @model_validator(mode="after")
    def _check(self) -> LoaderSpec:
        if self.protocol != "center" and self.split != "val":
            raise ValueError(f"protocol {self.protocol!r}: only for split='val'; set split='val' or protocol='center'")
        if (self.protocol == "multi_scale") != bool(self.scales):
            raise ValueError("scales: give them with protocol='multi_scale' (e.g. (224, 256, 384)), and only then")
        if any(s <= 0 for s in self.scales):
            raise ValueError(f"scales: {list(self.scales)} must all be positive")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} < image_size {self.image_size}; crop must fit")
        try:
            parse_uri(self.uri)
        except StorageError as exc:
            raise ValueError(f"uri: {exc}") from exc
        return self

    @property
    def shuffled(self) -> bool:
        return self.split == "train" if self.shuffle is None else self.shuffle

    @property
    def threads(self) -> int:
        """Decode threads: `num_threads`, or one per CPU of this process's affinity mask (a Ray worker's or a
        container's share), so the loader does not run more busy threads than it has cores."""
        return self.num_threads if self.num_threads is not None else len(os.sched_getaffinity(0))

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    @property
    def mean_source(self) -> str:
        return self.mean_image_uri or self.uri


@dataclass(frozen=True)
class ShardSet:
    """The shard files of a set, resolved from its manifest."""

    uri: str
    tar_names: tuple[str, ...]  # relative to `uri`
    index_names: tuple[str, ...]
    samples: tuple[int, ...]  # per shard
    classes: dict[str, int]
    image_ext: str = "jpg"  # the tar member extension of each sample's image

    @property
    def tars(self) -> tuple[str, ...]:
        """Full URIs, as DALI reads them."""
        location = parse_uri(self.uri)
        return tuple(location.join(name) for name in self.tar_names)

    @property
    def indexes(self) -> tuple[str, ...]:
        location = parse_uri(self.uri)
        return tuple(location.join(name) for name in self.index_names)

    @property
    def num_samples(self) -> int:
        return sum(self.samples)

    @classmethod
    def open(cls, uri: str) -> ShardSet:
        manifest = read_manifest(uri)
        shards = manifest["shards"]
        return cls(
            uri=uri,
            tar_names=tuple(s["name"] for s in shards),
            index_names=tuple(s["index"] for s in shards),
            samples=tuple(int(s["samples"]) for s in shards),
            classes=dict(manifest["classes"]),
            image_ext=str(manifest.get("image_ext", "jpg")),
        )


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integer parts (numpy SeedSequence: well mixed, stable across versions)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class EpochPlan:
    """The pure arithmetic of one rank's epoch: which files in which order, how many batches."""

    num_samples: int
    rank: int
    world_size: int
    batch_size: int
    last_batch: str

    @property
    def rank_samples(self) -> int:
        """Real samples of this rank: DALI's shard range [N*r // W, N*(r+1) // W)."""
        n, r, w = self.num_samples, self.rank, self.world_size
        return n * (r + 1) // w - n * r // w

    @property
    def batches(self) -> int:
        per_rank_max = math.ceil(self.num_samples / self.world_size)
        if self.last_batch == "pad":
            return math.ceil(per_rank_max / self.batch_size)
        return (self.num_samples // self.world_size) // self.batch_size

    @property
    def samples_per_epoch(self) -> int:
        if self.last_batch == "pad":
            return self.num_samples
        return self.batches * self.batch_size * self.world_size

    def valid_in_batch(self, k: int) -> int:
        """Real samples in batch k of this rank (the rest is padding)."""
        return max(0, min(self.batch_size, self.rank_samples - k * self.batch_size))

    def samples_in_batches(self, batches: int) -> int:
        """Real samples over all ranks in each rank's first `batches` batches: what a pass that stops there (an
        epoch capped at fewer steps) must have seen; `samples_per_epoch` when `batches` is the whole epoch."""
        ranks = (replace(self, rank=r) for r in range(self.world_size))
        return sum(plan.valid_in_batch(k) for plan in ranks for k in range(min(batches, self.batches)))


def file_order(num_files: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard file order of an epoch: the same on every rank (a function of seed and epoch only)."""
    if not shuffle:
        return list(range(num_files))
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(num_files)]


def check_state(state: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a state saved by another rank/world size/seed/shard set; the message names the field."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"loader state version {state.get('version')!r} != {STATE_VERSION}; it is not a loader state")
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(
                f"loader state field {key!r} is {state.get(key)!r} but this loader has {value!r}; "
                "give each rank back the state it saved, with the same spec"
            )


class EpochLoader:
    """Epoch bookkeeping shared by both backends: position, padding mask, state. Subclasses produce the
    raw batches (`_produce`) and own their per-epoch resources (`_release`, `_backend_state`, `_restore`)."""

    backend = "base"

    def __init__(self, spec: LoaderSpec, shards: ShardSet, plan: EpochPlan, device: torch.device) -> None:
        self.spec = spec
        self.shards = shards
        self.plan = plan
        self.device = device
        self.samples_per_epoch = plan.samples_per_epoch
        self._epoch = 0
        self._batch = 0  # index of the next batch of the current epoch

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self.plan.batches

    def samples_in_batches(self, batches: int) -> int:
        return self.plan.samples_in_batches(batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        # Only a part-way position is kept (a resumed mid-epoch state); a finished epoch read again starts over.
        if epoch != self._epoch or self._batch >= len(self):
            self._release()
            self._epoch, self._batch = epoch, 0

    def epoch_seed(self) -> int:
        """Seed of this rank's shuffle buffer and augmentations in the current epoch."""
        return derive_seed(self.spec.seed, self._epoch, self.plan.rank)

    def epoch_files(self) -> list[int]:
        return file_order(len(self.shards.tar_names), self.spec.seed, self._epoch, self.spec.shuffled)

    def __iter__(self) -> Iterator[Batch]:
        while self._batch < len(self):
            k = self._batch
            images, labels = self._produce(k)
            valid = self.plan.valid_in_batch(k)
            if valid < labels.numel():
                labels[valid:] = presets.IGNORE_INDEX
            self._batch += 1
            if self._batch == len(self):
                self._epoch_done()
            labels = labels.to(self.device, non_blocking=True)
            if isinstance(images, torch.Tensor):
                yield Batch(images, labels)
            else:
                yield Batch(torch.empty(labels.numel(), 0, device=self.device), labels, views=images)

    def _identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "uri": self.spec.uri,
            "split": self.spec.split,
            "seed": self.spec.seed,
            "rank": self.plan.rank,
            "world_size": self.plan.world_size,
            "batch_size": self.spec.batch_size,
            "last_batch": self.spec.last_batch,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self._identity(), "epoch": self._epoch, "batch": self._batch} | (
            self._backend_state()
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self._identity())
        self._release()
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._restore(state)

    # -- backend hooks
    def _produce(self, k: int) -> tuple[torch.Tensor | tuple[tuple[torch.Tensor, ...], ...], torch.Tensor]:
        """(images, labels) of batch k: a tensor, or for multi-scale views one tensor per view and sample."""
        raise NotImplementedError

    def _epoch_done(self) -> None:
        """The last batch of the epoch was produced: drop what only this epoch needs (default: everything)."""
        self._release()

    def _release(self) -> None:
        """Drop per-epoch resources (pipelines, caches)."""

    def _backend_state(self) -> dict[str, Any]:
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        """Prepare to continue at (self._epoch, self._batch)."""
