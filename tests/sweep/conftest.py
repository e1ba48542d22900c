"""Fixtures of the sweep tests: a private RESNET_ORCH_HOME (whatever runs for it stopped afterwards: the Ray head
`submit` started) and a real `mlflow server` subprocess with a sqlite backend and its artifacts in SeaweedFS S3."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack.mlflow_server import server_command
from orchestrator.stack.processes import free_port
from orchestrator.stack.seaweedfs import SeaweedFS


@pytest.fixture
def orch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from orchestrator.stack import local_stack

    home = tmp_path / "home"
    monkeypatch.setenv("RESNET_ORCH_HOME", str(home))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield home
    finally:
        local_stack.down(home)


@pytest.fixture
def mlflow_server(s3_server: SeaweedFS, tmp_path: Path) -> Iterator[str]:
    bucket = "mlflow-artifacts"
    s3_server.create_bucket(bucket)
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    env = {**os.environ, **s3_server.aws_env(), "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    cmd = server_command(
        host="127.0.0.1",
        port=port,
        backend_store_uri=f"sqlite:///{tmp_path / 'mlflow-server.db'}",
        artifacts_destination=f"s3://{bucket}/mlflow",
    )
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # Two minutes on a quiet machine is plenty; at a load of 40+ (parallel Ray clusters) it took longer.
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def remote_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a `resnet-orch` client in a home of its own that knows a cluster only by the dashboard
    address it is given (`tests.sweep.remote_sweeps`)."""
    home = tmp_path / "client-home"
    monkeypatch.setenv("RESNET_ORCH_HOME", str(home))
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    # Forwarded to the driver (RESNET_ORCH_*): a trial reports "waiting for nodes" as soon as it asks for them.
    return {**os.environ, "RESNET_ORCH_HOME": str(home), "RESNET_ORCH_WAITING_GRACE_S": "0", "COLUMNS": "200"}
