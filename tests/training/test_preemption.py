"""The preemption decisions without Ray: when a step boundary checkpoints for a notice, what a preempted worker's
error costs the restart policy (nothing: Ray Train's `max_preemption_failures` counts it), and the sweep key."""

from __future__ import annotations

from typing import Any

import pytest
from ray.exceptions import RayActorError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

from orchestrator.sweep.config import ConfigError, parse_sweep
from orchestrator.training.controller_callbacks import FailFastCallback, TrialFailedFast, failure_from_errors
from orchestrator.training.preemption import NoticeDecision, PreemptionNotices
from orchestrator.training.restart_policy import Action, FailureKind, RestartPolicy, TrainFunctionError

GLOO_RESET = "RuntimeError: [gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"


@pytest.mark.parametrize(
    ("handled", "notice", "due", "expected", "handled_after"),
    [
        ((), None, False, NoticeDecision(), ()),  # no notice: nothing
        ((), None, True, NoticeDecision(), ()),
        ((), ("a",), False, NoticeDecision(new_preemption=True, write_checkpoint=True), ("a",)),
        # The boundary's own checkpoint (periodic or the epoch's end) serves the notice: counted, no second one.
        ((), ("a",), True, NoticeDecision(new_preemption=True, write_checkpoint=False), ("a",)),
        (("a",), ("a",), False, NoticeDecision(), ("a",)),  # the same notice on later boundaries: once only
        (("a", "b"), ("b",), False, NoticeDecision(), ("a", "b")),
        # A further node of the group drained: a further preemption, a further checkpoint.
        (("a",), ("a", "b"), False, NoticeDecision(new_preemption=True, write_checkpoint=True), ("a", "b")),
    ],
)
def test_notice_decision_table(
    handled: tuple[str, ...],
    notice: tuple[str, ...] | None,
    due: bool,
    expected: NoticeDecision,
    handled_after: tuple[str, ...],
) -> None:
    notices = PreemptionNotices(frozenset(handled))
    assert notices.decide(notice, checkpoint_due=due) == expected
    assert notices.handled == frozenset(handled_after)


def boundaries(notice_from: int, steps: int, every: int, steps_per_epoch: int) -> tuple[list[int], int]:
    """Drive the decisions over `steps` boundaries the way the train loop does, with the notice visible from the
    boundary after step `notice_from` on; returns (the steps checkpointed, preemptions counted)."""
    notices, written, preemptions = PreemptionNotices(), [], 0
    for step in range(1, steps + 1):
        due = step % every == 0 or step % steps_per_epoch == 0
        decision = notices.decide(["node-b"] if step >= notice_from else None, checkpoint_due=due)
        preemptions += decision.new_preemption
        if due or decision.write_checkpoint:
            written.append(step)
    return written, preemptions


def test_the_notice_is_checkpointed_at_the_first_boundary_after_it_arrives() -> None:
    # A notice that arrives during step 6 is seen at the boundary after it: the checkpoint holds step 6, so a
    # restart loses at most the step that was running when the notice came.
    assert boundaries(notice_from=6, steps=16, every=10, steps_per_epoch=8) == ([6, 8, 10, 16], 1)
    # At a periodic checkpoint's boundary that checkpoint is the notice's: none extra.
    assert boundaries(notice_from=10, steps=16, every=10, steps_per_epoch=8) == ([8, 10, 16], 1)
    assert boundaries(notice_from=99, steps=16, every=10, steps_per_epoch=8) == ([8, 10, 16], 0)


def preempted_death() -> RayActorError:
    return RayActorError(actor_id="ab" * 16, error_msg="the actor's node was preempted", preempted=True)


def test_a_preempted_worker_is_retried_without_charging_max_failures() -> None:
    errors: dict[int, Exception] = {
        0: TrainFunctionError("collective", 12, GLOO_RESET),  # the survivor's collateral error
        1: WorkerHealthCheckFailedError("health check failed", preempted_death()),
    }
    failure = failure_from_errors(errors, failures_so_far=0)
    assert failure.kinds == {FailureKind.COLLECTIVE, FailureKind.PREEMPTED}
    decision = RestartPolicy(max_failures=0).decide(failure)
    assert decision.action is Action.RETRY
    assert "max_preemptions" in decision.why and "max_failures=0 is not charged" in decision.why


def test_fail_fast_callback_counts_failures_not_preemptions() -> None:
    callback = FailFastCallback(RestartPolicy(max_failures=1))
    run: Any = type("Run", (), {"run_config": type("Config", (), {"name": "t"})()})()
    # Ray Train calls the hook at every poll of a preempted group until the deadline: none of them counts.
    for _ in range(5):
        callback.after_exception(run, {1: preempted_death()})
    assert callback.failures == 0
    callback.after_exception(run, {1: RayActorError(actor_id="cd" * 16, error_msg="killed")})  # a real death
    assert callback.failures == 1
    with pytest.raises(TrialFailedFast, match="max_failures=1 reached"):
        callback.after_exception(run, {1: RayActorError(actor_id="cd" * 16, error_msg="killed")})


def sweep(**fields: Any) -> dict[str, Any]:
    return {"name": "spot", "data": {"train": "/data/train"}, **fields}


def test_max_preemptions_reaches_every_trial_and_is_validated() -> None:
    assert parse_sweep(sweep()).expand("/tmp/runs")[0].max_preemptions == -1  # unlimited, as Ray Train's default
    (trial,) = parse_sweep(sweep(max_preemptions=20)).expand("/tmp/runs")
    assert (trial.max_preemptions, trial.max_failures) == (20, 3)
    with pytest.raises(ConfigError, match="max_preemptions"):
        parse_sweep(sweep(max_preemptions=-2))
