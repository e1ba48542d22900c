"""MLflow through an outage of its server: calls retried with bounded backoff, metrics buffered while it is away.

Every call of the sweep's `MlflowClient` goes through `RetryingClient`: a call that fails because the server does
not answer (refused or dropped connection, a timeout, 502/503/504) is tried again along `pipelines.retry`'s backoff
for up to `outages.retry_s`. MLflow's own HTTP retries are turned off in processes that use it (unless the
environment sets them), so that bound is the only one.

Metrics go through `MetricBuffer`: the Tune loop hands it each report and goes on at once; the buffer sends what it
holds in report order, one try per report while the server is away, and everything once it answers again (a
blocking `flush` at each trial's end waits up to the bound). A report at a step the run already holds (a restarted
attempt re-sending it) is dropped, so each step is logged once; a batch re-sent after a lost answer carries the same
timestamps and MLflow stores it once.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric

from pipelines.retry import ONE_TRY, RetriesExhausted, RetryPolicy, retry

logger = logging.getLogger(__name__)

# What requests/urllib3 (inside MlflowException's text) say when the server is away rather than the request wrong.
_AWAY = (
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "Connection reset",
    "RemoteDisconnected",
    "Read timed out",
    "timed out",
    "Failed to establish a new connection",
)
_AWAY_STATUS = {502, 503, 504}
# MLflow's own retries (7, doubling from 2 s: minutes per call) would stack under ours.
HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


def transient_mlflow_error(exc: BaseException) -> bool:
    """Whether an MLflow client error says the tracking server is unreachable or restarting for now."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    if isinstance(exc, RestException):
        return exc.get_http_status_code() in _AWAY_STATUS
    return isinstance(exc, MlflowException) and any(marker in str(exc) for marker in _AWAY)


def own_http_retries() -> None:
    """Leave retrying to `RetryingClient` in this process (an explicit `MLFLOW_HTTP_REQUEST_MAX_RETRIES` wins)."""
    os.environ.setdefault(HTTP_RETRIES_ENV, "0")


class RetryingClient:
    """An `MlflowClient` whose every method retries transient failures under `policy` (see the module doc)."""

    def __init__(self, client: Any, policy: RetryPolicy, where: str) -> None:
        self._client = client
        self._policy = policy
        self._where = where

    @property
    def raw(self) -> Any:
        """The client without retries (for calls that must not be repeated blindly, such as `create_run`)."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.retried(f"MLflow {name} at {self._where}", lambda: method(*args, **kwargs))

        return call

    def retried(self, what: str, call: Callable[[], Any], policy: RetryPolicy | None = None) -> Any:
        return retry(call, what=what, transient=transient_mlflow_error, policy=policy or self._policy)


@dataclass
class _Report:
    run_id: str
    step: int
    metrics: list[Metric]


class MetricBuffer:
    """Reports waiting for MLflow, in the order they came (see the module doc)."""

    def __init__(self, client: RetryingClient, last_step: Callable[[str], int]) -> None:
        self._client = client
        self._last_step = last_step  # the highest step a run already holds in MLflow (-1: none)
        self._queued: dict[str, int] = {}  # run -> the highest step queued or sent
        self._pending: deque[_Report] = deque()
        self.sent = 0  # reports written to MLflow
        self.dropped = 0  # reports of a step the run already held
        self._away = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, run_id: str, step: int, metrics: Mapping[str, float], stamp_ms: int) -> None:
        """Queue one report's metrics (at `step`, stamped `stamp_ms`) and send what the server takes now."""
        if run_id not in self._queued:
            self._queued[run_id] = self._client.retried("MLflow metric history", lambda: self._last_step(run_id))
        if step <= self._queued[run_id]:
            self.dropped += 1
            return
        self._queued[run_id] = step
        entries = [Metric(key, value, stamp_ms, step) for key, value in metrics.items()]
        if entries:
            self._pending.append(_Report(run_id, step, entries))
        self.flush(ONE_TRY)

    def flush(self, policy: RetryPolicy | None = None) -> bool:
        """Send the queued reports in order, each retried under `policy` (default: the client's bound); False, with
        the rest kept, when the server stays away past it."""
        while self._pending:
            report = self._pending[0]
            try:
                self._client.retried(
                    f"MLflow metrics of run {report.run_id} at step {report.step}",
                    functools.partial(self._client.raw.log_batch, report.run_id, metrics=report.metrics),
                    policy,
                )
            except RetriesExhausted as exc:
                if not self._away:
                    logger.warning("MLflow is away (%s); buffering metrics until it answers", exc.__cause__)
                self._away = True
                return False
            self._pending.popleft()
            self.sent += 1
        if self._away:
            logger.warning("MLflow answers again: the buffered metrics are written, in order")
            self._away = False
        return True
