"""What the chaos soak (`bench/chaos.py`) checks of each trial after its sweep ended, as functions of plain evidence:
the steps the trial reports at, the train loop's epoch-end reports and per-step losses, its fault-free twin's losses,
its MLflow runs, metric history and registry versions. Each check returns counts that are 0 when nothing was lost,
repeated or duplicated, so the soak's figures are sums of them (`tests/test_soak_checks.py` feeds them doctored
evidence).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from orchestrator.training.metric_names import ATTEMPT, EPOCH, EPOCH_SAMPLES, LR, STEP, TRACKED, TRAIN_LOSS

# Per-step losses of a restarted run against its uninterrupted twin (fp32 on CPU: the restart is exact up to the
# order of float reductions), the bound of the project's restart tests.
LOSS_TOLERANCE = 1e-4
# A logged value against the report it came from: MLflow stores doubles, so only a different value differs.
VALUE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TrialEvidence:
    """Everything the soak gathered about one trial once its sweep ended."""

    trial_id: str
    epochs: int  # recipe.epochs
    samples_per_epoch: int  # recipe.steps_per_epoch x recipe.batch_size: what every epoch must train
    # The steps the trial reports at, from its config alone (`report_steps`): the points its MLflow run must hold.
    report_steps: Sequence[int]
    # The epoch-end reports the train loop made, from its final checkpoint's audit trail (`TrainState.epoch_reports`,
    # carried across restarts): each epoch's `epoch_samples` is the train loop's count over all ranks.
    epoch_reports: Sequence[Mapping[str, Any]]
    step_losses: Sequence[float]  # the same audit trail: rank 0's loss of every step, in step order
    twin_losses: Sequence[float]  # the same of the fault-free twin of this trial's config
    runs: Sequence[str]  # MLflow runs tagged with this sweep and trial
    history: Mapping[str, Sequence[tuple[int, float]]]  # metric -> (step, value) logged in the trial's run
    versions: Sequence[str]  # registered model versions whose source run is one of `runs`


def report_steps(epochs: int, steps_per_epoch: int, every_steps: int) -> list[int]:
    """The steps a trial reports at: every `checkpoint.every_steps`-th step and every epoch's last step (the train
    loop's rule: a report goes with each checkpoint, skipped or not)."""
    total = epochs * steps_per_epoch
    return [s for s in range(1, total + 1) if s % every_steps == 0 or s % steps_per_epoch == 0]


@dataclass
class Findings:
    """What went wrong, counted; all zero for a trial that came through its faults intact."""

    samples_lost: int = 0
    samples_repeated: int = 0
    steps_differing: int = 0  # steps whose loss differs from the twin's (or exists in one run only)
    duplicate_runs: int = 0
    missing_runs: int = 0
    metric_points_lost: int = 0
    metric_points_duplicated: int = 0
    metric_points_wrong: int = 0  # logged at a reported step with another value than the report's
    duplicate_versions: int = 0
    missing_versions: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: Findings) -> None:
        for f in fields(self):
            if f.name == "problems":
                self.problems.extend(other.problems)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def clean(self) -> bool:
        return not self.problems


def check_epoch_samples(evidence: TrialEvidence) -> Findings:
    """Every epoch trained exactly `samples_per_epoch` samples over all ranks, by the train loop's epoch-end count; an
    epoch missing from the audit trail lost all of its samples, one recorded twice repeated them."""
    found = Findings()
    trained: Counter[int] = Counter()
    for report in evidence.epoch_reports:
        trained[int(report[EPOCH])] += int(report[EPOCH_SAMPLES])
    expected = evidence.samples_per_epoch
    for epoch in range(evidence.epochs):
        got = trained.get(epoch, 0)
        if got != expected:
            found.samples_lost += max(0, expected - got)
            found.samples_repeated += max(0, got - expected)
            found.problems.append(f"{evidence.trial_id}: epoch {epoch} trained {got} samples of {expected}")
    for epoch in sorted(set(trained) - set(range(evidence.epochs))):
        found.samples_repeated += trained[epoch]
        found.problems.append(f"{evidence.trial_id}: epoch {epoch} is beyond the trial's {evidence.epochs} epochs")
    return found


