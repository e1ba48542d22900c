"""One trial = one Ray Train run: `run_trial(cfg)` builds the `TorchTrainer`, runs it, and says how it went.

Ray Train restarts a failed worker group from the latest checkpoint up to `FailureConfig(max_failures)` times and
treats every worker error as retryable; a preempted node's group restarts within `max_preemption_failures` instead
(`training/preemption.py`). `FailFastCallback` runs our `RestartPolicy` inside Ray Train's controller
on each failure and, for one a restart cannot cure (a config or code error before the first step), raises: an
exception in a controller callback is a non-retryable controller error, so the run ends after one attempt with
our reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs
import ray.train
from ray.train import CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import RayTrainCallback
from ray.train.v2.api.config import FailureConfig  # `ray.train`'s under Train v2; the stub names v1's
from ray.train.v2.api.exceptions import ControllerError, TrainingFailedError, WorkerGroupError

from orchestrator.sweep.capacity import worker_bundle
from orchestrator.sweep.config import ResourcesConfig, TrialConfig, WorkerRange
from orchestrator.training.checkpointing import count_attempts, latest_complete_checkpoint
from orchestrator.training.controller_callbacks import (
    FailFastCallback,
    Reporter,
    ReporterCallback,
    TrialFailedFast,
    failure_from_errors,
)
from orchestrator.training.restart_policy import RestartPolicy
from orchestrator.training.train_loop import train_func
from pipelines.retry import DEFAULT_MAX_WAIT_S, RetryPolicy
from pipelines.retrying_fs import retrying_s3
from pipelines.storage import S3Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    metrics: dict[str, Any]  # rank 0's last report (see train_loop._report for the keys); {} if none
    checkpoint_path: str | None  # URI of the latest checkpoint (`s3://...` or a local path); see `open_checkpoint`
    attempts: int  # attempts started, the first included
    error: str | None = None  # why the trial failed; None when it finished
    storage_path: str = ""  # URI of the trial's directory on its storage
    # The checkpoints Ray Train kept (`checkpoint.keep`), oldest first: (URI, the metrics reported with it).
    checkpoints: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def storage_location(storage: str, retry_policy: RetryPolicy | None = None) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Train's `RunConfig` from a local path or `s3://bucket/prefix`.

    For S3 the endpoint and keys come from the standard AWS environment variables (`S3Settings`); `AWS_ENDPOINT_URL`
    points at a non-AWS server such as SeaweedFS (path-style addressing, plain HTTP when the URL says so). With
    `retry_policy` every call of the filesystem (Ray Train's controller's included) rides out a server that is away
    for up to its bound (`pipelines.retrying_fs`).
    """
    if not storage.startswith("s3://"):
        if "://" in storage:
            raise ValueError(f"storage: {storage!r} is neither a path nor an s3:// URI; use one of those")
        return os.path.abspath(os.path.expanduser(storage)), None
    settings = S3Settings.from_env()
    filesystem: pyarrow.fs.FileSystem = (
        retrying_s3(settings, retry_policy) if retry_policy is not None else settings.arrow_filesystem()
    )
    return storage.removeprefix("s3://").rstrip("/"), filesystem


def storage_policy(cfg: TrialConfig) -> RetryPolicy:
    """How long Ray Train's own storage calls wait for S3: `outages.retry_s`, and at least the default bound. Its
    controller's writes (the snapshot of its checkpoints) cannot be skipped as a checkpoint upload can (an error there
    ends the run), so a short `retry_s`, which makes uploads give up early, does not make the controller give up."""
    return RetryPolicy(max_wait_s=max(cfg.outages.retry_s, DEFAULT_MAX_WAIT_S))


def scaling_config(resources: ResourcesConfig, per_worker: dict[str, float]) -> ScalingConfig:
    """Ray Train's `ScalingConfig`: a fixed worker count, or an elastic range (Ray's `ElasticScalingPolicy` starts
    the group with what fits of `(min, max)`, restarts it larger when room appears, checked every `resize_check_s`,
    and smaller after a worker is lost; each restart resumes from the newest checkpoint)."""
    workers = resources.workers
    if isinstance(workers, WorkerRange):
        return ScalingConfig(
            num_workers=(workers.min, workers.max),  # type: ignore[arg-type]  # v2 takes a range; the stub says v1
            use_gpu=resources.use_gpu,
            resources_per_worker=per_worker,
            elastic_resize_monitor_interval_s=workers.resize_check_s,  # type: ignore[call-arg]
        )
    return ScalingConfig(num_workers=workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker)


