"""The sweep's trial scheduler (`scheduler:` in sweep.yaml) on Ray Tune's own: ASHA or the median stopping rule.

Our trials report to Tune many times per epoch (every report Ray Train's controller passes on), and only the
epoch-end ones carry the ranking metrics (mid-epoch reports have NaN there). `EpochEnds` wraps Tune's scheduler and
shows it only the epoch-end reports, with the clock `epochs_done` (the epoch just closed, counted from 1): "grace
5 epochs" means five closed epochs, whatever the report cadence. A trial the scheduler stops ends STOPPED
(`scheduling.SweepCallback`), with the checkpoint of the epoch end that decided it kept on its storage.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from orchestrator.sweep.config import SweepConfig
from orchestrator.training import metric_names


class EpochEnds(TrialScheduler):
    """Shows `inner` (a Tune scheduler) only the epoch-end reports, with `epochs_done` as their time."""

    def __init__(self, inner: TrialScheduler, metric: str) -> None:
        super().__init__()
        self.inner = inner
        # Tune checks that every result carries the scheduler's metric; ours (restart notices, mid-epoch reports)
        # do not, and only the inner scheduler needs it.
        self._metric = None
        self._ranked_by = metric
        self._last: dict[str, dict[str, Any]] = {}

    def _epoch_end(self, trial: Trial, result: dict[str, Any]) -> dict[str, Any] | None:
        if not result.get(metric_names.IS_EPOCH_END) or metric_names.EPOCH not in result:
            return None
        value = result.get(self._ranked_by)
        if not isinstance(value, int | float) or math.isnan(value):
            return None
        shown = {**result, metric_names.EPOCHS_DONE: int(result[metric_names.EPOCH]) + 1}
        self._last[trial.trial_id] = shown
        return shown

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are the inner scheduler's, from `scheduler:`

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._last.pop(trial.trial_id, None)
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        shown = self._epoch_end(trial, result)
        if shown is None:
            return TrialScheduler.CONTINUE
        decision = str(self.inner.on_trial_result(tune_controller, trial, shown))
        # The median rule yields to pending trials with PAUSE; a Ray Train run is not a pausable Tune trainable (a
        # paused trial would start over as a new function call), so it keeps its resources and goes on.
        return TrialScheduler.CONTINUE if decision == TrialScheduler.PAUSE else decision

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        last = self._epoch_end(trial, result) or self._last.get(trial.trial_id)
        self._last.pop(trial.trial_id, None)
        if last is not None:
            self.inner.on_trial_complete(tune_controller, trial, last)
        else:
            self.inner.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._last.pop(trial.trial_id, None)
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        return self.inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self.inner.debug_string()


def build_scheduler(config: SweepConfig) -> TrialScheduler | None:
    """Tune's scheduler for `config.scheduler` (None: first in, first out, every trial to its end)."""
    chosen = config.scheduler
    if chosen is None:
        return None
    inner: TrialScheduler
    if chosen.type == "asha":
        inner = ASHAScheduler(
            time_attr=metric_names.EPOCHS_DONE,
            metric=chosen.metric,
            mode=chosen.mode,
            # The rungs stop short of the longest trial; a trial that reaches its last epoch finishes by itself (its
            # final evaluation and model registration run), so ASHA never stops it there.
            max_t=max(t.recipe.epochs for t in config.expand(storage_root="-")),
            grace_period=chosen.grace_epochs,
            reduction_factor=chosen.reduction_factor,
            brackets=1,
            stop_last_trials=False,
        )
    else:
        inner = MedianStoppingRule(
            time_attr=metric_names.EPOCHS_DONE,
            metric=chosen.metric,
            mode=chosen.mode,
            grace_period=chosen.grace_epochs,
            min_samples_required=chosen.min_samples_required,
            hard_stop=True,
        )
    return EpochEnds(inner, chosen.metric)
