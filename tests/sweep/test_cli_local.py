"""The CLI's local side without a cluster: the sweep folder, status/list/report/cancel, concurrency, paper numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.config import ResourcesConfig, load_sweep
from orchestrator.sweep.layout import (
    SweepPaths,
    create_sweep,
    fetch_progress,
    load_sweep_progress,
    load_sweep_record,
    new_sweep_id,
    save_progress,
    sweep_paths,
)
from orchestrator.sweep.report import markdown, paper_results, rows_from_trials
from orchestrator.sweep.scheduling import SchedulingError, concurrency, trials_that_fit
from orchestrator.sweep.state import SweepState, TrialState, save_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RESNET_ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def test_sweep_folder(home: Path) -> None:
    source = EXAMPLES / "table2_plain_vs_residual.yaml"
    record = create_sweep(source, load_sweep(source))
    paths = sweep_paths(record.sweep_id)
    assert paths.root == home / "sweeps" / record.sweep_id
    assert paths.sweep_file.read_text() == source.read_text()
    assert record.storage == f"s3://resnet-orch/sweeps/{record.sweep_id}"
    assert (record.experiment, record.registered_model) == ("resnet-table2", "resnet-table2")
    progress = load_sweep_progress(record.sweep_id)
    assert [t.state for t in progress.trials] == [TrialState.PENDING] * 4
    assert {t.config["storage"] for t in progress.trials} == {record.storage}


def test_sweep_ids_are_unique_and_readable() -> None:
    first, second = new_sweep_id("quickstart", now=0), new_sweep_id("quickstart", now=0)
    assert first.startswith("quickstart-19700101-000000-")
    assert first != second


def test_embedded_defaults(home: Path) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    assert record.tracking_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    assert record.storage == f"{home / 'storage'}/{record.sweep_id}"


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
    assert "| 000-residual | ResNet-18 (B) | SUCCEEDED | 30.00 | 10.00 | - | - | - |" in text
    assert "| 001-plain | plain-18 | PENDING | - | - | 27.94 | - | Table 2 (10-crop) |" in text
    assert (tmp_path / "r" / "report.png").stat().st_size > 0

    cancelled = runner.invoke(app, ["cancel", record.sweep_id])
    assert cancelled.exit_code == 0, cancelled.output
    status = json.loads(runner.invoke(app, ["status", record.sweep_id, "--json"]).stdout)
    assert status["state"] == "CANCELLED"
    assert [t["state"] for t in status["trials"]] == ["SUCCEEDED", "CANCELLED"]


@pytest.mark.parametrize(
    ("cluster", "resources", "fits"),
    [
        ({"CPU": 2.0}, ResourcesConfig(workers=2, cpus_per_worker=1), 1),
        ({"CPU": 16.0}, ResourcesConfig(workers=2, cpus_per_worker=2), 4),
        ({"CPU": 64.0, "GPU": 8.0}, ResourcesConfig(workers=4, gpus_per_worker=1, cpus_per_worker=8), 2),
        ({"CPU": 64.0}, ResourcesConfig(workers=1, gpus_per_worker=1), 0),
    ],
)
def test_trials_that_fit(cluster: dict[str, float], resources: ResourcesConfig, fits: int) -> None:
    assert trials_that_fit(cluster, resources) == fits


def test_concurrency_honours_max_concurrent_trials_and_refuses_what_never_fits() -> None:
    config = load_sweep(EXAMPLES / "table3_shortcuts.yaml")  # 8 workers x (1 GPU, 8 CPUs), at most 3 at once
    assert concurrency({"CPU": 1024.0, "GPU": 128.0}, config) == 3
    assert concurrency({"CPU": 128.0, "GPU": 16.0}, config) == 2
    with pytest.raises(SchedulingError) as info:
        concurrency({"CPU": 64.0, "GPU": 4.0}, config)
    assert str(info.value) == (
        "one trial needs 8 workers x (8.0 CPU, 1.0 GPU) but the cluster has 64.0 CPUs and 4.0 GPUs; "
        "lower `resources:` or add nodes"
    )


def test_paper_numbers() -> None:
    # He et al. 2015: Table 3 (10-crop) and Table 4 (multi-scale) for ResNet-152, Table 2 for plain-34.
    assert [(r.table, r.top1, r.top5) for r in paper_results(152, True, "B")] == [
        ("Table 3", 21.43, 5.71),
        ("Table 4", 19.38, 4.49),
    ]
    assert [(r.table, r.top1) for r in paper_results(34, False, "B")] == [("Table 2", 28.54), ("Table 3", 28.54)]
    assert paper_results(18, True, "C") == []  # the paper has no ResNet-18 with option C
    rows = rows_from_trials(
        [
            {
                "id": "t",
                "state": "SUCCEEDED",
                "config": {"model": {"depth": 34, "residual": True, "shortcut": "C", "arch": None}},
                "metrics": {"val_top1_err": 0.25, "val_top5_err": 0.08},
            }
        ]
    )
    assert markdown(rows, "x").splitlines()[-2:] == [
        "| t | ResNet-34 (C) | SUCCEEDED | 25.00 | 8.00 | 24.19 | 7.40 | Table 3 (10-crop) |",
        "| t | ResNet-34 (C) | SUCCEEDED | 25.00 | 8.00 | 21.53 | 5.60 | Table 4 (multi-scale) |",
    ]


@pytest.mark.parametrize(
    ("url", "local"),
    [("http://127.0.0.1:8265", True), ("http://localhost:8265", True), ("http://192.0.2.1:8265", False)],
)
def test_local_cluster_detection(url: str, local: bool) -> None:
    from orchestrator.cli.sweep_commands import _is_this_machine

    # A head on this machine shares RESNET_ORCH_HOME with its driver; a remote one (192.0.2.0/24 is TEST-NET) does not.
    assert _is_this_machine(url) is local


def test_an_address_this_home_did_not_start_is_another_cluster(home: Path) -> None:
    from orchestrator.cli.sweep_commands import _started_here

    # A port-forward to a cluster elsewhere answers on 127.0.0.1 too: its driver cannot run this machine's venv
    # on this machine's sweep folder (that sent the job a command line the cluster lacks: INTERRUPTED at once).
    assert _started_here("http://127.0.0.1:8265") is False


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
    assert sweep_paths(record.sweep_id).progress.read_text() == on_cluster.progress.read_text()

    cancelled = runner.invoke(app, ["cancel", record.sweep_id])
    assert cancelled.exit_code == 0, cancelled.output
    stored = fetch_progress(record.storage)
    assert stored is not None
    assert stored.state == SweepState.CANCELLED
    assert [t.state for t in stored.trials] == [TrialState.SUCCEEDED, TrialState.CANCELLED]


def test_a_remote_driver_gets_no_machine_local_aws_profile_or_home() -> None:
    from orchestrator.cli.sweep_commands import driver_env

    environ = {
        "AWS_ENDPOINT_URL": "http://10.0.0.5:8333",
        "AWS_PROFILE": "laptop",
        "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/credentials",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "RESNET_ORCH_HOME": "/home/me/.resnet-orch",
        "RAY_AUTH_MODE": "token",
        "HOME": "/home/me",
    }
    assert driver_env(environ, local=False) == {
        "AWS_ENDPOINT_URL": "http://10.0.0.5:8333",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "RAY_AUTH_MODE": "token",
    }
    assert driver_env(environ, local=True) == {k: v for k, v in environ.items() if k != "HOME"}