def build_trainer(
    cfg: TrialConfig,
    *,
    reporter: Reporter | None = None,
    callbacks: Sequence[RayTrainCallback] = (),
) -> TorchTrainer:
    """The `TorchTrainer` of one trial (not started)."""
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1") == "0":
        raise RuntimeError(
            "RAY_TRAIN_V2_ENABLED=0: resnet-orch needs Ray Train v2 (its callbacks carry the restart policy); unset it"
        )
    storage_path, storage_filesystem = storage_location(cfg.storage, storage_policy(cfg))
    resources = cfg.resources
    user_callbacks: list[RayTrainCallback] = [FailFastCallback(RestartPolicy(cfg.max_failures)), *callbacks]
    if reporter is not None:
        user_callbacks.append(ReporterCallback(reporter))
    if _in_tune_session():
        from orchestrator.sweep.trial_notices import tune_queue

        # What Ray's `TuneReportCallback` does (rank 0's metrics and checkpoint path into the trial's queue to
        # Tune), without making the controller import Tune to unpickle it.
        user_callbacks.append(ReporterCallback(tune_queue().put))
    per_worker = worker_bundle(resources)
    return TorchTrainer(
        train_func,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=scaling_config(resources, per_worker),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures, max_preemption_failures=cfg.max_preemptions),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            callbacks=list(user_callbacks),  # type: ignore[arg-type]  # v2 accepts UserCallback; the stub says v1
        ),
    )


def run_trial(
    cfg: TrialConfig,
    *,
    reporter: Reporter | None = None,
    callbacks: Sequence[RayTrainCallback] = (),
) -> TrialResult:
    """Train one trial on the connected Ray cluster to its end; failures come back in `TrialResult.error`.

    `reporter` is called with rank 0's metrics at every report; it runs on the Ray Train controller actor, so it
    must pickle. Inside a Ray Tune function trainable the metrics also go to Tune (the trial's queue to Tune).
    Re-running a trial with the same name and storage resumes it from its latest checkpoint.
    """
    name = cfg.run_name
    trainer = build_trainer(cfg, reporter=reporter, callbacks=callbacks)
    storage_path, storage_filesystem = storage_location(cfg.storage, storage_policy(cfg))
    fs = storage_filesystem or pyarrow.fs.LocalFileSystem()
    trial_path = f"{storage_path}/{name}"
    metrics: dict[str, Any] = {}
    checkpoint_path: str | None = None
    checkpoints: tuple[tuple[str, dict[str, Any]], ...] = ()
    error: str | None = None
    try:
        result = trainer.fit()
        metrics = dict(result.metrics or {})
        checkpoint_path = _uri(cfg.storage, result.checkpoint.path) if result.checkpoint is not None else None
        checkpoints = tuple((_uri(cfg.storage, c.path), dict(m)) for c, m in result.best_checkpoints or [])
    except TrainingFailedError as exc:
        error = failure_reason(exc)
        logger.error("trial %s failed: %s", name, error)
        latest = latest_complete_checkpoint(fs, trial_path)
        checkpoint_path = _uri(cfg.storage, latest) if latest is not None else None
    return TrialResult(
        trial_id=cfg.trial_id,
        metrics=metrics,
        checkpoint_path=checkpoint_path,
        attempts=count_attempts(fs, trial_path),
        error=error,
        storage_path=_uri(cfg.storage, trial_path),
        checkpoints=checkpoints,
    )


def open_checkpoint(uri: str) -> ray.train.Checkpoint:
    """The `ray.train.Checkpoint` at a `TrialResult.checkpoint_path` (S3 endpoint from the AWS environment)."""
    path, filesystem = storage_location(uri)
    return ray.train.Checkpoint(path, filesystem=filesystem)


def _uri(storage: str, fs_path: str) -> str:
    return f"s3://{fs_path}" if storage.startswith("s3://") else fs_path


def failure_reason(exc: TrainingFailedError) -> str:
    """The human reason of a failed run: our policy's verdict, or Ray's worker errors."""
    if isinstance(exc, ControllerError):
        cause: BaseException | None = exc.controller_failure
        while cause is not None and not isinstance(cause, TrialFailedFast):
            cause = cause.__cause__ or (cause.controller_failure if isinstance(cause, ControllerError) else None)
        return str(cause) if cause is not None else f"controller error: {exc.controller_failure}"
    if isinstance(exc, WorkerGroupError):
        policy_view = failure_from_errors(exc.worker_failures, failures_so_far=0)
        return policy_view.reason
    return str(exc)


def _in_tune_session() -> bool:
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session as in_session

    return bool(in_session())
