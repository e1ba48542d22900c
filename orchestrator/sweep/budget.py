"""The sweep's `budget:` as a Ray Tune stopper: wall hours and GPU-hours spent over all runs of the sweep.

`SweepCallback.on_step_end` charges it on every step of Tune's loop (wall seconds, and GPU-seconds of the trials
running then); what is spent lives in the sweep's progress (`SweepProgress.budget_used`), so a `resume` goes on
from there. Once a limit is reached, `stop_all` ends the Tune run: running trials stop (their last checkpoint kept
on storage), pending ones never start, and `run_sweep` ends the sweep BUDGET_EXHAUSTED. A resume of such a sweep
starts nothing.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from orchestrator.sweep.config import SweepConfig
from orchestrator.sweep.state import BudgetUse, SweepProgress, TrialState
from orchestrator.sweep.tracking import Tracker
from orchestrator.sweep.tuning_config import BudgetConfig

HOUR_S = 3600.0


def exhausted_by(limits: BudgetConfig | None, used: BudgetUse) -> str | None:
    """The line `status` shows when `used` reached a limit of `limits`; None while within them."""
    if limits is None:
        return None
    if limits.max_wall_hours is not None and used.wall_s >= limits.max_wall_hours * HOUR_S:
        return f"budget exhausted: {used.wall_s / HOUR_S:.3f} of budget.max_wall_hours={limits.max_wall_hours} spent"
    if limits.max_gpu_hours is not None and used.gpu_s >= limits.max_gpu_hours * HOUR_S:
        return f"budget exhausted: {used.gpu_s / HOUR_S:.3f} of budget.max_gpu_hours={limits.max_gpu_hours} spent"
    return None


class BudgetStopper(tune.Stopper):
    """Ends the Tune run when the sweep's budget is spent (`limits` None: never)."""

    def __init__(self, limits: BudgetConfig | None, gpus_per_trial: float, used: BudgetUse) -> None:
        self.limits = limits
        self.gpus_per_trial = gpus_per_trial
        self.used = used.model_copy()
        self._last: float | None = None

    @classmethod
    def for_sweep(cls, config: SweepConfig, used: BudgetUse) -> BudgetStopper:
        """The stopper of `config.budget`; every trial holds `workers x gpus_per_worker` GPUs while it runs (an
        elastic range: its max, the most it holds)."""
        return cls(config.budget, config.resources.max_workers * config.resources.gpus_per_worker, used)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its stopper; a restored one starts its clock afresh and takes what was spent from the progress.
        state = dict(self.__dict__)
        state["_last"] = None
        return state

    def resume_from(self, progress: SweepProgress) -> None:
        self.used = progress.budget_used.model_copy()
        self._last = None

    def charge(self, running_trials: int) -> None:
        """Add the time since the last charge: wall seconds, and GPU-seconds of `running_trials` trials."""
        now = time.monotonic()
        if self._last is not None:
            elapsed = now - self._last
            self.used.wall_s += elapsed
            self.used.gpu_s += elapsed * running_trials * self.gpus_per_trial
        self._last = now

    @property
    def exhausted(self) -> str | None:
        return exhausted_by(self.limits, self.used)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # the budget stops the whole sweep (`stop_all`), never one trial for itself

    def stop_all(self) -> bool:
        return self.exhausted is not None


def stop_unfinished(tracker: Tracker, progress: SweepProgress, why: str) -> None:
    """The budget is spent: every unfinished trial ends BUDGET_EXHAUSTED (a running one was stopped by Tune, its
    checkpoints kept; a pending one never started) and its MLflow run KILLED."""
    for status in progress.trials:
        if status.state.is_terminal:
            continue
        started = status.state != TrialState.PENDING or status.attempts > 0
        progress.move(status.id, TrialState.BUDGET_EXHAUSTED, error=("stopped: " if started else "not started: ") + why)
        if status.mlflow_run_id is not None:
            tracker.stopped(status.mlflow_run_id, TrialState.BUDGET_EXHAUSTED.value, early=False)
