"""One trial on real Ray Train (2 CPU workers, gloo) with data and checkpoints on a real S3 server (SeaweedFS).

The reference run and the drills share one seed: DDP over gloo on CPU with a fixed thread count computes the same
losses bit for bit, so a restart that neither replays nor skips a sample reproduces the reference's per-step losses.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.stack.ray_head import in_process_ray
from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.sweep.config import (
    ChaosConfig,
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    RecipeConfig,
    ResourcesConfig,
    TrialConfig,
)
from orchestrator.training.checkpointing import read_checkpoint
from orchestrator.training.trial import TrialResult, open_checkpoint, run_trial

pytestmark = pytest.mark.timeout(1800)

# 1,000 samples over 2 ranks with 32 per rank: 16 batches per epoch (the last one padded), 2 epochs.
WORKERS = 2
GLOBAL_BATCH = 64
STEPS_PER_EPOCH = 16
CHECKPOINT_EVERY = 5


@pytest.fixture(scope="module")
def ray_cluster(s3_server: SeaweedFS) -> Iterator[None]:
    # Started after the S3 server: Ray's workers inherit the AWS_* variables that point at it.
    with in_process_ray(num_cpus=4):
        yield


def trial(name: str, shards: str, storage: str, **changes: Any) -> TrialConfig:
    base: dict[str, Any] = {
        "trial_id": name,
        "sweep_name": "train-tests",
        "seed": 7,
        "model": ModelConfig(arch="test_resnet", base_width=8),
        "recipe": RecipeConfig(batch_size=GLOBAL_BATCH, epochs=2, image_size=32, resize_size=40, lr=0.4),
        "data": DataConfig(train=shards, num_threads=1),
        "resources": ResourcesConfig(workers=WORKERS, cpus_per_worker=1),
        "checkpoint": CheckpointConfig(every_steps=CHECKPOINT_EVERY, keep=2),
        "storage": storage,
        "max_failures": 2,
    }
    return TrialConfig(**(base | changes))


def final_state_of(result: TrialResult) -> tuple[list[float], list[int]]:
    """(per-step losses, samples per epoch) recorded in the trial's last checkpoint on S3."""
    assert result.checkpoint_path is not None, result.error
    with open_checkpoint(result.checkpoint_path).as_directory() as directory:
        _, state = read_checkpoint(Path(directory))
    return state.step_losses, state.epoch_sizes


