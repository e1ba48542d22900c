"""The epoch of an elastic trial, addressed by global index: which samples make up each step, whatever the world size.

A fixed-size trial's ranks each read their own slice of the epoch (`pipelines.loader.EpochPlan`), so the samples of
a step depend on the number of ranks. An elastic trial (`resources.workers: {min, max}`) must keep every step's
samples when its worker group is resized mid-epoch, so its epoch is one order of all N samples:

* The order is one permutation of the N samples (flat over the shard set's files in manifest order), seeded by
  (seed, epoch) only: the same on every rank and at every world size.
* Global step k holds positions [k*B, (k+1)*B) of that order, split into M fixed micro-batches of b = B/M
  (M: the range's max). Positions past N (the last, partial step with `last_batch="pad"`) are padding.
* At world size w (1 <= w <= M), rank r computes micro-batches [M*r // w, M*(r+1) // w): every rank has at least
  one, the counts may differ by one, and together they are all M.

A loader that stands at (epoch, next step) thus stands at the same place for any world size: a checkpoint taken at
world 2 resumes at world 1 or 3 with none of the epoch's samples lost or repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Mixed into the seed of the sample order, so that it is not the stream `loader.file_order` draws the files from.
_ORDER_STREAM = 1


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's order of sample indices (int64): a permutation seeded by (seed, epoch), or 0..N-1 unshuffled."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_samples).astype(np.int64)


@dataclass(frozen=True)
class GlobalPlan:
    """The pure arithmetic of an elastic epoch: steps, micro-batches and real (non-padding) counts."""

    num_samples: int
    micro_size: int  # b: the samples of one micro-batch
    micro_batches: int  # M: micro-batches per step, the range's max
    last_batch: Literal["pad", "drop"] = "pad"

    def __post_init__(self) -> None:
        if self.num_samples <= 0 or self.micro_size <= 0 or self.micro_batches <= 0:
            raise ValueError(f"{self}: samples, micro_size and micro_batches must all be positive")

    @property
    def global_batch(self) -> int:
        return self.micro_size * self.micro_batches

    @property
    def steps(self) -> int:
        """Global steps per epoch: every sample once (`pad`, the last step partial), or only full steps (`drop`)."""
        if self.last_batch == "pad":
            return math.ceil(self.num_samples / self.global_batch)
        return self.num_samples // self.global_batch

    @property
    def samples_per_epoch(self) -> int:
        return self.num_samples if self.last_batch == "pad" else self.steps * self.global_batch

    def micro_range(self, rank: int, world: int) -> range:
        """The micro-batches of each step that rank `rank` of a `world`-worker group computes."""
        if not 1 <= world <= self.micro_batches or not 0 <= rank < world:
            raise ValueError(
                f"rank {rank} of {world} workers: need 1 <= world <= {self.micro_batches} (the micro-batches of a "
                "step) and 0 <= rank < world"
            )
        m = self.micro_batches
        return range(m * rank // world, m * (rank + 1) // world)

    def positions(self, step: int, micro: int) -> range:
        """Positions in the epoch order of micro-batch `micro` of step `step` (those >= N are padding)."""
        start = step * self.global_batch + micro * self.micro_size
        return range(start, start + self.micro_size)

    def valid_in_micro(self, step: int, micro: int) -> int:
        """Real samples of one micro-batch."""
        start = step * self.global_batch + micro * self.micro_size
        return max(0, min(self.micro_size, self.num_samples - start))

    def valid_in_step(self, step: int) -> int:
        """Real samples of step `step` over all its micro-batches: the divisor of its mean loss."""
        return max(0, min(self.global_batch, self.num_samples - step * self.global_batch))

    def samples_in_steps(self, steps: int) -> int:
        """Real samples of the epoch's first `steps` steps (an epoch capped at fewer steps); `samples_per_epoch`
        when `steps` covers the epoch."""
        return sum(self.valid_in_step(k) for k in range(min(steps, self.steps)))
