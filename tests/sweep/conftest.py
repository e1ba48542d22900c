"""Fixtures of the sweep tests: a private RESNET_ORCH_HOME (whatever runs for it stopped afterwards: the Ray head
`submit` started) and a real `mlflow server` subprocess with a sqlite backend and its artifacts in SeaweedFS S3."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.stack.mlflow_server import server_command
from orchestrator.stack.processes import free_port, port_open
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


class MlflowServer:
    """`mlflow server` with a sqlite backend and artifacts in SeaweedFS S3; `interrupt()` stops the process (an
    outage) and `start()` brings it back on the same port and database."""

    def __init__(self, s3_server: SeaweedFS, tmp_path: Path) -> None:
        bucket = "mlflow-artifacts"
        s3_server.create_bucket(bucket)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = tmp_path / "mlflow-server.log"
        self._env = {**os.environ, **s3_server.aws_env(), "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
        self._cmd = server_command(
            host="127.0.0.1",
            port=self.port,
            backend_store_uri=f"sqlite:///{tmp_path / 'mlflow-server.db'}",
            artifacts_destination=f"s3://{bucket}/mlflow",
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log_path.open("a") as log:
            self._proc = subprocess.Popen(
                self._cmd, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        # Two minutes on a quiet machine is plenty; at a load of 40+ (parallel Ray clusters) it took longer.
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.interrupt()  # nothing of it outlives the failed start
                    raise RuntimeError(f"mlflow server did not start: {self._log_path.read_text()}") from None
                time.sleep(0.5)

    def interrupt(self) -> None:
        """Stop the server's process group (its gunicorn/uvicorn workers too) by its pid."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 30
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def restartable_mlflow(s3_server: SeaweedFS, tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(s3_server, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.interrupt()


@pytest.fixture
def mlflow_server(restartable_mlflow: MlflowServer) -> str:
    return restartable_mlflow.url


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
