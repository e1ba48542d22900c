"""MLflow: one parent run per sweep, one child run per trial, the registry, and `pull`.

Runs are found again by tags (`resnet_orch.sweep_id`, `resnet_orch.trial_id`) instead of being created blindly,
so a trial restarted by Ray Train, a trial re-queued by `resume` and a resumed driver all write into the same
run (no duplicate runs: ray-project/ray#48664). Only the sweep driver and the trial driver (never the N training
workers) talk to MLflow (ray-project/ray#64179, mlflow#7206).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from orchestrator.sweep.config import TrialConfig
from orchestrator.sweep.state import Champion
from orchestrator.sweep.tracking_outages import MetricBuffer, RetryingClient, own_http_retries
from orchestrator.training.metric_names import CURVE_METRICS, EPOCH, RANK_METRIC
from pipelines.retry import RetryPolicy

logger = logging.getLogger(__name__)

TAG_SWEEP = "resnet_orch.sweep_id"
TAG_TRIAL = "resnet_orch.trial_id"
TAG_KIND = "resnet_orch.kind"
TAG_ATTEMPTS = "resnet_orch.attempts"
TAG_STATE = "resnet_orch.state"
TAG_PARENT = "mlflow.parentRunId"
# On a trial's run that the trial scheduler (`scheduler:`) stopped early: the run is FINISHED, not KILLED.
TAG_STOPPED_EARLY = "stopped_early"
CHAMPION = "champion"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"model": {"depth": 18}}` -> `{"model.depth": "18"}`: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


def filter_literal(value: str) -> str:
    """`value` as a string literal of an MLflow search filter (`name = {literal}`), never as filter syntax.

    MLflow's filter parser (sqlparse) takes a literal in single or double quotes and strips them without unescaping
    anything, so a value is quoted with a quote character it does not contain. One that contains both, or that ends
    in a backslash (which would escape the closing quote), cannot be written as a literal and is refused.
    """
    for quote in ("'", '"'):
        if quote not in value and not value.endswith("\\"):
            return f"{quote}{value}{quote}"
    raise ValueError(f"{value!r} cannot be searched for in MLflow: it holds both quote characters or ends in '\\'")


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a Ray report (Tune adds strings, bools and paths that MLflow must not see)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker:
    """The MLflow side of one sweep. Every call rides out a server that is away for up to `retry_policy`'s bound
    (`outages.retry_s`); metrics are buffered meanwhile (`tracking_outages`)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_root: Path | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        own_http_retries()
        raw = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.retrying = RetryingClient(raw, retry_policy or RetryPolicy(), tracking_uri)
        # Typed as the client it wraps: every method is there, each retried.
        self.client: MlflowClient = self.retrying  # type: ignore[assignment]
        self.metrics = MetricBuffer(self.retrying, self._last_logged_step)
        self._new_runs: set[str] = set()  # runs this tracker created: nothing logged in them before
        existing = self.client.get_experiment_by_name(experiment)
        if existing is not None:
            self.experiment_id = existing.experiment_id
        else:
            # An embedded sqlite store puts artifacts in ./mlruns of the current directory unless told otherwise.
            location = (artifact_root / experiment).as_uri() if artifact_root is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def _find(self, **tags: str) -> str | None:
        query = " and ".join(f"tags.`{k}` = {filter_literal(v)}" for k, v in tags.items())
        runs = sorted(
            self.client.search_runs([self.experiment_id], filter_string=query, max_results=2),
            key=lambda r: r.info.start_time,
        )
        if len(runs) > 1:
            logger.warning("more than one MLflow run matches %s; using the oldest", query)
        return runs[0].info.run_id if runs else None

    def _find_or_create(self, run_name: str, tags: dict[str, str]) -> tuple[str, bool]:
        """(run id, created) of the run with these tags: found, or created. Retried as a whole, so that a create
        whose answer was lost is found on the next try instead of creating a second run."""

        def once() -> tuple[str, bool]:
            run_id = self._find(**{k: v for k, v in tags.items() if k != TAG_PARENT})
            if run_id is not None:
                return run_id, False
            return self.retrying.raw.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id, True

        found: tuple[str, bool] = self.retrying.retried(f"MLflow run {run_name}", once)
        return found

    def parent_run(self, sweep_id: str, sweep_file: Path) -> str:
        run_id, created = self._find_or_create(sweep_id, {TAG_SWEEP: sweep_id, TAG_KIND: "sweep"})
        if created:
            self.client.log_artifact(run_id, str(sweep_file), artifact_path="config")
        else:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id

    def child_run(self, parent_run_id: str, sweep_id: str, trial: TrialConfig, *, reopen: bool = True) -> str:
        """The trial's run, created on first use; an existing one is marked RUNNING again when `reopen` (a resume
        that runs the trial again; a finished or early-stopped trial's run keeps its end)."""
        tags = {TAG_SWEEP: sweep_id, TAG_TRIAL: trial.trial_id, TAG_KIND: "trial", TAG_PARENT: parent_run_id}
        run_id, created = self._find_or_create(trial.trial_id, tags)
        if not created:
            if reopen:
                self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return run_id
        self._new_runs.add(run_id)
        resolved = trial.model_dump(mode="json")
        params = flatten(resolved)
        items = list(params.items())
        # MLflow caps a batch at 100 params.
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start : start + 100]])
        self.client.log_dict(run_id, resolved, "config/trial.json")
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        """Queue one report's metrics for `run_id` and send what MLflow takes now (never waits for an absent
        server: `flush_metrics` does); a step the run already holds is not logged again."""
        stamp = mlflow.utils.time.get_current_time_millis()
        self.metrics.add(run_id, step, numeric_metrics(metrics), stamp)

    def flush_metrics(self) -> None:
        """Write every buffered report, waiting up to the retry bound for the server; `RuntimeError` past it."""
        if not self.metrics.flush():
            raise RuntimeError(
                f"MLflow at {self.tracking_uri} did not answer within the retry bound; {self.metrics.pending} "
                "reports are not logged (raise outages.retry_s, or check the server)"
            )

    def _last_logged_step(self, run_id: str) -> int:
        """The last step `run_id` holds a report of (every report logs the epoch): -1 for a run made here."""
        if run_id in self._new_runs:
            return -1
        return max((m.step for m in self.retrying.raw.get_metric_history(run_id, EPOCH)), default=-1)

    def set_attempts(self, run_id: str, attempts: int) -> None:
        self.client.set_tag(run_id, TAG_ATTEMPTS, str(attempts))

    def finish(self, run_id: str, state: str, succeeded: bool) -> None:
        self.client.set_tag(run_id, TAG_STATE, state)
        status = RunStatus.FINISHED if succeeded else RunStatus.FAILED
        self.client.set_terminated(run_id, status=RunStatus.to_string(status))

    def stopped(self, run_id: str, state: str, *, early: bool) -> None:
        """End a run that Tune stopped: FINISHED with `stopped_early` when its trial scheduler decided (a normal
        outcome), KILLED when the budget ran out (it did not get to finish)."""
        self.client.set_tag(run_id, TAG_STATE, state)
        if early:
            self.client.set_tag(run_id, TAG_STOPPED_EARLY, "true")
        status = RunStatus.FINISHED if early else RunStatus.KILLED
        self.client.set_terminated(run_id, status=RunStatus.to_string(status))

    def was_stopped_early(self, run_id: str) -> bool:
        return self.client.get_run(run_id).data.tags.get(TAG_STOPPED_EARLY) == "true"

    def history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        return metric_history(self.client, run_id, metric)

    def log_curves(
        self,
        run_id: str,
        curves: Mapping[str, Mapping[str, list[tuple[int, float]]]],
        name: str,
        models: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Upload a curves PNG (see `plot_curves`; `models`: trial id -> model config) under `curves/` of `run_id`."""
        from orchestrator.sweep.report import plot_curves

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            plot_curves(curves, path, models)
            self.client.log_artifact(run_id, str(path), artifact_path="curves")

    def trial_curves(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        return run_curves(self.client, run_id)

    # ---- registry ---------------------------------------------------------------------------------------------

    def version_of_run(self, model_name: str, run_id: str) -> str | None:
        query = f"name = {filter_literal(model_name)} and run_id = {filter_literal(run_id)}"
        versions = self.client.search_model_versions(query)
        return str(versions[0].version) if versions else None

    def champion(self, model_name: str) -> Champion | None:
        """The version the `champion` alias points at, with its metric (+inf if it was registered without one)."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(model_name, CHAMPION)
        except MlflowException:
            return None  # no such model or no alias yet
        return Champion(
            model=model_name,
            version=str(version.version),
            val_top1_err=float(version.tags.get(RANK_METRIC, math.inf)),
            sweep_id=version.tags.get(TAG_SWEEP),
        )

    def crown_champion(self, model_name: str, sweep_id: str) -> Champion | None:
        """Give the `champion` alias to this sweep's best registered version (lowest top-1 error; ties go to the
        earliest version) if it is strictly better than the current champion, from whichever sweep registered
        that one; otherwise the champion stays. Returns the champion after the decision (None: there is none)."""
        best: tuple[float, int] | None = None
        for version in self.client.search_model_versions(f"name = {filter_literal(model_name)}"):
            if version.tags.get(TAG_SWEEP) != sweep_id or RANK_METRIC not in version.tags:
                continue
            candidate = (float(version.tags[RANK_METRIC]), int(version.version))
            best = candidate if best is None or candidate < best else best
        current = self.champion(model_name)
        if best is None:
            return current
        err, number = best
        if current is not None and not err < current.val_top1_err:
            logger.info(
                "%s version %s stays the champion (%s=%.4f); this sweep's best, version %d (%.4f), is not better",
                model_name,
                current.version,
                RANK_METRIC,
                current.val_top1_err,
                number,
                err,
            )
            return current.model_copy(update={"challenger_version": str(number), "challenger_val_top1_err": err})
        self.client.set_registered_model_alias(model_name, CHAMPION, str(number))
        logger.info("%s version %d is the champion (%s=%.4f)", model_name, number, RANK_METRIC, err)
        return Champion(model=model_name, version=str(number), val_top1_err=err, sweep_id=sweep_id)


def metric_history(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of `metric` in `run_id`, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def run_curves(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The Figure 4 curves of one trial's run: each of `CURVE_METRICS` against iterations."""
    return {metric: metric_history(client, run_id, metric) for metric in CURVE_METRICS}


def sweep_curves(tracking_uri: str, run_ids: Mapping[str, str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """trial id -> its curves (`run_curves`), read from the MLflow store at `tracking_uri` (`run_ids`: trial -> run)."""
    if not run_ids:
        return {}
    client = MlflowClient(tracking_uri=tracking_uri)
    return {trial_id: run_curves(client, run_id) for trial_id, run_id in run_ids.items()}


def log_trial_model(
    tracker: Tracker,
    run_id: str,
    model: Any,
    *,
    image_size: int,
    registered_model: str,
    version_tags: Mapping[str, str],
) -> str:
    """Log `model` (eval mode) with a signature into `run_id`, register it; returns the version (idempotent)."""
    import torch
    from mlflow.models import infer_signature

    existing = tracker.version_of_run(registered_model, run_id)
    if existing is not None:
        return existing
    model = model.eval().cpu()
    # MLflow's default pt2 format exports with the input example's shape; a batch of 1 would freeze the batch
    # dimension to 1 (mlflow/pytorch/__init__.py, `Dim.AUTO` specializes size-1 dims), so log a batch of 2.
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        output = model(example)
    signature = infer_signature(example.numpy(), output.numpy())
    use_store(tracker.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example.numpy(),
            registered_model_name=registered_model,
            # Skip MLflow's requirement inference (it re-imports the model in a subprocess: slow, and noisy).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    version = str(info.registered_model_version)
    for key, value in version_tags.items():
        tracker.client.set_model_version_tag(registered_model, version, key, value)
    return version


def mark_killed(tracking_uri: str, run_ids: Iterable[str]) -> None:
    """End the runs of a cancelled sweep's unfinished trials (and its parent run) as KILLED."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for run_id in run_ids:
        client.set_tag(run_id, TAG_STATE, "CANCELLED")
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))


def models_uri(model_uri: str) -> str:
    """`name@alias`, `name/3` or a full `models:/...`/`runs:/...` URI -> the URI MLflow reads."""
    return model_uri if model_uri.startswith(("models:/", "runs:/")) else f"models:/{model_uri}"


def use_store(tracking_uri: str) -> None:
    """Point this process's MLflow fluent API (runs and the `models:/` registry) at `tracking_uri`."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def pull_model(tracking_uri: str, model_uri: str) -> Any:
    """`models:/name@alias` (or `name@alias`, `name/3`) -> the module `mlflow.pytorch.load_model` gives."""
    import mlflow.pytorch

    use_store(tracking_uri)
    return mlflow.pytorch.load_model(models_uri(model_uri), map_location="cpu")
