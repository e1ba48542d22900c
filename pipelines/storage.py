"""Where shard sets live: a local folder or `s3://bucket/prefix`, behind one small interface.

The S3 client takes endpoint, credentials and region from the standard AWS variables and profile
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_REGION`, ...), exactly as DALI's
reader does, so what the sharder writes is what the training pipeline reads. Nothing secret is logged.
`S3Settings` is the one reader of those variables for every S3 client of the project (boto3 here,
pyarrow for Ray Train's storage, the local stack's health check and child processes).

Writes are all-or-nothing per object: locally a `.partial` file renamed into place (`pipelines.files`);
on S3 a single PUT or a multipart upload, which S3 makes visible only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipelines.files import atomic_path, sha256_file, write_atomic
from pipelines.names import unsafe_key
from pipelines.retry import RetryPolicy, retry

logger = logging.getLogger(__name__)

# Multipart above 64 MiB, 64 MiB parts: a 256 MB ImageNet shard goes up in 4 parallel parts.
_MULTIPART_BYTES = 64 * 1024 * 1024
_CREDENTIAL_ERRORS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "403",
}
# Answers of a server that is restarting or overloaded: worth waiting for (`pipelines.retry`).
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


class StorageError(RuntimeError):
    """A shard location cannot be read or written; the message names the URI and the fix."""


@dataclass(frozen=True)
class Location:
    """A parsed shard-set URI: `s3://bucket/prefix` or a local path."""

    uri: str
    bucket: str | None  # None for local paths
    path: str  # S3 key prefix (no leading/trailing '/') or absolute local directory

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def join(self, name: str) -> str:
        """URI of `name` inside this location (what DALI's reader is given); the location itself for ''.

        Raises StorageError for a name that would leave the location (`..`, absolute, NUL: `pipelines.names`).
        """
        if name == "":
            return self.uri
        reason = unsafe_key(name)
        if reason is not None:
            raise StorageError(f"{self.uri}: {name!r} {reason}; only names inside the location can be read or written")
        if self.bucket is None:
            return str(Path(self.path) / name)
        key = f"{self.path}/{name}" if self.path else name
        return f"s3://{self.bucket}/{key}"


def parse_uri(uri: str) -> Location:
    """Parse a shard-set URI. Raises StorageError for schemes other than s3:// and local paths."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise StorageError(f"{uri!r} has no bucket; write it as s3://BUCKET/PREFIX")
        return Location(uri=uri, bucket=bucket, path=prefix.strip("/"))
    if "://" in uri:
        raise StorageError(f"{uri!r}: unsupported scheme; use a local path or s3://BUCKET/PREFIX")
    return Location(uri=uri, bucket=None, path=str(Path(uri).expanduser().resolve()))


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and who we are to it: the standard AWS variables, read in this one place.

    `endpoint_url` set means an S3-compatible server (SeaweedFS, MinIO): path-style addressing, since such servers do
    not resolve virtual-host bucket names (and DALI's SDK fails on `bucket.localhost`).
    """

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )

    def env(self) -> dict[str, str]:
        """The standard variables that point boto3, DALI, pyarrow and MLflow (in this or a child process) here."""
        values = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }
        return {key: value for key, value in values.items() if value is not None}

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client with exactly these settings (path-style); `config`: more botocore `Config` options."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def arrow_filesystem(self) -> Any:
        """A `pyarrow.fs.S3FileSystem` with these settings (what Ray Train reads and writes checkpoints through)."""
        from urllib.parse import urlparse

        import pyarrow.fs

        kwargs: dict[str, Any] = {
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region or "us-east-1",
        }
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            kwargs.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
            kwargs["force_virtual_addressing"] = False
        return pyarrow.fs.S3FileSystem(**kwargs)


def s3_client(**config: Any) -> Any:
    """boto3 S3 client from the standard AWS environment/profile (profiles and instance roles included);
    path-style when an endpoint is set (see `S3Settings`). `config`: botocore `Config` options over the defaults
    (e.g. short timeouts and one attempt for a quick look)."""
    import boto3
    from botocore.config import Config

    addressing = "path" if S3Settings.from_env().endpoint_url else "auto"
    options: dict[str, Any] = {
        "s3": {"addressing_style": addressing},
        "retries": {"max_attempts": 5, "mode": "standard"},
    }
    return boto3.session.Session().client("s3", config=Config(**(options | config)))


def describe_s3_error(exc: Exception, uri: str) -> StorageError:
    """Turn a botocore error into a StorageError that says what to fix (never echoing secrets)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    endpoint = S3Settings.from_env().endpoint_url or "the AWS default endpoint"
    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"{uri}: cannot connect to {endpoint}; check AWS_ENDPOINT_URL and that the server runs")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _CREDENTIAL_ERRORS:
            return StorageError(
                f"{uri}: {endpoint} rejected the credentials ({code}); check AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's permissions"
            )
        if code in {"NoSuchBucket", "404"}:
            return StorageError(f"{uri}: bucket or object not found at {endpoint} ({code}); create it or fix the URI")
        return StorageError(f"{uri}: S3 error {code} at {endpoint}: {exc}")
    return StorageError(f"{uri}: {exc}")


def transient_s3_error(exc: BaseException) -> bool:
    """Whether `exc` (a botocore error, or boto3's upload error wrapping one) says the server is away or overloaded
    rather than that the request is wrong: no connection, a dropped or timed-out one, a 5xx or SlowDown."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    cause: BaseException | None = exc
    for _ in range(3):  # boto3's S3UploadFailedError carries the botocore error as its cause or context
        if cause is None:
            return False
        if isinstance(cause, ConnectionError | HTTPClientError):
            return True
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return str(error.get("Code", "")) in _TRANSIENT_CODES or int(status or 0) >= 500
        cause = cause.__cause__ or cause.__context__
    return False


class Store(Protocol):
    """Object access relative to one Location."""

    location: Location

    def exists(self, name: str) -> bool: ...
    def size(self, name: str) -> int | None: ...
    def read_bytes(self, name: str) -> bytes: ...
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...
    def put_bytes(self, name: str, data: bytes) -> None: ...
    def put_file(self, name: str, local_path: Path, sha256: str | None = None) -> None: ...
    def checksum(self, name: str) -> str | None: ...
    def check_writable(self) -> None: ...


class LocalStore:
    def __init__(self, location: Location) -> None:
        self.location = location
        self.root = Path(location.path)

    def _path(self, name: str) -> Path:
        """`name` under the root; StorageError for a name that would leave it (checked by `Location.join`)."""
        return Path(self.location.join(name))

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int | None:
        path = self._path(name)
        return path.stat().st_size if path.is_file() else None

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"{path} does not exist") from exc

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer at the file's end)."""
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError as exc:
            raise StorageError(f"{path} does not exist") from exc

    def put_bytes(self, name: str, data: bytes) -> None:
        write_atomic(self._path(name), data)

    def put_file(self, name: str, local_path: Path, sha256: str | None = None) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if local_path.parent == target.parent:
            os.replace(local_path, target)
            return
        with atomic_path(target) as partial:
            shutil.copyfile(local_path, partial)

    def checksum(self, name: str) -> str | None:
        """sha256 of the file, recomputed (a local file carries no trustworthy stored checksum)."""
        path = self._path(name)
        return sha256_file(path) if path.is_file() else None

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.location.uri}: cannot create the folder ({exc.strerror})") from exc
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.location.uri}: folder is not writable; choose another DEST")


