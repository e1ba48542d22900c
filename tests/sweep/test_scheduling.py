"""How many trials run at once: by the cluster's CPUs and GPUs and `max_concurrent_trials`; what never fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep.config import ResourcesConfig, load_sweep
from orchestrator.sweep.scheduling import SchedulingError, concurrency, trials_that_fit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("cluster", "resources", "fits"),
    [
        ({"CPU": 2.0}, ResourcesConfig(workers=2, cpus_per_worker=1), 1),
        ({"CPU": 16.0}, ResourcesConfig(workers=2, cpus_per_worker=2), 4),
        ({"CPU": 64.0, "GPU": 8.0}, ResourcesConfig(workers=4, gpus_per_worker=1, cpus_per_worker=8), 2),
        ({"CPU": 64.0}, ResourcesConfig(workers=1, gpus_per_worker=1), 0),
    ],
)
def test_trials_that_fit(cluster: dict[str, float], resources: ResourcesConfig, fits: int) -> None:
    assert trials_that_fit(cluster, resources) == fits


def test_concurrency_honours_max_concurrent_trials_and_refuses_what_never_fits() -> None:
    config = load_sweep(EXAMPLES / "table3_shortcuts.yaml")  # 8 workers x (1 GPU, 8 CPUs), at most 3 at once
    assert concurrency({"CPU": 1024.0, "GPU": 128.0}, config) == 3
    assert concurrency({"CPU": 128.0, "GPU": 16.0}, config) == 2
    with pytest.raises(SchedulingError) as info:
        concurrency({"CPU": 64.0, "GPU": 4.0}, config)
    assert str(info.value) == (
        "one trial needs 8 workers x (8.0 CPU, 1.0 GPU) but the cluster has 64.0 CPUs and 4.0 GPUs; "
        "lower `resources:` or add nodes"
    )


def test_sweep_callback_hooks_are_tunes() -> None:
    # A misspelt hook (`on_step` for `on_step_end`) is never called and fails silently: the budget would never run out.
    from ray import tune

    from orchestrator.sweep.scheduling import SweepCallback

    hooks = [name for name in vars(SweepCallback) if name.startswith("on_")]
    assert "on_step_end" in hooks
    assert [name for name in hooks if not hasattr(tune.Callback, name)] == []
