"""`checkpoint.upload: async` without Ray: the checkpoint is the state of its step while training changes the model
under it, the manifest reaches storage last, a process killed mid-upload and a store stopped mid-upload leave the
previous checkpoint the newest complete one, and the steps run on while an upload waits out its bound."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest
import torch
from torch import nn

from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.training import background_upload
from orchestrator.training.background_upload import BackgroundUpload, Uploaded, snapshot
from orchestrator.training.checkpointing import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    TrainState,
    checkpoint_dir_name,
    latest_complete_checkpoint,
    load_newest_checkpoint,
)
from pipelines.retry import RetryPolicy

REPO = Path(__file__).resolve().parents[2]
POLICY = RetryPolicy(max_wait_s=30)


class Training:
    """A small net and its SGD-with-momentum optimizer, stepped on fixed data; `state` is its checkpointable state."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.x, self.y = torch.randn(32, 8), torch.randint(0, 4, (32,))
        self.state = TrainState(step=0, epoch=0, epoch_step=0, attempt=0, optimizer={}, schedule={}, ranks=[])

    def step(self) -> None:
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.state.step += 1
        self.state.epoch_step += 1
        self.state.step_losses.append(float(loss.detach()))
        self.state.optimizer = self.optimizer.state_dict()

    def submit(self, uploads: BackgroundUpload, trial: str) -> Uploaded | None:
        return uploads.submit(self.model.state_dict(), self.state, f"{trial}/{checkpoint_dir_name(self.state.step, 0)}")


def _momentum(optimizer_state: dict[str, Any]) -> list[torch.Tensor]:
    return [optimizer_state["state"][i]["momentum_buffer"] for i in sorted(optimizer_state["state"])]


def test_snapshot_shares_no_memory_with_the_state() -> None:
    live = {"w": torch.ones(3), "nested": [torch.zeros(2), {"b": torch.ones(1)}], "n": 1, "s": "x"}
    copied = snapshot(live)
    live["w"].add_(1)
    live["nested"][0].add_(1)
    live["nested"][1]["b"].add_(1)
    live["nested"].append(5)
    assert torch.equal(copied["w"], torch.ones(3))
    assert torch.equal(copied["nested"][0], torch.zeros(2))
    assert torch.equal(copied["nested"][1]["b"], torch.ones(1))
    assert len(copied["nested"]) == 2 and copied["n"] == 1 and copied["s"] == "x"


def test_the_checkpoint_is_the_state_of_its_step_while_training_changes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    training = Training()
    for _ in range(3):
        training.step()
    # The state of step 3, copied here independently of `snapshot`.
    weights = {k: v.clone() for k, v in training.model.state_dict().items()}
    momentum = [t.clone() for t in _momentum(training.optimizer.state_dict())]
    losses = list(training.state.step_losses)
    # The upload's thread starts writing only when the steps below are done: without a copy of the state taken
    # before `submit` returns, it would write the weights of step 6.
    steps_done = threading.Event()
    real = background_upload.save_checkpoint

    def after_the_steps(*args: Any, **kwargs: Any) -> str | None:
        assert steps_done.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(background_upload, "save_checkpoint", after_the_steps)
    uploads = BackgroundUpload(pyarrow.fs.LocalFileSystem(), POLICY)
    trial = str(tmp_path / "trial")
    assert training.submit(uploads, trial) is None
    for _ in range(3):
        training.step()
    steps_done.set()
    assert uploads.wait() == Uploaded(3, f"{trial}/{checkpoint_dir_name(3, 0)}")
    uploads.close()

    found = load_newest_checkpoint(pyarrow.fs.LocalFileSystem(), trial)
    assert found is not None
    _, saved_weights, state = found
    assert state.step == 3 and state.step_losses == losses and len(training.state.step_losses) == 6
    for name, tensor in weights.items():
        assert torch.equal(saved_weights[name], tensor), name
        assert not torch.equal(training.model.state_dict()[name], tensor), f"{name} did not change: the test is void"
    for saved, expected in zip(_momentum(state.optimizer), momentum, strict=True):
        assert torch.equal(saved, expected)


