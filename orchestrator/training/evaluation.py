"""Validation passes: every val sample once over all ranks, evaluated with rank 0's weights and BatchNorm statistics
(what the checkpoint saves), checked against the size of the val shard set.

`evaluate` is the pass after each epoch: one center crop per image, scored by its logits. `evaluate_protocol` is the
final evaluation of a trial with one of the paper's testing protocols (He et al. 2015, Sec. 3.4): an image's scores
are the mean of the softmax scores of its views (10 crops, or every scale and its mirror), its loss the negative log
of that mean's value at the label.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from orchestrator.training import metric_names as m
from orchestrator.training.accounting import InvariantError, batch_sums
from pipelines.loader import Batch, Loader
from pipelines.presets import IGNORE_INDEX


def no_validation() -> dict[str, float]:
    """The validation metrics of a trial without a val set: NaN errors, no samples."""
    return {
        m.VAL_TOP1_ERR: math.nan,
        m.VAL_TOP5_ERR: math.nan,
        m.VAL_LOSS: math.nan,
        m.VAL_SAMPLES: 0.0,
        m.VAL_CLASSES: 0.0,
    }


def _pass(
    model: nn.Module,
    loader: Loader,
    device: torch.device,
    *,
    bf16: bool,
    sums_of: Callable[[Batch, torch.Tensor], torch.Tensor],
    what: str,
    val_uri: str | None,
) -> tuple[float, float, float, float]:
    """(samples, loss sum, top-1 hits, top-5 hits) of one whole pass over all ranks; `sums_of(batch, labels)` gives a
    batch's. `what` names the pass in the `InvariantError` raised when it did not see every sample once."""
    # Each rank's BatchNorm running statistics moved with its own last batches; evaluate rank 0's, which are
    # what the checkpoint saves, so the reported error is the saved model's. (DDP broadcasts rank 0's buffers
    # before every training forward anyway, so training is unchanged.)
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    model.eval()
    # The val set is one fixed epoch (no shuffle, no random augmentation): the same pass every time.
    loader.set_epoch(0)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            sums += sums_of(batch, batch.labels.to(device, non_blocking=True))
    dist.all_reduce(sums)
    model.train()
    samples, loss_sum, correct1, correct5 = sums.tolist()
    expected = loader.samples_per_epoch
    if int(samples) != expected:
        raise InvariantError(
            f"{what} evaluated {int(samples)} samples over all ranks, but data.val ({val_uri}) holds {expected}"
        )
    return samples, loss_sum, correct1, correct5


def evaluate(
    model: nn.Module,
    loader: Loader,
    device: torch.device,
    *,
    bf16: bool,
    epoch: int,
    val_uri: str | None,
    classes: int = 0,
) -> dict[str, float]:
    """One complete pass over the val shards, all ranks together: every sample once, padding excluded.

    `epoch` and `val_uri` name the pass in the `InvariantError` raised when it did not see every sample once;
    `classes` (the val set's class count) is reported with it.
    """

    def sums_of(batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        logits = model(batch.images.to(device, non_blocking=True)).float()
        loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum", ignore_index=IGNORE_INDEX)
        return batch_sums(logits, labels, loss_sum)

    what = f"the validation pass after epoch {epoch}"
    samples, loss_sum, correct1, correct5 = _pass(
        model, loader, device, bf16=bf16, sums_of=sums_of, what=what, val_uri=val_uri
    )
    return {
        m.VAL_TOP1_ERR: 1 - correct1 / samples,
        m.VAL_TOP5_ERR: 1 - correct5 / samples,
        m.VAL_LOSS: loss_sum / samples,
        m.VAL_SAMPLES: samples,
        m.VAL_CLASSES: float(classes),
    }


def view_logits(model: nn.Module, batch: Batch, device: torch.device, chunk: int) -> torch.Tensor:
    """float32 V x N x C: the logits of every view of every sample, at most `chunk` images per forward.

    Views of equal shape go through the network together: 10 crops always, multi-scale views of images with the
    same aspect ratio (the network is fully convolutional: global average pooling takes any size).
    """
    if batch.views:
        columns: list[torch.Tensor] = []
        for view in batch.views:
            by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for index, image in enumerate(view):
                by_shape[tuple(image.shape)].append(index)
            parts: dict[int, torch.Tensor] = {}
            for indices in by_shape.values():
                for start in range(0, len(indices), chunk):
                    part = indices[start : start + chunk]
                    logits = model(torch.stack([view[i] for i in part]).to(device, non_blocking=True)).float()
                    parts.update(zip(part, logits, strict=True))
            columns.append(torch.stack([parts[i] for i in range(len(view))]))
        return torch.stack(columns)
    images = batch.images.to(device, non_blocking=True)
    if images.dim() == 4:
        images = images.unsqueeze(1)
    n, v = images.shape[:2]
    flat = images.flatten(0, 1)
    logits = torch.cat([model(flat[i : i + chunk]).float() for i in range(0, n * v, chunk)])
    return logits.view(n, v, -1).transpose(0, 1)


def mean_scores(logits: torch.Tensor) -> torch.Tensor:
    """N x C: the mean over the V views of the softmax scores (V x N x C logits)."""
    return torch.softmax(logits, dim=-1).mean(dim=0)


def evaluate_protocol(
    model: nn.Module,
    loader: Loader,
    device: torch.device,
    *,
    bf16: bool,
    protocol: str,
    val_uri: str | None,
    chunk: int,
) -> dict[str, float]:
    """The final evaluation with `protocol` (the loader makes its views): `final_<protocol>_*` metrics, every val
    sample once over all ranks."""

    def sums_of(batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        scores = mean_scores(view_logits(model, batch, device, chunk))
        log_scores = scores.clamp_min(torch.finfo(scores.dtype).tiny).log()
        loss_sum = nn.functional.nll_loss(log_scores, labels, reduction="sum", ignore_index=IGNORE_INDEX)
        return batch_sums(log_scores, labels, loss_sum)

    what = f"the final {protocol} evaluation"
    samples, loss_sum, correct1, correct5 = _pass(
        model, loader, device, bf16=bf16, sums_of=sums_of, what=what, val_uri=val_uri
    )
    return {
        m.final_name(protocol, "top1_err"): 1 - correct1 / samples,
        m.final_name(protocol, "top5_err"): 1 - correct5 / samples,
        m.final_name(protocol, "loss"): loss_sum / samples,
        m.final_name(protocol, "samples"): samples,
    }
