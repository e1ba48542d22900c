"""The DALI loader: one pipeline per rank for every epoch of a trial, restored from DALI's own checkpoint.

The pipeline is built once, for the epoch the loader starts at: its seed and its shard-file order are those of that
epoch ((seed, epoch, rank), `EpochLoader.epoch_seed`). At an epoch's end the reader wraps around within the rank's
sample range and the pipeline goes on into the next epoch, its shuffle buffer and random operators carrying on
where they were: no rebuild, no refilled buffer, no cold decoder, and the prefetch queue already holds the next
epoch's first batches. Epoch e of a loader started at epoch 0 is therefore a function of (seed, rank, world size, e),
as is every batch after a restore: `enable_checkpointing=True` makes `Pipeline.checkpoint()` capture the reader
position, the shuffle buffer and every random operator's state after the last returned batch, at an epoch's end too,
and building with `checkpoint=` continues exactly there (no decoding to fast-forward).

On a GPU the standard train preset leaves DALI as uint8 pixels, normalized and cast on the GPU (`normalize_pixels`);
labels are decoded from their `.cls` text inside the graph (`dali.decode_labels`).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import numpy as np
import torch
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from pipelines import dali, presets
from pipelines.loader import EpochLoader, EpochPlan, LoaderSpec, ShardSet, derive_seed, file_order
from pipelines.normalization import normalize_pixels, preset_normalization

logger = logging.getLogger(__name__)


class DaliLoader(EpochLoader):
    backend = "dali"

    def __init__(self, spec: LoaderSpec, shards: ShardSet, plan: EpochPlan, device: torch.device) -> None:
        super().__init__(spec, shards, plan, device)
        self._device_id: int | None = None
        if device.type == "cuda":
            self._device_id = device.index if device.index is not None else torch.cuda.current_device()
        self._pipe: Pipeline | None = None
        self._checkpoint: bytes | None = None  # to restore from when the pipeline is next built
        # (epoch, batch) the pipeline, or the checkpoint it is to be built from, delivers next; None: neither exists.
        self._next: tuple[int, int] | None = None
        # The epoch whose seed and file order the pipeline was built with: a checkpoint only fits that graph.
        self._built_epoch: int | None = None
        self._norm = preset_normalization(spec.preset, spec.mean_source)
        # uint8 out of DALI only for a GPU: a quarter of the bytes over PCIe, normalized there for free. On the CPU
        # DALI's own crop_mirror_normalize in its worker threads plus one copy costs ~0.2 ms per 224px image, the
        # same normalization in torch ~1.5 ms (measured on the 2-core dev box, docs/performance.md).
        self._uint8 = dali.raw_output(spec.split, spec.preset) and device.type == "cuda"
        # Validation reads the same samples in the same order with no randomness in any epoch: its pipeline's
        # history does not matter, any epoch start will do.
        self._any_epoch = spec.split == "val" and not spec.shuffled

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch == self._epoch and self._batch < len(self):
            return  # already at this epoch's start, or part-way after a restore: keep the position
        self._epoch, self._batch = epoch, 0
        at_start = self._next is not None and (self._next == (epoch, 0) or (self._any_epoch and self._next[1] == 0))
        if at_start:
            self._next = (epoch, 0)
        else:
            self._release()

    def _position_after(self, epoch: int, batch: int) -> tuple[int, int]:
        return (epoch + 1, 0) if batch >= len(self) else (epoch, batch)

    def _build(self) -> Pipeline:
        if self._built_epoch is None:
            self._built_epoch = self._epoch
        order = file_order(len(self.shards.tar_names), self.spec.seed, self._built_epoch, self.spec.shuffled)
        reader = dali.ReaderArgs(
            paths=tuple(self.shards.tars[i] for i in order),
            index_paths=tuple(self.shards.indexes[i] for i in order),
            shard_id=self.plan.rank,
            num_shards=self.plan.world_size,
            shuffle=self.spec.shuffled,
            initial_fill=self.spec.shuffle_buffer,
            image_ext=self.shards.image_ext,
            read_ahead=self.spec.read_ahead,
        )
        views = presets.EvalViews(self.spec.protocol, self.spec.image_size, self.spec.resize_size, self.spec.scales)
        pipe = dali.build(
            self.spec.split,
            reader,
            batch_size=self.spec.batch_size,
            num_threads=self.spec.threads,
            device_id=self._device_id,
            seed=derive_seed(self.spec.seed, self._built_epoch, self.plan.rank),
            preset=self.spec.preset,
            image_size=self.spec.image_size,
            views=views,
            norm=self._norm,
            fp16=self.spec.dtype == "float16",
            uint8=self._uint8,
            # Multi-scale views are used one by one (each its own size): plain CHW, no channels_last view of HWC.
            layout="HWC" if self.spec.channels_last and self.spec.protocol != "multi_scale" else "CHW",
            checkpoint=self._checkpoint,
            prefetch_queue_depth=self.spec.prefetch_queue_depth,
        )
        self._checkpoint = None
        return pipe

    def _produce(self, k: int) -> tuple[torch.Tensor | tuple[tuple[torch.Tensor, ...], ...], torch.Tensor]:
        if self._pipe is None:
            if self._checkpoint is None and k != 0:
                raise RuntimeError(f"DALI loader asked for batch {k} of epoch {self._epoch} with no pipeline state")
            self._pipe = self._build()
            self._next = (self._epoch, k)
        if self._next != (self._epoch, k):
            raise RuntimeError(f"DALI pipeline stands at {self._next}, the loader at (epoch {self._epoch}, batch {k})")
        *images, labels = self._pipe.run()
        self._next = self._position_after(self._epoch, k + 1)
        label_tensor = torch.from_numpy(np.array(labels.as_array(), dtype=np.int64))  # type: ignore[union-attr]
        if self.spec.protocol == "multi_scale":
            return tuple(self._samples_to_torch(view) for view in images), label_tensor
        return self._to_torch(images[0]), label_tensor

    def _samples_to_torch(self, images: Any) -> tuple[torch.Tensor, ...]:
        """A batch whose samples differ in shape, one tensor per sample (CHW)."""
        out = []
        for i in range(len(images)):
            sample = images[i]
            if self.device.type == "cuda":
                dtype = torch.float16 if self.spec.dtype == "float16" else torch.float32
                tensor = torch.empty(sample.shape(), dtype=dtype, device=self.device)
                feed_ndarray(sample, tensor, cuda_stream=torch.cuda.current_stream(self.device))
            else:
                tensor = torch.from_numpy(np.array(sample))  # a copy: DALI reuses its output buffers
            out.append(tensor.to(self.spec.torch_dtype))
        return tuple(out)

    def _to_torch(self, images: Any) -> torch.Tensor:
        dense = images.as_tensor()
        if self.device.type == "cuda":
            dtype = torch.uint8 if self._uint8 else torch.float16 if self.spec.dtype == "float16" else torch.float32
            out = torch.empty(dense.shape(), dtype=dtype, device=self.device)
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            # DALI reuses its output buffers: copy. numpy's copy is ~7x faster here than feed_ndarray into
            # a fresh torch tensor (measured on the 2-core dev box: 24 ms vs 186 ms per 128x3x224x224 fp32).
            out = torch.from_numpy(np.array(dense))
        if self.spec.channels_last:
            # HWC from DALI viewed as NCHW: exactly torch's channels_last memory format, no copy.
            out = out.permute(0, 3, 1, 2) if out.dim() == 4 else out.permute(0, 1, 4, 2, 3)
        if self._uint8:
            return normalize_pixels(out, self._norm, self.spec.torch_dtype)
        return out.to(self.spec.torch_dtype)

    def _epoch_done(self) -> None:
        """The pipeline goes on into the next epoch (`set_epoch` keeps it when that epoch is asked for next)."""

    def _release(self) -> None:
        self._pipe = None
        self._checkpoint = None
        self._next = None
        self._built_epoch = None

    def _backend_state(self) -> dict[str, Any]:
        if self._pipe is not None:
            checkpoint: bytes | None = self._pipe.checkpoint()
        else:
            checkpoint = self._checkpoint  # restored but not yet iterated: hand the same state on
        return {
            "dali_checkpoint": base64.b64encode(checkpoint).decode("ascii") if checkpoint else None,
            "dali_built_epoch": self._built_epoch if checkpoint else None,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        checkpoint = state.get("dali_checkpoint")
        if not checkpoint and 0 < self._batch < len(self):
            raise ValueError(
                f"loader state is mid-epoch (epoch {self._epoch}, batch {self._batch}) but has no "
                "'dali_checkpoint'; save it with DaliLoader.state_dict()"
            )
        self._checkpoint = base64.b64decode(checkpoint) if checkpoint else None
        self._next = self._position_after(self._epoch, self._batch) if checkpoint else None
        # States saved before pipelines lived across epochs were built for the epoch they stand in.
        built = state.get("dali_built_epoch")
        self._built_epoch = (self._epoch if built is None else int(built)) if checkpoint else None
