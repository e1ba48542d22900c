"""What a sweep driver finds left by an earlier one: placement groups of a dead driver, and trials that finished
(their model registered) after the last progress it wrote."""

from __future__ import annotations

import logging

from orchestrator.sweep.state import SweepProgress, TrialState
from orchestrator.sweep.tracking import Tracker

logger = logging.getLogger(__name__)


def remove_orphan_placement_groups() -> int:
    """Remove placement groups whose creating job is dead: a killed driver can leave them holding the cluster."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_jobs, list_placement_groups

    alive = set()
    for job in list_jobs():
        # Ray reports a plain driver (not a submitted job) as RUNNING while it is alive, too.
        if job.job_id and getattr(job.status, "value", job.status) in ("PENDING", "RUNNING"):
            alive.add(job.job_id)
    removed = 0
    for pg in list_placement_groups(filters=[("state", "!=", "REMOVED")], detail=True):
        if pg.is_detached or pg.creator_job_id in alive:
            continue
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg.placement_group_id))))
        removed += 1
        logger.warning("removed placement group %s left by dead job %s", pg.placement_group_id, pg.creator_job_id)
    return removed


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
