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


@pytest.mark.parametrize(
    ("num_threads", "cpus", "on_gpu", "expected"),
    [(None, 4, False, 2), (None, 1, False, 1), (None, 8, True, 8), (3, 8, False, 3)],
)
def test_decode_threads_follow_the_workers_cpus(
    num_threads: int | None, cpus: int, on_gpu: bool, expected: int
) -> None:
    from orchestrator.sweep.config import DataConfig, ResourcesConfig, TrialConfig
    from orchestrator.training.setup import decode_threads

    cfg = TrialConfig.model_construct(
        data=DataConfig(train="/tmp/x", num_threads=num_threads), resources=ResourcesConfig(cpus_per_worker=cpus)
    )
    assert decode_threads(cfg, on_gpu) == expected


def test_deterministic_turns_cudnn_benchmark_off_and_torch_determinism_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # set by the call below; restored after the test

    from orchestrator.training.setup import configure_algorithms

    try:
        configure_algorithms(deterministic=True, on_gpu=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        configure_algorithms(deterministic=False, on_gpu=True)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        configure_algorithms(deterministic=False, on_gpu=False)
        assert not torch.backends.cudnn.benchmark
    finally:
        configure_algorithms(deterministic=False, on_gpu=False)
