"""The callbacks a trial's Ray Train controller runs: our restart policy after each failed attempt, and a reporter.

The controller is a new process for every trial and unpickles these at its start: this module imports Ray Train's
callback bases and the restart policy, nothing heavier (no torch, no train loop), so they cost the controller
nothing it does not load anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError
from ray.train.v2.api.callback import UserCallback

from orchestrator.training.restart_policy import (
    Action,
    Failure,
    FailureKind,
    RestartPolicy,
    TrainFunctionError,
    classify_message,
)

logger = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]


class TrialFailedFast(RuntimeError):
    """The restart policy ended the trial: the message is its reason (e.g. `config error before the first ...`)."""


def failure_from_errors(worker_errors: dict[int, Exception], failures_so_far: int) -> Failure:
    """Describe the errors of one failed attempt (rank -> error) for the restart policy."""
    kinds: set[FailureKind] = set()
    steps_done = 0
    reasons: list[str] = []
    for rank in sorted(worker_errors):
        error = worker_errors[rank]
        if _preempted(error):
            kinds.add(FailureKind.PREEMPTED)
            reasons.append(f"rank {rank}: its node was preempted ({type(error).__name__})")
        elif isinstance(error, TrainFunctionError):
            kinds.add(error.kind)
            steps_done = max(steps_done, error.steps_done)
            reasons.append(f"rank {rank}: {error.reason}")
        elif isinstance(error, RayActorError) or "died" in type(error).__name__.lower():
            kinds.add(FailureKind.WORKER_DIED)
            reasons.append(f"rank {rank}: worker died ({type(error).__name__})")
        else:
            text = f"{type(error).__name__}: {error}"
            kinds.add(FailureKind.WORKER_DIED if "health" in text.lower() else classify_message(text))
            reasons.append(f"rank {rank}: {text}")
    return Failure(
        kinds=frozenset(kinds), reason="; ".join(reasons), steps_done=steps_done, failures_so_far=failures_so_far
    )


def _preempted(error: Exception) -> bool:
    """Whether a worker error is its node's preemption: Ray marks the `RayActorError` of an actor whose node died
    after a drain for preemption `preempted`, wrapped in the health check's error when the poll found it."""
    cause = getattr(error, "health_check_failure", error)
    return isinstance(cause, RayActorError) and bool(getattr(cause, "preempted", False))


class FailFastCallback(UserCallback):
    """Runs `RestartPolicy` on the controller after each failed attempt; raises when it says FAIL."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.failures = 0

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        failure = failure_from_errors(worker_exceptions, self.failures)
        decision = self.policy.decide(failure)
        if FailureKind.PREEMPTED not in failure.kinds:
            # Ray Train calls this at every poll of a preempted group until its deadline: only failures count.
            self.failures += 1
        logger.warning("trial %s: %s -> %s", run_context.run_config.name, decision.why, decision.action.value)
        if decision.action is Action.FAIL:
            raise TrialFailedFast(decision.why)


class ReporterCallback(UserCallback):
    """Calls `reporter(metrics)` with rank 0's metrics of every report (on the Ray Train controller)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        report = dict(metrics[0])
        if checkpoint is not None:
            report["checkpoint_path"] = checkpoint.path
        self.reporter(report)
