"""MLflow through a real outage: the `mlflow server` process stopped by its pid for seconds, then started again on the
same port and database. Reports logged meanwhile are buffered without holding up the caller and written afterwards
in order; each step once; one run per trial; other calls wait for the server within the bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.sweep.config import parse_sweep
from orchestrator.sweep.tracking import TAG_ATTEMPTS, TAG_TRIAL, Tracker
from pipelines.retry import RetryPolicy
from tests.sweep.conftest import MlflowServer

# Each test starts `mlflow server` twice (about 10 s on a quiet machine, over 90 s on a loaded one).
pytestmark = pytest.mark.slow

SWEEP = {"name": "outage", "model": {"arch": "test_resnet", "num_classes": 10}, "data": {"train": "/shards"}}


def _report(step: int) -> dict[str, float]:
    """What one report logs; the values are a function of the step, so the history can be checked point by point."""
    return {"epoch": float(step // 4), "train_loss": 1.0 / step, "lr": 0.1 * step, "not_a_number": float("nan")}


def test_metrics_logged_while_mlflow_is_down_arrive_in_order_once(
    restartable_mlflow: MlflowServer, tmp_path: Path
) -> None:
    server = restartable_mlflow
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: outage\n")
    tracker = Tracker(server.url, "outages", retry_policy=RetryPolicy(max_wait_s=400, max_delay_s=2))
    trial = parse_sweep(SWEEP).expand("/s")[0]
    parent = tracker.parent_run("sweep-1", sweep_file)
    run_id = tracker.child_run(parent, "sweep-1", trial)
    sent = []
    for step in (1, 2, 3):
        tracker.log_metrics(run_id, _report(step), step)
        sent.append(step)
    server.interrupt()
    for step in (4, 5, 6, 7):
        started = time.monotonic()
        tracker.log_metrics(run_id, _report(step), step)
        assert time.monotonic() - started < 5  # the Tune loop is not held up by an absent server
        sent.append(step)
    tracker.log_metrics(run_id, _report(5), 5)  # a restarted attempt re-sending a report: not logged twice
    assert tracker.metrics.pending == 4 and tracker.metrics.dropped == 1
    # A call that must reach the server waits for it (within the bound) instead of failing.
    threading.Timer(3, server.start).start()
    started = time.monotonic()
    tracker.set_attempts(run_id, 2)
    assert time.monotonic() - started >= 3
    for step in (8, 9):
        tracker.log_metrics(run_id, _report(step), step)
        sent.append(step)
    tracker.flush_metrics()
    assert tracker.metrics.pending == 0 and tracker.metrics.sent == len(sent) == 9

    client = MlflowClient(server.url)
    runs = client.search_runs([tracker.experiment_id], filter_string=f"tags.`{TAG_TRIAL}` = '{trial.trial_id}'")
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].data.tags[TAG_ATTEMPTS] == "2"
    for key in ("epoch", "train_loss", "lr"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == sent, key  # every step once, none lost across the outage
        assert [m.value for m in history] == [_report(step)[key] for step in sent], key
        stamps = [m.timestamp for m in history]
        assert stamps == sorted(stamps), key  # written in the order reported
    assert client.get_metric_history(run_id, "not_a_number") == []

    # A driver that starts again finds the run and what it holds: an old step is not logged again, a new one is.
    again = Tracker(server.url, "outages", retry_policy=RetryPolicy(max_wait_s=30))
    assert again.child_run(parent, "sweep-1", trial) == run_id
    again.log_metrics(run_id, _report(9), 9)
    again.log_metrics(run_id, _report(10), 10)
    assert again.metrics.dropped == 1 and again.metrics.sent == 1
    assert [m.step for m in client.get_metric_history(run_id, "lr")] == [*sent, 10]


def test_metrics_past_the_bound_stay_buffered_and_the_error_counts_them(
    restartable_mlflow: MlflowServer, tmp_path: Path
) -> None:
    server = restartable_mlflow
    tracker = Tracker(server.url, "outages-bound", retry_policy=RetryPolicy(max_wait_s=2))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: outage\n")
    run_id = tracker.child_run(tracker.parent_run("s", sweep_file), "s", parse_sweep(SWEEP).expand("/s")[0])
    server.interrupt()
    tracker.log_metrics(run_id, _report(1), 1)
    tracker.log_metrics(run_id, _report(2), 2)
    try:
        tracker.flush_metrics()
    except RuntimeError as exc:
        assert "did not answer within the retry bound; 2 reports are not logged" in str(exc)
    else:
        raise AssertionError("flush_metrics returned with the server down")
    server.start()
    tracker.flush_metrics()
    assert [m.step for m in MlflowClient(server.url).get_metric_history(run_id, "lr")] == [1, 2]
