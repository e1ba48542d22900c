"""The sweep commands without a cluster: status/list/report/cancel of a local sweep and of a remote driver's (read
from the sweep's storage), and `validate` on every shipped example's depth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.layout import (
    SweepPaths,
    create_sweep,
    expand,
    fetch_progress,
    load_sweep_progress,
    load_sweep_record,
    save_progress,
    sweep_paths,
)
from orchestrator.sweep.report import VAL_IS_TRAIN_NOTE
from orchestrator.sweep.state import Champion, SweepState, TrialState, load_progress, save_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_status_list_report_cancel_without_a_cluster(home: Path, tmp_path: Path) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    runner = CliRunner()
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["sweep"] == record.sweep_id
    assert status["state"] == "PENDING"
    assert [(t["id"], t["state"], t["attempts"]) for t in status["trials"]] == [
        ("000-residual", "PENDING", 0),
        ("001-plain", "PENDING", 0),
    ]
    table = runner.invoke(app, ["status", record.sweep_id], env={"COLUMNS": "200"}).stdout
    assert "000-residual │ resnet18 │ yes" in table and "001-plain    │ resnet18 │ no" in table
    listed = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert record.sweep_id in listed.stdout and "0/2" in listed.stdout

    progress = load_sweep_progress(record.sweep_id)
    progress.move("000-residual", TrialState.RUNNING)
    progress.move("000-residual", TrialState.SUCCEEDED)
    progress.trial("000-residual").metrics = {"val_top1_err": 0.3, "val_top5_err": 0.1}
    progress.state = SweepState.RUNNING
    save_model(sweep_paths(record.sweep_id).progress, progress)
    # The driver is gone (it never had a job here) while the record says RUNNING: the sweep is resumable.
    assert json.loads(runner.invoke(app, ["status", record.sweep_id[:-2], "--json"]).stdout)["state"] == "INTERRUPTED"

    reported = runner.invoke(app, ["report", record.sweep_id, "-o", str(tmp_path / "r")])
    assert reported.exit_code == 0, reported.output
    text = (tmp_path / "r" / "report.md").read_text()
    # The quick start validates on its training images (allow_val_equals_train): every row says so.
    assert (
        "| 000-residual † | ResNet-18 (B) | SUCCEEDED | unknown | center crop | 30.00 | 10.00 | - | - | - | - |" in text
    )
    assert (
        "| 001-plain † | plain-18 | PENDING | unknown | - | - | - | (27.94) not compared: no validation yet | - "
        "| 10-crop | Table 2 (ILSVRC-2012 val) |"
    ) in text
    assert text.endswith(f"\n\n{VAL_IS_TRAIN_NOTE}\n")
    assert (tmp_path / "r" / "report.png").stat().st_size > 0
    assert not (tmp_path / "r" / "curves.png").exists()  # no trial has an MLflow run yet

    cancelled = runner.invoke(app, ["cancel", record.sweep_id])
    assert cancelled.exit_code == 0, cancelled.output
    status = json.loads(runner.invoke(app, ["status", record.sweep_id, "--json"]).stdout)
    assert status["state"] == "CANCELLED"
    assert [t["state"] for t in status["trials"]] == ["SUCCEEDED", "CANCELLED"]


def test_status_and_report_say_why_a_trial_failed_and_name_the_champion(home: Path, tmp_path: Path) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    progress = load_sweep_progress(record.sweep_id)
    reason = "trial 001-plain failed after 1 attempt(s): config error before the first training step; ..."
    for trial_id in ("000-residual", "001-plain"):
        progress.move(trial_id, TrialState.RUNNING)
    progress.move("000-residual", TrialState.SUCCEEDED)
    progress.move("001-plain", TrialState.FAILED, error="Traceback (most recent call last):\n...", reason=reason)
    progress.champion = Champion(model="quickstart", version="2", val_top1_err=0.875, sweep_id="quickstart-old")
    progress.state = SweepState.FAILED
    save_model(sweep_paths(record.sweep_id).progress, progress)
    runner = CliRunner()

    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert [t["reason"] for t in status["trials"]] == [None, reason]
    assert status["champion"] == {
        "model": "quickstart",
        "version": "2",
        "val_top1_err": 0.875,
        "sweep_id": "quickstart-old",
        "challenger_version": None,
        "challenger_val_top1_err": None,
    }
    table = runner.invoke(app, ["status"], env={"COLUMNS": "80"}).stdout
    assert f"\n001-plain: {reason}\n" in table
    # Each trial's state whole on an 80-column terminal.
    assert table.count("SUCCEEDED") == 1 and table.count("FAILED") == 2  # the title says the sweep FAILED
    assert "champion: quickstart version 2 (val top-1 error 87.50%, sweep quickstart-old)" in table
    reported = runner.invoke(app, ["report", record.sweep_id, "-o", str(tmp_path / "r")])
    assert reported.exit_code == 0, reported.output
    assert (
        (tmp_path / "r" / "report.md")
        .read_text()
        .endswith("\nChampion: quickstart version 2 (val top-1 error 87.50%, sweep quickstart-old).\n")
    )


def test_report_of_a_sweep_with_final_protocols_and_mlflow_curves(home: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep.tracking import Tracker

    source = tmp_path / "sweep.yaml"
    quickstart = (EXAMPLES / "quickstart.yaml").read_text()
    source.write_text(quickstart.replace("recipe:\n", "recipe:\n  eval: {protocols: [ten_crop]}\n", 1))
    record = create_sweep(source, load_sweep(source))
    trials = expand(record.sweep_id, load_sweep(source))
    tracker = Tracker(record.tracking_uri, record.experiment, home / "artifacts")
    parent = tracker.parent_run(record.sweep_id, source)
    progress = load_sweep_progress(record.sweep_id)
    for index, trial in enumerate(progress.trials):
        trial.mlflow_run_id = tracker.child_run(parent, record.sweep_id, trials[index])
        for step, err in ((4, 0.9 - 0.1 * index), (8, 0.8 - 0.1 * index)):
            tracker.log_metrics(trial.mlflow_run_id, {"train_top1_err": err, "val_top1_err": err + 0.05}, step)
        progress.move(trial.id, TrialState.RUNNING)
        progress.move(trial.id, TrialState.SUCCEEDED)
        trial.metrics = {
            "val_top1_err": 0.5,
            "val_top5_err": 0.2,
            "val_classes": 1000.0,
            "val_samples": 1000.0,
            "final_ten_crop_top1_err": 0.45,
            "final_ten_crop_top5_err": 0.15,
        }
    save_model(sweep_paths(record.sweep_id).progress, progress)

    reported = CliRunner().invoke(app, ["report", record.sweep_id, "-o", str(tmp_path / "r")])
    assert reported.exit_code == 0, reported.output
    assert (
        "| 001-plain † | plain-18 | SUCCEEDED | 1000 classes, 1,000 images | 10-crop | 45.00 | 15.00 | (27.94) not "
        "comparable: different data | - | 10-crop | Table 2 (ILSVRC-2012 val) |"
    ) in reported.stdout
    assert (
        f"wrote {tmp_path / 'r' / 'report.md'}, {tmp_path / 'r' / 'report.png'}, {tmp_path / 'r' / 'curves.png'}"
        in (" ".join(reported.stdout.split()))
    )
    assert (tmp_path / "r" / "curves.png").stat().st_size > 0
    history = MlflowClient(record.tracking_uri).get_metric_history(
        progress.trials[1].mlflow_run_id or "", "val_top1_err"
    )
    assert sorted((h.step, round(h.value, 6)) for h in history) == [(4, 0.85), (8, 0.75)]


def test_a_remote_drivers_progress_is_read_from_the_sweep_storage(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "sweep.yaml"
    source.write_text((EXAMPLES / "quickstart.yaml").read_text() + f"storage: {tmp_path / 'bucket'}\n")
    record = create_sweep(source, load_sweep(source)).model_copy(update={"local": False})
    save_model(sweep_paths(record.sweep_id).record, record)
    # The driver, in the job's working dir on the cluster: a copy of the sweep folder.
    on_cluster = SweepPaths(tmp_path / "cluster" / record.sweep_id)
    progress = load_sweep_progress(record.sweep_id)
    progress.state = SweepState.RUNNING
    progress.move("000-residual", TrialState.RUNNING)
    progress.trial("000-residual").metrics = {"epoch": 1.0, "val_top1_err": 0.5}
    progress.move("000-residual", TrialState.SUCCEEDED)
    progress.move("001-plain", TrialState.RUNNING)
    save_progress(record, on_cluster, progress)

    runner = CliRunner()
    status = json.loads(runner.invoke(app, ["status", record.sweep_id, "--json"]).stdout)
    assert [(t["id"], t["state"], t["metrics"]) for t in status["trials"]] == [
        ("000-residual", "SUCCEEDED", {"epoch": 1.0, "val_top1_err": 0.5}),
        ("001-plain", "RUNNING", {}),
    ]
    # The client's copy follows the driver's, for `report` and for a `resume` that uploads the folder again.
    assert load_sweep_record(record.sweep_id).local is False
    # (The driver's file is a snapshot plus the journal of changes since; the client keeps what they add up to.)
    assert load_progress(sweep_paths(record.sweep_id).progress) == load_progress(on_cluster.progress)

    cancelled = runner.invoke(app, ["cancel", record.sweep_id])
    assert cancelled.exit_code == 0, cancelled.output
    stored = fetch_progress(record.storage)
    assert stored is not None
    assert stored.state == SweepState.CANCELLED
    assert [t.state for t in stored.trials] == [TrialState.SUCCEEDED, TrialState.CANCELLED]


def test_validate_prints_trials_and_macs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_ORCH_HOME", str(tmp_path / "home"))
    # No S3 credentials here: the example's ImageNet bucket is out of reach, so its data is not checked (a warning).
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    example = EXAMPLES / "deep_bottleneck.yaml"
    result = CliRunner().invoke(app, ["validate", str(example), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: {example}: data.{split} not checked: s3://imagenet/shards/{split}/manifest.json: no AWS "
        "credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        for split in ("train", "val")
    ]
    payload = json.loads(result.stdout)
    assert [t["id"] for t in payload["trials"]] == ["000-depth50", "001-depth101", "002-depth152"]
    # He et al. 2015, Table 1: 3.8, 7.6 and 11.3 x 10^9 FLOPs (multiply-adds) at 224 px.
    gmacs = [round(t["macs_per_image"] / 1e9, 1) for t in payload["trials"]]
    assert gmacs == [3.9, 7.6, 11.3]
    assert payload["trials"][2]["config"]["model"]["depth"] == 152
    assert not (tmp_path / "home").exists()  # validate submits nothing


def test_status_of_a_sweep_whose_budget_ran_out(home: Path) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    progress = load_sweep_progress(record.sweep_id)
    progress.move("000-residual", TrialState.RUNNING)
    progress.move("000-residual", TrialState.STOPPED)
    progress.move("001-plain", TrialState.BUDGET_EXHAUSTED, error="not started: budget exhausted")
    progress.state = SweepState.BUDGET_EXHAUSTED
    progress.error = "budget exhausted: 2.001 of budget.max_wall_hours=2.0 spent"
    save_model(sweep_paths(record.sweep_id).progress, progress)
    runner = CliRunner()
    shown = runner.invoke(app, ["status", record.sweep_id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert f"{record.sweep_id}: BUDGET_EXHAUSTED" in shown.stdout
    assert "STOPPED" in shown.stdout and "sweep error" not in shown.output
    assert (
        "budget exhausted: 2.001 of budget.max_wall_hours=2.0 spent; unfinished trials stopped or never started"
        in shown.stdout
    )
    listed = runner.invoke(app, ["list"], env={"COLUMNS": "200"}).stdout
    assert "BUDGET_EXHAUSTED" in listed and "1/2" in listed  # the early-stopped trial counts as done


def test_status_shows_live_workers_and_preemptions(home: Path) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    configured = load_sweep(EXAMPLES / "quickstart.yaml").resources.workers
    progress = load_sweep_progress(record.sweep_id)
    progress.move("000-residual", TrialState.RUNNING)
    # One worker of the group left (its replacement not started yet), after two preemptions.
    progress.trial("000-residual").metrics = {"workers": 1.0, "preemptions": 2.0, "epoch": 3.0}
    save_model(sweep_paths(record.sweep_id).progress, progress)
    lines = CliRunner().invoke(app, ["status", record.sweep_id], env={"COLUMNS": "200"}).stdout.splitlines()
    header = next(line for line in lines if "preemptions" in line)
    names = [cell.strip() for cell in header.strip().strip("┃").split("┃")]
    rows = {
        cells[0]: dict(zip(names, cells, strict=True))
        for line in lines
        if "│" in line and (cells := [cell.strip() for cell in line.strip().strip("│").split("│")])[0]
    }
    assert (rows["000-residual"]["workers"], rows["000-residual"]["preemptions"]) == (f"1/{configured}", "2")
    assert (rows["001-plain"]["workers"], rows["001-plain"]["preemptions"]) == ("-", "-")