@pytest.fixture(scope="module")
def storage(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/train-tests/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def reference(ray_cluster: None, sample_shards_s3: str, storage: str) -> tuple[TrialResult, list[float], list[int]]:
    result = run_trial(trial("reference", sample_shards_s3, storage))
    assert result.ok, result.error
    return (result, *final_state_of(result))


def test_uninterrupted_run_trains_every_sample_once(
    reference: tuple[TrialResult, list[float], list[int]], storage: str
) -> None:
    result, losses, epoch_sizes = reference
    assert result.attempts == 1
    assert result.metrics["step"] == 2 * STEPS_PER_EPOCH
    assert len(losses) == 2 * STEPS_PER_EPOCH
    assert epoch_sizes == [result.metrics["samples_per_epoch"]] * 2
    for key in ("train_loss", "train_top1_err", "train_top5_err", "images_per_s", "lr", "data_wait_frac"):
        assert result.metrics[key] >= 0, key
    assert result.storage_path == f"{storage}/reference"
    assert result.checkpoint_path == f"{storage}/reference/checkpoint-step{2 * STEPS_PER_EPOCH:09d}-attempt0"


def test_kill_rank1_mid_epoch_resumes_exactly(
    reference: tuple[TrialResult, list[float], list[int]], sample_shards_s3: str, storage: str
) -> None:
    _, ref_losses, ref_sizes = reference
    # Step 23 is in the middle of epoch 1, 3 steps after the checkpoint of step 20.
    cfg = trial("kill-rank1", sample_shards_s3, storage, chaos=ChaosConfig(kill_rank=1, at_step=23))
    result = run_trial(cfg)
    assert result.ok, result.error
    assert result.attempts == 2
    assert result.metrics["attempt"] == 1
    # Resumed from the last checkpoint before the kill, even though Ray Train may not have registered it yet.
    assert result.metrics["resumed_from_step"] == 20
    losses, sizes = final_state_of(result)
    assert losses == pytest.approx(ref_losses, abs=1e-4)
    assert sizes == ref_sizes


def test_kill_after_an_epoch_end_resumes_exactly_from_it(
    reference: tuple[TrialResult, list[float], list[int]], sample_shards_s3: str, storage: str
) -> None:
    # Step 18: two steps after epoch 0's end (step 16), whose checkpoint holds the DALI pipeline's state there (the
    # pipeline runs on into epoch 1 rather than being rebuilt): epoch 1 must continue exactly as the reference's.
    _, ref_losses, ref_sizes = reference
    cfg = trial("kill-after-epoch", sample_shards_s3, storage, chaos=ChaosConfig(kill_rank=1, at_step=18))
    result = run_trial(cfg)
    assert result.ok, result.error
    assert result.metrics["resumed_from_step"] == STEPS_PER_EPOCH
    losses, sizes = final_state_of(result)
    assert losses == pytest.approx(ref_losses, abs=1e-4)
    assert sizes == ref_sizes


@pytest.mark.slow
def test_kill_during_checkpoint_write_uses_the_previous_one(
    reference: tuple[TrialResult, list[float], list[int]], sample_shards_s3: str, storage: str
) -> None:
    _, ref_losses, ref_sizes = reference
    cfg = trial(
        "kill-in-write", sample_shards_s3, storage, chaos=ChaosConfig(kill_rank=0, at_step=10, during="checkpoint")
    )
    result = run_trial(cfg)
    assert result.ok, result.error
    assert result.attempts == 2
    assert result.metrics["resumed_from_step"] == 5
    losses, sizes = final_state_of(result)
    assert losses == pytest.approx(ref_losses, abs=1e-4)
    assert sizes == ref_sizes


def independent_val_errors(checkpoint_uri: str, shards: str, image_size: int, resize_size: int) -> dict[str, float]:
    """Top-1/top-5 error, mean loss and sample count of a checkpoint's weights on the val shards, computed here on
    one process (no ranks, no padding, no train-loop code) for comparison with what the trial reported."""
    import torch

    from models import get_model
    from orchestrator.training.checkpointing import read_model_state
    from pipelines.loader import LoaderSpec
    from pipelines.loader_factory import make_loader

    model = get_model("test_resnet", base_width=8, num_classes=1000).eval()
    with open_checkpoint(checkpoint_uri).as_directory() as directory:
        model.load_state_dict(read_model_state(Path(directory)))
    spec = LoaderSpec(
        uri=shards, split="val", batch_size=50, image_size=image_size, resize_size=resize_size, num_threads=1
    )
    loader = make_loader(spec, rank=0, world_size=1, device=torch.device("cpu"))
    loader.set_epoch(0)
    seen, top1, top5, loss = 0, 0, 0, 0.0
    with torch.no_grad():
        for batch in loader:
            keep = batch.valid
            logits, labels = model(batch.images[keep]), batch.labels[keep]
            seen += len(labels)
            top1 += int((logits.argmax(dim=1) == labels).sum())
            top5 += int((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    return {
        "val_samples": seen,
        "val_top1_err": 1 - top1 / seen,
        "val_top5_err": 1 - top5 / seen,
        "val_loss": loss / seen,
    }


def test_every_epoch_is_validated_on_the_whole_val_set(ray_cluster: None, sample_shards_s3: str, storage: str) -> None:
    # Three epochs with a val set: each epoch's reported validation numbers must be those of the weights saved at
    # that epoch's end, over all 1,000 val samples (a loader left at the end of its first pass read nothing after).
    epochs, steps = 3, 4
    cfg = trial(
        "val-every-epoch",
        sample_shards_s3,
        storage,
        data=DataConfig(train=sample_shards_s3, val=sample_shards_s3, num_threads=1),
        recipe=RecipeConfig(
            batch_size=GLOBAL_BATCH, epochs=epochs, image_size=32, resize_size=40, lr=0.4, steps_per_epoch=steps
        ),
        checkpoint=CheckpointConfig(every_steps=10_000, keep=epochs),
    )
    result = run_trial(cfg)
    assert result.ok, result.error
    reports = sorted((metrics["step"], uri, metrics) for uri, metrics in result.checkpoints)
    assert [step for step, _, _ in reports] == [steps, 2 * steps, 3 * steps]
    for epoch, (_, uri, reported) in enumerate(reports):
        assert reported["epoch"] == epoch
        # 4 steps x 2 ranks x 32 samples per rank: the capped epoch's exact size.
        assert reported["epoch_samples"] == steps * GLOBAL_BATCH
        expected = independent_val_errors(uri, sample_shards_s3, image_size=32, resize_size=40)
        assert expected["val_samples"] == 1000
        assert reported["val_samples"] == expected["val_samples"]
        assert reported["val_top1_err"] == pytest.approx(expected["val_top1_err"], abs=1e-9)
        assert reported["val_top5_err"] == pytest.approx(expected["val_top5_err"], abs=1e-9)
        assert reported["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-4)


def test_config_error_fails_once_with_its_reason(ray_cluster: None, sample_shards_s3: str, storage: str) -> None:
    cfg = trial("bad-model", sample_shards_s3, storage, model=ModelConfig(arch="resnet19"), max_failures=3)
    result = run_trial(cfg)
    assert not result.ok
    assert result.attempts == 1
    assert result.error is not None
    assert "config error before the first training step" in result.error
    assert "resnet19" in result.error
    assert result.checkpoint_path is None


@pytest.mark.slow
def test_loss_falls_and_top1_rises_far_above_chance(ray_cluster: None, sample_shards_s3: str, storage: str) -> None:
    # ResNet-18 at width 16 on 48 px crops memorises the 1,000-image sample: ~2-3 minutes on 2 busy cores.
    epochs = 25
    cfg = trial(
        "learns",
        sample_shards_s3,
        storage,
        model=ModelConfig(depth=18, base_width=16),
        recipe=RecipeConfig(
            batch_size=GLOBAL_BATCH, epochs=epochs, image_size=48, resize_size=56, lr=0.8, schedule="cosine"
        ),
        checkpoint=CheckpointConfig(every_steps=10_000, keep=1),
        max_failures=0,
    )
    result = run_trial(cfg)
    assert result.ok, result.error
    losses, _ = final_state_of(result)
    assert len(losses) == epochs * STEPS_PER_EPOCH
    first, last = losses[:STEPS_PER_EPOCH], losses[-STEPS_PER_EPOCH:]
    assert sum(last) / len(last) < sum(first) / len(first) - 1.0
    # Chance is 1/1000 top-1 (0.999 error); 3% top-1 on the augmented training batches is 30 times that.
    assert result.metrics["epoch_train_top1_err"] < 0.97
