"""The paper's protocols through real Ray Train trials on CPU (2 workers, gloo): the final 10-crop and multi-scale
evaluation on the ImageNet sample, and a two-epoch CIFAR-10 run of the Section 4.2 recipe on the archive format."""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models import get_model
from orchestrator.stack.ray_head import in_process_ray
from orchestrator.sweep.config import (
    CheckpointConfig,
    DataConfig,
    ErrorWarmupConfig,
    EvalConfig,
    ModelConfig,
    RecipeConfig,
    ResourcesConfig,
    TrialConfig,
)
from orchestrator.training.checkpointing import read_checkpoint, read_model_state
from orchestrator.training.trial import TrialResult, open_checkpoint, run_trial
from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.presets import IGNORE_INDEX
from pipelines.shard_jobs import shard_jobs
from pipelines.sharding import shard_dataset

pytestmark = pytest.mark.timeout(900)
CPU = torch.device("cpu")
SCALES = (32, 48)
# The sample's first classes (one real ImageNet JPEG each): every view of every image is recomputed one image at a
# time here, which the whole sample would make minutes long on two busy cores.
# 125 images: 62 and 63 per rank, so the final passes end on padded batches.
SUBSET_CLASSES = 125


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    with in_process_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def sample_subset(sample_images_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Shards of the sample's images of classes 0..SUBSET_CLASSES-1, in 3 shards."""
    folder = tmp_path_factory.mktemp("sample-subset")
    with open(sample_images_dir / "labels.tsv", newline="") as f:
        rows = [r for r in csv.DictReader(f, dialect="excel-tab") if int(r["class_index"]) < SUBSET_CLASSES]
    with open(folder / "labels.tsv", "w", newline="") as f:
        writer = csv.writer(f, dialect="excel-tab")
        writer.writerow(("file", "wnid", "class_index"))
        for row in rows:
            shutil.copyfile(sample_images_dir / row["file"], folder / row["file"])  # sharding refuses symlinks out
            writer.writerow((row["file"], row["wnid"], row["class_index"]))
    size = sum((sample_images_dir / r["file"]).stat().st_size for r in rows)
    dest = tmp_path_factory.mktemp("sample-subset-shards") / "shards"
    shard_dataset(folder, str(dest), shard_bytes=size // 3 + 1)
    return str(dest)


def _trial(name: str, tmp_path: Path, **fields: Any) -> TrialConfig:
    base: dict[str, Any] = {
        "trial_id": name,
        "sweep_name": "paper-recipes",
        "seed": 3,
        "resources": ResourcesConfig(workers=2, cpus_per_worker=1),
        "checkpoint": CheckpointConfig(every_steps=10_000, keep=3),
        "storage": str(tmp_path / "storage"),
        "max_failures": 0,
    }
    return TrialConfig(**(base | fields))


def _model(result: TrialResult, cfg: TrialConfig) -> torch.nn.Module:
    assert result.checkpoint_path is not None, result.error
    model = get_model(cfg.model.registry_name, **cfg.model.model_kwargs()).eval()
    with open_checkpoint(result.checkpoint_path).as_directory() as directory:
        model.load_state_dict(read_model_state(Path(directory)))
    return model


def _reported(result: TrialResult) -> list[dict[str, Any]]:
    return [metrics for _, metrics in sorted(result.checkpoints, key=lambda c: c[1]["step"])]


def _protocol_errors(model: torch.nn.Module, shards: str, protocol: str) -> dict[str, float]:
    """The protocol's numbers computed here on one process: each view of each image through the network alone, the
    mean of their softmax scores; also how many images have a top-1 or top-5 boundary too close to call."""
    spec = LoaderSpec(
        uri=shards,
        split="val",
        batch_size=24,
        image_size=32,
        resize_size=40,
        protocol=protocol,  # type: ignore[arg-type]
        scales=SCALES if protocol == "multi_scale" else (),
        num_threads=2,
    )
    loader = make_loader(spec, 0, 1, CPU)
    seen, top1, top5, loss, ties = 0, 0, 0, 0.0, 0
    with torch.inference_mode():
        for batch in loader:
            for i in range(len(batch.labels)):
                label = int(batch.labels[i])
                if label == IGNORE_INDEX:
                    continue  # the padding of the last batch
                # One forward per view size of this image: its 10 crops together, or a scale with its mirror.
                if protocol == "multi_scale":
                    groups = [torch.stack([batch.views[v][i], batch.views[v + 1][i]]) for v in range(0, 4, 2)]
                else:
                    groups = [batch.images[i]]
                scores = torch.softmax(torch.cat([model(g).float() for g in groups]), dim=1).mean(dim=0)
                ranked = scores.sort(descending=True)
                rank = int((ranked.indices == label).nonzero())
                gaps = ranked.values[:6].diff().abs()
                ties += int(bool(gaps[0] < 1e-6) or bool(gaps[4] < 1e-6))
                seen += 1
                top1 += rank == 0
                top5 += rank < 5
                loss -= math.log(float(scores[label]))
    return {
        "samples": seen,
        "top1_err": 1 - top1 / seen,
        "top5_err": 1 - top5 / seen,
        "loss": loss / seen,
        "ties": ties,
    }


def test_final_ten_crop_and_multi_scale_are_the_mean_of_view_scores(
    ray_cluster: None, sample_subset: str, tmp_path: Path
) -> None:
    epochs, steps = 2, 2
    cfg = _trial(
        "final-protocols",
        tmp_path,
        model=ModelConfig(arch="test_resnet", base_width=8, num_classes=SUBSET_CLASSES),
        recipe=RecipeConfig(
            batch_size=32,
            epochs=epochs,
            steps_per_epoch=steps,
            image_size=32,
            resize_size=40,
            lr=0.4,
            eval=EvalConfig(protocols=("ten_crop", "multi_scale"), scales=SCALES),
        ),
        data=DataConfig(train=sample_subset, val=sample_subset, num_threads=1),
    )
    result = run_trial(cfg)
    assert result.ok, result.error
    first, last = _reported(result)
    assert not any(key.startswith("final_") for key in first)  # the final evaluation ends the trial, only
    n = SUBSET_CLASSES
    assert last["step"] == epochs * steps and last["val_samples"] == n and last["val_classes"] == n
    model = _model(result, cfg)
    for protocol in ("ten_crop", "multi_scale"):
        expected = _protocol_errors(model, sample_subset, protocol)
        assert expected["samples"] == n == last[f"final_{protocol}_samples"]
        # Exact, but for images whose top-1 or top-5 boundary is within float noise of a tie (counted).
        for quantity in ("top1_err", "top5_err"):
            assert abs(last[f"final_{protocol}_{quantity}"] - expected[quantity]) * n <= expected["ties"], quantity
        assert last[f"final_{protocol}_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    # Different views, different numbers (a protocol that silently fell back to one crop would match val_*).
    assert last["final_ten_crop_loss"] != pytest.approx(last["val_loss"], rel=1e-6)
    assert last["final_multi_scale_loss"] != pytest.approx(last["final_ten_crop_loss"], rel=1e-6)


def test_cifar_two_epochs_of_the_section_4_2_recipe(ray_cluster: None, cifar_archive: Path, tmp_path: Path) -> None:
    # 170 training images (30 held out), 60 test images; 2 ranks of 16: 6 steps per epoch, the last one padded.
    for job in shard_jobs(cifar_archive, str(tmp_path / "cifar"), cifar_val=30).values():
        job.run(shard_bytes=40_000)
    train, test = str(tmp_path / "cifar" / "train"), str(tmp_path / "cifar" / "test")
    warmup = ErrorWarmupConfig(lr=0.01, until_train_err=0.05, window_steps=3, min_depth=20)
    cfg = _trial(
        "cifar",
        tmp_path,
        model=ModelConfig(depth=20, residual=True, base_width=4),
        recipe=RecipeConfig(
            batch_size=32,
            lr=0.1,
            lr_reference_batch=32,
            max_steps=10,  # 6 steps, then an epoch cut short after 4
            milestones=(8,),
            milestone_unit="step",
            error_warmup=warmup,
            preset="cifar",
            image_size=32,
            resize_size=32,
            precision="fp32",
        ),
        data=DataConfig(train=train, val=test, num_threads=1),
    )
    result = run_trial(cfg)
    assert result.ok, result.error
    reports = _reported(result)
    assert [r["step"] for r in reports] == [6, 10] and [r["epoch"] for r in reports] == [0, 1]
    assert [r["epoch_samples"] for r in reports] == [170, 4 * 32]
    # Random labels keep the training error above 5%: the warm-up rate holds, milestones or not (Section 4.2 rule).
    assert [r["lr"] for r in reports] == [0.01, 0.01]
    with open_checkpoint(result.checkpoint_path or "").as_directory() as directory:
        _, state = read_checkpoint(Path(directory))
    assert state.schedule["warming"] is True and len(state.step_losses) == 10
    # Its validation numbers are those of the saved weights on the 10k-style test split, computed here.
    model = _model(result, cfg)
    spec = LoaderSpec(
        uri=test, split="val", batch_size=60, preset="cifar", image_size=32, resize_size=32, mean_image_uri=train
    )
    batch = next(iter(make_loader(spec, 0, 1, CPU)))
    with torch.no_grad():
        logits = model(batch.images)
    assert reports[-1]["val_samples"] == 60 and reports[-1]["val_classes"] == 10
    assert reports[-1]["val_top1_err"] == pytest.approx(1 - float((logits.argmax(1) == batch.labels).float().mean()))
    loss = torch.nn.functional.cross_entropy(logits, batch.labels)
    assert reports[-1]["val_loss"] == pytest.approx(float(loss), rel=1e-4)
