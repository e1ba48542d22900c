"""What the train loop counts between reports: per-batch sums kept on the device, summed over all ranks at a report.

A step never waits for the GPU to count: each batch adds its (real samples, loss sum, top-1 hits, top-5 hits) to a
device tensor, and only a report (or a live-metrics refresh) reads it back. Padding positions of the loader's tail
batches (label `IGNORE_INDEX`, see `pipelines.loader`) count as neither samples nor hits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pipelines.presets import IGNORE_INDEX

# Between reports, the live Ray metrics are refreshed at most this often (each refresh syncs the GPU once).
LIVE_METRICS_EVERY_S = 5.0
# Window sums, in this order, all-reduced at every report.
SUMS = ("samples", "loss_sum", "correct1", "correct5", "wait_s", "step_s", "steps")


class InvariantError(RuntimeError):
    """A pass read a different number of samples than its shard set holds: every metric of it would be wrong."""


def zero_totals() -> dict[str, float]:
    """An epoch's running totals before its first step (one entry per `SUMS`)."""
    return dict.fromkeys(SUMS, 0.0)


def batch_sums(logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> torch.Tensor:
    """(real samples, loss sum, top-1 hits, top-5 hits) of one batch as a float64 device tensor (no GPU sync).

    Padding positions (label `IGNORE_INDEX`, see `pipelines.loader`) never match a class, so they are no hits.
    """
    valid = labels != IGNORE_INDEX
    hits = logits.detach().topk(min(5, logits.shape[1]), dim=1).indices.eq(labels.unsqueeze(1))
    return torch.stack([valid.sum(), loss_sum.detach(), hits[:, :1].sum(), hits.any(dim=1).sum()]).double()


@dataclass
class Window:
    """Sums since the last report; device-side parts stay on the device so a step never waits for the GPU."""

    device: torch.device
    on_device: torch.Tensor = field(init=False)  # samples, loss_sum, correct1, correct5
    wait_s: float = 0.0
    step_s: float = 0.0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.on_device = torch.zeros(4, dtype=torch.float64, device=self.device)

    def add(self, sums: torch.Tensor, wait_s: float, step_s: float) -> None:
        """`sums`: (samples, loss_sum, correct1, correct5) of one batch, from `batch_sums`."""
        self.on_device += sums
        self.wait_s += wait_s
        self.step_s += step_s
        self.steps += 1

    def local(self) -> list[float]:
        return [*self.on_device.tolist(), self.wait_s, self.step_s, float(self.steps)]


def fold(window: Window, totals: dict[str, float], device: torch.device) -> dict[str, float]:
    """The window's sums over all ranks (plus its `wall_s`), added to the epoch's `totals` too."""
    tensor = torch.tensor(window.local(), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    reduced = dict(zip(SUMS, tensor.tolist(), strict=True))
    reduced["wall_s"] = time.perf_counter() - window.started
    for key in SUMS:
        totals[key] += reduced[key]
    return reduced


@dataclass
class LiveThroughput:
    """Real (non-padding) images this worker trained since the last live refresh, for the Ray metrics.

    Counts the same samples as the reported `images_per_s` (`batch_sums`' first entry), so the loader's tail padding
    (label `IGNORE_INDEX`) is not throughput. The count stays on the device; `take` syncs it once per refresh.
    """

    device: torch.device
    since: float = field(default_factory=time.perf_counter)
    images: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.images = torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, sums: torch.Tensor) -> None:
        """`sums`: one batch's `batch_sums`."""
        self.images += sums[0]

    def due(self, now: float) -> bool:
        return now - self.since >= LIVE_METRICS_EVERY_S

    def take(self, now: float) -> tuple[int, float]:
        """(images, images per second) since the last take; starts a new window at `now`."""
        images = int(self.images.item())
        rate = images / max(now - self.since, 1e-9)
        self.images.zero_()
        self.since = now
        return images, rate
