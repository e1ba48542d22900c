"""A fixed `workers: 2` trial trains exactly as it did before elastic ranges existed: its per-step losses, epoch
sizes and validation errors equal those recorded on main before the feature (tests/training/data/
fixed_size_before_elastic.json), for both loaders. Elastic trials take another loader and step; this pins that the
fixed path kept its numbers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

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
)
from orchestrator.training.checkpointing import read_checkpoint
from orchestrator.training.trial import open_checkpoint, run_trial
from tests.learnable_images import write_dataset

BEFORE = Path(__file__).parent / "data" / "fixed_size_before_elastic.json"


@pytest.mark.slow  # two trials on a fresh Ray: a few minutes on 2 cores
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_fixed_size_trial_keeps_the_numbers_it_had_before_elastic_ranges(backend: str, tmp_path: Path) -> None:
    write_dataset(tmp_path / "images", 50, 20)
    shards = tmp_path / "shards"
    done = CliRunner().invoke(
        app, ["data", "shard", str(tmp_path / "images"), str(shards), "--shard-size", "200KB", "--json"]
    )
    assert done.exit_code == 0, done.output
    cfg = TrialConfig(
        trial_id=f"fixed-{backend}",
        sweep_name="baseline",
        seed=8,
        model=ModelConfig(arch="test_resnet", base_width=8, num_classes=10),
        recipe=RecipeConfig(
            batch_size=64, epochs=2, image_size=32, resize_size=40, lr=0.4, schedule="plateau", plateau_patience=0
        ),
        data=DataConfig(train=str(shards / "train"), val=str(shards / "val"), num_threads=1, backend=backend),
        resources=ResourcesConfig(workers=2, cpus_per_worker=1),
        checkpoint=CheckpointConfig(every_steps=3, keep=20),
        storage=tempfile.mkdtemp(prefix="fixed-", dir=tmp_path),
        max_failures=0,
    )
    with in_process_ray(num_cpus=2):
        result = run_trial(cfg)
    assert result.ok, result.error
    assert result.checkpoint_path is not None
    with open_checkpoint(result.checkpoint_path).as_directory() as directory:
        _, state = read_checkpoint(Path(directory))
    before = json.loads(BEFORE.read_text(encoding="utf-8"))[backend]
    assert state.step_losses == pytest.approx(before["losses"], abs=1e-4)
    assert state.epoch_sizes == before["sizes"]
    assert [r["val_top1_err"] for r in state.epoch_reports] == pytest.approx(before["val"], abs=1e-4)
