"""The mixed (nvJPEG) decode path; skipped where no CUDA GPU is present."""

from __future__ import annotations

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