class S3Store:
    """Objects under one `s3://` location; every call rides out a server that is away for up to `retry.max_wait_s`
    (`pipelines.retry`), then fails with a `StorageError` that says so."""

    def __init__(self, location: Location, client: Any | None = None, retry_policy: RetryPolicy | None = None) -> None:
        if location.bucket is None:
            raise StorageError(f"{location.uri} is not an s3:// URI")
        self.location = location
        self.bucket: str = location.bucket
        self.client = client if client is not None else s3_client()
        self.retry_policy = retry_policy or RetryPolicy()

    def _retried(self, name: str, call: Any) -> Any:
        """`call()` under the store's retry policy (transient errors only, `transient_s3_error`)."""
        what = f"S3 {self.location.join(name)}"
        return retry(call, what=what, transient=transient_s3_error, policy=self.retry_policy)

    def _key(self, name: str) -> str:
        # Checked like a local name: S3 keys are flat strings, but S3-compatible servers (and anyone who syncs the
        # bucket to disk) may read `..` as a path step out of the prefix.
        self.location.join(name)
        return f"{self.location.path}/{name}" if self.location.path else name

    def _call(self, name: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        from pipelines.retry import RetriesExhausted

        try:
            return self._retried(name, lambda: getattr(self.client, method)(Bucket=self.bucket, **kwargs))
        except RetriesExhausted as exc:
            raise self._gave_up(exc, name) from exc
        except (ClientError, BotoCoreError) as exc:
            raise describe_s3_error(exc, self.location.join(name)) from exc

    def _gave_up(self, exc: Exception, name: str) -> StorageError:
        """What a transient error that outlasted the retry bound means, as `describe_s3_error` says it."""
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        described = describe_s3_error(cause, self.location.join(name))
        if not self.retry_policy.max_wait_s:
            return described
        return StorageError(f"{described} (retried for {self.retry_policy.max_wait_s:g} s)")

    def size(self, name: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self._call(name, "head_object", Key=self._key(name))
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and str(cause.response.get("Error", {}).get("Code")) in _MISSING_CODES:
                return None
            raise
        return int(head["ContentLength"])

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def read_bytes(self, name: str) -> bytes:
        response = self._call(name, "get_object", Key=self._key(name))
        return bytes(response["Body"].read())

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer at the object's end): one ranged GET."""
        byte_range = f"bytes={offset}-{offset + max(length, 1) - 1}"
        response = self._call(name, "get_object", Key=self._key(name), Range=byte_range)
        return bytes(response["Body"].read())[:length]

    def put_bytes(self, name: str, data: bytes) -> None:
        self._call(name, "put_object", Key=self._key(name), Body=data)

    def put_file(self, name: str, local_path: Path, sha256: str | None = None) -> None:
        """Upload (multipart for big files); `sha256` is stored as object metadata for resume checks."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        from pipelines.retry import RetriesExhausted

        config = TransferConfig(multipart_threshold=_MULTIPART_BYTES, multipart_chunksize=_MULTIPART_BYTES)
        extra = {"Metadata": {"sha256": sha256}} if sha256 else None
        try:
            self._retried(
                name,
                lambda: self.client.upload_file(
                    str(local_path), self.bucket, self._key(name), ExtraArgs=extra, Config=config
                ),
            )
        except RetriesExhausted as exc:
            raise self._gave_up(exc, name) from exc
        except (ClientError, BotoCoreError) as exc:
            raise describe_s3_error(exc, self.location.join(name)) from exc
        except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError | BotoCoreError):
                raise describe_s3_error(cause, self.location.join(name)) from exc
            raise

    def checksum(self, name: str) -> str | None:
        """The sha256 recorded at upload (S3 sets metadata only on a completed upload)."""
        try:
            head = self._call(name, "head_object", Key=self._key(name))
        except StorageError as exc:
            if exc.__cause__ is not None and not transient_s3_error(exc.__cause__):
                return None  # no such object (or not ours to read): nothing recorded
            raise
        value = head.get("Metadata", {}).get("sha256")
        return str(value) if value else None

    def check_writable(self) -> None:
        self._call("", "head_bucket")


def open_store(uri: str, retry_policy: RetryPolicy | None = None, **s3_config: Any) -> Store:
    """The store at `uri`; `retry_policy`: how long S3 calls ride out an absent server (`pipelines.retry`; default a
    few minutes); `s3_config`: botocore options of its S3 client (see `s3_client`)."""
    location = parse_uri(uri)
    return S3Store(location, s3_client(**s3_config), retry_policy) if location.is_s3 else LocalStore(location)
