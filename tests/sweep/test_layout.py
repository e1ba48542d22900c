"""The sweep's folder under RESNET_ORCH_HOME: ids, the files `submit` writes, the embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep.config import ConfigError, load_sweep
from orchestrator.sweep.layout import create_sweep, load_sweep_progress, new_sweep_id, sweep_paths
from orchestrator.sweep.state import TrialState

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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


def test_a_tracking_uri_with_a_password_is_never_recorded(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It would be stored in record.json and printed by `submit`; the credentials belong in their own variables.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:hunter2@mlflow.example")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI carries a password; set it without one"):
        create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    assert not (home / "sweeps").exists()
