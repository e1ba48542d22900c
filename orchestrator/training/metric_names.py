"""The names of what a trial reports, defined once: the train loop writes them, the sweep driver, MLflow tracking,
`status` and `report` read them.

Every `ray.train.report` of the train loop carries the keys of `REPORTED`; the epoch-end report adds `EPOCH_END`, and
the last one also `final_names(protocol)` for each protocol of `recipe.eval.protocols`. Mid-epoch reports carry NaN for
the epoch-end values, which `tracking.numeric_metrics` drops.
"""

from __future__ import annotations

# Position and attempt.
EPOCH = "epoch"  # the 0-based epoch the report belongs to (the epoch just closed, at an epoch end)
STEP = "step"  # optimizer steps completed over the whole trial
IS_EPOCH_END = "is_epoch_end"
ATTEMPT = "attempt"  # 0-based attempt of the trial that made the report
RESUMED_FROM_STEP = "resumed_from_step"  # -1 on an attempt that started from scratch
ATTEMPT_START_UNIX_S = "attempt_start_unix_s"
FIRST_STEP_UNIX_S = "first_step_unix_s"
# The attempt's worker count (its DDP world size), and the preemption notices the trial has checkpointed for over all
# its attempts (`training/preemption.py`); `status` shows them as `workers/configured` and a count.
WORKERS = "workers"
PREEMPTIONS = "preemptions"

# The reporting window (the steps since the previous report), over all ranks.
TRAIN_LOSS = "train_loss"
TRAIN_TOP1_ERR = "train_top1_err"
TRAIN_TOP5_ERR = "train_top5_err"
IMAGES_PER_S = "images_per_s"
IMAGES_PER_S_PER_WORKER = "images_per_s_per_worker"
STEP_TIME_S = "step_time_s"
DATA_WAIT_FRAC = "data_wait_frac"
LR = "lr"
SAMPLES_PER_EPOCH = "samples_per_epoch"  # the train loader's epoch size (all ranks, padding excluded)

# The epoch just closed (epoch-end reports only).
EPOCH_TRAIN_LOSS = "epoch_train_loss"
EPOCH_TRAIN_TOP1_ERR = "epoch_train_top1_err"
EPOCH_TRAIN_TOP5_ERR = "epoch_train_top5_err"
EPOCH_SAMPLES = "epoch_samples"  # samples trained in the epoch, all ranks: checked against the shard set
EPOCH_TIME_S = "epoch_time_s"
# The validation pass after the epoch: every val sample once over all ranks (checked against the manifest).
VAL_TOP1_ERR = "val_top1_err"
VAL_TOP5_ERR = "val_top5_err"
VAL_LOSS = "val_loss"
VAL_SAMPLES = "val_samples"
VAL_CLASSES = "val_classes"  # the class count of the val shard set's manifest (what the report compares data by)


# The final evaluation after the last epoch (He et al. 2015, Sec. 3.4 "In testing"), one set per protocol:
# `final_<protocol>_<quantity>`, e.g. `final_ten_crop_top1_err`. The scores of an image are the mean of the softmax
# scores of its views; every val sample once over all ranks (checked against the manifest).
FINAL_PROTOCOLS: tuple[str, ...] = ("ten_crop", "multi_scale")
FINAL_QUANTITIES: tuple[str, ...] = ("top1_err", "top5_err", "loss", "samples")


def final_name(protocol: str, quantity: str) -> str:
    """`final_ten_crop_top1_err` for ("ten_crop", "top1_err")."""
    if protocol not in FINAL_PROTOCOLS or quantity not in FINAL_QUANTITIES:
        raise ValueError(f"no final metric for protocol {protocol!r} and quantity {quantity!r}")
    return f"final_{protocol}_{quantity}"


FINAL: tuple[str, ...] = tuple(final_name(p, q) for p in FINAL_PROTOCOLS for q in FINAL_QUANTITIES)

