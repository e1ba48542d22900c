"""The restart policy over a table of failures (no Ray): what is retried, what fails at once, and why."""

from __future__ import annotations

import pickle

import pytest

from orchestrator.training.restart_policy import (
    Action,
    Failure,
    FailureKind,
    RestartPolicy,
    TrainFunctionError,
    classify_message,
)

DIED = FailureKind.WORKER_DIED
COLL = FailureKind.COLLECTIVE
OOM = FailureKind.OUT_OF_MEMORY
CONF = FailureKind.CONFIG
CODE = FailureKind.CODE


def failure(*kinds: FailureKind, steps: int = 5, before: int = 0) -> Failure:
    return Failure(kinds=frozenset(kinds), reason="boom", steps_done=steps, failures_so_far=before)


@pytest.mark.parametrize(
    ("max_failures", "failure", "action", "why"),
    [
        # A dead worker is retried within the budget, also before the first step (a node can be lost any time).
        (3, failure(DIED), Action.RETRY, "a worker died; restart 1 of 3"),
        (3, failure(DIED, steps=0), Action.RETRY, "a worker died; restart 1 of 3"),
        (3, failure(DIED, COLL), Action.RETRY, "a worker died"),
        (3, failure(DIED, before=2), Action.RETRY, "restart 3 of 3"),
        (3, failure(DIED, before=3), Action.FAIL, "max_failures=3 reached (a worker died): boom"),
        (0, failure(DIED), Action.FAIL, "max_failures=0 reached"),
        (-1, failure(DIED, before=1000), Action.RETRY, "restart 1001 of unlimited"),
        (3, failure(COLL), Action.RETRY, "a collective operation failed"),
        (3, failure(COLL, steps=0), Action.RETRY, "a collective operation failed"),
        # Deterministic errors before the first step fail at once, whatever the budget.
        (3, failure(CONF, steps=0), Action.FAIL, "config error before the first training step"),
        (3, failure(CODE, steps=0), Action.FAIL, "code error before the first training step"),
        (3, failure(OOM, steps=0), Action.FAIL, "out_of_memory error before the first training step"),
        (-1, failure(CONF, steps=0), Action.FAIL, "a restart would fail the same way: boom"),
        # ... also when the other ranks only saw the collateral collective error.
        (3, failure(CONF, COLL, steps=0), Action.FAIL, "config error before the first training step"),
        # After progress, one is worth another attempt from the checkpoint.
        (3, failure(OOM, steps=7), Action.RETRY, "out_of_memory error after progress"),
        (3, failure(CODE, steps=7, before=3), Action.FAIL, "max_failures=3 reached"),
        # A broken sample count fails at once even after progress and with a dead peer: its numbers are wrong.
        (3, failure(FailureKind.INVARIANT, COLL, steps=7), Action.FAIL, "sample-count invariant failed"),
        (-1, failure(FailureKind.INVARIANT, DIED, steps=7), Action.FAIL, "its metrics would be wrong: boom"),
    ],
)
def test_decide(max_failures: int, failure: Failure, action: Action, why: str) -> None:
    decision = RestartPolicy(max_failures).decide(failure)
    assert decision.action is action
    assert why in decision.why


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer", COLL),
        ("DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error", COLL),
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", OOM),
        ("ValueError: resnet19 is not a registered model", CODE),
    ],
)
def test_classify_message(text: str, kind: FailureKind) -> None:
    assert classify_message(text) is kind


def test_train_function_error_survives_pickling() -> None:
    # It travels from the worker to Ray Train's controller by pickle.
    error = pickle.loads(pickle.dumps(TrainFunctionError("config", 0, "ValueError: bad")))
    assert (error.kind, error.steps_done, error.reason) == (CONF, 0, "ValueError: bad")
    assert str(error) == "[config, 0 steps done] ValueError: bad"
