"""What a sweep driver finds left by an earlier one: trials that finished (their model registered) after the last
progress it wrote (placement groups a dead driver left: `cleanup.py`)."""

from __future__ import annotations

import logging

from orchestrator.sweep.state import SweepProgress, TrialState
from orchestrator.sweep.tracking import Tracker

logger = logging.getLogger(__name__)


def settle_registered(tracker: Tracker, registered_model: str, progress: SweepProgress) -> list[str]:
    """Mark SUCCEEDED the unfinished trials whose model is registered; returns their ids.

    Registering its model is a trial's last act (`trial_trainable`), so such a trial finished, whatever a driver that
    died or a `cancel` that raced with it recorded. Tune's saved state may hold it TERMINATED already: a restored
    Tune then neither runs it nor reports on it, and it would stay PENDING through every resume.
    """
    settled = []
    for status in progress.trials:
        if status.state.is_terminal or status.mlflow_run_id is None:
            continue
        if tracker.version_of_run(registered_model, status.mlflow_run_id) is None:
            continue
        if status.state == TrialState.PENDING:
            progress.move(status.id, TrialState.RUNNING)
        progress.move(status.id, TrialState.SUCCEEDED)
        tracker.finish(status.mlflow_run_id, TrialState.SUCCEEDED.value, succeeded=True)
        settled.append(status.id)
    return settled
