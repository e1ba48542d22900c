"""Shard sets on a real S3 server (SeaweedFS): read back through DALI on the CPU straight from s3://, resume, and
fail clearly on wrong credentials (the `data` commands over S3: tests/cli/test_data_commands.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.sharding import read_manifest, shard_dataset
from pipelines.storage import StorageError

CPU = torch.device("cpu")


def test_two_ranks_read_disjoint_halves_of_all_labels(sample_shards_s3: str, sample_labels: dict[str, int]) -> None:
    # Small crops: the test is about which samples arrive, the decode is the cost that matters.
    spec = LoaderSpec(
        uri=sample_shards_s3, batch_size=100, backend="dali", num_threads=2, seed=1, image_size=64, resize_size=73
    )
    halves = []
    for rank in range(2):
        loader = make_loader(spec, rank, 2, CPU)
        assert loader.samples_per_epoch == len(sample_labels)
        loader.set_epoch(0)
        labels: list[int] = []
        for batch in loader:
            assert batch.images.shape[1:] == (3, 64, 64) and batch.images.dtype == torch.float32
            labels += batch.labels[batch.valid].tolist()
        halves.append(labels)
    assert len(halves[0]) == len(halves[1]) == len(sample_labels) // 2
    assert sorted(halves[0] + halves[1]) == sorted(sample_labels.values())
    if len(set(sample_labels.values())) == len(sample_labels):  # the shared sample: one image per class
        assert not set(halves[0]) & set(halves[1])


def test_rerun_into_s3_keeps_every_shard(sample_shards_s3: str, sample_images_dir: Path) -> None:
    manifest = read_manifest(sample_shards_s3)
    report = shard_dataset(sample_images_dir, sample_shards_s3, shard_bytes=manifest["shard_bytes"])
    assert (report.shards_written, report.shards_reused) == (0, len(manifest["shards"]))
    assert report.samples == manifest["num_samples"]


def test_wrong_credentials_give_a_clear_error(
    sample_shards_s3: str, tiny_images_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="rejected the credentials") as info:
        make_loader(LoaderSpec(uri=sample_shards_s3, batch_size=8), 0, 1, CPU)
    assert "not-the-secret" not in str(info.value)
    with pytest.raises(StorageError, match="rejected the credentials"):
        shard_dataset(tiny_images_dir, sample_shards_s3 + "-other")
