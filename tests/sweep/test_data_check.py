"""The class-count check a trial passes before its first step: the model must output every class of its shards."""

from __future__ import annotations

import logging

import pytest

from orchestrator.training.setup import check_num_classes
from pipelines.sharding import read_manifest


def test_fewer_outputs_than_dataset_classes_is_a_config_error() -> None:
    classes = {f"n{i:08d}": i for i in range(1000)}
    with pytest.raises(ValueError) as info:
        check_num_classes(10, classes, "train", "s3://b/imagenet/train")
    assert str(info.value) == (
        "model.num_classes is 10 but data.train (s3://b/imagenet/train) has 1000 classes; "
        "set model.num_classes: 1000 in the sweep file"
    )


def test_more_outputs_than_dataset_classes_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.training.setup"):
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
