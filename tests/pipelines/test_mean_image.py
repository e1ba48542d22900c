"""The per-pixel mean image `data shard` stores with a training shard set, and the presets that need it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from orchestrator.cli import app
from pipelines import presets
from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.mean_image import MEAN_IMAGE_NAME, MeanImageError, PixelSums
from pipelines.normalization import preset_normalization
from pipelines.sharding import read_manifest, shard_dataset


def _independent_mean(images_dir: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean image, channel mean, channel std) of every listed image warped to size x size, in float64."""
    with open(images_dir / "labels.tsv", newline="") as f:
        names = [row["file"] for row in csv.DictReader(f, dialect="excel-tab")]
    warped = np.stack(
        [
            np.asarray(Image.open(images_dir / n).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
            for n in names
        ]
    ).astype(np.float64)
    return warped.mean(axis=0), warped.mean(axis=(0, 1, 2)), warped.std(axis=(0, 1, 2))


def test_mean_image_is_the_mean_of_every_warped_training_image(tiny_images_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "shards"
    report = shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000)
    assert report.mean_image and report.shards_written >= 3
    entry = read_manifest(str(dest))["mean_image"]
    stored = np.load(dest / MEAN_IMAGE_NAME)
    mean, channel_mean, channel_std = _independent_mean(tiny_images_dir, presets.MEAN_IMAGE_SIZE)
    assert entry["samples"] == 48 and entry["size"] == presets.MEAN_IMAGE_SIZE
    assert stored.dtype == np.float32 and stored.shape == mean.shape
    np.testing.assert_allclose(stored, mean, rtol=0, atol=1e-4)
    np.testing.assert_allclose(entry["channel_mean"], channel_mean, rtol=1e-9)
    np.testing.assert_allclose(entry["channel_std"], channel_std, rtol=1e-9)
    # A rerun keeps every shard and adds their stored sums: the same mean, to the byte.
    first = (dest / MEAN_IMAGE_NAME).read_bytes()
    again = shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000)
    assert again.shards_written == 0 and (dest / MEAN_IMAGE_NAME).read_bytes() == first
    norm = preset_normalization("paper", str(dest))
    assert norm.std == tuple(entry["channel_std"]) and norm.mean == (0.0, 0.0, 0.0)
    assert norm.mean_image is not None and np.array_equal(norm.mean_image, stored)
    assert preset_normalization("standard", str(dest)).mean_image is None


def test_pixel_sums_round_trip_and_merge() -> None:
    rng = np.random.default_rng(0)
    a, b = PixelSums(4), PixelSums(4)
    images = [rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8) for _ in range(5)]
    for image in images[:2]:
        a.add(image)
    for image in images[2:]:
        b.add(image)
    merged = PixelSums.from_bytes(a.to_bytes())
    merged.merge(PixelSums.from_bytes(b.to_bytes()))
    mean = merged.mean_image()
    stack = np.stack(images).astype(np.float64)
    np.testing.assert_allclose(mean.pixels, stack.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(mean.channel_std, stack.std(axis=(0, 1, 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="expected uint8 4x4x3 pixels"):
        merged.add(np.zeros((5, 5, 3), np.uint8))


def test_without_a_mean_image_the_paper_preset_says_how_to_get_one(tiny_images_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "no-mean"
    result = CliRunner().invoke(app, ["data", "shard", str(tiny_images_dir), str(dest), "--no-mean-image", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["-"]["mean_image"] is False
    assert read_manifest(str(dest))["mean_image"] is None and not (dest / MEAN_IMAGE_NAME).exists()
    spec = LoaderSpec(uri=str(dest), batch_size=4, preset="paper", image_size=32, resize_size=40)
    with pytest.raises(MeanImageError, match=r"has no mean image .* shard them again without --no-mean-image"):
        make_loader(spec, 0, 1, torch.device("cpu"))
    # The standard preset needs none.
    assert next(iter(make_loader(spec.model_copy(update={"preset": "standard"}), 0, 1, torch.device("cpu"))))
