"""Trial/sweep state machine and the persisted record: pure logic, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep.state import (
    TRANSITIONS,
    Champion,
    InvalidTransition,
    SweepProgress,
    SweepState,
    TrialState,
    TrialStatus,
    check_transition,
    final_sweep_state,
    load_progress,
    save_model,
)


def _progress(*states: TrialState) -> SweepProgress:
    trials = [TrialStatus(id=f"t{i}", config={}, state=s) for i, s in enumerate(states)]
    return SweepProgress(sweep="s", trials=trials)


def test_terminal_states() -> None:
    assert {s for s in TrialState if s.is_terminal} == {
        TrialState.SUCCEEDED,
        TrialState.FAILED,
        TrialState.CANCELLED,
        TrialState.STOPPED,
        TrialState.BUDGET_EXHAUSTED,
    }
    assert {s for s in TrialState if s.is_final} == {TrialState.SUCCEEDED, TrialState.STOPPED}


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(TrialState)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (TrialState.PENDING, TrialState.RUNNING),
        (TrialState.RUNNING, TrialState.RESTARTING),
        (TrialState.RESTARTING, TrialState.RUNNING),
        (TrialState.RUNNING, TrialState.SUCCEEDED),
        (TrialState.RUNNING, TrialState.PENDING),
        (TrialState.FAILED, TrialState.PENDING),
        (TrialState.CANCELLED, TrialState.PENDING),
        (TrialState.RUNNING, TrialState.STOPPED),
        (TrialState.RESTARTING, TrialState.STOPPED),
        (TrialState.RUNNING, TrialState.BUDGET_EXHAUSTED),
        (TrialState.PENDING, TrialState.BUDGET_EXHAUSTED),
        (TrialState.BUDGET_EXHAUSTED, TrialState.PENDING),
    ],
)
def test_allowed(current: TrialState, new: TrialState) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new", "message"),
    [
        (
            TrialState.SUCCEEDED,
            TrialState.RUNNING,
            "trial state SUCCEEDED -> RUNNING is not allowed; from SUCCEEDED: none (final)",
        ),
        (
            TrialState.PENDING,
            TrialState.SUCCEEDED,
            "trial state PENDING -> SUCCEEDED is not allowed; "
            "from PENDING: BUDGET_EXHAUSTED, CANCELLED, FAILED, RUNNING",
        ),
        (
            TrialState.STOPPED,
            TrialState.PENDING,
            "trial state STOPPED -> PENDING is not allowed; from STOPPED: none (final)",
        ),
        (
            TrialState.PENDING,
            TrialState.STOPPED,
            "trial state PENDING -> STOPPED is not allowed; from PENDING: BUDGET_EXHAUSTED, CANCELLED, FAILED, RUNNING",
        ),
        (TrialState.FAILED, TrialState.RUNNING, "trial state FAILED -> RUNNING is not allowed; from FAILED: PENDING"),
    ],
)
def test_refused(current: TrialState, new: TrialState, message: str) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition(current, new)
    assert str(info.value) == message


def test_restart_is_recorded_and_resume_keeps_finished_trials() -> None:
    progress = _progress(TrialState.RUNNING, TrialState.SUCCEEDED, TrialState.FAILED, TrialState.PENDING)
    progress.move("t0", TrialState.RESTARTING)
    progress.move("t0", TrialState.RUNNING)
    assert progress.requeue_unfinished() == ["t0", "t2"]
    assert [t.state for t in progress.trials] == [
        TrialState.PENDING,
        TrialState.SUCCEEDED,
        TrialState.PENDING,
        TrialState.PENDING,
    ]


def test_resume_never_requeues_a_trial_stopped_early() -> None:
    progress = _progress(TrialState.STOPPED, TrialState.BUDGET_EXHAUSTED, TrialState.SUCCEEDED, TrialState.FAILED)
    assert progress.requeue_unfinished() == ["t1", "t3"]
    assert [t.state for t in progress.trials] == [
        TrialState.STOPPED,
        TrialState.PENDING,
        TrialState.SUCCEEDED,
        TrialState.PENDING,
    ]


def test_cancel_leaves_finished_trials() -> None:
    progress = _progress(TrialState.RUNNING, TrialState.SUCCEEDED, TrialState.PENDING)
    progress.cancel_unfinished()
    assert [t.state for t in progress.trials] == [TrialState.CANCELLED, TrialState.SUCCEEDED, TrialState.CANCELLED]
    assert progress.state == SweepState.CANCELLED


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([TrialState.SUCCEEDED, TrialState.SUCCEEDED], SweepState.SUCCEEDED),
        ([TrialState.SUCCEEDED, TrialState.FAILED], SweepState.FAILED),
        ([TrialState.CANCELLED, TrialState.FAILED], SweepState.CANCELLED),
        ([TrialState.SUCCEEDED, TrialState.RUNNING], SweepState.INTERRUPTED),
        ([TrialState.SUCCEEDED, TrialState.STOPPED], SweepState.SUCCEEDED),
        ([TrialState.STOPPED, TrialState.BUDGET_EXHAUSTED, TrialState.FAILED], SweepState.BUDGET_EXHAUSTED),
        ([TrialState.BUDGET_EXHAUSTED, TrialState.CANCELLED], SweepState.CANCELLED),
    ],
)
def test_final_sweep_state(states: list[TrialState], expected: SweepState) -> None:
    assert final_sweep_state(states) == expected


def test_progress_round_trip_and_json_shape(tmp_path: Path) -> None:
    progress = _progress(TrialState.RUNNING)
    progress.trials[0].metrics = {"val_top1_err": 0.25}
    path = tmp_path / "progress.json"
    save_model(path, progress)
    assert load_progress(path) == progress
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file
    payload = progress.as_json()
    assert set(payload) == {"sweep", "state", "budget_used", "trials", "champion"}
    assert set(payload["trials"][0]) >= {"id", "config", "state", "attempts", "metrics", "mlflow_run_id", "reason"}
    assert payload["trials"][0]["state"] == "RUNNING"


def test_a_failed_trial_keeps_its_reason_until_it_runs_again() -> None:
    progress = _progress(TrialState.RUNNING)
    trial_id = progress.trials[0].id
    progress.move(trial_id, TrialState.FAILED, error="Traceback ...\nRuntimeError: boom", reason="boom")
    assert (progress.trials[0].error, progress.trials[0].reason) == ("Traceback ...\nRuntimeError: boom", "boom")
    progress.requeue_unfinished()
    assert progress.trials[0].reason == "boom"  # PENDING again, the last failure still explains it
    progress.move(trial_id, TrialState.RUNNING)
    assert (progress.trials[0].error, progress.trials[0].reason) == (None, None)


def test_champion_says_which_version_and_why_it_was_kept() -> None:
    crowned = Champion(model="m", version="3", val_top1_err=0.125, sweep_id="m-1")
    assert crowned.describe() == "m version 3 (val top-1 error 12.50%, sweep m-1)"
    kept = crowned.model_copy(update={"challenger_version": "5", "challenger_val_top1_err": 0.125})
    assert kept.describe() == (
        "m version 3 (val top-1 error 12.50%, sweep m-1); kept: this sweep's best, version 5 at 12.50%, is not better"
    )


def test_an_elastic_trial_shows_its_live_workers_out_of_the_range_max() -> None:
    from orchestrator.sweep.state import TrialStatus

    elastic = {"resources": {"workers": {"min": 1, "max": 4, "resize_check_s": 60.0}}}
    assert TrialStatus(id="t", config=elastic).workers == "-"
    assert TrialStatus(id="t", config=elastic, metrics={"workers": 3.0}).workers == "3/4"
    assert TrialStatus(id="t", config={"resources": {"workers": 2}}, metrics={"workers": 2.0}).workers == "2/2"
