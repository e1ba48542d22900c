"""Bounded exponential backoff (`pipelines.retry`): the sleeps, the bound, and which errors wait; S3 calls through a
real SeaweedFS outage (the server process stopped, then started again on the same port and data)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from orchestrator.stack.seaweedfs import SeaweedFS
from pipelines.retry import ONE_TRY, RetriesExhausted, RetryPolicy, retry
from pipelines.storage import S3Settings, S3Store, StorageError, parse_uri


def test_delays_double_up_to_the_cap_and_sum_to_the_bound() -> None:
    assert RetryPolicy(max_wait_s=10, first_delay_s=0.5, max_delay_s=2).delays() == [0.5, 1, 2, 2, 2, 2, 0.5]
    assert sum(RetryPolicy().delays()) == pytest.approx(180)
    assert ONE_TRY.delays() == []
    with pytest.raises(ValueError, match="max_wait_s >= 0"):
        RetryPolicy(max_wait_s=-1)


def test_transient_errors_are_retried_until_success() -> None:
    slept: list[float] = []
    failures = iter([ConnectionError("down"), ConnectionError("down"), None])

    def call() -> str:
        error = next(failures)
        if error is not None:
            raise error
        return "ok"

    policy = RetryPolicy(max_wait_s=60, first_delay_s=1, max_delay_s=8)
    assert retry(call, what="x", transient=lambda e: isinstance(e, ConnectionError), policy=policy, sleep=slept.append)
    assert slept == [1, 2]


def test_the_bound_ends_the_tries_with_the_last_error() -> None:
    slept: list[float] = []
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"down {calls}")

    policy = RetryPolicy(max_wait_s=5, first_delay_s=1, max_delay_s=8)
    with pytest.raises(RetriesExhausted, match="still failing after 4 tries over 5 s") as info:
        retry(call, what="x", transient=lambda e: True, policy=policy, sleep=slept.append)
    assert slept == [1, 2, 2] and calls == 4
    assert str(info.value.__cause__) == "down 4"


def test_an_error_waiting_cannot_cure_is_raised_at_once() -> None:
    slept: list[float] = []

    def call() -> None:
        raise PermissionError("denied")

    with pytest.raises(PermissionError):
        retry(
            call, what="x", transient=lambda e: isinstance(e, ConnectionError), policy=RetryPolicy(), sleep=slept.append
        )
    assert slept == []


@pytest.fixture
def own_s3() -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test alone: stopping it leaves the session's server to the other tests."""
    with SeaweedFS() as server:
        server.create_bucket("outage")
        yield server


def restart_after(server: SeaweedFS, seconds: float) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        server.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_s3_reads_and_writes_ride_out_an_outage(own_s3: SeaweedFS) -> None:
    settings = own_s3.settings
    store = S3Store(parse_uri("s3://outage/set"), settings.client(), RetryPolicy(max_wait_s=60, max_delay_s=2))
    store.put_bytes("a.bin", b"before")
    own_s3.interrupt()
    started = time.monotonic()
    thread = restart_after(own_s3, 4)
    store.put_bytes("b.bin", b"during")  # waits for the server to come back on its port and data
    waited = time.monotonic() - started
    thread.join()
    assert waited >= 4
    assert store.read_bytes("a.bin") == b"before" and store.read_bytes("b.bin") == b"during"


def test_s3_calls_give_up_at_the_bound_with_a_clear_error(own_s3: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in own_s3.aws_env().items():  # as every S3 client of the project finds its server
        monkeypatch.setenv(key, value)
    store = S3Store(parse_uri("s3://outage/set"), S3Settings.client(own_s3.settings), RetryPolicy(max_wait_s=2))
    store.put_bytes("a.bin", b"x")
    own_s3.interrupt()
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot connect to http://127.0.0.1:\d+; .* \(retried for 2 s\)$"):
        store.read_bytes("a.bin")
    assert time.monotonic() - started >= 2
    quick = S3Store(parse_uri("s3://outage/set"), S3Settings.client(own_s3.settings), ONE_TRY)
    with pytest.raises(StorageError, match=r"cannot connect to http://127.0.0.1:\d+; check AWS_ENDPOINT_URL.*runs$"):
        quick.read_bytes("a.bin")


def test_the_retrying_filesystem_pickles_equal_and_rides_out_an_outage(own_s3: SeaweedFS) -> None:
    import pickle

    from pipelines.retrying_fs import retrying_s3

    fs = retrying_s3(own_s3.settings, RetryPolicy(max_wait_s=60, max_delay_s=2))
    shipped = pickle.loads(pickle.dumps(fs))  # what Ray Train's controller and workers get
    assert shipped == fs  # Ray Train compares a checkpoint's filesystem with its storage's
    own_s3.interrupt()
    thread = restart_after(own_s3, 4)
    started = time.monotonic()
    with shipped.open_output_stream("outage/fs/a") as out:
        out.write(b"during")
    assert time.monotonic() - started >= 4
    thread.join()
    assert shipped.open_input_stream("outage/fs/a").read() == b"during"
