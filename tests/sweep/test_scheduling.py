"""The sweep driver's trial states as Tune and the Ray Train controller report them, without a cluster: a started
trial whose workers wait for their placement group shows `PENDING (waiting for nodes)` in `status`, and RUNNING once
they start. (What a cluster can grow to, and how many trials run at once: test_capacity.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.layout import create_sweep, load_sweep_progress, sweep_paths
from orchestrator.sweep.scheduling import PARAM_KEY, SweepCallback
from orchestrator.sweep.state import TrialState
from orchestrator.sweep.trial_notices import RESTART_KEY, WAITING_KEY

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _rows(table: str) -> dict[str, list[str]]:
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    return {row[0]: row for row in rows}


def test_a_started_trial_waits_for_nodes_then_runs(home: Path) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    callback = SweepCallback(record, sweep_paths(record.sweep_id), run_ids={})
    tune_trial = SimpleNamespace(config={PARAM_KEY: {"trial_id": "000-residual"}})
    runner = CliRunner()

    def state_column() -> str:
        table = runner.invoke(app, ["status", record.sweep_id], env={"COLUMNS": "200"}).stdout
        return _rows(table)["000-residual"][4]

    callback.on_trial_start(0, [], tune_trial)  # Tune started its driver; its workers have not asked for nodes yet
    assert state_column() == "PENDING"
    callback.on_trial_result(0, [], tune_trial, {WAITING_KEY: 1, "training_iteration": 1})
    assert state_column() == "PENDING (waiting for nodes)"
    status = json.loads(runner.invoke(app, ["status", record.sweep_id, "--json"]).stdout)
    assert [(t["state"], t["waiting"]) for t in status["trials"]] == [
        ("PENDING", "waiting for nodes"),
        ("PENDING", None),
    ]
    callback.on_trial_result(0, [], tune_trial, {WAITING_KEY: 0, "training_iteration": 2})
    assert state_column() == "RUNNING"
    progress = load_sweep_progress(record.sweep_id)
    assert progress.trial("000-residual").state == TrialState.RUNNING
    assert progress.trial("000-residual").attempts == 0  # a notice is not a report of the training loop


def test_status_follows_the_live_worker_count_through_a_restart(home: Path) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    callback = SweepCallback(record, sweep_paths(record.sweep_id), run_ids={})
    tune_trial = SimpleNamespace(config={PARAM_KEY: {"trial_id": "000-residual"}})

    def workers() -> str | None:
        """The trial's `workers` cell; None while `status` has no such column."""
        table = CliRunner().invoke(app, ["status", record.sweep_id], env={"COLUMNS": "200"}).stdout
        header = next(line for line in table.splitlines() if "attempt" in line)
        names = [cell.strip() for cell in header.split("┃")[1:-1]]
        row = _rows(table)["000-residual"]
        return row[names.index("workers")] if "workers" in names else None

    callback.on_trial_start(0, [], tune_trial)
    assert workers() is None  # no trial has started workers: the column is left out
    # The controller's notice that the group of 2 started (`PlacementNotice`), then a worker's failure.
    callback.on_trial_result(0, [], tune_trial, {WAITING_KEY: 0, "workers": 2, "training_iteration": 1})
    assert workers() == "2/2"
    callback.on_trial_result(0, [], tune_trial, {RESTART_KEY: 1, "training_iteration": 2})
    assert workers() == "0/2"
    assert load_sweep_progress(record.sweep_id).trial("000-residual").state == TrialState.RESTARTING
    callback.on_trial_result(0, [], tune_trial, {WAITING_KEY: 0, "workers": 2, "training_iteration": 3})
    assert workers() == "2/2"


def test_a_restored_callback_writes_into_the_resuming_drivers_sweep_dir(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle
    import shutil

    from orchestrator.sweep import scheduling
    from orchestrator.sweep.layout import SweepPaths
    from orchestrator.sweep.state import load_progress

    monkeypatch.setattr(scheduling, "_driver_sweep", None)
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    first = sweep_paths(record.sweep_id)
    pickled = pickle.dumps(SweepCallback(record, first, run_ids={}))  # Tune's experiment state, first driver
    # The resumed driver runs from another working dir (the Jobs API unpacks each job's upload anew).
    second = SweepPaths(tmp_path / "resumed-working-dir")
    shutil.copytree(first.root, second.root)
    scheduling.set_driver_sweep(record, second)
    restored = pickle.loads(pickled)
    tune_trial = SimpleNamespace(config={PARAM_KEY: {"trial_id": "000-residual"}})
    restored.on_trial_result(0, [], tune_trial, {WAITING_KEY: 0, "training_iteration": 1})

    assert load_progress(second.progress).trial("000-residual").state == TrialState.RUNNING
    assert load_progress(first.progress).trial("000-residual").state == TrialState.PENDING


def test_sweep_callback_hooks_are_tunes() -> None:
    # A misspelt hook (`on_step` for `on_step_end`) is never called and fails silently: the budget would never run out.
    from ray import tune

    from orchestrator.sweep.scheduling import SweepCallback

    hooks = [name for name in vars(SweepCallback) if name.startswith("on_")]
    assert "on_step_end" in hooks
    assert [name for name in hooks if not hasattr(tune.Callback, name)] == []
