"""The Tune driver: one Tune trial per sweep trial, each a function that runs a Ray Train job (`run_trial`).

Ray Train v2 refuses `Tuner(TorchTrainer)`; under Tune, a trial is a function that calls `trainer.fit()`. The trial
function holds one unit of a custom resource and no CPU, so trial drivers never take the CPUs their own worker
groups wait for. How many trials run at once is decided from what the cluster can grow to (`capacity.plan` over
`autoscaler.read_shape`) and `max_concurrent_trials`: the trials beyond it wait in Tune's queue (PENDING), the
started ones whose workers wait for the autoscaler's nodes show `PENDING (waiting for nodes)`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from ray import tune

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE
from orchestrator.sweep.autoscaler import read_shape
from orchestrator.sweep.budget import BudgetStopper, exhausted_by, stop_unfinished
from orchestrator.sweep.capacity import SchedulingError, check_storage, plan
from orchestrator.sweep.cleanup import remove_orphan_placement_groups
from orchestrator.sweep.config import SweepConfig, TrialConfig
from orchestrator.sweep.driver import ADMITTED_MARK
from orchestrator.sweep.layout import SweepPaths, embedded_artifact_root, embedded_tracking_uri, expand, save_progress
from orchestrator.sweep.recovery import settle_registered
from orchestrator.sweep.state import (
    BudgetUse,
    SweepProgress,
    SweepRecord,
    SweepState,
    TrialState,
    final_sweep_state,
)
from orchestrator.sweep.stopping import TRAIN_RUN, stoppable
from orchestrator.sweep.tracking import TAG_SWEEP, TAG_TRIAL, Tracker, log_trial_model, numeric_metrics
from orchestrator.sweep.trial_notices import RESTART_KEY, WAITING_FOR_NODES, WAITING_KEY, PlacementNotice, RestartNotice
from orchestrator.sweep.trial_schedulers import build_scheduler
from orchestrator.training import metric_names
from orchestrator.training.metric_names import BEST_METRIC, RANK_METRIC, VAL_TOP5_ERR
from pipelines.retry import RetryPolicy

logger = logging.getLogger(__name__)

TUNE_RUN_NAME = "tune"
FAILURE_KEY = "resnet_orch_failure"
# One grid-search axis whose values are whole trials (the sweep's own grid is expanded by `SweepConfig.expand`).
PARAM_KEY = "sweep_trial"
# How often the driver writes what the sweep has spent of its budget when no trial event does.
BUDGET_SAVE_S = 30.0


__all__ = ["SchedulingError", "run_sweep"]


def trial_trainable(config: dict[str, Any]) -> None:
    """One Tune trial: train (Ray Train, restarts inside), then register the final model from this driver.

    A trial that fails reports why in one line (`FAILURE_KEY`) before its error ends the Tune trial, so the sweep's
    progress, and `status`, say it without anyone reading a traceback.
    """
    TRAIN_RUN.begin()
    try:
        _train_and_register(config)
    except Exception as exc:
        tune.report({FAILURE_KEY: one_line(str(exc))})
        raise
    finally:
        TRAIN_RUN.end()


def one_line(text: str, limit: int = 600) -> str:
    """`text` on one line (whitespace runs folded), cut to `limit` characters."""
    folded = " ".join(text.split())
    return folded if len(folded) <= limit else folded[: limit - 3] + "..."


def _train_and_register(config: dict[str, Any]) -> None:
    from orchestrator.training.checkpointing import read_model_state
    from orchestrator.training.trial import open_checkpoint, run_trial

    config = config[PARAM_KEY]
    trial = TrialConfig.model_validate_json(config["trial"])
    tracker = Tracker(
        config["tracking_uri"], config["experiment"], _artifact_root(config["tracking_uri"]), trial.outages.policy()
    )
    run_id = config["mlflow_run_id"]
    if tracker.version_of_run(config["registered_model"], run_id) is not None:
        # Its model is registered: the trial finished before the driver died (Tune's saved state can lag behind).
        logger.info("trial %s already finished; not re-running it", trial.trial_id)
        return
    if tracker.was_stopped_early(run_id):
        # Its trial scheduler stopped it: a restored Tune whose saved state lagged behind must not train it again.
        logger.info("trial %s was stopped early by the trial scheduler; not re-running it", trial.trial_id)
        return
    # CPU, memory, network (and GPU where there is one) of this trial's driver node, into the trial's run.
    # The dashboard's Train view lists a run only when Ray Train records its state, off by default in Ray 2.60.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracker.tracking_uri)
    monitor.start()
    try:
        result = run_trial(trial, callbacks=[RestartNotice(), PlacementNotice(), TRAIN_RUN.open_channel()])
    except Exception:
        if TRAIN_RUN.stopping.is_set():
            # Tune stopped this trial and `cleanup()` aborted its Train run under it: not a failure.
            logger.info("trial %s: stopped by Tune; its Train run aborted", trial.trial_id)
            return
        raise
    finally:
        TRAIN_RUN.run_ended()
        monitor.finish()
    if TRAIN_RUN.stopping.is_set():
        return  # stopped as the run ended: Tune has decided, the model is not registered
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


# The sweep this driver process runs. Tune restores the SweepCallback it pickled in the driver that started the sweep;
# a resumed sweep's driver on a remote cluster runs from a working dir of its own (the Jobs API unpacks each job's
# anew), so the restored callback is pointed at this driver's record and sweep dir rather than at the first one's.
_driver_sweep: tuple[SweepRecord, SweepPaths] | None = None


def set_driver_sweep(record: SweepRecord, paths: SweepPaths) -> None:
    """Name the sweep this process drives (before a Tune restore unpickles its callbacks)."""
    global _driver_sweep
    _driver_sweep = (record, paths)


class SweepCallback(tune.Callback):
    """Moves trial states in the sweep record and logs every report to the trial's MLflow run (driver side)."""

    def __init__(
        self,
        record: SweepRecord,
        paths: SweepPaths,
        run_ids: dict[str, str],
        budget: BudgetStopper | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.record = record
        self.paths = paths
        self.run_ids = run_ids
        self.retry_policy = retry_policy or RetryPolicy()
        # The same object is Tune's stopper: charged here on every step, it ends the run when the budget is spent.
        self.budget = budget or BudgetStopper(None, 0.0, BudgetUse())
        self._tracker: Tracker | None = None
        self._charging = False
        self._saved_at = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state; the MLflow client is rebuilt after a restore.
        state = dict(self.__dict__)
        state["_tracker"] = None
        state["_charging"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"retry_policy": RetryPolicy()} | state)
        if _driver_sweep is not None and _driver_sweep[0].sweep_id == self.record.sweep_id:
            self.record, self.paths = _driver_sweep

    def _save(self, progress: SweepProgress) -> None:
        self._saved_at = time.monotonic()
        progress.budget_used = self.budget.used.model_copy()
        save_progress(self.record, self.paths, progress)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._charging:
            # A new driver (or a restored one): what earlier runs spent is in the progress.
            self.budget.resume_from(_load(self.paths))
            self._charging = True
        was_exhausted = self.budget.exhausted
        self.budget.charge(sum(t.status == "RUNNING" for t in trials))
        if self.budget.exhausted and not was_exhausted:
            logger.warning("%s: stopping the running trials; pending ones will not start", self.budget.exhausted)
            self._save(_load(self.paths))
        elif time.monotonic() - self._saved_at > BUDGET_SAVE_S:
            # Between trial events too, so a driver that dies loses at most this much of what was spent.
            self._save(_load(self.paths))

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            r = self.record
            self._tracker = Tracker(r.tracking_uri, r.experiment, _artifact_root(r.tracking_uri), self.retry_policy)
        return self._tracker

    def _flush_metrics(self) -> None:
        """At a trial's end: its buffered metrics into MLflow before its run ends (waits up to the retry bound; past
        it they stay buffered for the next flush, and the error says how many)."""
        try:
            self.tracker.flush_metrics()
        except RuntimeError as exc:
            logger.error("%s", exc)

    def _update(
        self, trial: Any, new: TrialState | None = None, *, error: str | None = None, reason: str | None = None
    ) -> str:
        trial_id = _trial_id(trial)
        progress = _load(self.paths)
        status = progress.trial(trial_id)
        if status.state.is_final:
            # A finished (or early-stopped) trial that Tune's restored state had not yet recorded as such: it stays
            # so (the trainable returns at once, see `trial_trainable`).
            return trial_id
        if new == TrialState.SUCCEEDED and status.state == TrialState.PENDING:
            progress.move(trial_id, TrialState.RUNNING)  # its model was registered before its workers reported
        if new is not None and status.state != new:
            progress.move(trial_id, new, error=error, reason=reason)
        self._save(progress)
        return trial_id

    # A started trial stays PENDING until its workers start (`PlacementNotice`) or report: until then it waits for
    # nodes, not for Tune.
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trial)

    def on_trial_restore(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        trial_id = _trial_id(trial)
        progress = _load(self.paths)
        status = progress.trial(trial_id)
        if WAITING_KEY in result:
            if result[WAITING_KEY]:
                status.waiting = WAITING_FOR_NODES
            else:  # the worker group started
                status.waiting = None
                if metric_names.WORKERS in result:
                    status.metrics[metric_names.WORKERS] = float(result[metric_names.WORKERS])
                if status.state == TrialState.PENDING:
                    progress.move(trial_id, TrialState.RUNNING)
            self._save(progress)
            return
        if status.state == TrialState.PENDING:
            progress.move(trial_id, TrialState.RUNNING)
        if FAILURE_KEY in result:
            # The trial's last word before its error (`trial_trainable`); `on_trial_error` follows and keeps it.
            status.reason = str(result[FAILURE_KEY])
            self._save(progress)
            return
        if result.get(RESTART_KEY):
            logger.warning(
                "trial %s: restarting (a worker failed; Ray Train restarts from the last checkpoint)", trial_id
            )
            progress.move(trial_id, TrialState.RESTARTING)
            status.metrics[metric_names.WORKERS] = 0.0  # the failed group is gone until its replacement starts
            self._save(progress)
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
        self._save(progress)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Tune calls this when the trial function returned, and when its trial scheduler stopped it. Registering the
        # model is the function's last act (`trial_trainable`): without a registered model, the scheduler stopped it.
        run_id = self.run_ids[_trial_id(trial)]
        if _load(self.paths).trial(_trial_id(trial)).state.is_final:
            return  # ended in an earlier run of the driver; a restored Tune ran it again for nothing
        self._flush_metrics()
        finished = self.tracker.version_of_run(self.record.registered_model, run_id) is not None
        state = TrialState.SUCCEEDED if finished else TrialState.STOPPED
        trial_id = self._update(trial, state)
        self.tracker.log_curves(run_id, {trial_id: self.tracker.trial_curves(run_id)}, "curves.png")
        if finished:
            self.tracker.finish(run_id, TrialState.SUCCEEDED.value, succeeded=True)
        else:
            logger.info("trial %s: stopped early by the trial scheduler; its checkpoints stay", trial_id)
            self.tracker.stopped(run_id, TrialState.STOPPED.value, early=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._flush_metrics()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        error_file = getattr(trial, "error_file", None)
        error = error_file and Path(error_file).read_text(encoding="utf-8", errors="replace")[-2000:]
        error = error or "failed (see `resnet-orch logs`)"
        reported = _load(self.paths).trial(_trial_id(trial)).reason
        # Without the trial's own reason (it died before it could say), the traceback's last line.
        last_line = next((line for line in reversed(error.splitlines()) if line.strip()), error)
        trial_id = self._update(trial, TrialState.FAILED, error=error, reason=reported or one_line(last_line))
        self._flush_metrics()
        self.tracker.finish(self.run_ids[trial_id], TrialState.FAILED.value, succeeded=False)


def _load(paths: SweepPaths) -> SweepProgress:
    from orchestrator.sweep.state import load_progress

    return load_progress(paths.progress)


def run_sweep(record: SweepRecord, config: SweepConfig, paths: SweepPaths, *, resume: bool) -> SweepState:
    """Run (or resume) the whole sweep on the connected Ray cluster; returns the sweep's final state.

    Raises `SchedulingError`, before any trial starts, when the cluster can never run it as configured.
    """
    set_driver_sweep(record, paths)
    trials = expand(record.sweep_id, config)
    shape = read_shape()
    decided = plan(config.resources, shape, max_concurrent=config.max_concurrent_trials, trials=len(trials))
    check_storage(record.storage, shape, shared_filesystem=config.shared_filesystem)
    remove_orphan_placement_groups(record.sweep_id)
    policy = config.outages.policy()
    tracker = Tracker(record.tracking_uri, record.experiment, _artifact_root(record.tracking_uri), policy)
    progress = _load(paths)
    parent_run_id = progress.parent_run_id = tracker.parent_run(record.sweep_id, paths.sweep_file)
    budget = BudgetStopper.for_sweep(config, progress.budget_used)
    run_ids = {}
    for trial in trials:
        status = progress.trial(trial.trial_id)
        reopen = not status.state.is_final and budget.exhausted is None
        status.mlflow_run_id = run_ids[trial.trial_id] = tracker.child_run(
            parent_run_id, record.sweep_id, trial, reopen=reopen
        )
    if resume and budget.exhausted:
        # Spent already: start nothing, not even the trials that never ran.
        logger.warning("sweep %s: %s; not resuming", record.sweep_id, budget.exhausted)
        return _finish(record, paths, tracker, progress, config)
    if resume:
        requeued = progress.requeue_unfinished()
        finished = settle_registered(tracker, record.registered_model, progress)
        requeued = [t for t in requeued if t not in finished]
        logger.info("resuming %s: re-queued %s", record.sweep_id, ", ".join(requeued) or "nothing")
        if finished:
            logger.info("already finished (model registered): %s", ", ".join(finished))
    progress.state = SweepState.RUNNING
    save_progress(record, paths, progress)

    trainable = tune.with_resources(stoppable(trial_trainable), {TRIAL_DRIVER_RESOURCE: 1})
    storage = record.storage
    experiment_path = f"{storage.rstrip('/')}/{TUNE_RUN_NAME}"
    if resume and tune.Tuner.can_restore(experiment_path):
        logger.info("restoring the Tune experiment at %s", experiment_path)
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=True
        )
        # Tune restores the SweepCallback it pickled: the same (tag-stable) MLflow run ids; this driver's record and
        # sweep dir (`_driver_sweep`).
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
            if not (resume and progress.trial(t.trial_id).state.is_final)
        ]
        tuner = tune.Tuner(
            trainable,
            param_space={PARAM_KEY: tune.grid_search(values)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=decided.max_concurrent,
                # A trial actor runs trial after trial (`stopping`): a short trial's fixed cost is mostly a new
                # actor's process and imports.
                reuse_actors=True,
                scheduler=build_scheduler(config),
            ),
            run_config=tune.RunConfig(
                name=TUNE_RUN_NAME,
                storage_path=storage,
                callbacks=[SweepCallback(record, paths, run_ids, budget, policy)],
                stop=budget,
                # Restarts happen inside each trial (Ray Train's FailureConfig from `max_failures`); a second
                # retry layer here would multiply them.
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    logger.info("sweep %s %s%d trials; %s", record.sweep_id, ADMITTED_MARK, len(trials), decided.why)
    tuner.fit()
    return _finish(record, paths, tracker, _load(paths), config)


def _finish(
    record: SweepRecord, paths: SweepPaths, tracker: Tracker, progress: SweepProgress, config: SweepConfig
) -> SweepState:
    """After Tune: the budget's verdict on unfinished trials, Figure 4, the champion, the sweep's final state."""
    parent_run_id = progress.parent_run_id
    if parent_run_id is None:
        raise RuntimeError(f"sweep {record.sweep_id}: its progress lost the parent run id written before Tune ran")
    spent = exhausted_by(config.budget, progress.budget_used)
    if spent is not None:
        stop_unfinished(tracker, progress, spent)
    _log_sweep_curves(tracker, progress, parent_run_id)
    progress.champion = tracker.crown_champion(record.registered_model, record.sweep_id)
    if progress.champion is not None:
        logger.info("champion: %s", progress.champion.describe())
    progress.state = final_sweep_state([t.state for t in progress.trials])
    if progress.state == SweepState.BUDGET_EXHAUSTED:
        progress.error = spent
    save_progress(record, paths, progress)
    if progress.state == SweepState.BUDGET_EXHAUSTED:
        tracker.stopped(parent_run_id, progress.state.value, early=False)
    else:
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
