"""The driver job's side of a sweep: which cluster is this machine (what a driver gets from it: test_job_env.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep import jobs
from orchestrator.sweep.config import load_sweep
from orchestrator.sweep.jobs import is_this_machine, started_here
from orchestrator.sweep.layout import create_sweep, load_sweep_progress, load_sweep_record
from orchestrator.sweep.state import SweepState

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("url", "local"),
    [("http://127.0.0.1:8265", True), ("http://localhost:8265", True), ("http://192.0.2.1:8265", False)],
)
def test_local_cluster_detection(url: str, local: bool) -> None:
    # A head on this machine shares RESNET_ORCH_HOME with its driver; a remote one (192.0.2.0/24 is TEST-NET) does not.
    assert is_this_machine(url) is local


def test_an_address_this_home_did_not_start_is_another_cluster(home: Path) -> None:
    # A port-forward to a cluster elsewhere answers on 127.0.0.1 too: its driver cannot run this machine's venv
    # on this machine's sweep folder (that sent the job a command line the cluster lacks: INTERRUPTED at once).
    assert started_here("http://127.0.0.1:8265") is False


class _AgentlessHead:
    """A Jobs API that answers as Ray's does while the head's job agent has not registered, `busy` times."""

    def __init__(
        self, busy: int, error: str = "Request failed with status code 500: No available agent to submit job"
    ) -> None:
        self.busy, self.error, self.calls = busy, error, 0
        self.submitted: set[str] = set()

    def submit_job(self, **job: object) -> str:
        self.calls += 1
        if self.calls <= self.busy:
            raise RuntimeError(self.error)
        if job["submission_id"] in self.submitted:
            raise RuntimeError(
                f"Request failed with status code 400: Job with submission_id {job['submission_id']} "
                "already exists. Please use a different submission_id."
            )
        self.submitted.add(str(job["submission_id"]))
        return str(job["submission_id"])


class _DroppingHead(_AgentlessHead):
    """A busy head that takes the job, then drops the connection before answering."""

    def submit_job(self, **job: object) -> str:
        if not self.submitted:
            super().submit_job(**job)
            raise ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed connection'))")
        return super().submit_job(**job)


def test_submit_waits_for_the_head_job_agent_and_gives_up_on_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    head = _AgentlessHead(busy=2)
    monkeypatch.setattr(jobs, "_job_client", lambda address: head)
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    assert jobs._submit_when_agent_ready("http://127.0.0.1:1", submission_id="s1", entrypoint="x") == "s1"
    assert head.calls == 3

    other = _AgentlessHead(busy=1, error="Request failed with status code 400: bad runtime_env")
    monkeypatch.setattr(jobs, "_job_client", lambda address: other)
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        jobs._submit_when_agent_ready("http://127.0.0.1:1", submission_id="s2", entrypoint="x")
    assert other.calls == 1


def test_submit_after_a_dropped_connection_finds_the_job_it_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    head = _DroppingHead(busy=0)
    monkeypatch.setattr(jobs, "_job_client", lambda address: head)
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    assert jobs._submit_when_agent_ready("http://127.0.0.1:1", submission_id="s1", entrypoint="x") == "s1"
    assert head.submitted == {"s1"} and head.calls == 2


class _UnreachableHead:
    """A head whose dashboard never answers."""

    calls = 0

    def submit_job(self, **job: object) -> str:
        self.calls += 1
        raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:1.")


def test_a_submit_the_head_never_takes_leaves_a_failed_sweep_that_resume_sends_again(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    head = _UnreachableHead()
    slept: list[float] = []
    monkeypatch.setattr(jobs, "_job_client", lambda address: head)
    monkeypatch.setattr(jobs.time, "sleep", slept.append)
    with pytest.raises(jobs.SubmitError) as info:
        jobs.submit_driver(record, resume=False, address="http://127.0.0.1:1", local=False)
    assert str(info.value) == (
        "the Ray head at http://127.0.0.1:1 did not take the driver job within 120 s (Failed to connect to Ray at "
        "address: http://127.0.0.1:1.); check the head (`resnet-orch stack status`, or the cluster's dashboard), "
        f"then `resnet-orch resume {record.sweep_id}`"
    )
    assert sum(slept) == pytest.approx(jobs.AGENT_WAIT_S) and head.calls == len(slept) + 1
    progress = load_sweep_progress(record.sweep_id)
    assert progress.state == SweepState.FAILED
    assert progress.error is not None and progress.error.startswith("not submitted: the Ray head at")
    stored = load_sweep_record(record.sweep_id)
    assert stored.job_id is None
    assert jobs.current_state(stored)[0] == SweepState.FAILED
    jobs.check_resumable(stored)  # FAILED: `resume` sends it again


def test_a_submit_the_head_refuses_is_one_line_and_a_failed_sweep(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = create_sweep(EXAMPLES / "quickstart.yaml", load_sweep(EXAMPLES / "quickstart.yaml"))
    head = _AgentlessHead(busy=1, error="Request failed with status code 400: bad runtime_env: pip not allowed")
    monkeypatch.setattr(jobs, "_job_client", lambda address: head)
    with pytest.raises(jobs.SubmitError) as info:
        jobs.submit_driver(record, resume=False, address="http://127.0.0.1:1", local=False)
    assert head.calls == 1  # no retry of a refusal
    assert str(info.value).startswith(
        "the Ray head at http://127.0.0.1:1 refused the driver job (Request failed with status code 400: bad "
        "runtime_env: pip not allowed); check the head"
    )
    progress = load_sweep_progress(record.sweep_id)
    assert progress.state == SweepState.FAILED
    assert progress.error == f"not submitted: {str(info.value).split('; check the head')[0]}"
