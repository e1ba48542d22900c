"""The learning-rate schedule: linear scaling, warm-up, step/cosine/plateau decay, and its state."""

from __future__ import annotations

import math

import pytest

from orchestrator.sweep.config import ErrorWarmupConfig, RecipeConfig
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


def test_cifar_recipe_counts_iterations() -> None:
    # He et al. 2015, Section 4.2: batch 128, lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k.
    recipe = RecipeConfig(
        batch_size=128, lr_reference_batch=128, milestones=(32_000, 48_000), milestone_unit="step", max_steps=64_000
    )
    schedule = LRSchedule(recipe, steps_per_epoch=352)  # 45k images / 128, the last batch padded
    assert schedule.lr_at(31_999) == pytest.approx(0.1)
    assert schedule.lr_at(32_000) == pytest.approx(0.01)
    assert schedule.lr_at(48_000) == pytest.approx(0.001)
    assert schedule.total_steps == recipe.total_steps(352) == 64_000
    assert recipe.total_epochs(352) == 182  # 181 whole epochs of 352 steps, then 288 steps
    assert RecipeConfig(epochs=3).total_steps(10) == 30 and RecipeConfig(epochs=3).total_epochs(10) == 3


def test_error_warmup_holds_the_low_rate_until_the_window_error_drops() -> None:
    recipe = RecipeConfig(batch_size=128, lr_reference_batch=128, error_warmup=ErrorWarmupConfig(window_steps=3))
    assert recipe.error_warmup is not None
    schedule = LRSchedule(recipe, steps_per_epoch=100, error_warmup=recipe.error_warmup)
    assert schedule.watches_train_error and schedule.lr_at(0) == pytest.approx(0.01)
    # (hits, samples) per step: errors 0.9, 0.7, 0.7 -> window error 1 - 89.6/384 = 0.767 < 0.8 after step 3 only.
    for hits, expected_warming in ((12.8, True), (38.4, True), (38.4, False)):
        assert schedule.lr_at(5) == pytest.approx(0.01)
        schedule.observe_train(hits, 128)
        assert schedule.warming is expected_warming
    assert schedule.lr_at(5) == pytest.approx(0.1) and not schedule.watches_train_error
    schedule.observe_train(0.0, 128)  # a bad step later does not bring the warm-up back
    assert schedule.lr_at(6) == pytest.approx(0.1)


def test_error_warmup_state_round_trips_mid_window() -> None:
    warmup = ErrorWarmupConfig(window_steps=2)
    schedule = LRSchedule(RecipeConfig(error_warmup=warmup), steps_per_epoch=10, error_warmup=warmup)
    schedule.observe_train(10.0, 100)  # 90% error, window not full yet
    restored = LRSchedule(RecipeConfig(error_warmup=warmup), steps_per_epoch=10, error_warmup=warmup)
    restored.load_state_dict(schedule.state_dict())
    restored.observe_train(40.0, 100)  # window (10 + 40) / 200 hits: 75% error < 80%
    assert not restored.warming and restored.lr_at(0) == pytest.approx(0.1)


def test_error_warmup_applies_from_min_depth() -> None:
    from orchestrator.sweep.config import SweepConfig

    sweep = SweepConfig.model_validate(
        {
            "name": "t",
            "grid": {"depth": [56, 110]},
            "recipe": {"error_warmup": {"min_depth": 110}},
            "data": {"train": "/t"},
        }
    )
    trials = sweep.expand(storage_root="/s")
    assert [t.error_warmup is not None for t in trials] == [False, True]
