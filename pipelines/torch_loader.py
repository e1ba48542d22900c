"""Fallback loader where DALI cannot be imported: torchvision `decode_image` + the transforms of
`pipelines.torch_transforms` over the same shards, with the same epoch semantics as the DALI loader (see
`pipelines.loader`); its validation views are DALI's within float tolerance.

Samples are located through the DALI index files (`pipelines.dali_index`: offset and size of every
image and `.cls`), so a shard is fetched once (whole, from S3 or disk) and sliced; `read_sample` fetches one
sample by a ranged read instead (the elastic loader's scattered reads, `pipelines.elastic_loader`). Augmentation
randomness is drawn from torch's RNG seeded per batch with (seed, epoch, rank, batch) inside `torch.random.fork_rng`,
so (epoch, batch) alone determines the next batch and the caller's RNG is untouched.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from pipelines import presets
from pipelines.dali_index import parse_index
from pipelines.loader import EpochLoader, EpochPlan, LoaderSpec, ShardSet, derive_seed
from pipelines.names import check_tar_members
from pipelines.normalization import preset_normalization
from pipelines.storage import Store, open_store
from pipelines.torch_transforms import eval_views, finish_batch, train_transform

logger = logging.getLogger(__name__)
_CACHED_SHARDS = 2  # a rank reads its range in file order: the current and the previous shard suffice


@dataclass(frozen=True)
class SampleRef:
    shard: int
    image: tuple[int, int]  # offset, size
    cls: tuple[int, int]

    @property
    def span(self) -> tuple[int, int]:
        """(offset, size) of the byte range holding both the image and the class member (one ranged read)."""
        start = min(self.image[0], self.cls[0])
        end = max(self.image[0] + self.image[1], self.cls[0] + self.cls[1])
        return start, end - start

    def members(self, data: bytes, base: int = 0) -> tuple[bytes, int]:
        """(encoded image, label) from `data`, which holds the shard's bytes from offset `base` on."""
        (jo, js), (co, cs) = self.image, self.cls
        return data[jo - base : jo - base + js], int(data[co - base : co - base + cs])


def sample_refs(store: Store, shards: ShardSet) -> list[list[SampleRef]]:
    """Where every sample of the shard set lies, per shard in manifest order, from its DALI index files."""
    indexes = [parse_index(store.read_bytes(name).decode(), store.location.join(name)) for name in shards.index_names]
    return [
        [SampleRef(shard, s.members[shards.image_ext], s.members["cls"]) for s in samples]
        for shard, samples in enumerate(indexes)
    ]


def read_sample(store: Store, shards: ShardSet, ref: SampleRef) -> tuple[bytes, int]:
    """(encoded image, label) of one sample by one ranged read of its shard (nothing else of the shard is fetched)."""
    offset, size = ref.span
    return ref.members(store.read_range(shards.tar_names[ref.shard], offset, size), base=offset)


def decode_rgb(encoded: bytes) -> torch.Tensor:
    """An encoded image as uint8 3 x H x W (grayscale made RGB)."""
    return decode_image(torch.frombuffer(bytearray(encoded), dtype=torch.uint8), mode=ImageReadMode.RGB)


class TorchLoader(EpochLoader):
    backend = "torch"

    def __init__(self, spec: LoaderSpec, shards: ShardSet, plan: EpochPlan, device: torch.device) -> None:
        super().__init__(spec, shards, plan, device)
        self._store = open_store(spec.uri)
        self._refs: list[list[SampleRef]] | None = None
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._norm = preset_normalization(spec.preset, spec.mean_source)
        self._transform = train_transform(spec.preset, spec.image_size, self._norm)
        self._views = presets.EvalViews(spec.protocol, spec.image_size, spec.resize_size, spec.scales)
        self._order: list[SampleRef] | None = None

    def _sample_refs(self) -> list[list[SampleRef]]:
        if self._refs is None:
            self._refs = sample_refs(self._store, self.shards)
        return self._refs

    def _epoch_order(self) -> list[SampleRef]:
        """This rank's samples in epoch order: its contiguous range, shuffled within buffer-sized windows."""
        if self._order is None:
            refs = self._sample_refs()
            flat = [ref for shard in self.epoch_files() for ref in refs[shard]]
            n, r, w = len(flat), self.plan.rank, self.plan.world_size
            mine = flat[n * r // w : n * (r + 1) // w]
            if self.spec.shuffled:
                rng = np.random.default_rng(self.epoch_seed())
                window = self.spec.shuffle_buffer
                for start in range(0, len(mine), window):
                    chunk = mine[start : start + window]
                    mine[start : start + window] = [chunk[i] for i in rng.permutation(len(chunk))]
            self._order = mine
        return self._order

    def _shard_bytes(self, shard: int) -> bytes:
        if shard not in self._cache:
            name = self.shards.tar_names[shard]
            data = self._store.read_bytes(name)
            # Read through the index, never extracted; a tar with members named to escape a folder is refused all
            # the same: it was not written by `data shard` (headers only, cheap next to decoding its images).
            check_tar_members(io.BytesIO(data), self._store.location.join(name))
            self._cache[shard] = data
            while len(self._cache) > _CACHED_SHARDS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(shard)
        return self._cache[shard]

    def _read(self, ref: SampleRef) -> tuple[bytes, int]:
        return ref.members(self._shard_bytes(ref.shard))

    def _produce(self, k: int) -> tuple[torch.Tensor | tuple[tuple[torch.Tensor, ...], ...], torch.Tensor]:
        order = self._epoch_order()
        size = self.spec.batch_size
        # Padding positions repeat the rank's last sample (as DALI's pad_last_batch does); they are masked.
        positions = [min(k * size + i, len(order) - 1) for i in range(size)]
        decoded, labels = [], []
        for p in positions:
            encoded, label = self._read(order[p])
            decoded.append(decode_rgb(encoded))
            labels.append(label)
        targets = torch.tensor(labels, dtype=torch.int64)
        if self.spec.split == "train":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.spec.seed, self._epoch, self.plan.rank, k))
                images = [self._transform(image) for image in decoded]
                batch = finish_batch(torch.stack(images), self._norm, pca=self.spec.preset == "paper")
            return self._to_device(batch), targets
        views = [eval_views(image, self._views, self._norm) for image in decoded]
        if self.spec.protocol == "multi_scale":
            per_view = zip(*views, strict=True)
            return tuple(tuple(self._to_device(v) for v in view) for view in per_view), targets
        return self._to_device(torch.stack([v for v in views if isinstance(v, torch.Tensor)])), targets

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.spec.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch.to(device=self.device, dtype=self.spec.torch_dtype, non_blocking=True)

    def _release(self) -> None:
        self._order = None
        self._cache.clear()
