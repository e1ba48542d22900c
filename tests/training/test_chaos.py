"""Fault injection fires once: the configured rank, step and point of the first attempt only."""

from __future__ import annotations

import pytest

from orchestrator.sweep.config import ChaosConfig
from orchestrator.training.chaos import should_kill

CHAOS = ChaosConfig(kill_rank=1, at_step=23)


@pytest.mark.parametrize(
    ("rank", "step", "attempt", "point", "expected"),
    [
        (1, 23, 0, "step", True),
        (0, 23, 0, "step", False),
        (1, 22, 0, "step", False),
        (1, 23, 1, "step", False),  # the restarted attempt passes the same step unharmed
        (1, 23, 0, "checkpoint", False),
    ],
)
def test_should_kill(rank: int, step: int, attempt: int, point: str, expected: bool) -> None:
    assert should_kill(CHAOS, rank=rank, step=step, attempt=attempt, point=point) is expected  # type: ignore[arg-type]


def test_off_by_default() -> None:
    assert not should_kill(None, rank=0, step=1, attempt=0, point="step")