REPORTED: tuple[str, ...] = (
    EPOCH,
    STEP,
    IS_EPOCH_END,
    TRAIN_LOSS,
    TRAIN_TOP1_ERR,
    TRAIN_TOP5_ERR,
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
    IMAGES_PER_S,
    IMAGES_PER_S_PER_WORKER,
    STEP_TIME_S,
    EPOCH_TIME_S,
    LR,
    DATA_WAIT_FRAC,
    SAMPLES_PER_EPOCH,
    ATTEMPT,
    RESUMED_FROM_STEP,
    ATTEMPT_START_UNIX_S,
    FIRST_STEP_UNIX_S,
    WORKERS,
    PREEMPTIONS,
)
EPOCH_END: tuple[str, ...] = (
    EPOCH_TRAIN_LOSS,
    EPOCH_TRAIN_TOP1_ERR,
    EPOCH_TRAIN_TOP5_ERR,
    EPOCH_SAMPLES,
    EPOCH_TIME_S,
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
    VAL_LOSS,
    VAL_SAMPLES,
    VAL_CLASSES,
)

# What each trial's MLflow run records, per report (at the report's step): the numbers a user plots. Timestamps and
# flags stay in the Ray result.
TRACKED: tuple[str, ...] = (
    EPOCH,
    TRAIN_LOSS,
    TRAIN_TOP1_ERR,
    TRAIN_TOP5_ERR,
    IMAGES_PER_S,
    IMAGES_PER_S_PER_WORKER,
    STEP_TIME_S,
    DATA_WAIT_FRAC,
    LR,
    ATTEMPT,
    WORKERS,
    PREEMPTIONS,
    *EPOCH_END,
    *FINAL,
)
# What `status` keeps of each trial's latest report (`report` reads it: the val set's size, the final protocols).
STATUS: tuple[str, ...] = (
    EPOCH,
    STEP,
    TRAIN_LOSS,
    TRAIN_TOP1_ERR,
    TRAIN_TOP5_ERR,
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
    VAL_LOSS,
    VAL_SAMPLES,
    VAL_CLASSES,
    IMAGES_PER_S,
    LR,
    WORKERS,
    PREEMPTIONS,
    *FINAL,
)
# The metric that ranks trials: the paper reports top-1 error on the validation set (Tables 2-4).
RANK_METRIC = VAL_TOP1_ERR
# The lowest validation top-1 error a trial has reported so far (kept next to its last metrics in `status`).
BEST_METRIC = "best_val_top1_err"
# Error curves (the paper's Figure 4): training and validation top-1 error against iterations.
CURVE_METRICS: tuple[str, ...] = (TRAIN_TOP1_ERR, VAL_TOP1_ERR)

# What a trial scheduler (`scheduler.metric` in sweep.yaml) may rank trials by: values every epoch-end report carries
# (the validation ones need `data.val`). Mid-epoch reports carry NaN for them and are not shown to the scheduler.
SCHEDULABLE: tuple[str, ...] = (
    VAL_TOP1_ERR,
    VAL_TOP5_ERR,
    VAL_LOSS,
    EPOCH_TRAIN_LOSS,
    EPOCH_TRAIN_TOP1_ERR,
    EPOCH_TRAIN_TOP5_ERR,
)
VALIDATION: tuple[str, ...] = (VAL_TOP1_ERR, VAL_TOP5_ERR, VAL_LOSS)
# The scheduler's clock: epochs completed (the epoch-end report's `EPOCH` + 1), added on the driver.
EPOCHS_DONE = "epochs_done"

# Live Ray metrics (training/live_metrics.py), updated between reports: each worker's gauges and counter, tagged with
# LIVE_TAGS. Ray's Prometheus export (each node's `--metrics-export-port`) names them `ray_<LIVE_PREFIX><name>`, a
# counter with `_total` appended; infra/grafana/resnet-orch.json has a panel per series.
LIVE_PREFIX = "resnet_orch_"
IMAGES_PER_S_TOTAL = "images_per_s_total"  # summed over the trial's workers (the reported IMAGES_PER_S)
LIVE_GAUGES: tuple[str, ...] = (IMAGES_PER_S, IMAGES_PER_S_TOTAL, TRAIN_LOSS, DATA_WAIT_FRAC, LR, STEP, EPOCH_TIME_S)
LIVE_IMAGES_TRAINED = "images_trained"  # a counter
LIVE_TAGS: tuple[str, ...] = ("sweep", "trial", "rank")
