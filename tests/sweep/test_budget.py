"""The budget stopper's arithmetic (wall seconds, GPU-seconds of the running trials) and its limits' wording."""

from __future__ import annotations

import pickle

import pytest

from orchestrator.sweep import budget as budget_module
from orchestrator.sweep.budget import BudgetStopper, exhausted_by
from orchestrator.sweep.config import parse_sweep
from orchestrator.sweep.state import BudgetUse, SweepProgress
from orchestrator.sweep.tuning_config import BudgetConfig


def test_charges_wall_and_gpu_seconds_of_the_running_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 160.0, 220.0, 400.0])
    monkeypatch.setattr(budget_module.time, "monotonic", lambda: next(clock))
    # 2 workers x 4 GPUs per trial; 30 s and 0.1 GPU-hours spent by an earlier driver of the sweep.
    config = parse_sweep(
        {
            "name": "b",
            "data": {"train": "/shards"},
            "resources": {"workers": 2, "gpus_per_worker": 4},
            "budget": {"max_gpu_hours": 0.5},
        }
    )
    stopper = BudgetStopper.for_sweep(config, BudgetUse(wall_s=30.0, gpu_s=360.0))
    assert (stopper.gpus_per_trial, stopper.limits) == (8.0, BudgetConfig(max_gpu_hours=0.5))
    stopper.charge(running_trials=2)  # starts the clock at 100 s
    stopper.charge(running_trials=2)  # 60 s x 2 trials x 8 GPUs
    assert (stopper.used.wall_s, stopper.used.gpu_s) == (90.0, 360.0 + 960.0)
    assert not stopper.stop_all()
    stopper.charge(running_trials=1)  # 60 s x 1 x 8 = 480 GPU-s: 1,800 in all, the 0.5 GPU-hours
    assert stopper.used.gpu_s == 1800.0
    assert stopper.stop_all()
    assert stopper.exhausted == "budget exhausted: 0.500 of budget.max_gpu_hours=0.5 spent"
    assert stopper("any-trial", {}) is False  # never one trial on its own

    # Tune pickles the stopper; a restored one restarts its clock and takes what was spent from the progress.
    restored = pickle.loads(pickle.dumps(stopper))
    progress = SweepProgress(sweep="s", trials=[], budget_used=BudgetUse(wall_s=7.0, gpu_s=8.0))
    restored.resume_from(progress)
    restored.charge(running_trials=3)  # the first charge after a restore only starts the clock
    assert (restored.used.wall_s, restored.used.gpu_s) == (7.0, 8.0)


@pytest.mark.parametrize(
    ("limits", "used", "expected"),
    [
        (None, BudgetUse(wall_s=1e9, gpu_s=1e9), None),
        (BudgetConfig(max_wall_hours=2), BudgetUse(wall_s=7199.0), None),
        (
            BudgetConfig(max_wall_hours=2),
            BudgetUse(wall_s=7200.0),
            "budget exhausted: 2.000 of budget.max_wall_hours=2.0 spent",
        ),
        (
            BudgetConfig(max_wall_hours=2, max_gpu_hours=1),
            BudgetUse(wall_s=10.0, gpu_s=3600.0),
            "budget exhausted: 1.000 of budget.max_gpu_hours=1.0 spent",
        ),
    ],
)
def test_exhausted_by(limits: BudgetConfig | None, used: BudgetUse, expected: str | None) -> None:
    assert exhausted_by(limits, used) == expected
