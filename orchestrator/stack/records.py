"""What the local stack records about a home: where its files are (`StackPaths`) and what runs (`StackState`, one
`ServiceRecord` per service), in one state file written atomically and changed by one process at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.stack.processes import ServiceRecord
from orchestrator.stack.ray_head import short_temp_dir
from orchestrator.sweep.layout import orch_home
from pipelines.files import write_atomic
from pipelines.storage import S3Settings

S3, MLFLOW, RAY = "s3", "mlflow", "ray"
_STATE_VERSION = 1
# Ray puts Unix sockets under <temp-dir>/session_<timestamp>_<pid>/sockets/; Linux caps a socket path at
# 107 bytes, and the session suffix takes about 60 of them.
_MAX_RAY_TEMP_DIR_LEN = 40


class StackError(RuntimeError):
    """A stack service could not be started, checked or stopped; the message says which and why."""


@dataclass(frozen=True)
class StackState:
    """What the state file records about the services running for this home."""

    host: str
    bucket: str
    ray_address: str  # GCS address, for `ray.init(address=...)` and `ray start --address=...`
    ray_temp_dir: str
    credentials_file: str
    services: dict[str, ServiceRecord]

    def to_json(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StackState:
        services = {
            name: ServiceRecord(**{**record, "ports": tuple(record["ports"])})
            for name, record in data["services"].items()
        }
        fields = {f.name for f in dataclasses.fields(cls)} - {"services"}
        return cls(services=services, **{k: data[k] for k in fields})

    def s3_settings(self) -> S3Settings:
        """The stack's S3 endpoint and keys (from the credentials file `up` wrote)."""
        creds = json.loads(Path(self.credentials_file).read_text())
        return S3Settings(self.services[S3].url, creds["access_key"], creds["secret_key"], creds["region"])

    def client_env(self) -> dict[str, str]:
        """Environment that points Ray, MLflow, boto3 and DALI clients at the services of this stack that run."""
        env: dict[str, str] = {}
        if RAY in self.services:
            env.update(
                RAY_ADDRESS=self.ray_address,
                RAY_API_SERVER_ADDRESS=self.services[RAY].url,
                RAY_AUTH_MODE="token",
            )
        if MLFLOW in self.services:
            env["MLFLOW_TRACKING_URI"] = self.services[MLFLOW].url
        if S3 in self.services:
            settings = self.s3_settings()
            env["MLFLOW_S3_ENDPOINT_URL"] = self.services[S3].url
            env.update(settings.env())
        return env


@dataclass(frozen=True)
class Health:
    name: str
    healthy: bool
    detail: str


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state, logs and data under RESNET_ORCH_HOME."""

    root: Path

    @classmethod
    def from_env(cls, home: str | os.PathLike[str] | None = None) -> StackPaths:
        base = Path(home).expanduser().resolve() if home else orch_home()
        return cls(base / "stack")

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "stack.lock"

    @property
    def credentials_file(self) -> Path:
        return self.root / "s3-credentials.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def s3_data(self) -> Path:
        return self.root / "s3"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def ray_temp_dir(self) -> Path:
        candidate = self.root / "ray"
        return candidate if len(str(candidate)) <= _MAX_RAY_TEMP_DIR_LEN else short_temp_dir(self.root)


def load_state(paths: StackPaths) -> StackState | None:
    if not paths.state_file.exists():
        return None
    try:
        data = json.loads(paths.state_file.read_text())
        if data.get("version") != _STATE_VERSION:
            raise KeyError("version")
        return StackState.from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise StackError(
            f"{paths.state_file} is not a stack state this version understands ({e}); stop the processes it "
            "lists by hand, then delete the file"
        ) from e


def save_state(paths: StackPaths, state: StackState) -> None:
    write_atomic(paths.state_file, json.dumps(state.to_json(), indent=2))


@contextlib.contextmanager
def locked(paths: StackPaths) -> Iterator[None]:
    """One `up`/`down`/`ensure_ray` at a time per RESNET_ORCH_HOME."""
    with open(paths.lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
