"""The mixed (nvJPEG) decode path; skipped where no CUDA GPU is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["standard", "paper"])
def test_mixed_decode_train(preset: str, sample_shards_local: str, sample_labels: dict[str, int]) -> None:
    device = torch.device("cuda", 0)
    spec = LoaderSpec(
        uri=sample_shards_local,
        batch_size=128,
        backend="dali",
        preset=preset,  # type: ignore[arg-type]
        dtype="bfloat16",
        channels_last=True,
        num_threads=4,
        seed=3,
    )
    labels: list[int] = []
    for rank in range(2):
        loader = make_loader(spec, rank, 2, device)
        for batch in loader:
            assert batch.images.device.type == "cuda" and batch.labels.device.type == "cuda"
            assert batch.images.shape == (128, 3, 224, 224) and batch.images.dtype == torch.bfloat16
            assert batch.images.is_contiguous(memory_format=torch.channels_last)
            labels += batch.labels[batch.valid].tolist()
    assert sorted(labels) == sorted(sample_labels.values())


@pytest.mark.gpu
def test_mixed_decode_restores_mid_epoch(sample_shards_local: str) -> None:
    device = torch.device("cuda", 0)
    spec = LoaderSpec(uri=sample_shards_local, batch_size=64, backend="dali", num_threads=4, seed=9)
    loader = make_loader(spec, 0, 1, device)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    expected = next(it)
    restored = make_loader(spec, 0, 1, device)
    restored.load_state_dict(state)
    got = next(iter(restored))
    assert torch.equal(expected.labels, got.labels)
    torch.testing.assert_close(expected.images, got.images)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("protocol", "scales"), [("center", ()), ("ten_crop", ()), ("multi_scale", (224, 320))], ids=["center", "ten", "ms"]
)
def test_mixed_eval_views_match_the_cpu_graph(protocol: str, scales: tuple[int, ...], sample_shards_local: str) -> None:
    # The same graph with the decoder on the GPU (nvJPEG): only the decoders' rounding differs from the CPU run.
    spec = LoaderSpec(
        uri=sample_shards_local,
        split="val",
        batch_size=16,
        backend="dali",
        preset="paper",
        protocol=protocol,  # type: ignore[arg-type]
        scales=scales,
        num_threads=4,
    )
    cpu = next(iter(make_loader(spec, 0, 1, torch.device("cpu"))))
    gpu = next(iter(make_loader(spec, 0, 1, torch.device("cuda", 0))))
    assert torch.equal(cpu.labels, gpu.labels.cpu())
    pairs = (
        [(a, b) for va, vb in zip(cpu.views, gpu.views, strict=True) for a, b in zip(va, vb, strict=True)]
        if protocol == "multi_scale"
        else [(cpu.images, gpu.images)]
    )
    for a, b in pairs:
        assert b.device.type == "cuda" and a.shape == b.shape
        # A pixel level or two of decoder difference, normalized by std ~ 57.
        assert (a - b.cpu()).abs().mean().item() < 0.02


@pytest.mark.gpu
def test_mixed_decode_cifar_train(cifar_archive: Path, tmp_path: Path) -> None:
    from pipelines.shard_jobs import shard_jobs

    for job in shard_jobs(cifar_archive, str(tmp_path / "cifar")).values():
        job.run(shard_bytes=40_000)
    spec = LoaderSpec(
        uri=str(tmp_path / "cifar" / "train"),
        batch_size=32,
        backend="dali",
        preset="cifar",
        image_size=32,
        resize_size=32,
    )
    batch = next(iter(make_loader(spec, 0, 1, torch.device("cuda", 0))))
    assert batch.images.shape == (32, 3, 32, 32) and batch.images.device.type == "cuda"
