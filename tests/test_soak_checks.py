"""The chaos soak's checks (`bench/soak_checks.py`) and fault schedule (`bench/soak_faults.py`) on doctored evidence:
each kind of loss the soak reports (a lost or repeated sample, a step that trained differently, a duplicate run or
version, a metric point lost, logged twice or with another value) is counted, and intact evidence counts nothing."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from soak_checks import (
    TrialEvidence,
    check_epoch_samples,
    check_history,
    check_trial,
    expected_points,
    report_steps,
)
from soak_faults import (
    CHECKPOINT_KILL,
    DRIVER_KILL,
    IN_TRIAL,
    OUTSIDE,
    SECOND_FAULT,
    Shape,
    draw_schedule,
    fault_counts,
)

EPOCHS, STEPS, EVERY, BATCH = 2, 4, 2, 16


def _epoch_report(epoch: int, samples: int = STEPS * BATCH) -> dict[str, Any]:
    step = (epoch + 1) * STEPS
    return {
        "epoch": epoch,
        "step": step,
        "is_epoch_end": True,
        "train_loss": 2.0 - epoch / 10,
        "lr": 0.1,
        "attempt": 0,
        "epoch_samples": samples,
        "val_loss": 2.5 - epoch / 10,
        "val_top1_err": 0.9,
        "val_samples": 120,
        "val_top5_err": float("nan"),  # not a number MLflow holds: not expected there
    }


def intact() -> TrialEvidence:
    losses = [2.3 - 0.01 * s for s in range(EPOCHS * STEPS)]
    base = TrialEvidence(
        trial_id="sweep/000",
        epochs=EPOCHS,
        samples_per_epoch=STEPS * BATCH,
        report_steps=report_steps(EPOCHS, STEPS, EVERY),
        epoch_reports=[_epoch_report(0), _epoch_report(1)],
        step_losses=losses,
        twin_losses=[x + 3e-5 for x in losses],  # within the 1e-4 of an exact restart
        runs=["run-a"],
        history={},
        versions=["1"],
    )
    history = {
        name: [(step, 0.5 if value is None else value) for step, value in sorted(points.items())]
        for name, points in expected_points(base).items()
    }
    return dataclasses.replace(base, history=history)


def test_report_steps_are_every_checkpoint_and_every_epoch_end() -> None:
    assert report_steps(2, 4, 2) == [2, 4, 6, 8]
    assert report_steps(2, 4, 3) == [3, 4, 6, 8]
    assert report_steps(3, 3, 100) == [3, 6, 9]


def test_intact_evidence_counts_nothing() -> None:
    found = check_trial(intact())
    assert found.problems == []
    assert dataclasses.asdict(found) == {f.name: ([] if f.name == "problems" else 0) for f in dataclasses.fields(found)}
    # What the run must hold: the four values of every report at each of the 4 report steps, and each epoch end's
    # numbers with their values (NaN left out).
    points = expected_points(intact())
    assert points["train_loss"] == {2: None, 4: None, 6: None, 8: None}
    assert points["epoch_samples"] == {4: 64.0, 8: 64.0}
    assert "val_top5_err" not in points


def test_a_short_epoch_loses_samples_and_a_missing_epoch_all_of_its_samples() -> None:
    evidence = intact()
    short = dataclasses.replace(evidence, epoch_reports=[_epoch_report(0), _epoch_report(1, samples=48)])
    assert (check_epoch_samples(short).samples_lost, check_epoch_samples(short).samples_repeated) == (16, 0)
    missing = dataclasses.replace(evidence, epoch_reports=[_epoch_report(0)])
    found = check_epoch_samples(missing)
    assert (found.samples_lost, found.samples_repeated) == (64, 0)
    assert found.problems == ["sweep/000: epoch 1 trained 0 samples of 64"]


def test_an_epoch_trained_too_long_or_twice_repeats_samples() -> None:
    evidence = intact()
    longer = dataclasses.replace(evidence, epoch_reports=[_epoch_report(0, samples=80), _epoch_report(1)])
    assert (check_epoch_samples(longer).samples_lost, check_epoch_samples(longer).samples_repeated) == (0, 16)
    twice = dataclasses.replace(evidence, epoch_reports=[_epoch_report(0), _epoch_report(0), _epoch_report(1)])
    assert check_epoch_samples(twice).samples_repeated == 64
    beyond = dataclasses.replace(evidence, epoch_reports=[_epoch_report(0), _epoch_report(1), _epoch_report(2)])
    assert check_epoch_samples(beyond).samples_repeated == 64


def test_a_step_that_trained_differently_from_the_twin_is_counted() -> None:
    evidence = intact()
    off = list(evidence.step_losses)
    off[5] += 2e-4
    assert check_trial(dataclasses.replace(evidence, step_losses=off)).steps_differing == 1
    assert check_trial(dataclasses.replace(evidence, step_losses=evidence.step_losses[:-1])).steps_differing == 1
    off[2] = float("nan")
    assert check_trial(dataclasses.replace(evidence, step_losses=off)).steps_differing == 2
    # Neither run recorded its losses: nothing was compared, which is not a pass.
    assert check_trial(dataclasses.replace(evidence, step_losses=[], twin_losses=[])).steps_differing == 8


def test_duplicate_and_missing_runs_and_versions_are_counted() -> None:
    evidence = intact()
    found = check_trial(dataclasses.replace(evidence, runs=["run-a", "run-b", "run-c"], versions=["1", "2"]))
    assert (found.duplicate_runs, found.duplicate_versions, found.missing_runs, found.missing_versions) == (2, 1, 0, 0)
    found = check_trial(dataclasses.replace(evidence, runs=[], versions=[]))
    assert (found.duplicate_runs, found.duplicate_versions, found.missing_runs, found.missing_versions) == (0, 0, 1, 1)


def test_a_metric_gap_a_point_logged_twice_and_a_wrong_value_are_counted() -> None:
    evidence = intact()
    history = {name: list(points) for name, points in evidence.history.items()}
    history["train_loss"] = [p for p in history["train_loss"] if p[0] != 6]  # the outage's gap
    history["lr"].append(history["lr"][0])  # flushed twice
    history["epoch_samples"] = [(4, 64.0), (8, 63.0)]  # another value than the report's
    del history["val_loss"]  # never logged at all: both epoch ends lost
    found = check_history(dataclasses.replace(evidence, history=history))
    assert (found.metric_points_lost, found.metric_points_duplicated, found.metric_points_wrong) == (3, 1, 1)
    assert any("train_loss: 1 points lost (steps [6])" in p for p in found.problems)


def test_the_schedule_is_the_seeds_and_every_fault_can_fire() -> None:
    shape = Shape(epochs=2, steps_per_epoch=4, every_steps=2, workers=2)
    draws = [draw_schedule(random.Random(7), shape, (30.0, 60.0)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(0)
    schedules = [draw_schedule(rng, shape, (30.0, 60.0)) for _ in range(200)]
    for faults in schedules:
        first, *rest, outside = faults
        assert first.kind in IN_TRIAL and first.attempt == 0 and outside.kind in OUTSIDE
        assert 1 <= first.at_step < shape.total_steps and 0 <= first.rank < shape.workers
        for fault in faults:
            if fault.during == "checkpoint":
                assert fault.at_step in shape.checkpoint_steps()
        for second in rest:
            # Attempt 1 resumes at or before the first kill's step: the second fault's step is one it runs.
            assert second.kind == SECOND_FAULT and second.attempt == 1 and first.at_step < second.at_step
        assert outside.at_step % shape.steps_per_epoch != 0  # mid-epoch
        assert outside.seconds == 0.0 if outside.kind == DRIVER_KILL else 30.0 <= outside.seconds <= 60.0
        assert outside.chaos_entry() is None and first.chaos_entry() is not None
    counts = fault_counts(schedules)
    assert set(counts) == {*IN_TRIAL, *OUTSIDE}
    assert counts[CHECKPOINT_KILL] + counts["worker_kill"] == 200
    assert sum(counts[k] for k in OUTSIDE) == 200


@pytest.mark.parametrize("epochs", [1, 3])
def test_expected_points_follow_the_config(epochs: int) -> None:
    evidence = dataclasses.replace(
        intact(),
        epochs=epochs,
        report_steps=report_steps(epochs, STEPS, EVERY),
        epoch_reports=[_epoch_report(e) for e in range(epochs)],
    )
    assert sorted(expected_points(evidence)["epoch"]) == report_steps(epochs, STEPS, EVERY)
    assert sorted(expected_points(evidence)["val_loss"]) == [STEPS * (e + 1) for e in range(epochs)]
