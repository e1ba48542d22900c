"""MLflow as a process of this machine: the tracking server of the local stack and `resnet-orch ui`.

The server mirrors the cluster's (infra/k8s/mlflow.yaml): a SQL store for runs and the registry, artifacts proxied
by the server into S3, so a client needs only the server's URL.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.stack import processes
from orchestrator.stack.processes import ServiceRecord
from pipelines.storage import S3Settings


def server_command(*, host: str, port: int, backend_store_uri: str, artifacts_destination: str) -> list[str]:
    """`mlflow server` with artifacts proxied (clients upload through the server) into `artifacts_destination`."""
    return [
        processes.executable("mlflow"),
        "server",
        f"--host={host}",
        f"--port={port}",
        f"--backend-store-uri={backend_store_uri}",
        f"--artifacts-destination={artifacts_destination}",
        # One worker: a local server serves one user, and the default of 4 costs ~1 GiB.
        "--workers=1",
    ]


def server_env(s3: S3Settings) -> dict[str, str]:
    """The server's environment: the S3 it proxies artifacts to."""
    return processes.child_env(
        MLFLOW_S3_ENDPOINT_URL=s3.endpoint_url or "",
        **s3.env(),
        # The server's job runner (7 huey consumer processes) serves GenAI scorers; training never uses it.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )


def healthy(url: str) -> bool:
    return processes.http_ok(f"{url}/health")


def start(
    *, host: str, backend_store_uri: str, artifacts_destination: str, s3: S3Settings, log: Path, timeout_s: float
) -> ServiceRecord:
    """Start `mlflow server` on a free port; returns it once `/health` answers."""
    port = processes.free_port()
    cmd = server_command(
        host=host, port=port, backend_store_uri=backend_store_uri, artifacts_destination=artifacts_destination
    )
    url = f"http://{processes.connect_host(host)}:{port}"
    return processes.start(
        "mlflow", cmd, server_env(s3), log=log, url=url, ports=(port,), probe=lambda: healthy(url), timeout_s=timeout_s
    )


def ui_command(*, backend_store_uri: str, artifact_root: Path, host: str, port: int) -> list[str]:
    """`mlflow ui` over a local store (blocks until Ctrl-C)."""
    return [
        processes.executable("mlflow"),
        "ui",
        "--backend-store-uri",
        backend_store_uri,
        "--default-artifact-root",
        artifact_root.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
    ]
