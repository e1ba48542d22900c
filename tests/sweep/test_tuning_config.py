"""The `scheduler:`, `search:`/`num_samples` and `budget:` keys: what they accept, what they refuse and how, and a
search space that draws the same trials every time, as Ray Tune's own sampling of the same seed does."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from orchestrator.sweep.config import ConfigError, parse_sweep

BASE: dict[str, Any] = {"name": "t", "data": {"train": "/shards/train", "val": "/shards/val"}}


def test_search_draws_num_samples_per_grid_point_from_tune_seeded_by_the_sweep_seed() -> None:
    from ray import tune

    sweep = {
        **BASE,
        "seed": 7,
        "grid": {"depth": [18, 34]},
        "search": {"lr": {"loguniform": [0.01, 0.5]}, "weight_decay": {"choice": [1e-4, 5e-5]}},
        "num_samples": 2,
    }
    trials = parse_sweep(sweep).expand("/storage")
    again = parse_sweep(sweep).expand("/storage")
    assert [t.model_dump() for t in trials] == [t.model_dump() for t in again]
    # Independently: Tune's domains drawn in file order from one generator seeded 7, num_samples passes over the grid.
    rng = np.random.default_rng(7)
    expected = []
    for _ in range(2):
        for depth in (18, 34):
            lr = tune.loguniform(0.01, 0.5).sample(random_state=rng)
            wd = tune.choice([1e-4, 5e-5]).sample(random_state=rng)
            expected.append((depth, lr, wd))
    assert [(t.model.depth, t.recipe.lr, t.recipe.weight_decay) for t in trials] == expected
    assert len({t.recipe.lr for t in trials}) == 4 and all(0.01 <= t.recipe.lr <= 0.5 for t in trials)
    assert trials[0].trial_id == f"000-depth18-lr{expected[0][1]:.4g}-weight_decay{expected[0][2]:.4g}"
    other_seed = parse_sweep({**sweep, "seed": 8}).expand("/storage")
    assert [t.recipe.lr for t in other_seed] != [t.recipe.lr for t in trials]


def test_randint_and_uniform_give_plain_python_values() -> None:
    sweep = {**BASE, "search": {"epochs": {"randint": [2, 5]}, "momentum": {"uniform": [0.8, 0.95]}}, "num_samples": 6}
    trials = parse_sweep(sweep).expand("/storage")
    assert all(type(t.recipe.epochs) is int and 2 <= t.recipe.epochs < 5 for t in trials)
    assert all(type(t.recipe.momentum) is float and 0.8 <= t.recipe.momentum <= 0.95 for t in trials)


def test_scheduler_and_budget_parse() -> None:
    config = parse_sweep(
        {
            **BASE,
            "scheduler": {
                "type": "asha",
                "metric": "val_top1_err",
                "mode": "min",
                "grace_epochs": 5,
                "reduction_factor": 3,
            },
            "budget": {"max_gpu_hours": 100, "max_wall_hours": 1.5},
        }
    )
    assert config.scheduler is not None and config.scheduler.grace_epochs == 5
    assert config.budget is not None and config.budget.max_gpu_hours == 100.0 and config.budget.max_wall_hours == 1.5
    assert math.isclose(config.budget.max_wall_hours * 3600, 5400)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"search": {"lr": {"loguniform": [0, 1]}}},
            "s.yaml: search.lr: loguniform: [0.0, 1.0] needs a positive low bound",
        ),
        (
            {"search": {"lr": {"uniform": [-1, 1]}}},
            "s.yaml: search.lr.uniform[0]: -1.0 is out of range; write a number > 0",
        ),
        (
            {"search": {"depth": {"choice": [18]}}},
            "s.yaml: search.depth: is not a recipe field; search recipe fields (batch_size,",
        ),
        (
            {"grid": {"lr": [0.1]}, "search": {"lr": {"choice": [0.2]}}},
            "s.yaml: search.lr: is also under grid:; sweep it in one of the two",
        ),
        ({"num_samples": 3}, "s.yaml: num_samples: 3 repeats identical trials without search:; add search:"),
        (
            {"scheduler": {"type": "asha", "metric": "foo"}},
            "s.yaml: scheduler.metric: 'foo' is not reported at every epoch end",
        ),
        ({"scheduler": {"type": "hyperband"}}, "s.yaml: scheduler.type:"),
        ({"budget": {}}, "s.yaml: budget: give max_gpu_hours, max_wall_hours or both (hours), or remove budget:"),
        ({"budget": {"max_gpu_hours": 0}}, "s.yaml: budget.max_gpu_hours:"),
        (
            {"search": {"lr": {"choice": [0.1], "uniform": [0.1, 0.2]}}},
            "s.yaml: search.lr: give exactly one of uniform",
        ),
        (
            {"scheduler": {"type": "median_stopping", "reduction_factor": 2}},
            "s.yaml: scheduler.reduction_factor: applies to asha only",
        ),
        (
            {"data": {"train": "/shards"}, "scheduler": {"type": "asha"}},
            "s.yaml: scheduler.metric: val_top1_err is measured on data.val, which is not set",
        ),
    ],
)
def test_refused_with_the_yaml_path_and_the_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sweep({**BASE, **overrides}, "s.yaml")
    assert str(info.value).startswith(message), str(info.value)
