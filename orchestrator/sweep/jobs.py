"""A sweep's driver as a Ray job: which cluster runs it, submitting it, and what state the sweep is really in.

The driver (`driver.py`) writes the sweep's progress; this module is the client side that `submit`, `resume`,
`status`, `logs` and `cancel` share:

* which cluster: an address given (or `RAY_ADDRESS`), else this home's local head (`local_stack.ensure_ray`), and
  whether that cluster is "this machine" (it shares this home's sweep folder and Python with the driver);
* submitting the driver job with the settings it needs (`job_env`: no secret in the runtime env the cluster stores
  and shows; a remote cluster gets nothing of this machine's it cannot use), its command line quoted word by word;
* the sweep's true state: the recorded one, corrected when the driver job ended without writing a final state;
* cancelling: stop the job, then record the cancel in the progress (here and in the sweep's storage) and MLflow.

Ray and MLflow are imported inside the functions that talk to them, so the CLI answers `status` of a finished sweep
without loading either.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from orchestrator.sweep import job_env
from orchestrator.sweep.cleanup import JOB_METADATA_SWEEP
from orchestrator.sweep.driver import ADMITTED_MARK, REFUSED_EXIT_CODE, REFUSED_MARK
from orchestrator.sweep.layout import (
    load_sweep_progress,
    load_sweep_record,
    save_progress,
    sweep_paths,
)
from orchestrator.sweep.state import SweepProgress, SweepRecord, SweepState, save_model
from pipelines.retry import RetriesExhausted, RetryPolicy, retry

# How long `watch` keeps following a sweep whose cluster does not answer (a dashboard slow on a busy head, a
# dropped tunnel) before it calls the sweep interrupted.
UNREACHABLE_GRACE_S = 60.0
# How long `submit` waits for the driver's verdict (start-up, reading the cluster's shape) before it leaves the sweep
# to `status`.
ADMISSION_TIMEOUT_S = 180.0
# How long `submit` waits for a head's job agent: a head just started (or busy) answers the Jobs API before the
# agent that runs jobs has registered, and Ray says so with "No available agent" (HTTP 500) until it has.
AGENT_WAIT_S = 120.0
_NO_AGENT = "No available agent"
SUBMIT_RETRY = RetryPolicy(max_wait_s=AGENT_WAIT_S, first_delay_s=0.5, max_delay_s=5.0)
_JOB_TO_SWEEP = {
    "PENDING": SweepState.PENDING,
    "RUNNING": SweepState.RUNNING,
    "SUCCEEDED": SweepState.SUCCEEDED,
    "FAILED": SweepState.FAILED,
    "STOPPED": SweepState.CANCELLED,
}


class AddressError(ValueError):
    """An `--address` (or RAY_ADDRESS) where no Ray cluster answers."""


class SubmitError(RuntimeError):
    """The head did not take the sweep's driver job; the sweep is FAILED with the reason, so `resume` sends it again."""


class NotResumable(ValueError):
    """A sweep whose state does not allow `resume` (it runs, or it already succeeded)."""


def set_client_defaults() -> None:
    """Environment defaults of every command that talks to Ray or MLflow; set before either is imported."""
    # Ray reads its auth mode when it is imported: token auth stays on, as on the heads we start (Ray 2.60's
    # default for clusters), so this client and the cluster agree.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # MLflow prints run links to stdout when a run on a tracking server ends (`cancel` ends them): stdout is ours.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


# ---- which cluster ---------------------------------------------------------------------------------------------


def is_this_machine(url: str) -> bool:
    """Whether `url`'s host is this machine (by name or by one of its addresses)."""
    import socket
    from urllib.parse import urlparse

    import psutil

    host = urlparse(url).hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return False
    local_ips = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    return ip.startswith("127.") or ip in local_ips


def started_here(url: str) -> bool:
    """Whether `url` is the dashboard of the Ray head this RESNET_ORCH_HOME started (by `up` or `submit`).

    Only such a head runs this venv's Python and shares this home's sweep folder with the driver. Any other address
    is a cluster with files of its own, even one answering on 127.0.0.1: a `kubectl port-forward` or `ray dashboard`
    tunnel (docs/cluster.md), another home's stack. Judged by the host alone, such a sweep would get a driver command
    line that does not exist on the cluster: its job would fail at once and the sweep read INTERRUPTED.
    """
    from urllib.parse import urlparse

    from orchestrator.stack import local_stack

    state = local_stack.recorded()
    if state is None or local_stack.RAY not in state.services:
        return False
    ours = state.services[local_stack.RAY].url
    return is_this_machine(url) and urlparse(ours).port == urlparse(url).port and is_this_machine(ours)


