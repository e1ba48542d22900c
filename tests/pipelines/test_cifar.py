"""CIFAR-10 end to end in the pipelines: its python archive sharded to train/val/test (lossless), and the `cifar`
preset (He et al. 2015, Section 4.2) on both backends."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from orchestrator.cli import app
from pipelines.cifar import CLASSES, read_cifar
from pipelines.loader import Backend, LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.mean_image import MEAN_IMAGE_NAME
from pipelines.shard_jobs import shard_jobs
from pipelines.sharding import read_manifest
from pipelines.sources import ShardingError

CPU = torch.device("cpu")
HELD_OUT = 30


def _shard_rows(dest: Path) -> dict[str, tuple[int, bytes]]:
    """key -> (label, 3072 R/G/B plane bytes) decoded back from every PNG of a local shard set."""
    rows: dict[str, tuple[int, bytes]] = {}
    for tar_path in sorted(dest.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m) for m in tar.getmembers()}
            data = {name: stream.read() for name, stream in members.items() if stream is not None}
        for name, png in data.items():
            if name.endswith(".png"):
                key = name.removesuffix(".png")
                rgb = np.asarray(Image.open(io.BytesIO(png)))
                rows[key] = (int(data[f"{key}.cls"]), rgb.transpose(2, 0, 1).tobytes())
    return rows


@pytest.fixture(scope="module")
def cifar_shards(cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("cifar-shards")
    result = CliRunner().invoke(
        app,
        ["data", "shard", str(cifar_archive), str(dest), "--cifar-val", str(HELD_OUT), "--shard-size", "40k", "--json"],
    )
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout.splitlines()[-1])
    assert {split: r["samples"] for split, r in reports.items()} == {"train": 170, "val": HELD_OUT, "test": 60}
    assert {split: r["mean_image"] for split, r in reports.items()} == {"train": True, "val": False, "test": False}
    return dest


def test_archive_becomes_train_val_test_pixel_for_pixel(cifar_archive: Path, cifar_shards: Path) -> None:
    train, test, classes = read_cifar(cifar_archive)
    assert classes == CLASSES
    source = {s.key: (s.label, s.planes) for s in train + test}
    got = {split: _shard_rows(cifar_shards / split) for split in ("train", "val", "test")}
    assert len(got["train"]) == 170 and len(got["val"]) == HELD_OUT and len(got["test"]) == 60
    # The held-out images are training images, none of them also in train; test is the test batch, all of it.
    assert set(got["train"]) | set(got["val"]) == {s.key for s in train}
    assert not set(got["train"]) & set(got["val"])
    assert set(got["test"]) == {s.key for s in test}
    for rows in got.values():
        for key, row in rows.items():
            assert row == source[key], key  # label and every pixel, as PNG is lossless
    for split in ("train", "val", "test"):
        manifest = read_manifest(str(cifar_shards / split))
        assert manifest["image_ext"] == "png"
        assert manifest["classes"] == {name: i for i, name in enumerate(CLASSES)}
    # The per-pixel mean is the training split's, at its native 32x32.
    stored = np.load(cifar_shards / "train" / MEAN_IMAGE_NAME)
    planes = np.stack([np.frombuffer(p, np.uint8).reshape(3, 32, 32) for _, p in got["train"].values()])
    np.testing.assert_allclose(stored, planes.astype(np.float64).mean(axis=0).transpose(1, 2, 0), atol=1e-4)
    assert read_manifest(str(cifar_shards / "test"))["mean_image"] is None


def test_extracted_folder_shards_like_the_archive(cifar_archive: Path, cifar_shards: Path, tmp_path: Path) -> None:
    with tarfile.open(cifar_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    for src in (tmp_path, tmp_path / "cifar-10-batches-py"):
        jobs = shard_jobs(src, str(tmp_path / "out"), cifar_val=HELD_OUT)
        assert sorted(jobs) == ["test", "train", "val"]
        report = jobs["test"].run(shard_bytes=40_000)
        assert report.samples == 60
        for shard in read_manifest(str(tmp_path / "out" / "test"))["shards"]:
            assert (tmp_path / "out" / "test" / shard["name"]).read_bytes() == (
                cifar_shards / "test" / shard["name"]
            ).read_bytes()


def test_bad_archives_are_refused_by_name(cifar_archive: Path, tmp_path: Path, tiny_images_dir: Path) -> None:
    folder = tmp_path / "batches"
    with tarfile.open(cifar_archive) as tar:
        tar.extractall(folder, filter="data")
    batches = folder / "cifar-10-batches-py"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("echo pwned",))

    (batches / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(ShardingError, match=r"wants to construct posix\.system; only numpy arrays are expected"):
        shard_jobs(folder, str(tmp_path / "out"))
    (batches / "data_batch_3").unlink()
    with pytest.raises(ShardingError, match="the CIFAR-10 batches data_batch_3 are missing"):
        shard_jobs(folder, str(tmp_path / "out"))
    with pytest.raises(ShardingError, match=r"--cifar-val 200: hold out 0\.\.199 of the 200 training images"):
        shard_jobs(cifar_archive, str(tmp_path / "out"), cifar_val=200)
    with pytest.raises(ShardingError, match="--cifar-val applies to the CIFAR-10 archive"):
        shard_jobs(tiny_images_dir, str(tmp_path / "out"), cifar_val=10)


def _normalized_sources(cifar_shards: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(every train/val image as (x - mean image) / std, 3 x 32 x 32 each; mean image; std), computed here."""
    manifest = read_manifest(str(cifar_shards / "train"))
    mean = np.load(cifar_shards / "train" / MEAN_IMAGE_NAME).transpose(2, 0, 1)
    std = np.array(manifest["mean_image"]["channel_std"]).reshape(3, 1, 1)
    planes = [p for split in ("train", "val") for _, p in _shard_rows(cifar_shards / split).values()]
    images = np.stack([(np.frombuffer(p, np.uint8).reshape(3, 32, 32) - mean) / std for p in planes])
    return torch.from_numpy(images).float(), mean, std


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_cifar_preset_pads_crops_flips_and_subtracts_the_mean(backend: Backend, cifar_shards: Path) -> None:
    sources, _, _ = _normalized_sources(cifar_shards)
    padded = torch.nn.functional.pad(sources, (4, 4, 4, 4))  # zeros: the mean-subtracted image's padding
    # Every 32x32 window of every padded source, and its mirror: N x 81 x 2 candidates.
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1).permute(0, 2, 3, 1, 4, 5).reshape(len(sources), 81, 3, 32, 32)
    candidates = torch.stack([windows, windows.flip(-1)], dim=2).reshape(-1, 3 * 32 * 32)
    spec = LoaderSpec(
        uri=str(cifar_shards / "train"),
        batch_size=16,
        preset="cifar",
        image_size=32,
        resize_size=32,
        backend=backend,
        num_threads=1,
        seed=3,
    )
    probe = torch.arange(0, 3 * 32 * 32, 97)  # a few pixels narrow the search, all of them decide
    found = []
    batch = next(iter(make_loader(spec, 0, 1, CPU)))
    assert batch.images.shape == (16, 3, 32, 32)
    for image in batch.images:
        flat = image.reshape(1, -1)
        near = (candidates[:, probe] - flat[:, probe]).abs().amax(dim=1).topk(5, largest=False).indices
        distance = (candidates[near] - flat).abs().amax(dim=1)
        best = int(near[distance.argmin()])
        assert float(distance.min()) < 1e-3  # one padded window of one source image, to float precision
        found.append(divmod(best % 162, 2))  # (offset index 0..80, mirrored)
    assert len(set(found)) > 1  # the offsets and mirrors are drawn, not fixed
    # Validation is the single original view: (x - mean) / std, nothing else (Section 4.2).
    val_spec = spec.model_copy(
        update={"uri": str(cifar_shards / "val"), "split": "val", "mean_image_uri": str(cifar_shards / "train")}
    )
    val = next(iter(make_loader(val_spec, 0, 1, CPU)))
    flat_sources = sources.reshape(len(sources), -1)
    for image in val.images:
        assert float((flat_sources - image.reshape(1, -1)).abs().amax(dim=1).min()) < 1e-3
