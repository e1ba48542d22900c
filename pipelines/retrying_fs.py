"""A pyarrow filesystem whose every call rides out an S3 server that is away (`pipelines.retry`'s bounded backoff).

Ray Train reads and writes the trial's storage through the filesystem it is given, on the workers and on its
controller (which writes a snapshot of its checkpoints after registering each one: an error there ends the run).
pyarrow's own S3 retries are a few attempts over about a second, and a retry strategy set on an `S3FileSystem` is
lost when Ray pickles it to another process; this handler pickles as its settings and bound, and retries each call
while the error says the server is unreachable (`transient_storage_error`), up to the bound.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow.fs

from pipelines.retry import RetryPolicy, retry
from pipelines.storage import S3Settings

T = TypeVar("T")

# What pyarrow's S3 filesystem (the AWS SDK) says when the server is away or overloaded rather than the request wrong.
_TRANSIENT_MARKERS = (
    "NETWORK_CONNECTION",
    "SERVICE_UNAVAILABLE",
    "SLOW_DOWN",
    "THROTTLING",
    "INTERNAL_FAILURE",
    "REQUEST_TIMEOUT",
    "curlCode",
)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def transient_storage_error(exc: BaseException) -> bool:
    """Whether a pyarrow filesystem error says the store is unreachable for now (worth waiting for)."""
    if not isinstance(exc, OSError) or exc.errno in NO_SPACE:
        return False
    text = str(exc)
    return any(marker in text for marker in _TRANSIENT_MARKERS)


class RetryingHandler(pyarrow.fs.FileSystemHandler):
    """`pyarrow.fs.PyFileSystem(RetryingHandler(settings, policy))`: the S3 filesystem of `settings`, built in each
    process it is unpickled in; two are equal when their settings and bounds are (Ray Train compares them)."""

    def __init__(self, settings: S3Settings, policy: RetryPolicy) -> None:
        self.settings = settings
        self.policy = policy
        self._inner: pyarrow.fs.FileSystem | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (RetryingHandler, (self.settings, self.policy))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryingHandler) and (self.settings, self.policy) == (other.settings, other.policy)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.settings, self.policy))

    @property
    def inner(self) -> pyarrow.fs.FileSystem:
        if self._inner is None:
            self._inner = self.settings.arrow_filesystem()
        return self._inner

    def _call(self, what: str, call: Callable[[], T]) -> T:
        return retry(call, what=f"storage {what}", transient=transient_storage_error, policy=self.policy)

    def get_type_name(self) -> str:
        return f"retrying-{self.inner.type_name}"

    def normalize_path(self, path: str) -> str:
        return str(self.inner.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return self._call(f"info of {paths[:3]}", lambda: list(self.inner.get_file_info(paths)))

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        return self._call(f"listing of {selector.base_dir}", lambda: list(self.inner.get_file_info(selector)))

    def create_dir(self, path: str, recursive: bool) -> None:
        self._call(f"mkdir {path}", lambda: self.inner.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        self._call(f"rmdir {path}", lambda: self.inner.delete_dir(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._call(f"emptying {path}", lambda: self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        self._call("emptying /", lambda: self.inner.delete_dir_contents("/", accept_root_dir=True))

    def delete_file(self, path: str) -> None:
        self._call(f"rm {path}", lambda: self.inner.delete_file(path))

    def move(self, src: str, dest: str) -> None:
        self._call(f"mv {src}", lambda: self.inner.move(src, dest))

    def copy_file(self, src: str, dest: str) -> None:
        self._call(f"cp {src}", lambda: self.inner.copy_file(src, dest))

    def open_input_stream(self, path: str) -> Any:
        return self._call(f"read of {path}", lambda: self.inner.open_input_stream(path))

    def open_input_file(self, path: str) -> Any:
        return self._call(f"read of {path}", lambda: self.inner.open_input_file(path))

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self._call(f"write of {path}", lambda: self.inner.open_output_stream(path, metadata=metadata))

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self._call(f"append to {path}", lambda: self.inner.open_append_stream(path, metadata=metadata))


def unwrapped(fs: pyarrow.fs.FileSystem) -> pyarrow.fs.FileSystem:
    """The filesystem under a retrying one (for a caller that retries under a bound of its own); `fs` otherwise."""
    handler = getattr(fs, "handler", None)
    return handler.inner if isinstance(handler, RetryingHandler) else fs


def retrying_s3(settings: S3Settings, policy: RetryPolicy) -> pyarrow.fs.FileSystem:
    """The S3 filesystem of `settings` (`S3Settings.arrow_filesystem`), each call retried within `policy`."""
    return pyarrow.fs.PyFileSystem(RetryingHandler(settings, policy))
