"""The sweep layer on a real Ray Tune run (in this process's own Ray, 2 CPUs, the embedded MLflow store): the Tuner,
the SweepCallback, the trial scheduler and the budget, with tiny trials of 2 CPU workers each.

`test_asha_stops_the_worse_trial_and_resume_leaves_it` runs in the default suite: 2 trials one after the other, a
worker of the first killed mid-trial (Ray Train restarts it from its checkpoint), ASHA stopping the second at its
first epoch end because its validation loss is worse than the first's there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.layout import create_sweep, embedded_tracking_uri, sweep_paths
from orchestrator.sweep.state import SweepState, TrialState, load_progress

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture
def tune_ray(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Ray for this test only, started after `home` is set, so trial actors see its RESNET_ORCH_HOME; with its
    dashboard, whose state API the driver asks for placement groups (RAY_ADDRESS names this Ray among others')."""
    import ray

    from orchestrator.stack.processes import free_port
    from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE

    context = ray.init(
        num_cpus=2,
        resources={TRIAL_DRIVER_RESOURCE: 100},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
    )
    monkeypatch.setenv("RAY_ADDRESS", context.address_info["gcs_address"])
    try:
        yield
    finally:
        ray.shutdown()


def _sweep(tmp_path: Path, shards: str, **overrides: Any) -> Path:
    sweep: dict[str, Any] = {
        "name": "layer",
        "seed": 3,
        "model": {"arch": "test_resnet", "base_width": 8},
        "recipe": {
            "batch_size": 16,
            "epochs": 2,
            "steps_per_epoch": 3,
            "image_size": 32,
            "resize_size": 40,
            "precision": "fp32",
            "schedule": "cosine",
        },
        "data": {"train": shards, "val": shards, "allow_val_equals_train": True, "num_threads": 1},
        "resources": {"workers": 2, "cpus_per_worker": 1},
        "max_concurrent_trials": 1,
        "checkpoint": {"every_steps": 2, "keep": 3},
        **overrides,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    return path


def _run(path: Path, *, resume: bool = False, sweep_id: str | None = None) -> tuple[str, SweepState]:
    from orchestrator.sweep.scheduling import run_sweep
    from orchestrator.sweep.state import load_record

    config = load_sweep(path)
    if sweep_id is None:
        sweep_id = create_sweep(path, config).sweep_id
    paths = sweep_paths(sweep_id)
    return sweep_id, run_sweep(load_record(paths.record), config, paths, resume=resume)


def _run_dir(home: Path, sweep_id: str, trial_id: str) -> str:
    """The trial's Ray Train run folder: `TrialConfig.run_name` under the sweep's storage."""
    return f"{home}/storage/{sweep_id}/{sweep_id}.{trial_id}"


def _checkpoints(run_dir: str) -> list[str]:
    fs = pyarrow.fs.LocalFileSystem()
    infos = fs.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.base_name.startswith("checkpoint-"))


def _live_train_parts() -> tuple[list[str], list[str]]:
    """(placement groups not removed, Ray Train actors alive) on this test's Ray."""
    from ray.util.state import list_actors, list_placement_groups

    groups = [g.placement_group_id for g in list_placement_groups(filters=[("state", "!=", "REMOVED")])]
    actors = [
        a.class_name
        for a in list_actors(filters=[("state", "=", "ALIVE")])
        if a.class_name in ("TrainController", "RayTrainWorker")
    ]
    return groups, actors


