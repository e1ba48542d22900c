"""From the errors Ray Train hands the controller to the restart policy's `Failure` (no cluster needed)."""

from __future__ import annotations

from ray.exceptions import ActorDiedError

from orchestrator.training.controller_callbacks import failure_from_errors
from orchestrator.training.restart_policy import Action, FailureKind, RestartPolicy, TrainFunctionError

GLOO_RESET = "RuntimeError: [gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"


def test_config_error_on_one_rank_with_collateral_collective_error_fails_fast() -> None:
    failure = failure_from_errors(
        {
            0: TrainFunctionError("collective", 0, GLOO_RESET),
            1: TrainFunctionError("config", 0, "ValueError: unknown model 'resnet19'"),
        },
        failures_so_far=0,
    )
    assert failure.kinds == {FailureKind.COLLECTIVE, FailureKind.CONFIG}
    assert failure.steps_done == 0
    decision = RestartPolicy(max_failures=3).decide(failure)
    assert decision.action is Action.FAIL
    assert "rank 1: ValueError: unknown model 'resnet19'" in decision.why


def test_killed_worker_is_retried() -> None:
    failure = failure_from_errors(
        {0: TrainFunctionError("collective", 23, GLOO_RESET), 1: ActorDiedError()}, failures_so_far=0
    )
    assert failure.kinds == {FailureKind.COLLECTIVE, FailureKind.WORKER_DIED}
    assert failure.steps_done == 23
    assert RestartPolicy(max_failures=1).decide(failure).action is Action.RETRY


def test_foreign_exception_is_classified_by_its_text() -> None:
    failure = failure_from_errors({0: RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")}, failures_so_far=0)
    assert failure.kinds == {FailureKind.OUT_OF_MEMORY}
    assert RestartPolicy(max_failures=3).decide(failure).action is Action.FAIL
