"""The Tune driver: one Tune trial per sweep trial, each a function that runs a Ray Train job (`run_trial`).

Ray Train v2 refuses `Tuner(TorchTrainer)`; under Tune, a trial is a function that calls `trainer.fit()`. The trial
function holds one unit of a custom resource and no CPU, so trial drivers never take the CPUs their own worker
groups wait for; how many trials run at once is decided here from the cluster's CPUs/GPUs and
`max_concurrent_trials`, so the trials that do not fit wait in Tune's queue instead of in Train's startup loop.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from ray import tune
from ray.train.v2.api.callback import UserCallback

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE
from orchestrator.sweep.config import ResourcesConfig, SweepConfig, TrialConfig
from orchestrator.sweep.layout import SweepPaths, embedded_artifact_root, embedded_tracking_uri, expand, save_progress
from orchestrator.sweep.state import (
    SweepProgress,
    SweepRecord,
    SweepState,
    TrialState,
    final_sweep_state,
)
from orchestrator.sweep.tracking import TAG_SWEEP, TAG_TRIAL, Tracker, log_trial_model, numeric_metrics
from orchestrator.training import metric_names
from orchestrator.training.metric_names import BEST_METRIC, RANK_METRIC, VAL_TOP5_ERR

logger = logging.getLogger(__name__)

TUNE_RUN_NAME = "tune"
RESTART_KEY = "resnet_orch_restarting"
FAILURE_KEY = "resnet_orch_failure"
# One grid-search axis whose values are whole trials (the sweep's own grid is expanded by `SweepConfig.expand`).
PARAM_KEY = "sweep_trial"


class SchedulingError(RuntimeError):
    """The cluster cannot run this sweep as configured."""


def trials_that_fit(cluster: Mapping[str, float], resources: ResourcesConfig) -> int:
    """How many trials of this shape the cluster holds at once (by CPUs and GPUs)."""
    fits = math.inf
    cpu_need = resources.workers * resources.cpus_per_worker
    fits = min(fits, cluster.get("CPU", 0.0) // cpu_need)
    if resources.gpus_per_worker > 0:
        fits = min(fits, cluster.get("GPU", 0.0) // (resources.workers * resources.gpus_per_worker))
    return int(fits)


def concurrency(cluster: Mapping[str, float], config: SweepConfig) -> int:
    fits = trials_that_fit(cluster, config.resources)
    if fits < 1:
        r = config.resources
        raise SchedulingError(
            f"one trial needs {r.workers} workers x ({r.cpus_per_worker} CPU, {r.gpus_per_worker} GPU) but the "
            f"cluster has {cluster.get('CPU', 0)} CPUs and {cluster.get('GPU', 0)} GPUs; lower `resources:` "
            "or add nodes"
        )
    if config.max_concurrent_trials is not None:
        return min(fits, config.max_concurrent_trials)
    return fits


class RestartNotice(UserCallback):
    """On the Ray Train controller: tells the sweep driver at once that the trial's workers failed and restart.

    It goes through the same controller -> Tune queue as Ray's own `TuneReportCallback` (a result with only
    `RESTART_KEY`), so `status` shows RESTARTING while Ray Train replaces the worker group.
    """

    def __init__(self) -> None:
        from ray.train._internal.session import get_session

        session = get_session()
        if session is None:
            raise RuntimeError("RestartNotice needs a Tune trial's session; create it inside the trial function")
        self._queue = session._get_or_create_inter_actor_queue()

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self._queue.put({RESTART_KEY: 1})


def trial_trainable(config: dict[str, Any]) -> None:
    """One Tune trial: train (Ray Train, restarts inside), then register the final model from this driver.

    A trial that fails reports why in one line (`FAILURE_KEY`) before its error ends the Tune trial, so the sweep's
    progress, and `status`, say it without anyone reading a traceback.
    """
    try:
        _train_and_register(config)
    except Exception as exc:
        tune.report({FAILURE_KEY: one_line(str(exc))})
        raise


def one_line(text: str, limit: int = 600) -> str:
    """`text` on one line (whitespace runs folded), cut to `limit` characters."""
    folded = " ".join(text.split())
    return folded if len(folded) <= limit else folded[: limit - 3] + "..."


def _train_and_register(config: dict[str, Any]) -> None:
    from orchestrator.training.checkpointing import read_model_state
    from orchestrator.training.trial import open_checkpoint, run_trial

    config = config[PARAM_KEY]
    trial = TrialConfig.model_validate_json(config["trial"])
    tracker = Tracker(config["tracking_uri"], config["experiment"], _artifact_root(config["tracking_uri"]))
    run_id = config["mlflow_run_id"]
    if tracker.version_of_run(config["registered_model"], run_id) is not None:
        # Its model is registered: the trial finished before the driver died (Tune's saved state can lag behind).
        logger.info("trial %s already finished; not re-running it", trial.trial_id)
        return
    # CPU, memory, network (and GPU where there is one) of this trial's driver node, into the trial's run.
    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracker.tracking_uri)
    monitor.start()
    try:
        result = run_trial(trial, callbacks=[RestartNotice()])
    finally:
        monitor.finish()
    if result.error is not None:
        raise RuntimeError(f"trial {trial.trial_id} failed after {result.attempts} attempt(s): {result.error}")
    if result.checkpoint_path is None:
        raise RuntimeError(f"trial {trial.trial_id} finished without a checkpoint; nothing to register")
    from models import get_model

    with tempfile.TemporaryDirectory() as tmp:
        # The checkpoint may be on S3: copy it next to this driver, then log it and load it from there.
        open_checkpoint(result.checkpoint_path).to_directory(tmp)
        tracker.client.log_artifacts(run_id, tmp, artifact_path="checkpoint")
        model = get_model(trial.model.registry_name, **trial.model.model_kwargs())
        model.load_state_dict(read_model_state(Path(tmp)))
    tags = {TAG_SWEEP: config["sweep_id"], TAG_TRIAL: trial.trial_id}
    tags.update({k: str(v) for k, v in numeric_metrics(result.metrics).items() if k in (RANK_METRIC, VAL_TOP5_ERR)})
    version = log_trial_model(
        tracker,
        run_id,
        model,
        image_size=trial.recipe.image_size,
        registered_model=config["registered_model"],
        version_tags=tags,
    )
    logger.info("trial %s: registered %s version %s", trial.trial_id, config["registered_model"], version)


def _trial_id(trial: Any) -> str:
    return str(trial.config[PARAM_KEY]["trial_id"])


def _artifact_root(tracking_uri: str) -> Path | None:
    return embedded_artifact_root() if tracking_uri == embedded_tracking_uri() else None


class SweepCallback(tune.Callback):
    """Moves trial states in the sweep record and logs every report to the trial's MLflow run (driver side)."""

    def __init__(self, record: SweepRecord, paths: SweepPaths, run_ids: dict[str, str]) -> None:
        self.record = record
        self.paths = paths
        self.run_ids = run_ids
        self._tracker: Tracker | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state; the MLflow client is rebuilt after a restore.
        state = dict(self.__dict__)
        state["_tracker"] = None
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            r = self.record
            self._tracker = Tracker(r.tracking_uri, r.experiment, _artifact_root(r.tracking_uri))
        return self._tracker

    def _update(
        self, trial: Any, new: TrialState | None = None, *, error: str | None = None, reason: str | None = None
    ) -> str:
        trial_id = _trial_id(trial)
        progress = _load(self.paths)
        status = progress.trial(trial_id)
        if status.state == TrialState.SUCCEEDED:
            # A finished trial that Tune's restored state had not yet recorded as finished: it stays finished (the
            # trainable returns at once, see `trial_trainable`).
            return trial_id
        if new is not None and status.state != new:
            progress.move(trial_id, new, error=error, reason=reason)
        save_progress(self.record, self.paths, progress)
        return trial_id

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trial, TrialState.RUNNING)

    def on_trial_restore(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trial, TrialState.RUNNING)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        trial_id = _trial_id(trial)
        progress = _load(self.paths)
        status = progress.trial(trial_id)
        if status.state == TrialState.PENDING:
            progress.move(trial_id, TrialState.RUNNING)
        if FAILURE_KEY in result:
            # The trial's last word before its error (`trial_trainable`); `on_trial_error` follows and keeps it.
            status.reason = str(result[FAILURE_KEY])
            save_progress(self.record, self.paths, progress)
            return
        if result.get(RESTART_KEY):
            logger.warning(
                "trial %s: restarting (a worker failed; Ray Train restarts from the last checkpoint)", trial_id
            )
            progress.move(trial_id, TrialState.RESTARTING)
            save_progress(self.record, self.paths, progress)
            return
        attempts = int(result.get(metric_names.ATTEMPT, 0)) + 1  # the training loop reports a 0-based attempt
        run_id = self.run_ids[trial_id]
        if status.state == TrialState.RESTARTING:
            progress.move(trial_id, TrialState.RUNNING)
        if attempts > status.attempts:
            if status.attempts and status.state == TrialState.RUNNING:
                # A restart whose notice did not come through: record it in the trial's history all the same.
                progress.move(trial_id, TrialState.RESTARTING)
                progress.move(trial_id, TrialState.RUNNING)
            status.attempts = attempts
            self.tracker.set_attempts(run_id, attempts)
        reported = numeric_metrics({k: v for k, v in result.items() if k in metric_names.STATUS})
        # Mid-epoch reports carry NaN validation errors: keep the last real value of each metric.
        status.metrics.update(reported)
        if RANK_METRIC in reported:
            best = status.metrics.get(BEST_METRIC, math.inf)
            status.metrics[BEST_METRIC] = min(best, reported[RANK_METRIC])
        tracked = {k: v for k, v in result.items() if k in metric_names.TRACKED}
        self.tracker.log_metrics(run_id, tracked, int(result.get(metric_names.STEP, 0)))
        save_progress(self.record, self.paths, progress)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_id = self._update(trial, TrialState.SUCCEEDED)
        run_id = self.run_ids[trial_id]
        self.tracker.log_curves(run_id, {trial_id: self.tracker.trial_curves(run_id)}, "curves.png")
        self.tracker.finish(run_id, TrialState.SUCCEEDED.value, succeeded=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        error_file = getattr(trial, "error_file", None)
        error = error_file and Path(error_file).read_text(encoding="utf-8", errors="replace")[-2000:]
        error = error or "failed (see `resnet-orch logs`)"
        reported = _load(self.paths).trial(_trial_id(trial)).reason
        # Without the trial's own reason (it died before it could say), the traceback's last line.
        last_line = next((line for line in reversed(error.splitlines()) if line.strip()), error)
        trial_id = self._update(trial, TrialState.FAILED, error=error, reason=reported or one_line(last_line))
        self.tracker.finish(self.run_ids[trial_id], TrialState.FAILED.value, succeeded=False)


def _load(paths: SweepPaths) -> SweepProgress:
    from orchestrator.sweep.state import load_progress

    return load_progress(paths.progress)


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


def run_sweep(record: SweepRecord, config: SweepConfig, paths: SweepPaths, *, resume: bool) -> SweepState:
    """Run (or resume) the whole sweep on the connected Ray cluster; returns the sweep's final state."""
    cluster = ray.cluster_resources()
    if cluster.get(TRIAL_DRIVER_RESOURCE, 0) < 1:
        raise SchedulingError(
            f"the cluster has no `{TRIAL_DRIVER_RESOURCE}` resource that trial drivers reserve instead of CPUs; "
            f"start its nodes with --resources='{{\"{TRIAL_DRIVER_RESOURCE}\": 1000}}' (docs/cluster.md)"
        )
    max_concurrent = concurrency(cluster, config)
    remove_orphan_placement_groups()
    trials = expand(record.sweep_id, config)
    tracker = Tracker(record.tracking_uri, record.experiment, _artifact_root(record.tracking_uri))
    progress = _load(paths)
    parent_run_id = progress.parent_run_id = tracker.parent_run(record.sweep_id, paths.sweep_file)
    run_ids = {}
    for trial in trials:
        status = progress.trial(trial.trial_id)
        status.mlflow_run_id = run_ids[trial.trial_id] = tracker.child_run(parent_run_id, record.sweep_id, trial)
    if resume:
        requeued = progress.requeue_unfinished()
        finished = settle_registered(tracker, record.registered_model, progress)
        requeued = [t for t in requeued if t not in finished]
        logger.info("resuming %s: re-queued %s", record.sweep_id, ", ".join(requeued) or "nothing")
        if finished:
            logger.info("already finished (model registered): %s", ", ".join(finished))
    progress.state = SweepState.RUNNING
    save_progress(record, paths, progress)

    trainable = tune.with_resources(trial_trainable, {TRIAL_DRIVER_RESOURCE: 1})
    storage = record.storage
    experiment_path = f"{storage.rstrip('/')}/{TUNE_RUN_NAME}"
    if resume and tune.Tuner.can_restore(experiment_path):
        logger.info("restoring the Tune experiment at %s", experiment_path)
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=True
        )
        # Tune restores the SweepCallback it pickled: the same record, paths and (tag-stable) MLflow run ids.
    else:
        common = {
            "tracking_uri": record.tracking_uri,
            "experiment": record.experiment,
            "registered_model": record.registered_model,
            "sweep_id": record.sweep_id,
        }
        values = [
            {"trial": t.model_dump_json(), "trial_id": t.trial_id, "mlflow_run_id": run_ids[t.trial_id], **common}
            for t in trials
            if not (resume and progress.trial(t.trial_id).state == TrialState.SUCCEEDED)
        ]
        tuner = tune.Tuner(
            trainable,
            param_space={PARAM_KEY: tune.grid_search(values)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=False),
            run_config=tune.RunConfig(
                name=TUNE_RUN_NAME,
                storage_path=storage,
                callbacks=[SweepCallback(record, paths, run_ids)],
                # Restarts happen inside each trial (Ray Train's FailureConfig from `max_failures`); a second
                # retry layer here would multiply them.
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    logger.info("sweep %s: %d trials, at most %d at once", record.sweep_id, len(trials), max_concurrent)
    tuner.fit()
    progress = _load(paths)
    _log_sweep_curves(tracker, progress, parent_run_id)
    progress.champion = tracker.crown_champion(record.registered_model, record.sweep_id)
    if progress.champion is not None:
        logger.info("champion: %s", progress.champion.describe())
    progress.state = final_sweep_state([t.state for t in progress.trials])
    save_progress(record, paths, progress)
    tracker.finish(parent_run_id, progress.state.value, succeeded=progress.state == SweepState.SUCCEEDED)
    return progress.state


def _log_sweep_curves(tracker: Tracker, progress: SweepProgress, parent_run_id: str) -> None:
    """Figure 4 of the paper: training/validation error vs iterations, plain and residual side by side."""
    curves = {
        t.id: tracker.trial_curves(t.mlflow_run_id)
        for t in progress.trials
        if t.mlflow_run_id is not None and t.state == TrialState.SUCCEEDED
    }
    if curves:
        models = {t.id: t.config["model"] for t in progress.trials}
        tracker.log_curves(parent_run_id, curves, "figure4.png", models)
