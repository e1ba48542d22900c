"""Pure parts of the train loop, without Ray: live throughput over padded batches and the class-count check."""

from __future__ import annotations

import logging

import pytest
import torch

from orchestrator.training.train_loop import LiveThroughput, batch_sums, check_num_classes
from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.presets import IGNORE_INDEX
from pipelines.sharding import read_manifest

CPU = torch.device("cpu")


def sums_of(labels: list[int], classes: int = 10) -> torch.Tensor:
    logits = torch.randn(len(labels), classes)
    return batch_sums(logits, torch.tensor(labels), torch.zeros(()))


def test_live_throughput_counts_real_samples_only() -> None:
    live = LiveThroughput(CPU, since=100.0)
    live.add(sums_of([1, 2, 3, 4, 5, 6, 7, 8]))
    # The loader's tail batch: 3 real samples, 5 padding positions (label IGNORE_INDEX).
    live.add(sums_of([1, 2, 3] + [IGNORE_INDEX] * 5))
    assert not live.due(104.9)
    assert live.due(105.0)
    # 11 real images in 2 s; counting tensor sizes (the padded 16) would give 8 images/s.
    assert live.take(102.0) == (11, 5.5)
    # The next window starts at the take.
    live.add(sums_of([IGNORE_INDEX] * 8))
    assert live.take(103.0) == (0, 0.0)


def test_live_throughput_over_a_padded_epoch_matches_the_epoch_size(tiny_shards_local: str) -> None:
    # 48 samples over 2 ranks in batches of 10: each rank yields 3 batches (24 real + 6 padding).
    spec = LoaderSpec(
        uri=tiny_shards_local, batch_size=10, image_size=32, resize_size=40, backend="torch", num_threads=1
    )
    live = LiveThroughput(CPU, since=0.0)
    positions = 0
    for rank in range(2):
        loader = make_loader(spec, rank=rank, world_size=2, device=CPU)
        loader.set_epoch(0)
        for batch in loader:
            positions += batch.labels.numel()
            live.add(sums_of(batch.labels.tolist(), classes=8))
    assert positions == 60
    assert live.take(1.0)[0] == loader.samples_per_epoch == 48


def test_fewer_outputs_than_dataset_classes_is_a_config_error() -> None:
    classes = {f"n{i:08d}": i for i in range(1000)}
    with pytest.raises(ValueError) as info:
        check_num_classes(10, classes, "train", "s3://b/imagenet/train")
    assert str(info.value) == (
        "model.num_classes is 10 but data.train (s3://b/imagenet/train) has 1000 classes; "
        "set model.num_classes: 1000 in the sweep file"
    )


def test_more_outputs_than_dataset_classes_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.training.train_loop"):
        check_num_classes(1000, {"a": 0, "b": 1}, "val", "/shards/val")
        check_num_classes(2, {"a": 0, "b": 1}, "val", "/shards/val")
    assert [r.getMessage() for r in caplog.records] == [
        "model.num_classes is 1000 but data.val (/shards/val) has 2 classes: 998 outputs never see a label; "
        "set model.num_classes: 2 unless that is intended"
    ]


def test_class_count_check_reads_the_shard_manifest(tiny_shards_local: str) -> None:
    # The tiny set has 8 classes: a CIFAR net's default 10 outputs cover them, a 4-way head does not.
    classes = read_manifest(tiny_shards_local)["classes"]
    check_num_classes(10, classes, "train", tiny_shards_local)
    with pytest.raises(ValueError, match=r"has 8 classes; set model.num_classes: 8"):
        check_num_classes(4, classes, "train", tiny_shards_local)
