"""One optimizer step of one rank: a fixed trial's batch, or an elastic trial's micro-batches accumulated.

Fixed `resources.workers: N`: one batch per rank; its loss is the batch's loss sum over its real samples, and DDP
averages the ranks' gradients.

Elastic `resources.workers: {min, max: M}`: each global step is M micro-batches of B/M (`pipelines.global_order`),
of which this rank computes its share at world size w. Each micro-batch's loss is its loss sum divided by the real
samples of the whole global step (the plan knows it: no collective), times w because DDP averages over the w ranks;
gradients accumulate under DDP's `no_sync` until the rank's last backward, which all-reduces them. The step's
gradient is therefore the mean over the configured global batch at every w, the gradient the linearly scaled learning
rate is meant for (Goyal et al. 2017, arXiv:1706.02677, Section 2.1), and BatchNorm normalizes over micro-batches of
B/M at every w, the fixed per-worker batch its Section 2.3 keeps; only the order of the sums changes.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from orchestrator.training.accounting import batch_sums
from pipelines.elastic_loader import StepBatches
from pipelines.loader import Batch
from pipelines.presets import IGNORE_INDEX


class Accumulator:
    """Forward, backward and the optimizer step of one rank for one global step."""

    def __init__(
        self,
        ddp: DistributedDataParallel,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        *,
        device: torch.device,
        bf16: bool,
        world: int,
        elastic: bool,
    ) -> None:
        self.ddp, self.forward, self.optimizer, self.criterion = ddp, forward, optimizer, criterion
        self.device, self.bf16, self.world, self.elastic = device, bf16, world, elastic

    def step(self, item: Batch | StepBatches, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step at learning rate `lr`; returns the rank's `batch_sums` and its loss of the step (fixed:
        the rank's batch mean; elastic: the rank's share of the global batch's mean, which the ranks' shares sum to)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if isinstance(item, StepBatches):
            return self._accumulate(item)
        if self.elastic:
            raise TypeError("an elastic trial's loader yields StepBatches, not single batches")
        logits, loss_sum = self._forward(item)
        # Sum over the real samples, divided by their count: a rank's all-padding tail batch gives 0, not NaN.
        loss = loss_sum / (item.labels != IGNORE_INDEX).sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return batch_sums(logits, item.labels.to(self.device), loss_sum), loss

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.images.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(images)
        return logits, self.criterion(logits.float(), labels)

    def _accumulate(self, item: StepBatches) -> tuple[torch.Tensor, torch.Tensor]:
        if not item.micro:
            # `GlobalPlan.micro_range` gives every rank one micro-batch at least while w <= M: DDP's all-reduce in
            # the last backward needs every rank.
            raise RuntimeError("this rank has no micro-batch of the step; the world size exceeds the range's max")
        if item.step_samples <= 0:
            raise RuntimeError("a global step without real samples; the plan ends its epoch before such a step")
        scale = self.world / item.step_samples
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        share = torch.zeros((), dtype=torch.float32, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        last = len(item.micro) - 1
        for index, batch in enumerate(item.micro):
            # Only the last backward all-reduces the accumulated gradients (each rank has exactly one such).
            with self.ddp.no_sync() if index < last else nullcontext():
                logits, loss_sum = self._forward(batch)
                (loss_sum * scale).backward()
            sums += batch_sums(logits, batch.labels.to(self.device), loss_sum)
            share += loss_sum.detach().float() / item.step_samples
        self.optimizer.step()
        return sums, share

    def live_loss(self, loss: torch.Tensor) -> float:
        """The live gauge's loss of a step from `step`'s loss: about the global batch's mean on every rank."""
        return float(loss.detach()) * (self.world if self.elastic else 1)

    def step_losses(self, pending: list[torch.Tensor]) -> list[float]:
        """The per-step losses of `pending` (`step`'s losses, oldest first) as the checkpoint records them: a fixed
        trial's rank batch means; an elastic trial's global means, its ranks' shares summed (every rank calls this
        at the same report: it is a collective)."""
        stacked = torch.stack(pending).float()
        if self.elastic:
            dist.all_reduce(stacked)
        result: list[float] = stacked.cpu().tolist()
        return result
