"""A queue of 200 tiny trials (one step each) through the local stack: `submit --wait` on this home's Ray head and
embedded MLflow store, every trial SUCCEEDED with one attempt, one MLflow run and one registered version each, and
the progress journal no larger than its changes. `status`'s speed on it is measured by `bench/sweep_queue.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.sweep.layout import embedded_tracking_uri, sweep_paths
from tests.sweep.test_end_to_end import _status, _submitted_id, resnet_orch

TRIALS = 200
BATCH = 8


@pytest.mark.slow
# A guard against a hang, not a speed target: on 2 cores the queue takes about 2 hours (about 60 CPU-seconds a trial,
# docs/reliability.md), on 8 free cores about half an hour.
@pytest.mark.timeout(14400)
def test_a_sweep_of_200_one_step_trials_completes(orch_home: Path, tiny_shards_local: str, tmp_path: Path) -> None:
    sweep = {
        "name": "queue",
        "grid": {"seed": list(range(TRIALS))},
        "model": {"arch": "test_resnet", "base_width": 4, "num_classes": 8},
        "recipe": {"batch_size": BATCH, "epochs": 1, "steps_per_epoch": 1, "image_size": 32, "resize_size": 36},
        "data": {"train": tiny_shards_local, "backend": "torch", "num_threads": 1},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every_steps": 1, "keep": 1},
        "max_failures": 1,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    submitted = resnet_orch("submit", str(path), "--wait", timeout=14000)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    sweep_id = _submitted_id(submitted.stdout)

    status = _status(sweep_id)
    assert status["state"] == "SUCCEEDED"
    trials = status["trials"]
    assert len(trials) == TRIALS
    assert [t["state"] for t in trials] == ["SUCCEEDED"] * TRIALS
    assert [t["attempts"] for t in trials] == [1] * TRIALS
    assert [t["metrics"]["step"] for t in trials] == [1.0] * TRIALS

    client = MlflowClient(tracking_uri=embedded_tracking_uri(), registry_uri=embedded_tracking_uri())
    experiment = client.get_experiment_by_name("queue")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("resnet_orch.kind") == "trial"]
    assert sorted(r.data.tags["resnet_orch.trial_id"] for r in children) == sorted(t["id"] for t in trials)
    assert {r.info.run_id for r in children} == {t["mlflow_run_id"] for t in trials}
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1]
    versions = client.search_model_versions("name = 'queue'", max_results=1000)
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in children)  # one version per trial

    # The progress on disk: a snapshot and its journal, which together read as what `status` showed.
    paths = sweep_paths(sweep_id)
    snapshot = json.loads(paths.progress.read_text())
    assert len(snapshot["trials"]) == TRIALS
    journals = list(paths.root.glob("progress.json.*.changes.jsonl"))
    assert len(journals) <= 1
