"""Fault injection for tests and drills: a rank SIGKILLs itself at a chosen step of a chosen attempt of a trial.

SIGKILL, not an exception: nothing in the process gets to clean up, exactly like a lost node or the kernel's
OOM killer, so the drill exercises Ray Train's worker-death path and our restart from the latest checkpoint.
A trial may carry several faults; one on a later attempt kills the restarted attempt too.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from typing import Literal

from orchestrator.sweep.config import ChaosConfig

logger = logging.getLogger(__name__)

Point = Literal["step", "checkpoint"]


def should_kill(faults: Sequence[ChaosConfig], *, rank: int, step: int, attempt: int, point: Point) -> bool:
    """Whether this rank dies now: `step` is the 1-based step just completed, `attempt` the 0-based attempt."""
    return any(
        attempt == fault.attempt and rank == fault.kill_rank and step == fault.at_step and point == fault.during
        for fault in faults
    )


def maybe_kill(faults: Sequence[ChaosConfig], *, rank: int, step: int, attempt: int, point: Point) -> None:
    if should_kill(faults, rank=rank, step=step, attempt=attempt, point=point):
        logger.warning(
            "chaos: rank %d kills itself (SIGKILL) at step %d of attempt %d, during %s", rank, step, attempt, point
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
