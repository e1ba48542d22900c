"""The validation pass after each epoch: every val sample once over all ranks, evaluated with rank 0's weights and
BatchNorm statistics (what the checkpoint saves), checked against the size of the val shard set."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from orchestrator.training import metric_names as m
from orchestrator.training.accounting import InvariantError, batch_sums
from pipelines.loader import Loader
from pipelines.presets import IGNORE_INDEX


def no_validation() -> dict[str, float]:
    """The validation metrics of a trial without a val set: NaN errors, no samples."""
    return {m.VAL_TOP1_ERR: math.nan, m.VAL_TOP5_ERR: math.nan, m.VAL_LOSS: math.nan, m.VAL_SAMPLES: 0.0}


def evaluate(
    model: nn.Module, loader: Loader, device: torch.device, *, bf16: bool, epoch: int, val_uri: str | None
) -> dict[str, float]:
    """One complete pass over the val shards, all ranks together: every sample once, padding excluded.

    `epoch` and `val_uri` name the pass in the `InvariantError` raised when it did not see every sample once.
    """
    # Each rank's BatchNorm running statistics moved with its own last batches; evaluate rank 0's, which are
    # what the checkpoint saves, so the reported error is the saved model's. (DDP broadcasts rank 0's buffers
    # before every training forward anyway, so training is unchanged.)
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    model.eval()
    # The val set is one fixed epoch (no shuffle, no random augmentation): the same pass every time.
    loader.set_epoch(0)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # samples, loss_sum, correct1, correct5
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            images = batch.images.to(device, non_blocking=True)
            labels = batch.labels.to(device, non_blocking=True)
            logits = model(images).float()
            loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum", ignore_index=IGNORE_INDEX)
            sums += batch_sums(logits, labels, loss_sum)
    dist.all_reduce(sums)
    model.train()
    samples, loss_sum, correct1, correct5 = sums.tolist()
    expected = loader.samples_per_epoch
    if int(samples) != expected:
        raise InvariantError(
            f"the validation pass after epoch {epoch} evaluated {int(samples)} samples over all "
            f"ranks, but data.val ({val_uri}) holds {expected}"
        )
    return {
        m.VAL_TOP1_ERR: 1 - correct1 / samples,
        m.VAL_TOP5_ERR: 1 - correct5 / samples,
        m.VAL_LOSS: loss_sum / samples,
        m.VAL_SAMPLES: samples,
    }
