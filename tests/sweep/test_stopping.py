"""`TrainRun` across the trials of one reused Tune trial actor: what `reset_config()` waits for before the next
trial starts on the actor (the Ray side is in tests/sweep/test_sweep_layer.py and test_end_to_end.py's ASHA sweeps)."""

from __future__ import annotations

import threading
import time

from orchestrator.sweep.stopping import TrainRun


def test_a_finished_trial_hands_its_actor_on_at_once() -> None:
    run = TrainRun()
    run.begin()
    run.end()
    started = time.monotonic()
    run.hand_on()
    assert time.monotonic() - started < 0.5
    assert not run.stopping.is_set()  # the next trial's end is a failure again if it fails


def test_a_trial_stopped_early_is_aborted_and_its_function_awaited() -> None:
    run = TrainRun()
    run.begin()  # its function still runs: Tune stopped it and now resets the actor for the next trial
    ended_at: list[float] = []

    def trial_function_returns_once_stopped() -> None:
        run.stopping.wait(5)
        time.sleep(0.3)  # the Train run winds down after its abort
        ended_at.append(time.monotonic())
        run.end()

    thread = threading.Thread(target=trial_function_returns_once_stopped)
    thread.start()
    run.hand_on()
    handed_on_at = time.monotonic()
    thread.join(5)
    assert ended_at and ended_at[0] <= handed_on_at  # not before the function returned
    assert not run.stopping.is_set()


def test_abort_without_a_running_train_run_reaches_no_controller() -> None:
    run = TrainRun()
    run.abort()  # no channel: nothing to end (a trial stopped before its run started)
    assert run.stopping.is_set()
