"""The learning-rate schedule: linear scaling, warm-up, step/cosine/plateau decay, and its state."""

from __future__ import annotations

import math

import pytest

from orchestrator.sweep.config import RecipeConfig
from orchestrator.training.lr_schedule import LRSchedule


def test_paper_recipe_divides_by_ten_at_milestones() -> None:
    schedule = LRSchedule(RecipeConfig(), steps_per_epoch=10)
    assert schedule.lr_at(0) == pytest.approx(0.1)  # 0.1 at a batch of 256, no warm-up (Section 3.4)
    assert schedule.lr_at(299) == pytest.approx(0.1)
    assert schedule.lr_at(300) == pytest.approx(0.01)
    assert schedule.lr_at(600) == pytest.approx(0.001)
    assert schedule.lr_at(800) == pytest.approx(0.0001)


def test_large_batch_scales_linearly_with_warmup() -> None:
    schedule = LRSchedule(RecipeConfig(batch_size=8192), steps_per_epoch=100)
    # 0.1 * 8192 / 256 = 3.2, reached after 5 epochs of linear warm-up (Goyal et al. 2017).
    assert schedule.warmup_steps == 500
    assert schedule.lr_at(0) == pytest.approx(3.2 / 500)
    assert schedule.lr_at(249) == pytest.approx(3.2 / 2)
    assert schedule.lr_at(500) == pytest.approx(3.2)


def test_cosine_ends_at_zero() -> None:
    schedule = LRSchedule(RecipeConfig(schedule="cosine", epochs=10), steps_per_epoch=10)
    assert schedule.lr_at(0) == pytest.approx(0.1)
    assert schedule.lr_at(50) == pytest.approx(0.05)
    assert schedule.lr_at(100) == pytest.approx(0.0, abs=1e-12)


def test_plateau_divides_after_patience_and_state_round_trips() -> None:
    schedule = LRSchedule(RecipeConfig(schedule="plateau", plateau_patience=1), steps_per_epoch=10)
    schedule.end_epoch(0.9)
    schedule.end_epoch(0.9)  # 1 bad epoch: within patience
    assert schedule.lr_at(20) == pytest.approx(0.1)
    schedule.end_epoch(0.9)  # 2 bad epochs > patience 1
    assert schedule.lr_at(30) == pytest.approx(0.01)
    restored = LRSchedule(RecipeConfig(schedule="plateau", plateau_patience=1), steps_per_epoch=10)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr_at(30) == pytest.approx(0.01)
    assert restored.best_metric == pytest.approx(0.9)
    assert not math.isinf(restored.best_metric)
