"""The train loader of an elastic trial: each global step's micro-batches of this rank, by global index.

The epoch and its steps are `pipelines.global_order`'s: one permutation of all samples seeded by (seed, epoch),
step k split into M fixed micro-batches, rank r of w computing micro-batches [M*r // w, M*(r+1) // w). Each sample is
fetched on its own by one ranged read of its shard (`torch_loader.read_sample`: its offset and size from the DALI
index files), never a whole shard or the whole set, so ranks that read scattered samples read only those. Each
sample's augmentation is drawn from torch's RNG seeded with (seed, epoch, position in the epoch order) inside
`torch.random.fork_rng`: the tensors of a step are bit for bit the same at every world size, and the caller's RNG is
untouched.

Its state is (epoch, next step) only, the same on every rank: a checkpoint written by any world size resumes at any
other. `set_epoch` and `load_state_dict` keep the semantics of `pipelines.loader.EpochLoader`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines import presets
from pipelines.global_order import GlobalPlan, epoch_order
from pipelines.loader import STATE_VERSION, Batch, LoaderSpec, ShardSet, check_state, derive_seed
from pipelines.normalization import preset_normalization
from pipelines.storage import open_store
from pipelines.torch_loader import SampleRef, decode_rgb, read_sample, sample_refs
from pipelines.torch_transforms import finish_batch, train_transform


@dataclass(frozen=True)
class StepBatches:
    """One global step as this rank sees it: its micro-batches, and the real samples of the whole step over all
    ranks (the divisor of the step's mean loss, known without a collective)."""

    micro: tuple[Batch, ...]
    step_samples: int


class ElasticLoader:
    """One rank's view of an elastic epoch; `spec.batch_size` is the micro-batch size b (the global batch over the
    range's max)."""

    backend = "elastic"

    def __init__(
        self, spec: LoaderSpec, shards: ShardSet, plan: GlobalPlan, rank: int, world: int, device: torch.device
    ) -> None:
        if spec.split != "train":
            raise ValueError(f"split {spec.split!r}: the elastic loader reads training epochs only; use make_loader")
        if spec.batch_size != plan.micro_size:
            raise ValueError(f"batch_size {spec.batch_size} != the plan's micro-batch size {plan.micro_size}")
        self.spec = spec
        self.shards = shards
        self.plan = plan
        self.mine = plan.micro_range(rank, world)
        self.device = device
        self.samples_per_epoch = plan.samples_per_epoch
        self._store = open_store(spec.uri)
        self._refs: list[SampleRef] | None = None
        self._norm = preset_normalization(spec.preset, spec.mean_source)
        self._transform = train_transform(spec.preset, spec.image_size, self._norm)
        self._order: np.ndarray | None = None
        # One pool of readers for the loader's life: a micro-batch's samples are fetched in parallel every step.
        self._readers = ThreadPoolExecutor(max_workers=max(1, min(spec.threads, plan.micro_size)))
        self._epoch = 0
        self._step = 0  # the next global step of the current epoch

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self.plan.steps

    def samples_in_batches(self, batches: int) -> int:
        """Real samples over all ranks of the epoch's first `batches` global steps."""
        return self.plan.samples_in_steps(batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch or self._step >= len(self):
            self._order = None
            self._epoch, self._step = epoch, 0

    def __iter__(self) -> Iterator[StepBatches]:
        while self._step < len(self):
            k = self._step
            micro = tuple(self._micro_batch(k, j) for j in self.mine)
            self._step += 1
            yield StepBatches(micro, self.plan.valid_in_step(k))

    def _identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "uri": self.spec.uri,
            "seed": self.spec.seed,
            "micro_size": self.plan.micro_size,
            "micro_batches": self.plan.micro_batches,
            "last_batch": self.plan.last_batch,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self._identity(), "epoch": self._epoch, "step": self._step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self._identity())
        self._order = None
        self._epoch, self._step = int(state["epoch"]), int(state["step"])

    # ---- reading ------------------------------------------------------------------------------------------------

    def _flat_refs(self) -> list[SampleRef]:
        if self._refs is None:
            self._refs = [ref for shard in sample_refs(self._store, self.shards) for ref in shard]
        return self._refs

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = epoch_order(self.plan.num_samples, self.spec.seed, self._epoch, self.spec.shuffled)
        return self._order

    def _micro_batch(self, step: int, micro: int) -> Batch:
        refs, order = self._flat_refs(), self._epoch_order()
        positions = list(self.plan.positions(step, micro))
        # Padding positions (past N in the last step) repeat the epoch's last sample, masked by their label.
        chosen = [refs[int(order[min(p, len(order) - 1)])] for p in positions]
        read = list(self._readers.map(lambda ref: read_sample(self._store, self.shards, ref), chosen))
        images = []
        with torch.random.fork_rng(devices=[]):
            for p, (encoded, _) in zip(positions, read, strict=True):
                torch.manual_seed(derive_seed(self.spec.seed, self._epoch, p))
                image = self._transform(decode_rgb(encoded))
                images.append(finish_batch(image.unsqueeze(0), self._norm, pca=self.spec.preset == "paper"))
        labels = torch.tensor([label for _, label in read], dtype=torch.int64)
        valid = self.plan.valid_in_micro(step, micro)
        labels[valid:] = presets.IGNORE_INDEX
        batch = torch.cat(images)
        if self.spec.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        batch = batch.to(device=self.device, dtype=self.spec.torch_dtype, non_blocking=True)
        return Batch(batch, labels.to(self.device, non_blocking=True))
