"""A sweep that provably learns, through the real path: images the test draws (ten texture classes, train and val
apart), sharded to S3 by `resnet-orch data shard`, a Tune sweep (the driver's `run_sweep`, in this process) of Ray
Train trials fed by DALI on CPU, every epoch validated, MLflow recording and registering. And a trial that cannot
run says why in the sweep's progress, as `status` shows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.stack.ray_head import in_process_ray
from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.layout import create_sweep, embedded_tracking_uri, load_sweep_progress, sweep_paths
from orchestrator.sweep.scheduling import run_sweep
from orchestrator.sweep.state import SweepProgress, SweepState, TrialState
from tests.learnable_images import CLASSES, VAL_PER_CLASS
from tests.s3_environment import s3_environment

pytestmark = pytest.mark.timeout(1200)

CHANCE_ERR = 1 - 1 / len(CLASSES)  # 0.9
VAL_SAMPLES = len(CLASSES) * VAL_PER_CLASS

# The CIFAR ResNet-20 of Section 4.2 at half width on 32 px crops: its 3x3 stem keeps the textures' periods (the
# ImageNet stem's stride 4 blurs them at this size). 500 images over 2 ranks of 16: 16 steps per epoch, 8 epochs.
LEARNING_SWEEP: dict[str, Any] = {
    "name": "learns",
    "model": {"depth": 20, "base_width": 8},
    "recipe": {
        "lr": 0.4,
        "batch_size": 32,
        "epochs": 8,
        "schedule": "cosine",
        "image_size": 32,
        "resize_size": 40,
        "precision": "fp32",
    },
    "resources": {"workers": 2, "cpus_per_worker": 1},
    "checkpoint": {"every_steps": 1000, "keep": 1},
    "max_failures": 0,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedFS) -> Iterator[Path]:
    """This module's RESNET_ORCH_HOME (embedded MLflow store and trial storage), and a Ray that can run a sweep's
    Tune driver in this process (started after the S3 server: its workers inherit the AWS_* variables)."""
    home = tmp_path_factory.mktemp("learning") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_ORCH_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with s3_environment(s3_server), in_process_ray(num_cpus=3, trial_drivers=True):
            yield home


def sweep(home: Path, spec: dict[str, Any]) -> tuple[str, SweepProgress]:
    """Write `spec` as a sweep file, create the sweep and run its driver here to the end: (sweep id, progress)."""
    path = home.parent / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    config = load_sweep(path)
    record = create_sweep(path, config)
    run_sweep(record, config, sweep_paths(record.sweep_id), resume=False)
    return record.sweep_id, load_sweep_progress(record.sweep_id)


def history(client: MlflowClient, run_id: str, metric: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


def test_a_sweep_learns_the_textures_far_below_chance(home: Path, learnable_shards_s3: tuple[str, str]) -> None:
    train, val = learnable_shards_s3
    sweep_id, progress = sweep(home, {**LEARNING_SWEEP, "data": {"train": train, "val": val, "num_threads": 1}})
    assert progress.state == SweepState.SUCCEEDED, [t.reason for t in progress.trials]
    [trial] = progress.trials
    assert trial.state == TrialState.SUCCEEDED
    client = MlflowClient(tracking_uri=embedded_tracking_uri())
    assert trial.mlflow_run_id is not None
    errors = history(client, trial.mlflow_run_id, "val_top1_err")
    # Every epoch validated on all 200 val images, none of which it trained on.
    assert history(client, trial.mlflow_run_id, "val_samples") == [VAL_SAMPLES] * 8
    assert len(errors) == 8
    # Chance is 0.9; the error falls from the first epochs to the last and ends far below chance.
    assert errors[-1] < 0.5, errors
    assert errors[-1] < min(errors[:2]) - 0.2, errors
    assert trial.metrics["val_top1_err"] == pytest.approx(errors[-1])
    assert progress.champion is not None
    assert progress.champion.val_top1_err == pytest.approx(errors[-1])
    assert progress.champion.sweep_id == sweep_id


def test_a_trial_that_cannot_run_says_why_in_one_line(home: Path, learnable_shards_s3: tuple[str, str]) -> None:
    # Its val location was never sharded (`submit` would refuse it; the driver trusts what it is given).
    train, val = learnable_shards_s3
    missing = val.replace("/learnable/val", "/learnable/never-sharded")
    spec = {**LEARNING_SWEEP, "name": "cannot-run", "data": {"train": train, "val": missing, "num_threads": 1}}
    spec["resources"] = {"workers": 1, "cpus_per_worker": 1}
    _, progress = sweep(home, spec)
    assert progress.state == SweepState.FAILED
    [trial] = progress.trials
    assert trial.state == TrialState.FAILED
    assert trial.reason is not None and "\n" not in trial.reason
    assert trial.reason.startswith("trial 000 failed after 1 attempt(s): config error before the first training step")
    assert f"{missing}/manifest.json not found" in trial.reason
    # The whole story stays for `logs`: Tune's error file, where the same message ends a traceback.
    assert trial.error is not None and trial.error.startswith("Failure # 1")
    assert "ShardingError" in trial.error


@pytest.mark.slow
def test_residual_learns_where_the_plain_net_of_the_same_depth_does_not(
    home: Path, learnable_shards_s3: tuple[str, str]
) -> None:
    # He et al. 2015, Section 4.2 / Figure 6: the deep plain net's error stays high where the residual net's falls.
    train, val = learnable_shards_s3
    spec = {
        **LEARNING_SWEEP,
        "name": "residual-vs-plain",
        "grid": {"residual": [True, False]},
        "model": {"depth": 56, "base_width": 8},
        "data": {"train": train, "val": val, "num_threads": 1},
    }
    _, progress = sweep(home, spec)
    assert progress.state == SweepState.SUCCEEDED
    client = MlflowClient(tracking_uri=embedded_tracking_uri())
    final = {}
    for trial in progress.trials:
        assert trial.mlflow_run_id is not None
        final[trial.id] = history(client, trial.mlflow_run_id, "val_top1_err")[-1]
    residual, plain = final["000-residual"], final["001-plain"]
    assert residual < 0.5, final
    assert residual < plain - 0.15, final
