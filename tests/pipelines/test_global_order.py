"""The elastic epoch's arithmetic: every sample once per epoch at any world size, and across a resize at any step."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from pipelines.global_order import GlobalPlan, epoch_order


def taken(plan: GlobalPlan, order: np.ndarray, steps: range, world: int) -> list[int]:
    """The sample indices (real positions only) the ranks of a `world`-worker group compute in `steps`, written
    from the rule (rank r takes micro-batches [M*r // w, M*(r+1) // w)), not from `micro_range`."""
    m = plan.micro_batches
    samples = []
    for step, rank in itertools.product(steps, range(world)):
        for micro in range(m * rank // world, m * (rank + 1) // world):
            start = step * plan.global_batch + micro * plan.micro_size
            samples += [int(order[p]) for p in range(start, min(start + plan.micro_size, plan.num_samples))]
    return samples


@pytest.mark.parametrize(("n", "b", "m"), [(1000, 16, 4), (500, 8, 4), (97, 5, 3), (48, 3, 4), (7, 1, 8)])
def test_every_sample_once_per_epoch_at_every_world_size(n: int, b: int, m: int) -> None:
    plan = GlobalPlan(n, b, m)
    order = epoch_order(n, seed=3, epoch=2, shuffle=True)
    assert sorted(order.tolist()) == list(range(n))
    assert plan.steps == -(-n // (b * m))
    for world in range(1, m + 1):
        ranges = [plan.micro_range(r, world) for r in range(world)]
        assert [j for r in ranges for j in r] == list(range(m))  # each micro-batch of a step on exactly one rank
        assert min(len(r) for r in ranges) >= 1 and max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1
        assert sorted(taken(plan, order, range(plan.steps), world)) == list(range(n))


@pytest.mark.parametrize(("n", "b", "m"), [(500, 8, 4), (97, 5, 3)])
def test_a_resize_at_any_step_loses_and_repeats_no_sample(n: int, b: int, m: int) -> None:
    plan = GlobalPlan(n, b, m)
    order = epoch_order(n, seed=0, epoch=5, shuffle=True)
    for before, after in itertools.product(range(1, m + 1), repeat=2):
        for k in range(plan.steps + 1):
            seen = taken(plan, order, range(k), before) + taken(plan, order, range(k, plan.steps), after)
            counts = Counter(seen)
            assert len(seen) == n and set(counts) == set(range(n)), (before, after, k)


def test_real_counts_and_padding_of_the_last_step() -> None:
    plan = GlobalPlan(num_samples=100, micro_size=8, micro_batches=4)  # B = 32: steps of 32, 32, 32, 4
    assert (plan.global_batch, plan.steps, plan.samples_per_epoch) == (32, 4, 100)
    assert [plan.valid_in_step(k) for k in range(4)] == [32, 32, 32, 4]
    assert [plan.valid_in_micro(3, j) for j in range(4)] == [4, 0, 0, 0]
    assert list(plan.positions(3, 1)) == list(range(104, 112))
    assert [plan.samples_in_steps(s) for s in (0, 1, 3, 4, 99)] == [0, 32, 96, 100, 100]
    dropped = GlobalPlan(100, 8, 4, last_batch="drop")
    assert (dropped.steps, dropped.samples_per_epoch, dropped.samples_in_steps(10)) == (3, 96, 96)


def test_the_order_depends_on_seed_and_epoch_only() -> None:
    a = epoch_order(1000, seed=1, epoch=0, shuffle=True)
    assert np.array_equal(a, epoch_order(1000, seed=1, epoch=0, shuffle=True))
    assert not np.array_equal(a, epoch_order(1000, seed=1, epoch=1, shuffle=True))
    assert not np.array_equal(a, epoch_order(1000, seed=2, epoch=0, shuffle=True))
    assert epoch_order(5, seed=1, epoch=0, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("rank", "world"), [(0, 5), (2, 2), (-1, 1), (0, 0)])
def test_a_world_outside_the_range_is_refused(rank: int, world: int) -> None:
    with pytest.raises(ValueError, match="need 1 <= world <= 4"):
        GlobalPlan(100, 8, 4).micro_range(rank, world)
