"""Fallback loader where DALI cannot be imported: torchvision `decode_jpeg` + v2 transforms over the same
shards, with the same epoch semantics as the DALI loader (see `pipelines.loader`).

Samples are located through the DALI index files (`pipelines.dali_index`: offset and size of every
`.jpg`/`.cls`), so a shard is fetched once (whole, from S3 or disk) and sliced. Augmentation randomness
is drawn from torch's RNG seeded per batch with (seed, epoch, rank, batch) inside `torch.random.fork_rng`,
so (epoch, batch) alone determines the next batch and the caller's RNG is untouched.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from pipelines import presets
from pipelines.dali_index import parse_index
from pipelines.loader import EpochLoader, EpochPlan, LoaderSpec, ShardSet, derive_seed
from pipelines.names import check_tar_members
from pipelines.storage import open_store

logger = logging.getLogger(__name__)
_CACHED_SHARDS = 2  # a rank reads its range in file order: the current and the previous shard suffice


@dataclass(frozen=True)
class SampleRef:
    shard: int
    jpg: tuple[int, int]  # offset, size
    cls: tuple[int, int]


class TenCrop(v2.Transform):
    """Corners + center, then each mirrored, stacked [10, C, H, W]: DALI's crop-then-mirror order
    (torchvision's TenCrop crops the mirrored image instead, one pixel off for odd margins)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, *inputs: Any) -> Any:
        crops = list(v2.functional.five_crop(inputs[0], [self.size, self.size]))
        return torch.stack(crops + [c.flip(-1) for c in crops])


def build_transform(spec: LoaderSpec) -> v2.Transform:
    """The geometric part of the DALI graph for `spec`, per sample on uint8 (same presets constants);
    colour (PCA) and normalization follow on the whole batch in `finish_batch`."""
    if spec.split == "train" and spec.preset == "standard":
        return v2.Compose(
            [
                v2.RandomResizedCrop(spec.image_size, scale=presets.RRC_SCALE, ratio=presets.RRC_RATIO, antialias=True),
                v2.RandomHorizontalFlip(presets.FLIP_PROBABILITY),
            ]
        )
    if spec.split == "train":
        low, high = (int(v) for v in presets.PAPER_SHORT_SIDE_RANGE)
        return v2.Compose(
            [
                v2.RandomShortestSize(min_size=list(range(low, high + 1)), antialias=True),
                v2.RandomCrop(spec.image_size),
                v2.RandomHorizontalFlip(presets.FLIP_PROBABILITY),
            ]
        )
    resize = v2.Resize(spec.resize_size, antialias=True)
    if spec.ten_crop:
        return v2.Compose([resize, TenCrop(spec.image_size)])
    return v2.Compose([resize, v2.CenterCrop(spec.image_size)])


def finish_batch(images: torch.Tensor, pca: bool) -> torch.Tensor:
    """uint8 [N, (10,) 3, H, W] -> normalized float32, in a few whole-batch ops (per-sample small ops
    cost more in dispatch than in arithmetic). With `pca`, adds the AlexNet PCA colour offset
    V @ (alpha * lambda), alpha ~ N(0, 0.1) per image (Krizhevsky et al. 2012, Sec. 4.1)."""
    shape = (1,) * (images.dim() - 3) + (3, 1, 1)
    mean = torch.tensor(presets.IMAGENET_MEAN).view(shape)
    std = torch.tensor(presets.IMAGENET_STD).view(shape)
    out = images.float().div_(255.0)
    if pca:
        alpha = torch.randn(images.shape[0], 3) * presets.PCA_ALPHA_STD
        offset = (alpha * torch.tensor(presets.PCA_EIGVAL)) @ torch.tensor(presets.PCA_EIGVEC).T  # [N, 3]
        out += offset.view(images.shape[0], 3, 1, 1)
    return out.sub_(mean).div_(std)


class TorchLoader(EpochLoader):
    backend = "torch"

    def __init__(self, spec: LoaderSpec, shards: ShardSet, plan: EpochPlan, device: torch.device) -> None:
        super().__init__(spec, shards, plan, device)
        self._store = open_store(spec.uri)
        self._refs: list[list[SampleRef]] | None = None
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._transform = build_transform(spec)
        self._order: list[SampleRef] | None = None

    def _sample_refs(self) -> list[list[SampleRef]]:
        if self._refs is None:
            indexes = [
                parse_index(self._store.read_bytes(name).decode(), self._store.location.join(name))
                for name in self.shards.index_names
            ]
            self._refs = [
                [SampleRef(shard, s.members["jpg"], s.members["cls"]) for s in samples]
                for shard, samples in enumerate(indexes)
            ]
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
        data = self._shard_bytes(ref.shard)
        (jo, js), (co, cs) = ref.jpg, ref.cls
        return data[jo : jo + js], int(data[co : co + cs])

    def _produce(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = self._epoch_order()
        size = self.spec.batch_size
        # Padding positions repeat the rank's last sample (as DALI's pad_last_batch does); they are masked.
        positions = [min(k * size + i, len(order) - 1) for i in range(size)]
        images, labels = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.spec.seed, self._epoch, self.plan.rank, k))
            for p in positions:
                jpeg, label = self._read(order[p])
                decoded = decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)
                images.append(self._transform(decoded))
                labels.append(label)
            batch = finish_batch(torch.stack(images), pca=self.spec.split == "train" and self.spec.preset == "paper")
        if self.spec.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        batch = batch.to(device=self.device, dtype=self.spec.torch_dtype, non_blocking=True)
        return batch, torch.tensor(labels, dtype=torch.int64)

    def _release(self) -> None:
        self._order = None
        self._cache.clear()