def resolve_cluster(address: str | None) -> tuple[str, bool]:
    """(dashboard URL, is_local): the given address, RAY_ADDRESS, or this home's local head (started if needed).

    Raises `AddressError` for an address where no cluster answers and `local_stack.StackError` when the local head
    cannot be started.
    """
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if address:
        if "://" not in address:
            # Ray's own rule: an address without a scheme is a GCS address (HEAD:6379); ask it for the dashboard.
            from ray.dashboard.utils import get_address_for_submission_client

            try:
                address = get_address_for_submission_client(address)
            except Exception as exc:  # unreachable or not a Ray cluster: say so, no traceback
                raise AddressError(
                    f"--address {address}: no Ray cluster answers there ({exc}); give the dashboard URL "
                    "http://HEAD:8265 or the GCS address HEAD:6379"
                ) from None
        return address, started_here(address)
    from orchestrator.stack import local_stack

    return local_stack.ensure_ray().url, True


# ---- submitting ------------------------------------------------------------------------------------------------


def _job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def remote_warnings(record: SweepRecord) -> list[str]:
    """What a driver on another cluster does not get from this machine: settings that point at its files, secrets."""
    warnings = []
    if not record.storage.startswith("s3://"):
        warnings.append(
            f"storage {record.storage} is a path on the cluster's nodes; `status` here shows the driver job only "
            "(set `storage: s3://...` in the sweep to follow its trials from here)"
        )
    if record.tracking_uri.startswith("sqlite:"):
        warnings.append(
            f"MLflow store {record.tracking_uri} is a file on this machine; the cluster's driver writes to its own "
            "copy (set MLFLOW_TRACKING_URI or `tracking.uri` to a server both reach)"
        )
    withheld = job_env.withheld(os.environ)
    if withheld:
        warnings.append(
            f"not sent to the cluster: {', '.join(withheld)}; secrets stay on this machine and the cluster's nodes use "
            "their own identity (docs/security.md)"
        )
    return warnings


def submit_driver(record: SweepRecord, *, resume: bool, address: str, local: bool) -> str:
    """Submit the sweep's driver as a Ray job on the cluster at `address`; returns the job id (also recorded)."""
    paths = sweep_paths(record.sweep_id)
    # Settings only in the runtime env (the cluster stores and shows it); secrets reach a job on this machine's head
    # through a file only this user reads, and no remote cluster (`job_env`).
    runtime_env: dict[str, Any]
    if local:
        # The head runs this venv's Python; the sweep folder is on this machine.
        home = paths.root.parents[1]
        runtime_env = job_env.local_runtime_env(os.environ, job_env.secrets_path(home, record.sweep_id))
        runtime_env["env_vars"]["RESNET_ORCH_HOME"] = str(home)
        # Ray Train's placement-group cleaner asks the state API whether its controller still lives; without an
        # address the API looks for "the" Ray on this machine and, where other Ray instances run beside the head,
        # fails on every poll, so the cleaner never exits. Name the head's dashboard for every process of the job.
        runtime_env["env_vars"]["RAY_API_SERVER_ADDRESS"] = address
        argv = [sys.executable, "-m", "orchestrator.sweep.driver", str(paths.root)]
    else:
        # A remote cluster gets the sweep folder as the job's working dir (its image has the package).
        runtime_env = {"env_vars": job_env.job_settings(os.environ, local=False), "working_dir": str(paths.root)}
        argv = ["python", "-m", "orchestrator.sweep.driver", ".", "--from-working-dir"]
    if resume:
        argv.append("--resume")
        # No driver runs now, so this is the only writer: the sweep waits for its new driver, it is no longer the
        # CANCELLED/FAILED/INTERRUPTED it was (`--wait` would stop at once), and a remote driver gets the latest
        # progress in its working dir.
        progress = load_sweep_progress(record.sweep_id)
        progress.state = SweepState.PENDING
        progress.error = None
        save_progress(record, paths, progress)
    suffix = f"-resume-{int(time.time())}" if resume else ""
    # The Jobs API runs the entrypoint through a shell: every word is quoted (a home folder may hold spaces or ';').
    # The metadata names the sweep in the dashboard's Jobs view and marks the placement groups this job creates as
    # the sweep's own (`cleanup`).
    try:
        job_id = _submit_when_agent_ready(
            address,
            entrypoint=shlex.join(argv),
            runtime_env=runtime_env,
            submission_id=f"{record.sweep_id}{suffix}",
            metadata={JOB_METADATA_SWEEP: record.sweep_id},
        )
    except (RetriesExhausted, RuntimeError) as exc:
        # Without a job the sweep would stay PENDING forever, and `resume` refuses a PENDING sweep: record why it
        # never started, as FAILED, which `resume` sends again.
        if isinstance(exc, RetriesExhausted):  # the dashboard did not answer, or had no job agent, all along
            reason = (
                f"the Ray head at {address} did not take the driver job within {AGENT_WAIT_S:.0f} s ({exc.__cause__})"
            )
        else:  # the Jobs API answered no (a runtime env it cannot build, a bad entrypoint)
            reason = f"the Ray head at {address} refused the driver job ({exc})"
        progress = load_sweep_progress(record.sweep_id)
        progress.state = SweepState.FAILED
        progress.error = f"not submitted: {reason}"
        save_progress(record, paths, progress)
        raise SubmitError(
            f"{reason}; check the head (`resnet-orch stack status`, or the cluster's dashboard), then "
            f"`resnet-orch resume {record.sweep_id}`"
        ) from None
    updated = record.model_copy(
        update={"job_id": job_id, "dashboard_url": address, "ray_address": address, "local": local}
    )
    save_model(paths.record, updated)
    return job_id


