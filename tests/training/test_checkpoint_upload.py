"""A checkpoint's way into storage through outages and a full disk: retried while the S3 server is away (a real
SeaweedFS stopped and started again on its port and data), skipped past the bound with the previous checkpoint left
the newest complete one, and refused cleanly on a full disk (a 256 KiB tmpfs in a private mount namespace)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs
import pytest
import torch

from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.training.checkpoint_upload import save_checkpoint
from orchestrator.training.checkpointing import (
    TrainState,
    checkpoint_dir_name,
    latest_complete_checkpoint,
    load_newest_checkpoint,
)
from pipelines.retry import RetryPolicy

REPO = Path(__file__).resolve().parents[2]


def _state(step: int) -> TrainState:
    return TrainState(
        step=step, epoch=0, epoch_step=step, attempt=0, optimizer={}, schedule={}, ranks=[], step_losses=[0.5] * step
    )


def _weights(step: int, numbers: int = 1000) -> dict[str, torch.Tensor]:
    return {"w": torch.full((numbers,), float(step))}


@pytest.fixture
def s3() -> Iterator[tuple[SeaweedFS, pyarrow.fs.FileSystem]]:
    """A SeaweedFS of this test alone (stopping it leaves the session's server to the other tests)."""
    with SeaweedFS() as server:
        server.create_bucket("ckpt")
        yield server, server.settings.arrow_filesystem()


def _dest(step: int) -> str:
    return f"ckpt/trial/{checkpoint_dir_name(step, 0)}"


def test_an_upload_waits_out_an_outage_within_the_bound(s3: tuple[SeaweedFS, pyarrow.fs.FileSystem]) -> None:
    server, fs = s3
    policy = RetryPolicy(max_wait_s=90, max_delay_s=2)
    assert save_checkpoint(_weights(1), _state(1), fs, _dest(1), policy) == _dest(1)
    server.interrupt()
    restarted = threading.Timer(5, server.start)
    restarted.start()
    started = time.monotonic()
    assert save_checkpoint(_weights(2), _state(2), fs, _dest(2), policy) == _dest(2)
    restarted.join()
    assert time.monotonic() - started >= 5
    found = load_newest_checkpoint(fs, "ckpt/trial")
    assert found is not None
    path, weights, state = found
    assert path == _dest(2) and state.step == 2 and torch.equal(weights["w"], _weights(2)["w"])


def test_an_upload_past_the_bound_is_skipped_and_the_previous_checkpoint_stays(
    s3: tuple[SeaweedFS, pyarrow.fs.FileSystem], caplog: pytest.LogCaptureFixture
) -> None:
    server, fs = s3
    assert save_checkpoint(_weights(1), _state(1), fs, _dest(1), RetryPolicy(max_wait_s=2)) == _dest(1)
    server.interrupt()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert save_checkpoint(_weights(2), _state(2), fs, _dest(2), RetryPolicy(max_wait_s=2)) is None
    assert time.monotonic() - started >= 2
    assert any(
        "checkpoint of step 2 not uploaded" in r.message
        and "outages.retry_s=2 s" in r.message
        and "previous checkpoint stays the newest" in r.message
        for r in caplog.records
    ), caplog.text
    server.start()
    assert latest_complete_checkpoint(fs, "ckpt/trial") == _dest(1)
    found = load_newest_checkpoint(fs, "ckpt/trial")
    assert found is not None and found[0] == _dest(1) and found[2].step == 1


# Runs inside a private mount namespace whose `MOUNT` is a 256 KiB tmpfs: a 4 KiB checkpoint fits, a 1 MiB one does
# not; both the local write (TMPDIR) and the "storage" are on it, as on a worker whose only disk filled up.
_FULL_DISK = """
import json, logging, os, sys, tempfile
import pyarrow.fs, torch
sys.path.insert(0, {repo!r})
from tests.training.test_checkpoint_upload import _dest_local, _state, _weights
from orchestrator.training.checkpoint_upload import save_checkpoint
from orchestrator.training.checkpointing import latest_complete_checkpoint, load_newest_checkpoint
from pipelines.retry import RetryPolicy
mount = sys.argv[1]
os.makedirs(mount + "/tmp"); tempfile.tempdir = mount + "/tmp"
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.basicConfig(level=logging.INFO)
logging.getLogger().addHandler(Keep())
fs, policy = pyarrow.fs.LocalFileSystem(), RetryPolicy(max_wait_s=30)
first = save_checkpoint(_weights(1), _state(1), fs, _dest_local(mount, 1), policy)
second = save_checkpoint(_weights(2, 256 * 1024), _state(2), fs, _dest_local(mount, 2), policy)
newest = load_newest_checkpoint(fs, mount + "/trial")
print(json.dumps({{
    "first": first, "second": second, "latest": latest_complete_checkpoint(fs, mount + "/trial"),
    "newest_step": newest[2].step if newest else None, "messages": records,
    "left": sorted(os.listdir(mount + "/tmp")) + sorted(os.listdir(mount + "/trial")),
}}))
"""


def _dest_local(root: str, step: int) -> str:
    return f"{root}/trial/{checkpoint_dir_name(step, 0)}"


def test_a_full_disk_fails_that_checkpoint_cleanly(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    mount = tmp_path / "small"
    mount.mkdir()
    script = _FULL_DISK.format(repo=str(REPO))
    command = f'mount -t tmpfs -o size=256k tmpfs {mount} && exec {sys.executable} -c "$0" {mount}'
    if unshare is None:
        pytest.skip("needs util-linux `unshare` for a private tmpfs")
    done = subprocess.run(
        [unshare, "--mount", "--map-root-user", "sh", "-c", command, script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "mount" in done.stderr and done.returncode != 0 and not done.stdout:
        pytest.skip(f"no private tmpfs here (user namespaces off?): {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first"] == _dest_local(str(mount), 1)
    assert result["second"] is None
    assert result["latest"] == _dest_local(str(mount), 1) and result["newest_step"] == 1
    # Nothing half-written is left: the local partial folder and temp dir are gone, storage has step 1 only.
    assert result["left"] == [checkpoint_dir_name(1, 0)]
    assert any(
        "checkpoint of step 2 skipped: no space left on the device" in m and "previous checkpoint is intact" in m
        for m in result["messages"]
    ), result["messages"]


def test_ray_trains_storage_waits_at_least_the_default_bound() -> None:
    from orchestrator.sweep.config import parse_sweep
    from orchestrator.sweep.outage_config import OutageConfig
    from orchestrator.training.trial import storage_policy

    trial = parse_sweep({"name": "s", "data": {"train": "/shards"}}).expand("/s")[0]
    assert storage_policy(trial).max_wait_s == 180
    assert storage_policy(trial.model_copy(update={"outages": OutageConfig(retry_s=1)})).max_wait_s == 180
    assert storage_policy(trial.model_copy(update={"outages": OutageConfig(retry_s=600)})).max_wait_s == 600
