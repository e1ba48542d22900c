"""Fault injection fires where it is told: the configured rank, step, point and attempt of each listed fault."""

from __future__ import annotations

import pytest

from orchestrator.sweep.config import ChaosConfig
from orchestrator.training.chaos import should_kill

FAULTS = (ChaosConfig(kill_rank=1, at_step=23), ChaosConfig(kill_rank=0, at_step=30, attempt=1))


@pytest.mark.parametrize(
    ("rank", "step", "attempt", "point", "expected"),
    [
        (1, 23, 0, "step", True),
        (0, 23, 0, "step", False),
        (1, 22, 0, "step", False),
        (1, 23, 1, "step", False),  # the restarted attempt passes the same step unharmed
        (1, 23, 0, "checkpoint", False),
        (0, 30, 1, "step", True),  # the second fault: the restarted attempt dies too
        (0, 30, 0, "step", False),
        (0, 30, 2, "step", False),
    ],
)
def test_should_kill(rank: int, step: int, attempt: int, point: str, expected: bool) -> None:
    assert should_kill(FAULTS, rank=rank, step=step, attempt=attempt, point=point) is expected  # type: ignore[arg-type]


def test_off_by_default() -> None:
    assert not should_kill((), rank=0, step=1, attempt=0, point="step")
