"""The AWS environment a Ray started in a test hands to its workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from orchestrator.stack.seaweedfs import SeaweedFS


@contextlib.contextmanager
def s3_environment(server: SeaweedFS) -> Iterator[None]:
    """While it lasts, the AWS variables are exactly `server`'s (no profile, token, credentials file or job secrets):
    a Ray started inside hands them to every worker, whatever an earlier test left in this process's environment."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(key, raising=False)
        mp.delenv("RESNET_ORCH_JOB_SECRETS", raising=False)
        for key, value in server.aws_env().items():
            mp.setenv(key, value)
        yield