def wait_admitted(record: SweepRecord, timeout_s: float = ADMISSION_TIMEOUT_S, poll_s: float = 1.0) -> str | None:
    """Wait until the sweep's driver has admitted the sweep (it runs, or already ended); returns why the driver
    refused it instead, None otherwise (also when the driver has not decided within `timeout_s`).

    The driver decides on the cluster, where what the cluster can grow to and where its nodes are is known: a trial
    shape that no node can ever hold, a local-path storage on a multi-node cluster.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, progress, job = current_state(record)
        if progress.state == SweepState.RUNNING or (state.is_terminal and not progress.error):
            return None
        if job not in ("PENDING", "RUNNING", None) or (state.is_terminal and progress.error):
            return _refusal(record, progress)
        if not record.local and ADMITTED_MARK in (driver_log(record) or ""):
            return None  # a remote driver whose progress this client cannot read
        time.sleep(poll_s)
    return None


def _refusal(record: SweepRecord, progress: SweepProgress) -> str | None:
    """Why the ended driver refused the sweep; None when it ended otherwise."""
    if record.job_id is None or record.dashboard_url is None:
        return None
    try:
        exit_code = _job_client(record.dashboard_url).get_job_info(record.job_id).driver_exit_code
    except Exception:  # the cluster went away: nothing to say about a refusal
        return None
    if exit_code != REFUSED_EXIT_CODE:
        return None
    if progress.error:
        return progress.error
    # A remote driver whose storage this client cannot read: its log says why.
    lines = [line for line in (driver_log(record) or "").splitlines() if REFUSED_MARK in line]
    return lines[-1].split(REFUSED_MARK, 1)[1] if lines else "see `resnet-orch logs`"


def _submit_when_agent_ready(address: str, **job: Any) -> str:
    """`submit_job`, retried along SUBMIT_RETRY while the head has no job agent yet or drops the connection, as a
    busy head's dashboard does (`RetriesExhausted` past it); any other error at once. The submission id is fixed, so
    a request that reached the head before its connection dropped is found on the retry ("already exists") instead
    of running twice."""
    dropped = False

    def submit() -> str:
        nonlocal dropped
        try:
            return str(_job_client(address).submit_job(**job))
        except OSError:  # requests' errors are OSErrors
            dropped = True
            raise
        except RuntimeError as exc:
            if dropped and "already exists" in str(exc):
                return str(job["submission_id"])
            raise

    def transient(exc: BaseException) -> bool:
        return isinstance(exc, OSError) or _NO_AGENT in str(exc)

    # `time.sleep` looked up at the call, not bound at import: tests replace it.
    return retry(
        submit,
        what=f"submit of the driver job to {address}",
        transient=transient,
        policy=SUBMIT_RETRY,
        sleep=time.sleep,
    )


def check_resumable(record: SweepRecord) -> None:
    """Refuse to resume a sweep that runs or already succeeded (`NotResumable`, the message says what to do)."""
    state, _, _ = current_state(record)
    if state in (SweepState.RUNNING, SweepState.PENDING):
        raise NotResumable(
            f"sweep {record.sweep_id} is {state}; `resnet-orch cancel {record.sweep_id}` first, or wait for it"
        )
    if state == SweepState.SUCCEEDED:
        raise NotResumable(f"sweep {record.sweep_id} already succeeded; nothing to resume")


def resume_address(record: SweepRecord, address: str | None) -> str | None:
    """Where a resume goes unless told otherwise: a sweep on another cluster resumes there, a local one on this
    home's head."""
    return address or (None if record.local else record.dashboard_url)


# ---- the sweep's true state ------------------------------------------------------------------------------------