def test_asha_stops_the_worse_trial_and_resume_leaves_it(
    home: Path, tune_ray: None, tiny_shards_local: str, tmp_path: Path
) -> None:
    from orchestrator.training.checkpointing import count_attempts, latest_complete_checkpoint

    # lr 50 blows the classifier's weights up in 3 steps: its validation loss at the first epoch end is far above the
    # lr 0.05 trial's (about ln 1000). Trial 000 runs first (one trial at a time) and loses rank 1 after step 5.
    path = _sweep(
        tmp_path,
        tiny_shards_local,
        grid={"lr": [0.05, 50.0]},
        chaos={"kill_rank": 1, "at_step": 5},
        scheduler={"type": "asha", "metric": "val_loss", "mode": "min", "grace_epochs": 1, "reduction_factor": 2},
    )
    sweep_id, state = _run(path)
    progress = load_progress(sweep_paths(sweep_id).progress)
    assert state == SweepState.SUCCEEDED, progress.model_dump_json()
    good, bad = progress.trials
    assert (good.id, bad.id) == ("000-lr0.05", "001-lr50")
    assert (good.state, good.attempts) == (TrialState.SUCCEEDED, 2)  # the killed worker: one restart
    assert (bad.state, bad.attempts) == (TrialState.STOPPED, 1)
    assert good.metrics["epoch"] == 1 and bad.metrics["epoch"] == 0  # stopped at its first epoch end

    client = MlflowClient(tracking_uri=embedded_tracking_uri(), registry_uri=embedded_tracking_uri())
    # ASHA's rule, independently: with reduction factor 2 a trial goes on past rung 1 (1 epoch) only if its loss is
    # not worse than the median of the rung's losses, here the mean of the two.
    first_epoch = {}
    for trial in (good, bad):
        assert trial.mlflow_run_id is not None
        history = client.get_metric_history(trial.mlflow_run_id, "val_loss")
        first_epoch[trial.id] = next(m.value for m in history if math.isfinite(m.value))
    assert first_epoch[bad.id] > (first_epoch[good.id] + first_epoch[bad.id]) / 2
    assert bad.metrics["val_loss"] == pytest.approx(first_epoch[bad.id], rel=1e-9)

    stopped = client.get_run(bad.mlflow_run_id or "")
    assert stopped.info.status == "FINISHED"
    assert stopped.data.tags["stopped_early"] == "true"
    assert stopped.data.tags["resnet_orch.state"] == "STOPPED"
    finished = client.get_run(good.mlflow_run_id or "")
    assert finished.info.status == "FINISHED" and "stopped_early" not in finished.data.tags
    versions = client.search_model_versions("name = 'layer'")
    assert [v.run_id for v in versions] == [good.mlflow_run_id]  # only a finished trial registers a model

    # The stopped trial keeps its checkpoints: step 2, the epoch end at step 3 that ASHA judged, and any its workers
    # wrote before Tune's stop reached them; the newest is complete (a resume of the Train run could load it).
    kept = _checkpoints(_run_dir(home, sweep_id, bad.id))
    assert kept[:2] == ["checkpoint-step000000002-attempt0", "checkpoint-step000000003-attempt0"], kept
    latest = latest_complete_checkpoint(pyarrow.fs.LocalFileSystem(), _run_dir(home, sweep_id, bad.id))
    assert latest is not None and latest.endswith(kept[-1])
    # Torn down: no placement group or Ray Train actor of either trial is left on the cluster.
    assert _live_train_parts() == ([], [])

    # A resume never restarts a trial its scheduler stopped (nor a finished one).
    _, state = _run(path, resume=True, sweep_id=sweep_id)
    assert state == SweepState.SUCCEEDED
    after = load_progress(sweep_paths(sweep_id).progress)
    assert [t.state for t in after.trials] == [TrialState.SUCCEEDED, TrialState.STOPPED]
    fs = pyarrow.fs.LocalFileSystem()
    assert count_attempts(fs, _run_dir(home, sweep_id, bad.id)) == 1
    assert client.get_run(bad.mlflow_run_id or "").info.status == "FINISHED"


@pytest.mark.slow
def test_budget_stops_the_running_trial_keeps_its_checkpoints_and_resume_starts_nothing(
    home: Path, tune_ray: None, tiny_shards_local: str, tmp_path: Path
) -> None:
    from orchestrator.training.checkpointing import count_attempts, latest_complete_checkpoint

    # Two long trials, one at a time, and 3 minutes of wall budget (a Train run starts in well under that even on a
    # busy machine): the first is stopped mid-run, after its first checkpoints; the second never starts.
    recipe = {"batch_size": 16, "epochs": 500, "steps_per_epoch": 3, "image_size": 32, "resize_size": 40}
    path = _sweep(
        tmp_path,
        tiny_shards_local,
        grid={"seed": [1, 2]},
        recipe={**recipe, "precision": "fp32"},
        budget={"max_wall_hours": 0.05},
    )
    sweep_id, state = _run(path)
    progress = load_progress(sweep_paths(sweep_id).progress)
    assert state == SweepState.BUDGET_EXHAUSTED, progress.model_dump_json()
    assert progress.error is not None and progress.error.startswith("budget exhausted: ")
    assert progress.error.endswith("of budget.max_wall_hours=0.05 spent")
    assert progress.budget_used.wall_s >= 0.05 * 3600
    ran, waiting = progress.trials
    assert (ran.state, waiting.state) == (TrialState.BUDGET_EXHAUSTED, TrialState.BUDGET_EXHAUSTED)
    assert ran.attempts == 1 and 0 < ran.metrics["step"] < 3 * 500
    assert waiting.attempts == 0 and waiting.error is not None and waiting.error.startswith("not started: budget")

    fs = pyarrow.fs.LocalFileSystem()
    kept = _checkpoints(_run_dir(home, sweep_id, ran.id))
    assert kept, "the stopped trial wrote no checkpoint before the budget ran out"
    latest = latest_complete_checkpoint(fs, _run_dir(home, sweep_id, ran.id))
    assert latest is not None and latest.endswith(kept[-1])
    assert _checkpoints(_run_dir(home, sweep_id, waiting.id)) == []
    assert _live_train_parts() == ([], [])

    client = MlflowClient(tracking_uri=embedded_tracking_uri())
    run = client.get_run(ran.mlflow_run_id or "")
    assert (run.info.status, run.data.tags["resnet_orch.state"]) == ("KILLED", "BUDGET_EXHAUSTED")

    # The budget is spent: a resume starts no trial, neither the stopped one nor the one that never ran.
    _, state = _run(path, resume=True, sweep_id=sweep_id)
    assert state == SweepState.BUDGET_EXHAUSTED
    after = load_progress(sweep_paths(sweep_id).progress)
    assert [t.state for t in after.trials] == [TrialState.BUDGET_EXHAUSTED, TrialState.BUDGET_EXHAUSTED]
    assert count_attempts(fs, _run_dir(home, sweep_id, ran.id)) == 1
    assert count_attempts(fs, _run_dir(home, sweep_id, waiting.id)) == 0
    assert _checkpoints(_run_dir(home, sweep_id, ran.id)) == kept
