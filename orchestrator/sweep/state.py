"""Trial and sweep state: one enum per level, one table of allowed transitions, a small persisted record.

Pure logic, no Ray and no MLflow (the Ray Train v2 controller's `controller/state.py` pattern): the sweep driver
applies transitions as Tune reports on trials, the CLI reads the same files after the cluster is gone
(`resnet-orch status SWEEP --json`).
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.training.metric_names import WORKERS
from pipelines.files import write_atomic


class TrialState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # The trial scheduler (`scheduler:`, e.g. ASHA) ended it early: a normal outcome, its checkpoints kept.
    STOPPED = "STOPPED"
    # The sweep's `budget:` ran out while it ran or before it started.
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"

    @property
    def is_terminal(self) -> bool:
        """No further progress in this run of the sweep driver (a `resume` may re-queue FAILED/CANCELLED)."""
        return self in _TERMINAL

    @property
    def is_final(self) -> bool:
        """Never run again, by this driver or a `resume`: finished, or stopped early by the trial scheduler."""
        return self in (TrialState.SUCCEEDED, TrialState.STOPPED)


_TERMINAL = frozenset(
    {TrialState.SUCCEEDED, TrialState.FAILED, TrialState.CANCELLED, TrialState.STOPPED, TrialState.BUDGET_EXHAUSTED}
)

# Every allowed edge in one place. RUNNING/RESTARTING -> PENDING: the sweep driver died and `resume` queues the
# trial again; FAILED/CANCELLED/BUDGET_EXHAUSTED -> PENDING: `resume` retries what did not finish (a budget that is
# still spent starts none of them: `budget.py`). SUCCEEDED and STOPPED are final: a resumed sweep never re-runs a
# finished trial, nor one its trial scheduler stopped. PENDING -> BUDGET_EXHAUSTED: the budget ran out before the
# trial started.
TRANSITIONS: dict[TrialState, frozenset[TrialState]] = {
    TrialState.PENDING: frozenset(
        {TrialState.RUNNING, TrialState.FAILED, TrialState.CANCELLED, TrialState.BUDGET_EXHAUSTED}
    ),
    TrialState.RUNNING: frozenset({TrialState.RESTARTING, TrialState.PENDING, *_TERMINAL}),
    TrialState.RESTARTING: frozenset({TrialState.RUNNING, TrialState.PENDING, *_TERMINAL}),
    TrialState.SUCCEEDED: frozenset(),
    TrialState.STOPPED: frozenset(),
    TrialState.FAILED: frozenset({TrialState.PENDING}),
    TrialState.CANCELLED: frozenset({TrialState.PENDING}),
    TrialState.BUDGET_EXHAUSTED: frozenset({TrialState.PENDING}),
}


class InvalidTransition(ValueError):
    """A state change the table does not allow (a bug in the driver, never bad user input)."""


def check_transition(current: TrialState, new: TrialState) -> None:
    if new != current and new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (final)"
        raise InvalidTransition(f"trial state {current} -> {new} is not allowed; from {current}: {allowed}")


class SweepState(StrEnum):
    PENDING = "PENDING"  # submitted, the driver has not started yet
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"  # every trial succeeded
    FAILED = "FAILED"  # the driver finished and at least one trial failed
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"  # the driver died with trials unfinished: `resnet-orch resume SWEEP`
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"  # `budget:` ran out; unfinished trials were stopped or never started

    @property
    def is_terminal(self) -> bool:
        return self in (SweepState.SUCCEEDED, SweepState.FAILED, SweepState.CANCELLED, SweepState.BUDGET_EXHAUSTED)


def final_sweep_state(trial_states: list[TrialState]) -> SweepState:
    """The sweep's state once its driver has returned (a trial its scheduler stopped early counts as finished)."""
    if any(not s.is_terminal for s in trial_states):
        return SweepState.INTERRUPTED
    if any(s == TrialState.CANCELLED for s in trial_states):
        return SweepState.CANCELLED
    if any(s == TrialState.BUDGET_EXHAUSTED for s in trial_states):
        return SweepState.BUDGET_EXHAUSTED
    if any(s == TrialState.FAILED for s in trial_states):
        return SweepState.FAILED
    return SweepState.SUCCEEDED


class BudgetUse(BaseModel):
    """What the sweep has spent of its `budget:` over all its driver runs (a `resume` adds to it)."""

    wall_s: float = 0.0  # seconds a driver of this sweep ran trials
    gpu_s: float = 0.0  # GPU-seconds its running trials held (GPUs per trial x seconds running)


