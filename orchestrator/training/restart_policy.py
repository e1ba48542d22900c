"""When a trial fails, retry it from its last checkpoint or give up with the reason: decided here, done elsewhere.

Deciding is separate from acting (Ray Train v2's `failure_handling/`, `FailurePolicy.make_decision`): `decide` is
a pure function of a `Failure` description, unit-tested over a table without Ray.
`controller_callbacks.FailFastCallback` carries the decision out inside Ray Train's controller.

Retryable: a worker that died (SIGKILL, node lost, actor died) or a collective (NCCL/gloo) error — the ranks that
survive a death routinely fail with collateral collective errors, so a death anywhere makes the whole failure a
death (the same reasoning as Ray's preemption accounting). Not retryable: a configuration or code error, or an
out-of-memory error, raised before the attempt completed its first step — a restart would hit it again.
A worker lost to a node's preemption (a spot reclaim Ray saw announced) is not a failure: Ray Train restarts it
against its own budget (`FailureConfig.max_preemption_failures`, the sweep's `max_preemptions`), so the policy
neither counts it nor ends the trial for it; collateral errors of the surviving ranks go with it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Substrings of the messages torch.distributed raises when a peer rank is gone (gloo: "Connection closed by peer",
# "Connection reset by peer"; NCCL: "NCCL error", watchdog "ProcessGroupNCCL"; timeouts of a stalled collective).
COLLECTIVE_ERROR_MARKERS: tuple[str, ...] = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "gloo",
    "nccl",
    "processgroup",
    "timed out",
    "timeout",
)
OOM_MARKERS: tuple[str, ...] = ("out of memory", "outofmemoryerror", "cannot allocate memory")


class FailureKind(enum.Enum):
    WORKER_DIED = "worker_died"  # the worker process or its node is gone
    PREEMPTED = "preempted"  # the worker's node was reclaimed after a preemption notice (drained for preemption)
    COLLECTIVE = "collective"  # a collective op failed: a peer died or the network broke
    OUT_OF_MEMORY = "out_of_memory"
    CONFIG = "config"  # the trial's configuration cannot run (unknown model, bad data path, ...)
    CODE = "code"  # any other exception raised by the train function
    # A count the run must hold (samples per epoch, per validation pass) did not: its numbers would be wrong, and
    # the same data and code would break it again.
    INVARIANT = "invariant"


_DETERMINISTIC = frozenset({FailureKind.OUT_OF_MEMORY, FailureKind.CONFIG, FailureKind.CODE})


class Action(enum.Enum):
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as seen from the controller."""

    kinds: frozenset[FailureKind]  # one per failed rank, deduplicated
    reason: str  # the first rank's error text
    steps_done: int  # optimizer steps this attempt completed before failing (0: failed before its first step)
    failures_so_far: int  # failures of this trial before this one


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str


@dataclass(frozen=True)
class RestartPolicy:
    """`max_failures` retries of retryable failures (Ray's `FailureConfig(max_failures)`; -1: unlimited)."""

    max_failures: int

    def decide(self, failure: Failure) -> Decision:
        kinds = failure.kinds
        if FailureKind.INVARIANT in kinds:
            return Decision(
                Action.FAIL, f"a sample-count invariant failed; its metrics would be wrong: {failure.reason}"
            )
        if FailureKind.PREEMPTED in kinds:
            return Decision(
                Action.RETRY,
                "a node was preempted; Ray Train restarts from the latest checkpoint within max_preemptions, "
                f"max_failures={self.max_failures} is not charged: {failure.reason}",
            )
        if FailureKind.WORKER_DIED in kinds:
            return self._within_budget(failure, "a worker died")
        deterministic = sorted(k.value for k in kinds & _DETERMINISTIC)
        if deterministic and failure.steps_done == 0:
            # The other ranks' collective errors are collateral: the rank that raised this one broke the group.
            return Decision(
                Action.FAIL,
                f"{deterministic[0]} error before the first training step; a restart would fail the same way: "
                f"{failure.reason}",
            )
        if FailureKind.COLLECTIVE in kinds:
            return self._within_budget(failure, "a collective operation failed")
        # A deterministic error after progress (e.g. OOM in an epoch-end evaluation): the checkpoint holds the
        # progress, so another attempt within the budget is worth it.
        return self._within_budget(failure, f"{'/'.join(deterministic) or 'unknown'} error after progress")

    def _within_budget(self, failure: Failure, cause: str) -> Decision:
        count = failure.failures_so_far + 1
        if self.max_failures != -1 and count > self.max_failures:
            return Decision(Action.FAIL, f"max_failures={self.max_failures} reached ({cause}): {failure.reason}")
        budget = "unlimited" if self.max_failures == -1 else str(self.max_failures)
        return Decision(Action.RETRY, f"{cause}; restart {count} of {budget} from the latest checkpoint")


def classify_message(text: str) -> FailureKind:
    """The kind of an exception raised by the train function, from its type name and message."""
    lowered = text.lower()
    if any(marker in lowered for marker in OOM_MARKERS):
        return FailureKind.OUT_OF_MEMORY
    if any(marker in lowered for marker in COLLECTIVE_ERROR_MARKERS):
        return FailureKind.COLLECTIVE
    return FailureKind.CODE


class TrainFunctionError(RuntimeError):
    """What a worker raises when its train function fails: the kind, the attempt's progress and the reason.

    Positional args only, so it pickles unchanged from the worker to the Ray Train controller.
    """

    def __init__(self, kind: str, steps_done: int, reason: str) -> None:
        super().__init__(kind, steps_done, reason)
        self.kind = FailureKind(kind)
        self.steps_done = steps_done
        self.reason = reason

    def __str__(self) -> str:
        return f"[{self.kind.value}, {self.steps_done} steps done] {self.reason}"
