"""The issue's path end to end on a real S3 server (SeaweedFS): shard into it, read back through DALI on
the CPU straight from s3://, check, resume, and fail clearly on wrong credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from orchestrator.cli.data_commands import app
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


def test_shard_and_check_cli_over_s3(tiny_images_dir: Path, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/tiny-cli"
    result = CliRunner().invoke(app, ["shard", str(tiny_images_dir), uri, "--shard-size", "60k"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["check", uri, "--json", "--num-threads", "2", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["samples"], report["classes"], report["decode_errors"]) == (48, 8, 0)


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
    result = CliRunner().invoke(app, ["check", sample_shards_s3])
    assert result.exit_code == 2 and "rejected the credentials" in result.output
    assert "not-the-secret" not in result.output and "Traceback" not in result.output