class TrialStatus(BaseModel):
    """One trial as `status --json` prints it."""

    id: str
    config: dict[str, Any]
    state: TrialState = TrialState.PENDING
    attempts: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    mlflow_run_id: str | None = None
    error: str | None = None  # the end of the failed trial's traceback (`resnet-orch logs SWEEP TRIAL`)
    reason: str | None = None  # why it failed, in one line (the restart policy's verdict, the error message)
    # Why a trial that Tune started has not moved on (`waiting for nodes`: its workers' placement group is not
    # ready); `status` shows it after the state. Cleared by every state change.
    waiting: str | None = None

    @property
    def workers(self) -> str:
        """`live/configured` workers (e.g. `2/2`, `0/2` while a failed group is replaced); `-` before the first
        worker group started. The live count is the last the trial's workers or their controller reported."""
        live = self.metrics.get(WORKERS)
        configured = self.config.get("resources", {}).get("workers", "?")
        if isinstance(configured, dict):  # an elastic range: out of the most it grows to
            configured = configured.get("max", "?")
        return "-" if live is None else f"{int(live)}/{configured}"


class SweepRecord(BaseModel):
    """What `submit` knows: written once before the driver starts (plus the Ray job id)."""

    sweep_id: str
    name: str
    created_at: float = Field(default_factory=time.time)
    sweep_file: str
    storage: str
    tracking_uri: str
    experiment: str
    registered_model: str
    ray_address: str | None = None
    dashboard_url: str | None = None
    job_id: str | None = None
    # False: the driver runs on a remote cluster and writes its progress there; `status` follows the job instead.
    local: bool = True


class Champion(BaseModel):
    """The registered model's `champion` alias once a sweep has finished: the version with the lowest validation
    top-1 error of every sweep registering under that name (a sweep's best takes it only by being strictly better)."""

    model: str  # registered model name
    version: str
    val_top1_err: float
    sweep_id: str | None = None  # the sweep that registered that version
    # This sweep's best version, when it did not beat the champion (None: it is the champion, or had no version).
    challenger_version: str | None = None
    challenger_val_top1_err: float | None = None

    def describe(self) -> str:
        """`quickstart version 3 (val top-1 error 12.50%, sweep quickstart-...)` and, if kept, the challenger."""
        source = f", sweep {self.sweep_id}" if self.sweep_id else ""
        text = f"{self.model} version {self.version} (val top-1 error {100 * self.val_top1_err:.2f}%{source})"
        if self.challenger_version is not None and self.challenger_val_top1_err is not None:
            text += (
                f"; kept: this sweep's best, version {self.challenger_version} at "
                f"{100 * self.challenger_val_top1_err:.2f}%, is not better"
            )
        return text


class SweepProgress(BaseModel):
    """What the driver knows: saved on every trial event as a journal line of what changed, in a snapshot now and
    then (`progress_journal`). One writer at a time."""

    sweep: str
    state: SweepState = SweepState.PENDING
    parent_run_id: str | None = None
    trials: list[TrialStatus]
    error: str | None = None  # why the driver gave up on the whole sweep
    budget_used: BudgetUse = Field(default_factory=BudgetUse)
    champion: Champion | None = None  # set when the sweep's driver finishes
    updated_at: float = Field(default_factory=time.time)

    def trial(self, trial_id: str) -> TrialStatus:
        for trial in self.trials:
            if trial.id == trial_id:
                return trial
        raise KeyError(f"sweep {self.sweep} has no trial {trial_id!r}")

    def move(
        self, trial_id: str, new: TrialState, *, error: str | None = None, reason: str | None = None
    ) -> TrialStatus:
        trial = self.trial(trial_id)
        check_transition(trial.state, new)
        trial.state = new
        trial.waiting = None
        if error is not None or reason is not None:
            trial.error, trial.reason = error, reason
        elif new in (TrialState.RUNNING, TrialState.SUCCEEDED):
            trial.error = trial.reason = None
        return trial

    def requeue_unfinished(self) -> list[str]:
        """Before a resume: every trial that has not finished (nor was stopped early) goes back to PENDING."""
        requeued = []
        for trial in self.trials:
            if not trial.state.is_final and trial.state != TrialState.PENDING:
                self.move(trial.id, TrialState.PENDING)
                requeued.append(trial.id)
        return requeued

    def cancel_unfinished(self) -> None:
        for trial in self.trials:
            if not trial.state.is_terminal:
                self.move(trial.id, TrialState.CANCELLED)
        self.state = SweepState.CANCELLED

    def as_json(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "state": self.state.value,
            "budget_used": self.budget_used.model_dump(mode="json"),
            "trials": [t.model_dump(mode="json") for t in self.trials],
            "champion": self.champion.model_dump(mode="json") if self.champion is not None else None,
        }


def save_model(path: Path, model: BaseModel) -> None:
    """Write a record or progress so that a reader (the CLI, while the driver writes) never sees half of it."""
    write_atomic(path, model.model_dump_json(indent=2))


def load_record(path: Path) -> SweepRecord:
    return SweepRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))


def load_progress(path: Path) -> SweepProgress:
    """The progress at `path`: its snapshot and the changes journaled since (`progress_journal`)."""
    from orchestrator.sweep import progress_journal

    return SweepProgress.model_validate(progress_journal.read(path))
