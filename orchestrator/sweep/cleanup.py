"""Cleanup that touches only what is ours: placement groups left behind by this sweep's own ended driver jobs.

A sweep's driver runs as a Ray job whose metadata names the sweep (`JOB_METADATA_SWEEP`, set by `jobs.submit_driver`
on every submit and resume). Every placement group its Tune trials and Ray Train worker groups create has that job as
its creator, so "ours" is: created by a job whose metadata names this sweep, and that job has ended. Another user's
job, a detached actor's placement groups and the running driver's own are never touched, whatever their age.

Actors need no such sweep: every actor a sweep creates (Tune's trial actors, Ray Train's controllers and workers)
belongs to the driver's job and dies with it. The detached actors its jobs may start belong to Ray Train (the state
actor that the dashboard's Train view reads, shared by every Train run on the cluster, and a placement-group cleaner
that exits with its controller): not ours to kill.

The state API has no cursor: each query asks for everything it may return (`RAY_MAX_LIMIT_FROM_API_SERVER`),
filtered on the server, and a full answer (possibly truncated) stops the cleanup rather than guess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# The driver job's metadata key naming its sweep (the Ray dashboard's Jobs view shows it).
JOB_METADATA_SWEEP = "resnet_orch.sweep"
_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


class IncompleteListing(RuntimeError):
    """The state API returned as many entries as it may: some may be missing, so nothing is removed."""


def _list_all(kind: str, filters: list[tuple[str, str, str]]) -> list[Any]:
    from ray.util import state
    from ray.util.state.common import RAY_MAX_LIMIT_FROM_API_SERVER

    listers: dict[str, Callable[..., list[Any]]] = {
        "jobs": state.list_jobs,
        "placement_groups": state.list_placement_groups,
    }
    lister = listers[kind]
    found: list[Any] = lister(
        filters=filters,
        limit=RAY_MAX_LIMIT_FROM_API_SERVER,
        detail=True,
        raise_on_missing_output=True,
    )
    if len(found) >= RAY_MAX_LIMIT_FROM_API_SERVER:
        raise IncompleteListing(f"the state API returned {len(found)} {kind} (its limit): some may be missing")
    return found


def ended_driver_jobs(sweep_id: str) -> list[str]:
    """The Ray job ids (hex) of this sweep's driver jobs that have ended (a resubmitted driver is another job)."""
    jobs = _list_all("jobs", [("type", "=", "SUBMISSION")])
    return [
        job.job_id
        for job in jobs
        if (job.metadata or {}).get(JOB_METADATA_SWEEP) == sweep_id
        and job.job_id
        and getattr(job.status, "value", job.status) in _ENDED
    ]


def orphan_placement_groups(sweep_id: str) -> list[tuple[str, str]]:
    """(placement group id, creator job id) of every live placement group that an ended driver job of this sweep
    created."""
    orphans = []
    for job_id in ended_driver_jobs(sweep_id):
        for pg in _list_all("placement_groups", [("creator_job_id", "=", job_id), ("state", "!=", "REMOVED")]):
            orphans.append((pg.placement_group_id, job_id))
    return orphans


def remove_orphan_placement_groups(sweep_id: str) -> int:
    """Remove this sweep's orphaned placement groups (a killed driver's can hold the cluster); returns how many."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state.exception import RayStateApiException

    try:
        orphans = orphan_placement_groups(sweep_id)
    except (IncompleteListing, RayStateApiException) as exc:
        logger.warning("not looking for placement groups left by sweep %s: %s", sweep_id, exc)
        return 0
    for pg_id, job_id in orphans:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
        logger.warning("removed placement group %s left by job %s of sweep %s", pg_id, job_id, sweep_id)
    return len(orphans)