def job_status(record: SweepRecord) -> str | None:
    """The driver job's status, or None when the cluster is unreachable."""
    if record.job_id is None or record.dashboard_url is None:
        return None
    try:
        return str(_job_client(record.dashboard_url).get_job_status(record.job_id).value)
    except Exception:  # an unreachable or restarted cluster: the job is gone with it
        return None


def current_state(record: SweepRecord) -> tuple[SweepState, SweepProgress, str | None]:
    """(state, progress, driver job status): the recorded state, corrected when the driver is gone without having
    written a final state."""
    progress = load_sweep_progress(record.sweep_id)
    if progress.state.is_terminal:
        return progress.state, progress, None
    job = job_status(record)
    if job in ("PENDING", "RUNNING"):
        return (SweepState.RUNNING if progress.state == SweepState.RUNNING else SweepState.PENDING), progress, job
    # The job ended (or is out of reach) after the progress above was read, maybe just after the driver wrote its
    # final state and exited: read again before calling the sweep interrupted.
    progress = load_sweep_progress(record.sweep_id)
    if progress.state.is_terminal:
        return progress.state, progress, job
    if job == "STOPPED":
        # Stopped from outside (`ray job stop`, or a `cancel` whose write did not reach the storage copy).
        return SweepState.CANCELLED, progress, job
    if progress.state == SweepState.PENDING:
        if record.job_id is None:
            return SweepState.PENDING, progress, job  # never submitted
        if not record.local and job is not None:
            # No word from the remote driver reached this machine (its storage is not readable here, or it never
            # started): the job's own end is all we know.
            return _JOB_TO_SWEEP[job], progress, job
    return SweepState.INTERRUPTED, progress, job


def watch(
    sweep_id: str, on_update: Callable[[SweepState, SweepProgress], None], poll_s: float = 2.0
) -> tuple[SweepState, SweepProgress]:
    """Call `on_update(state, progress)` every `poll_s` seconds until the sweep ends; returns its final pair.

    It ends when the state is terminal, when the driver job ended without a final word (INTERRUPTED), or when the
    cluster has not answered for `UNREACHABLE_GRACE_S`.
    """
    record = load_sweep_record(sweep_id)
    unreachable_since: float | None = None
    while True:
        state, progress, job = current_state(record)
        on_update(state, progress)
        if state.is_terminal:
            return state, progress
        if state == SweepState.INTERRUPTED:
            if job is not None:
                return state, progress  # the job ended without the driver's final word: it died
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > UNREACHABLE_GRACE_S:
                return state, progress
        else:
            unreachable_since = None
        time.sleep(poll_s)


def driver_log(record: SweepRecord) -> str | None:
    """The driver's log: the Ray job's, else the copy a driver on this machine kept in the sweep folder."""
    if record.job_id and record.dashboard_url:
        try:
            return str(_job_client(record.dashboard_url).get_job_logs(record.job_id))
        except Exception:  # the cluster is gone: fall back to the copy the driver kept
            pass
    path = sweep_paths(record.sweep_id).driver_log
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


# ---- cancelling ------------------------------------------------------------------------------------------------


def cancel(sweep_id: str) -> list[str]:
    """Stop the sweep's driver job, then record every unfinished trial (and its MLflow run) as cancelled.

    Returns warnings: what could not be reached (the cancel is recorded all the same: nothing runs any more).
    """
    warnings = []
    record = load_sweep_record(sweep_id)
    if record.job_id and record.dashboard_url:
        client = _job_client(record.dashboard_url)
        try:
            client.stop_job(record.job_id)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and client.get_job_status(record.job_id).value in ("PENDING", "RUNNING"):
                time.sleep(1)
        except Exception as exc:  # the cluster is gone: nothing runs any more, record the cancel
            warnings.append(f"could not reach the Ray job ({exc}); marking the sweep cancelled")
    # The driver is stopped (without removing its secrets file, if it had one): this is now the only writer of the
    # sweep's progress (here and in its storage).
    job_env.forget_job_secrets(job_env.secrets_path(sweep_paths(sweep_id).root.parents[1], sweep_id))
    progress = load_sweep_progress(sweep_id)
    stopped = [t.mlflow_run_id for t in progress.trials if not t.state.is_terminal and t.mlflow_run_id]
    progress.cancel_unfinished()
    save_progress(record, sweep_paths(sweep_id), progress)
    if progress.parent_run_id is not None:
        stopped.append(progress.parent_run_id)
    if stopped:
        from orchestrator.sweep.tracking import mark_killed

        try:
            mark_killed(record.tracking_uri, stopped)
        except Exception as exc:  # an unreachable tracking server must not undo the cancel
            warnings.append(f"could not mark the MLflow runs killed ({exc})")
    return warnings
