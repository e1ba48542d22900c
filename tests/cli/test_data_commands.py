"""`resnet-orch data shard|check`: exit codes, JSON reports, split folders, a corrupt sample named, and both
commands over a real S3 server (SeaweedFS) with wrong credentials failing clearly."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.data_commands import app
from pipelines.sharding import read_manifest


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["shard", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output and "Traceback" not in result.output
    assert "sharding" not in result.output  # refused before any progress is shown
    result = CliRunner().invoke(app, ["shard", str(tmp_path), str(tmp_path / "out"), "--shard-size", "big"])
    assert result.exit_code == 2 and "--shard-size 'big'" in result.output
    result = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json not found" in result.output


def test_cli_shard_then_check_json(tiny_images_dir: Path, tmp_path: Path) -> None:
    dest = str(tmp_path / "out")
    result = CliRunner().invoke(app, ["shard", str(tiny_images_dir), dest, "--shard-size", "60k", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["-"]["samples"] == 48
    result = CliRunner().invoke(app, ["check", dest, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["samples"], report["classes"], report["decode_errors"]) == (48, 8, 0)
    assert set(report["per_class"].values()) == {6}


def test_cli_shards_train_and_val_class_folders(tiny_images_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    with open(tiny_images_dir / "labels.tsv") as f:
        for i, row in enumerate(csv.DictReader(f, dialect="excel-tab")):
            split = "val" if i % 6 == 0 else "train"
            (root / split / row["wnid"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_images_dir / row["file"], root / split / row["wnid"] / row["file"])
    dest = tmp_path / "out"
    result = CliRunner().invoke(app, ["shard", str(root), str(dest), "--shard-size", "100k"])
    assert result.exit_code == 0, result.output
    train, val = read_manifest(str(dest / "train")), read_manifest(str(dest / "val"))
    assert (train["num_samples"], val["num_samples"]) == (40, 8)
    assert train["classes"] == val["classes"] == {f"n{c:08d}": c for c in range(8)}


def test_check_names_a_corrupt_sample_and_exits_1(tiny_shards_local: str, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards_local, shards)
    index_line = (shards / "shard-000001.idx").read_text().splitlines()[1].split()
    offset, key = int(index_line[1]), index_line[3].removesuffix(".jpg")
    tar = bytearray((shards / "shard-000001.tar").read_bytes())
    tar[offset : offset + 64] = b"\0" * 64  # wipe the JPEG header: same size, undecodable
    (shards / "shard-000001.tar").write_bytes(bytes(tar))
    result = CliRunner().invoke(app, ["check", str(shards), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["samples"], report["decode_errors"]) == (47, 1)
    assert report["bad_samples"] == [f"shard-000001.tar:{key}"]


def test_shard_and_check_cli_over_s3(tiny_images_dir: Path, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/tiny-cli"
    result = CliRunner().invoke(app, ["shard", str(tiny_images_dir), uri, "--shard-size", "60k"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["check", uri, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["samples"], report["classes"], report["decode_errors"]) == (48, 8, 0)


def test_check_with_wrong_credentials_exits_2_naming_the_cause(
    sample_shards_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    result = CliRunner().invoke(app, ["check", sample_shards_s3])
    assert result.exit_code == 2 and "rejected the credentials" in result.output
    assert "not-the-secret" not in result.output and "Traceback" not in result.output


def test_check_samples_records_by_default_and_reads_every_shard_structure(
    tiny_shards_local: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["check", tiny_shards_local, "--json", "--sample", "10", "--seed", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert (report["mode"], report["samples"], report["records"], report["structure_errors"]) == ("sample", 10, 48, [])
    # The same seed draws the same records; the per-class counts of 10 labels sum to 10.
    again = json.loads(
        CliRunner()
        .invoke(app, ["check", tiny_shards_local, "--json", "--sample", "10", "--seed", "3"])
        .output.strip()
        .splitlines()[-1]
    )
    assert again["per_class"] == report["per_class"] and sum(report["per_class"].values()) == 10

    # An index entry moved by one block: its member's header no longer names it. Found without decoding it.
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards_local, shards)
    index = shards / "shard-000002.idx"
    lines = index.read_text().splitlines()
    parts = lines[3].split()
    parts[1] = str(int(parts[1]) + 512)
    lines[3] = " ".join(parts)
    index.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["check", str(shards), "--json", "--full"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    key = parts[3].removesuffix(".jpg")
    assert len(report["structure_errors"]) == 1 and report["structure_errors"][0].startswith(f"shard-000002.tar:{key}:")
    assert report["samples"] == 47
