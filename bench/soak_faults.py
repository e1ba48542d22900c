"""The chaos soak's fault schedule: what goes wrong in each sweep, drawn from `random.Random(seed)`, so a run is
repeated exactly by its seed.

Each sweep gets one worker fault (a rank SIGKILLed after a step, or while the checkpoint of a checkpoint step is
written: `chaos:` in the sweep file, `orchestrator/training/chaos.py`), half of them a second such fault in the
restarted attempt (`attempt: 1`), and one fault from outside the trial: the sweep's driver SIGKILLed (then
`resnet-orch resume`), SeaweedFS stopped, or `mlflow server` stopped, each for a drawn number of seconds and
started again on its port and data.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

WORKER_KILL = "worker_kill"
CHECKPOINT_KILL = "checkpoint_kill"
SECOND_FAULT = "second_fault"  # a worker or checkpoint kill during the restarted attempt
DRIVER_KILL = "driver_kill"
S3_OUTAGE = "s3_outage"
MLFLOW_OUTAGE = "mlflow_outage"
IN_TRIAL = (WORKER_KILL, CHECKPOINT_KILL, SECOND_FAULT)
OUTSIDE = (DRIVER_KILL, S3_OUTAGE, MLFLOW_OUTAGE)


@dataclass(frozen=True)
class Fault:
    kind: str
    # In-trial faults: the step after which (or during whose checkpoint) the rank dies. Outside faults: the soak
    # strikes once the trial has reported this step.
    at_step: int
    rank: int = 0
    attempt: int = 0
    during: str = "step"  # "checkpoint": while writing the checkpoint of `at_step`
    seconds: float = 0.0  # outages: how long the service stays down

    def chaos_entry(self) -> dict[str, Any] | None:
        """The fault as a `chaos:` entry of the sweep file; None for a fault the soak itself carries out."""
        if self.kind not in IN_TRIAL:
            return None
        return {"kill_rank": self.rank, "at_step": self.at_step, "during": self.during, "attempt": self.attempt}


@dataclass(frozen=True)
class Shape:
    """What the schedule needs of a trial: its length and where it writes checkpoints."""

    epochs: int
    steps_per_epoch: int
    every_steps: int
    workers: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def checkpoint_steps(self) -> list[int]:
        """Every `every_steps`-th step and every epoch end (`CheckpointConfig.every_steps`)."""
        return [s for s in range(1, self.total_steps + 1) if s % self.every_steps == 0 or s % self.steps_per_epoch == 0]


def _worker_fault(rng: random.Random, shape: Shape, kind: str, after: int, attempt: int) -> Fault | None:
    """A kill after step `after`, before the trial's last step (a kill there leaves nothing to restart into)."""
    last = shape.total_steps - 1
    during = rng.choice(("step", "checkpoint"))
    candidates = (
        [s for s in shape.checkpoint_steps() if after < s <= last]
        if during == "checkpoint"
        else list(range(after + 1, last + 1))
    )
    if not candidates:
        return None
    if kind != SECOND_FAULT:
        kind = CHECKPOINT_KILL if during == "checkpoint" else WORKER_KILL
    return Fault(kind, rng.choice(candidates), rank=rng.randrange(shape.workers), attempt=attempt, during=during)


def draw_schedule(rng: random.Random, shape: Shape, outage_s: tuple[float, float]) -> list[Fault]:
    """One sweep's faults (see the module's docstring); the outside fault strikes mid-epoch."""
    first = _worker_fault(rng, shape, WORKER_KILL, after=0, attempt=0)
    if first is None:
        raise ValueError(f"a trial of {shape.total_steps} steps is too short for a worker fault")
    faults = [first]
    if rng.random() < 0.5:
        # The restarted attempt resumes at or before `first.at_step`: a later step is one it certainly runs.
        second = _worker_fault(rng, shape, SECOND_FAULT, after=first.at_step, attempt=1)
        if second is not None:
            faults.append(second)
    kind = rng.choice(OUTSIDE)
    mid_epoch = [s for s in range(1, shape.total_steps) if s % shape.steps_per_epoch]
    seconds = 0.0 if kind == DRIVER_KILL else round(rng.uniform(*outage_s), 1)
    faults.append(Fault(kind, rng.choice(mid_epoch), seconds=seconds))
    return faults


def fault_counts(schedules: Iterable[Sequence[Fault]]) -> dict[str, int]:
    """How many faults of each kind the schedules hold."""
    counts: Counter[str] = Counter()
    for schedule in schedules:
        counts.update(fault.kind for fault in schedule)
    return dict(sorted(counts.items()))
