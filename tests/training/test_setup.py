"""How a trial sets up its worker: decode threads from the worker's CPUs, and the algorithm switches of
`recipe.deterministic`."""

from __future__ import annotations

import pytest


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
