"""`EpochEnds` over Tune's own ASHA and median stopping rule: only epoch-end reports count, on the clock
`epochs_done`; a mid-epoch report (NaN validation) or a restart notice never decides anything."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from orchestrator.sweep.config import parse_sweep
from orchestrator.sweep.trial_schedulers import EpochEnds, build_scheduler

BASE: dict[str, Any] = {"name": "t", "data": {"train": "/shards/train", "val": "/shards/val"}, "recipe": {"epochs": 20}}
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


@dataclass(frozen=True)
class _Trial:
    """What Tune's schedulers read of a trial: its id (and they key dicts by it)."""

    trial_id: str


def _report(epoch: int, err: float, end: bool = True) -> dict[str, Any]:
    return {"epoch": epoch, "is_epoch_end": end, "val_top1_err": err if end else math.nan, "step": 10 * (epoch + 1)}


def test_asha_judges_epoch_ends_at_its_rungs() -> None:
    scheduler = build_scheduler(
        parse_sweep({**BASE, "scheduler": {"type": "asha", "grace_epochs": 2, "reduction_factor": 2}})
    )
    assert isinstance(scheduler, EpochEnds) and isinstance(scheduler.inner, ASHAScheduler)
    assert scheduler.metric is None  # Tune must not demand the metric of restart notices and mid-epoch reports
    good, bad = _Trial("good"), _Trial("bad")
    for trial in (good, bad):
        scheduler.on_trial_add(None, trial)
    # Rung 1 is at 2 epochs done (epoch index 1). The good trial gets there first: alone, it goes on.
    assert scheduler.on_trial_result(None, good, _report(0, 0.9)) == CONTINUE
    assert scheduler.on_trial_result(None, good, _report(1, 0.5)) == CONTINUE
    # The bad one's mid-epoch report at epoch 1 carries NaN and is not a rung result; its epoch end is, and loses.
    assert scheduler.on_trial_result(None, bad, _report(0, 0.95)) == CONTINUE
    assert scheduler.on_trial_result(None, bad, _report(1, math.nan, end=False)) == CONTINUE
    assert scheduler.on_trial_result(None, bad, {"resnet_orch_restarting": 1}) == CONTINUE
    assert scheduler.on_trial_result(None, bad, _report(1, 0.7)) == STOP
    # A better one at the same rung goes on: 0.4 is below the median of (0.5, 0.7, 0.4).
    third = _Trial("third")
    scheduler.on_trial_add(None, third)
    assert scheduler.on_trial_result(None, third, _report(1, 0.4)) == CONTINUE


def test_median_stopping_after_its_grace_epochs() -> None:
    scheduler = build_scheduler(
        parse_sweep({**BASE, "scheduler": {"type": "median_stopping", "grace_epochs": 1, "min_samples_required": 2}})
    )
    assert isinstance(scheduler, EpochEnds) and isinstance(scheduler.inner, MedianStoppingRule)
    trials = [_Trial(name) for name in ("a", "b", "c")]
    # Tune's controller as the rule sees it: a trial waits, so with too few samples the rule would PAUSE to yield.
    controller = SimpleNamespace(get_live_trials=lambda: [SimpleNamespace(status="PENDING")])
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    for trial, err in zip(trials[:2], (0.5, 0.6), strict=True):
        assert scheduler.on_trial_result(controller, trial, _report(0, err)) == CONTINUE  # not PAUSE
        assert scheduler.on_trial_result(controller, trial, _report(1, err)) == CONTINUE
    # c's best (0.9) is worse than the median of a's and b's running means (0.55) after the grace epoch.
    assert scheduler.on_trial_result(controller, trials[2], _report(0, 0.9)) == STOP


def test_no_scheduler_is_first_in_first_out() -> None:
    assert build_scheduler(parse_sweep(BASE)) is None
