"""A checkpoint written and uploaded while training goes on (`checkpoint.upload: async`).

Rank 0 hands `BackgroundUpload.submit` the state of a checkpoint's step; a copy of it in CPU memory is taken before
`submit` returns (`snapshot`), so the checkpoint is the state of its step whatever later steps do to the model and
optimizer in place, and one background thread writes, hashes and uploads that copy through
`checkpoint_upload.save_checkpoint` (manifest last, each file retried within `outages.retry_s`, skipped with a
warning past it). A process killed mid-upload leaves a folder without its manifest, which
`latest_complete_checkpoint` and `load_newest_checkpoint` pass over: the previous checkpoint stays the newest
complete one.

At most one upload is in flight: a new checkpoint waits for the one still running before its copy is taken.
Waiting, not skipping past it: every checkpoint `checkpoint.every_steps` asks for is written, so a failure never costs
more steps than configured; one copy of the state is held at a time; and the wait is bounded by the running upload's
own bound (past which it is skipped), so a step never waits longer than in `sync` mode, where it waits for the whole
write and upload of every checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.fs
import torch

from orchestrator.training.checkpoint_upload import save_checkpoint
from orchestrator.training.checkpointing import TrainState
from pipelines.retry import RetryPolicy


def snapshot(obj: Any) -> Any:
    """A copy of `obj` that shares no mutable memory with it: tensors copied to CPU memory (detached), containers
    rebuilt, anything else deep-copied (numbers and strings are returned as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: snapshot(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(value) for value in obj)
    return copy.deepcopy(obj)


def snapshot_state(state: TrainState) -> TrainState:
    """A copy of `state` (optimizer buffers, RNG states, loss history, ...) that later steps cannot change."""
    return TrainState.from_dict(snapshot(state.to_dict()))


@dataclass(frozen=True)
class Uploaded:
    """How a background upload ended: `dest` when the checkpoint of `step` is complete in storage, None when it
    was skipped (the reason is logged by `save_checkpoint`)."""

    step: int
    dest: str | None


class BackgroundUpload:
    """One thread that saves rank 0's checkpoints to `fs`, one at a time, within `policy`'s bound.

    `after_first_upload(step)` runs on that thread once the weights of the checkpoint of `step` are in storage and
    its manifest is not (drills kill the process there).
    """

    def __init__(
        self,
        fs: pyarrow.fs.FileSystem,
        policy: RetryPolicy,
        *,
        after_first_upload: Callable[[int], None] | None = None,
    ) -> None:
        self.fs = fs
        self.policy = policy
        self.after_first_upload = after_first_upload
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self._running: tuple[int, Future[str | None]] | None = None

    def submit(self, model_state: dict[str, Any], state: TrainState, dest: str) -> Uploaded | None:
        """Wait for the upload in flight, copy the checkpoint of `state.step`, start saving it to `dest` and return.
        Returns how the previous upload ended (None when there was none)."""
        previous = self.wait()
        weights, train_state = snapshot(model_state), snapshot_state(state)
        hook = self.after_first_upload
        step = state.step
        future = self._thread.submit(
            save_checkpoint,
            weights,
            train_state,
            self.fs,
            dest,
            self.policy,
            after_first_upload=None if hook is None else lambda: hook(step),
        )
        self._running = (step, future)
        return previous

    def wait(self) -> Uploaded | None:
        """How the upload in flight ended, once it has (None when none is in flight). An error the upload does not
        skip past (anything but a full disk or an outage past the bound) is raised here."""
        if self._running is None:
            return None
        step, future = self._running
        self._running = None
        return Uploaded(step, future.result())

    def close(self) -> None:
        """Stop taking checkpoints; an upload still running finishes on its thread (it is complete or has no
        manifest either way)."""
        self._thread.shutdown(wait=False, cancel_futures=True)