def _far(value: float, reference: float, tolerance: float) -> bool:
    """`value` is not within `tolerance` of `reference` (a NaN never is)."""
    return not (math.isfinite(value) and abs(value - reference) <= tolerance)


def check_losses(evidence: TrialEvidence, tolerance: float = LOSS_TOLERANCE) -> Findings:
    """The per-step losses equal the fault-free twin's within `tolerance`, step for step, none missing or extra."""
    found = Findings()
    ours, twin = list(evidence.step_losses), list(evidence.twin_losses)
    total = max(evidence.report_steps, default=0)  # the trial's last step reports
    if len(twin) != total:
        # A twin that did not run every step cannot vouch for anything: the comparison would be vacuous.
        found.steps_differing = total
        found.problems.append(f"{evidence.trial_id}: the twin has {len(twin)} step losses of {total}")
        return found
    differing = [step for step, (a, b) in enumerate(zip(ours, twin, strict=False), start=1) if _far(a, b, tolerance)]
    found.steps_differing = len(differing) + abs(len(ours) - len(twin))
    if found.steps_differing:
        found.problems.append(
            f"{evidence.trial_id}: {len(ours)} step losses against the twin's {len(twin)};"
            f" differing at steps {differing[:10]}"
        )
    return found


def check_runs(evidence: TrialEvidence) -> Findings:
    """Exactly one MLflow run for the trial, and exactly one registered version from it."""
    found = Findings()
    if not evidence.runs:
        found.missing_runs = 1
        found.problems.append(f"{evidence.trial_id}: no MLflow run")
    found.duplicate_runs = max(0, len(evidence.runs) - 1)
    if found.duplicate_runs:
        found.problems.append(f"{evidence.trial_id}: {len(evidence.runs)} MLflow runs {list(evidence.runs)}")
    if not evidence.versions:
        found.missing_versions = 1
        found.problems.append(f"{evidence.trial_id}: no registered model version")
    found.duplicate_versions = max(0, len(evidence.versions) - 1)
    if found.duplicate_versions:
        found.problems.append(f"{evidence.trial_id}: registered {len(evidence.versions)} times {evidence.versions}")
    return found


# What every report carries as a finite number (mid-epoch reports carry NaN for the epoch-end values, which the
# tracker drops): the points the trial's run holds at every report step.
EVERY_REPORT: tuple[str, ...] = (EPOCH, TRAIN_LOSS, LR, ATTEMPT)


def expected_points(evidence: TrialEvidence) -> dict[str, dict[int, float | None]]:
    """metric -> step -> value (None: any value) that the trial's MLflow run must hold: the values every report
    carries at each report step, and every tracked number of each epoch-end report with its value."""
    points: dict[str, dict[int, float | None]] = {name: dict.fromkeys(evidence.report_steps) for name in EVERY_REPORT}
    for report in evidence.epoch_reports:
        step = int(report[STEP])
        for name in TRACKED:
            value = report.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            points.setdefault(name, {})[step] = float(value) if name not in EVERY_REPORT else None
    return points


def check_history(evidence: TrialEvidence) -> Findings:
    """The trial's run holds every point the trial reported, once, with the reported value: no gap across an
    outage, no point logged twice by a flush or a restart."""
    found = Findings()
    for name, wanted in expected_points(evidence).items():
        logged = list(evidence.history.get(name, ()))
        steps = Counter(step for step, _ in logged)
        values = dict(logged)
        lost = sorted(set(wanted) - set(steps))
        duplicated = sum(n - 1 for n in steps.values())
        checked = [(s, v) for s, v in wanted.items() if v is not None and s in values]
        wrong = [s for s, v in checked if _far(values[s], v, VALUE_TOLERANCE * max(1.0, abs(v)))]
        found.metric_points_lost += len(lost)
        found.metric_points_duplicated += duplicated
        found.metric_points_wrong += len(wrong)
        if lost or duplicated or wrong:
            found.problems.append(
                f"{evidence.trial_id}: {name}: {len(lost)} points lost (steps {lost[:10]}), {duplicated} logged"
                f" twice, {len(wrong)} with another value (steps {wrong[:10]})"
            )
    return found


def check_trial(evidence: TrialEvidence) -> Findings:
    found = Findings()
    for check in (check_epoch_samples, check_losses, check_runs, check_history):
        found.add(check(evidence))
    return found
