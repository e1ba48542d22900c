"""An elastic trial (`resources.workers: {min: 1, max: 2}`) on real Ray Train (gloo, CPU): the run at two workers,
the run pinned at one (a 1-CPU Ray), and a run whose checkpoint written at two workers resumes at one, all train on
the same samples with the same gradients: their per-step losses agree within 1e-3 (accumulation changes only the
order of the sums) and every epoch trains exactly its 500 samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.stack.ray_head import in_process_ray
from orchestrator.sweep.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    RecipeConfig,
    ResourcesConfig,
    TrialConfig,
    WorkerRange,
)
from orchestrator.training.checkpointing import TrainState, read_checkpoint
from orchestrator.training.trial import TrialResult, open_checkpoint, run_trial
from tests.learnable_images import write_split

pytestmark = pytest.mark.timeout(900)

SAMPLES = 500  # 10 classes x 50 learnable textures
# 13 steps of 40 an epoch (2 micro-batches of 20); the last holds 20 real samples, all in its first micro-batch.
BATCH, EPOCHS, STEPS = 40, 2, 13


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = write_split(tmp_path_factory.mktemp("elastic-images") / "train", SAMPLES // 10, seed=1)
    dest = tmp_path_factory.mktemp("elastic-shards") / "train"
    done = CliRunner().invoke(app, ["data", "shard", str(root), str(dest), "--shard-size", "200KB", "--json"])
    assert done.exit_code == 0, done.output
    return str(dest)


def trial(name: str, train: str, storage: Path, **changes: Any) -> TrialConfig:
    base: dict[str, Any] = {
        "trial_id": name,
        "sweep_name": "elastic-tests",
        "seed": 3,
        "model": ModelConfig(arch="test_resnet", base_width=8, num_classes=10),
        # The step schedule divides the LR after epoch 1: the restored schedule must hold at any world size.
        "recipe": RecipeConfig(
            batch_size=BATCH, epochs=EPOCHS, image_size=32, resize_size=40, lr=0.2, milestones=(1,), precision="fp32"
        ),
        "data": DataConfig(train=train, backend="torch", num_threads=1),
        "resources": ResourcesConfig(workers=WorkerRange(min=1, max=2, resize_check_s=600), cpus_per_worker=1),
        "checkpoint": CheckpointConfig(every_steps=5, keep=20),
        "storage": str(storage),
        "max_failures": 0,
    }
    return TrialConfig(**(base | changes))


def final_state(result: TrialResult) -> TrainState:
    assert result.ok, result.error
    assert result.checkpoint_path is not None
    with open_checkpoint(result.checkpoint_path).as_directory() as directory:
        return read_checkpoint(Path(directory))[1]


def epoch_samples(result: TrialResult) -> dict[int, float]:
    return {m["epoch"]: m["epoch_samples"] for _, m in result.checkpoints if m["is_epoch_end"]}


@pytest.fixture(scope="module")
def pinned(train_shards: str, tmp_path_factory: pytest.TempPathFactory) -> TrialResult:
    """The range's run on a Ray with one CPU: one worker accumulates both micro-batches of every step."""
    with in_process_ray(num_cpus=1):
        return run_trial(trial("pinned", train_shards, tmp_path_factory.mktemp("storage")))


@pytest.mark.slow  # two trials on two Ray starts: minutes on 2 cores
def test_two_workers_train_as_the_run_pinned_at_one(pinned: TrialResult, train_shards: str, tmp_path: Path) -> None:
    with in_process_ray(num_cpus=2):
        wide = run_trial(trial("wide", train_shards, tmp_path))
    assert (pinned.metrics["workers"], wide.metrics["workers"]) == (1, 2)
    one, two = final_state(pinned), final_state(wide)
    assert len(one.step_losses) == len(two.step_losses) == EPOCHS * STEPS
    assert max(abs(a - b) for a, b in zip(one.step_losses, two.step_losses, strict=True)) <= 1e-3
    assert one.step_lrs == two.step_lrs and len(set(one.step_lrs)) == 2  # the milestone divided the LR once
    assert one.epoch_sizes == two.epoch_sizes == [SAMPLES] * EPOCHS
    assert epoch_samples(pinned) == epoch_samples(wide) == dict.fromkeys(range(EPOCHS), SAMPLES)
