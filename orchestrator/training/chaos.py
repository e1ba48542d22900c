"""Fault injection for tests and drills: a rank SIGKILLs itself at a chosen step of a trial's first attempt.

SIGKILL, not an exception: nothing in the process gets to clean up, exactly like a lost node or the kernel's
OOM killer, so the drill exercises Ray Train's worker-death path and our restart from the latest checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Literal

from orchestrator.sweep.config import ChaosConfig

logger = logging.getLogger(__name__)

Point = Literal["step", "checkpoint"]


def should_kill(chaos: ChaosConfig | None, *, rank: int, step: int, attempt: int, point: Point) -> bool:
    """Whether this rank dies now: `step` is the 1-based step just completed; the first attempt only."""
    return (
        chaos is not None
        and attempt == 0
        and rank == chaos.kill_rank
        and step == chaos.at_step
        and point == chaos.during
    )


def maybe_kill(chaos: ChaosConfig | None, *, rank: int, step: int, attempt: int, point: Point) -> None:
    if should_kill(chaos, rank=rank, step=step, attempt=attempt, point=point):
        logger.warning("chaos: rank %d kills itself (SIGKILL) at step %d, during %s", rank, step, point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