class RecordingHandler(pyarrow.fs.FileSystemHandler):
    """The local filesystem, recording the path of every file opened for writing, in order."""

    def __init__(self) -> None:
        self.inner = pyarrow.fs.LocalFileSystem()
        self.written: list[str] = []

    def get_type_name(self) -> str:
        return "recording-local"

    def normalize_path(self, path: str) -> str:
        return str(self.inner.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return list(self.inner.get_file_info(paths))

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        return list(self.inner.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.inner.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.inner.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        self.written.append(path)
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        raise NotImplementedError


def test_the_manifest_reaches_storage_last(tmp_path: Path) -> None:
    handler = RecordingHandler()
    fs = pyarrow.fs.PyFileSystem(handler)
    trial = str(tmp_path / "trial")
    in_storage: list[list[str]] = []

    def look(step: int) -> None:
        in_storage.append(sorted(p.name for p in Path(trial, checkpoint_dir_name(step, 0)).iterdir()))

    uploads = BackgroundUpload(fs, POLICY, after_first_upload=look)
    training = Training()
    training.step()
    training.submit(uploads, trial)
    assert uploads.wait() == Uploaded(1, f"{trial}/{checkpoint_dir_name(1, 0)}")
    uploads.close()
    folder = f"{trial}/{checkpoint_dir_name(1, 0)}"
    assert handler.written == [f"{folder}/{MODEL_FILE}", f"{folder}/{STATE_FILE}", f"{folder}/{MANIFEST_FILE}"]
    assert in_storage == [[MODEL_FILE]]
    assert latest_complete_checkpoint(fs, trial) == folder


# Saves the checkpoint of step 1, then starts the one of step 2 and is SIGKILLed once its weights are in storage,
# while its main thread trains on; prints nothing after that.
_KILLED = """
import os, signal, sys, time
import pyarrow.fs
sys.path.insert(0, {repo!r})
from tests.training.test_background_upload import POLICY, Training
from orchestrator.training.background_upload import BackgroundUpload
trial = sys.argv[1]
def die(step):
    if step == 2:
        os.kill(os.getpid(), signal.SIGKILL)
uploads = BackgroundUpload(pyarrow.fs.LocalFileSystem(), POLICY, after_first_upload=die)
training = Training()
training.step()
training.submit(uploads, trial)
training.step()
training.submit(uploads, trial)
print("submitted", flush=True)
while True:
    training.step()
"""


def test_a_process_killed_mid_upload_leaves_the_previous_checkpoint_the_newest(tmp_path: Path) -> None:
    trial = str(tmp_path / "trial")
    done = subprocess.run(
        [sys.executable, "-c", _KILLED.format(repo=str(REPO)), trial], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert done.stdout.split() == ["submitted"]
    fs = pyarrow.fs.LocalFileSystem()
    cut_off = Path(trial, checkpoint_dir_name(2, 0))
    assert sorted(p.name for p in cut_off.iterdir()) == [MODEL_FILE]
    assert latest_complete_checkpoint(fs, trial) == f"{trial}/{checkpoint_dir_name(1, 0)}"
    found = load_newest_checkpoint(fs, trial)
    assert found is not None and found[2].step == 1
    # The weights of step 1 as a fresh run computes them.
    training = Training()
    training.step()
    for name, tensor in training.model.state_dict().items():
        assert torch.equal(found[1][name], tensor), name


@pytest.fixture
def s3() -> Iterator[tuple[SeaweedFS, pyarrow.fs.FileSystem]]:
    """A SeaweedFS of this test alone (stopping it leaves the session's server to the other tests)."""
    with SeaweedFS() as server:
        server.create_bucket("ckpt")
        yield server, server.settings.arrow_filesystem()


def test_a_store_stopped_mid_upload_skips_that_checkpoint_past_the_bound_while_the_steps_run_on(
    s3: tuple[SeaweedFS, pyarrow.fs.FileSystem], caplog: pytest.LogCaptureFixture
) -> None:
    server, fs = s3
    trial = "ckpt/trial"
    bound = 3.0

    def stop_the_store(step: int) -> None:
        if step == 2:
            server.interrupt()

    uploads = BackgroundUpload(fs, RetryPolicy(max_wait_s=bound, max_delay_s=1), after_first_upload=stop_the_store)
    training = Training()
    training.step()
    training.submit(uploads, trial)
    assert uploads.wait() == Uploaded(1, f"{trial}/{checkpoint_dir_name(1, 0)}")
    training.step()
    with caplog.at_level(logging.WARNING):
        submitted = time.monotonic()
        assert training.submit(uploads, trial) is None
        returned = time.monotonic()
        # The steps run on while the upload of step 2 retries against the stopped store.
        step_times = []
        for _ in range(3):
            training.step()
            step_times.append(time.time())
        assert uploads.wait() == Uploaded(2, None)
        waited = time.monotonic()
    skipped = [r for r in caplog.records if "checkpoint of step 2 not uploaded" in r.message]
    assert len(skipped) == 1, caplog.text
    assert f"outages.retry_s={bound:g} s" in skipped[0].message
    assert "previous checkpoint stays the newest" in skipped[0].message
    assert returned - submitted < 1 < bound <= waited - submitted
    assert step_times[-1] < skipped[0].created, "the steps waited for the upload"
    server.start()
    assert latest_complete_checkpoint(fs, trial) == f"{trial}/{checkpoint_dir_name(1, 0)}"
    found = load_newest_checkpoint(fs, trial)
    assert found is not None and found[2].step == 1
    # The store is back: the next checkpoint (step 5) goes in whole and is the newest.
    training.submit(uploads, trial)
    assert uploads.wait() == Uploaded(5, f"{trial}/{checkpoint_dir_name(5, 0)}")
    uploads.close()
    found = load_newest_checkpoint(fs, trial)
    assert found is not None and found[2].step == 5 and found[2].step_losses == training.state.step_losses


def test_an_error_the_upload_does_not_skip_reaches_the_training_thread(tmp_path: Path) -> None:
    # Not an outage nor a full disk (a bug: something that does not pickle): it fails the attempt at the next
    # checkpoint instead of vanishing with the thread.
    uploads = BackgroundUpload(pyarrow.fs.LocalFileSystem(), POLICY)
    state = Training().state
    uploads.submit({"w": torch.ones(1), "bad": lambda: 0}, state, str(tmp_path / "trial" / "checkpoint"))
    with pytest.raises(Exception, match="pickle"):
        uploads.wait()
    uploads.close()
    assert not (tmp_path / "trial").exists()
