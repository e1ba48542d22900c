"""The `outages:` key: how long a trial and its sweep ride out an object store or tracking server that went away.

S3 (checkpoint uploads, shard reads) and MLflow (runs, metrics, the registry) calls are retried with exponential
backoff (`pipelines.retry`) for up to `retry_s` seconds; past that, a checkpoint upload is skipped (training goes on,
the previous checkpoint stays the newest) and a metric write stays buffered for the next try.
"""

from __future__ import annotations

from pydantic import Field

from orchestrator.sweep.strict import Strict
from pipelines.retry import DEFAULT_MAX_WAIT_S, RetryPolicy


class OutageConfig(Strict):
    retry_s: float = Field(
        default=DEFAULT_MAX_WAIT_S,
        ge=0,
        le=3600,
        description="seconds an S3 or MLflow call is retried (exponential backoff) before it counts as failed",
    )

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_wait_s=self.retry_s)
