"""What the train loop counts, without Ray: per-batch sums and live throughput over padded batches."""

from __future__ import annotations

import torch

from orchestrator.training.accounting import LiveThroughput, batch_sums
from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.presets import IGNORE_INDEX

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
