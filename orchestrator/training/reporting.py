"""What a report of the train loop says: the metrics of a reporting window and of a closed epoch, from summed counts.

Pure arithmetic over the sums of `accounting` (already added up over all ranks); the names are `metric_names`.
Mid-epoch reports carry NaN for the epoch-end values (validation errors, epoch time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator.training import metric_names as m


@dataclass(frozen=True)
class Position:
    """Where a report stands in the trial, and which attempt makes it."""

    epoch: int  # the 0-based epoch the report belongs to (the epoch just closed, at an epoch end)
    step: int
    epoch_end: bool
    lr: float
    samples_per_epoch: int
    world: int
    attempt: int
    resumed_from_step: int
    attempt_start_unix_s: float
    first_step_unix_s: float
    preemptions: int  # preemption notices checkpointed for, over all attempts


def window_metrics(reduced: dict[str, float], at: Position, extra: dict[str, float] | None = None) -> dict[str, Any]:
    """Every key of `metric_names.REPORTED` (plus `extra`, the epoch-end keys) for a window's sums over all ranks."""
    samples = max(reduced["samples"], 1.0)
    wall_s = max(reduced["wall_s"], 1e-9)
    images_per_s = reduced["samples"] / wall_s
    return {
        m.EPOCH: at.epoch,
        m.STEP: at.step,
        m.IS_EPOCH_END: at.epoch_end,
        m.TRAIN_LOSS: reduced["loss_sum"] / samples,
        m.TRAIN_TOP1_ERR: 1.0 - reduced["correct1"] / samples,
        m.TRAIN_TOP5_ERR: 1.0 - reduced["correct5"] / samples,
        m.VAL_TOP1_ERR: math.nan,
        m.VAL_TOP5_ERR: math.nan,
        m.IMAGES_PER_S: images_per_s,
        m.IMAGES_PER_S_PER_WORKER: images_per_s / at.world,
        m.STEP_TIME_S: reduced["step_s"] / max(reduced["steps"], 1.0),
        m.EPOCH_TIME_S: math.nan,
        m.LR: at.lr,
        m.DATA_WAIT_FRAC: reduced["wait_s"] / max(reduced["step_s"], 1e-9),
        m.SAMPLES_PER_EPOCH: at.samples_per_epoch,
        m.ATTEMPT: at.attempt,
        m.RESUMED_FROM_STEP: at.resumed_from_step,
        m.ATTEMPT_START_UNIX_S: at.attempt_start_unix_s,
        m.FIRST_STEP_UNIX_S: at.first_step_unix_s,
        m.WORKERS: at.world,
        m.PREEMPTIONS: at.preemptions,
        **(extra or {}),
    }


def train_top1_err(totals: dict[str, float]) -> float:
    """The epoch's training top-1 error from its totals over all ranks."""
    return 1.0 - totals["correct1"] / max(totals["samples"], 1.0)


def epoch_metrics(totals: dict[str, float], world: int, val: dict[str, float]) -> dict[str, float]:
    """The `metric_names.EPOCH_END` keys of the epoch just closed: its totals over all ranks, and its validation."""
    return {
        m.EPOCH_TRAIN_LOSS: totals["loss_sum"] / max(totals["samples"], 1.0),
        m.EPOCH_TRAIN_TOP1_ERR: train_top1_err(totals),
        m.EPOCH_TRAIN_TOP5_ERR: 1.0 - totals["correct5"] / max(totals["samples"], 1.0),
        m.EPOCH_SAMPLES: totals["samples"],
        m.EPOCH_TIME_S: totals["step_s"] / world,
        **val,
    }
