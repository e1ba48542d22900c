"""Putting a checkpoint into the trial's storage so that an outage or a full disk costs one checkpoint, not the run.

Rank 0 writes the checkpoint to a local temporary folder (`checkpointing.write_checkpoint`), then copies it to the
trial's storage itself, file by file with `manifest.json` last, each copy retried with backoff while the store is
away (`pipelines.retry`, bound `outages.retry_s`). Only a checkpoint whose copy finished is reported to Ray Train (as
already uploaded). One that cannot be written (no space left) or uploaded within the bound is skipped with a
message naming its step and why: training goes on, and the previous checkpoint stays the newest complete one (a
half-copied folder has no manifest, so `latest_complete_checkpoint` and `load_newest_checkpoint` pass over it).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs

from orchestrator.training.checkpointing import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    TrainState,
    write_checkpoint,
)
from pipelines.retry import RetriesExhausted, RetryPolicy, retry
from pipelines.retrying_fs import NO_SPACE, transient_storage_error

logger = logging.getLogger(__name__)

# The manifest last: a folder is a checkpoint only once every file it lists is in place.
UPLOAD_ORDER = (MODEL_FILE, STATE_FILE, MANIFEST_FILE)


def no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def upload_checkpoint(
    local: Path,
    fs: pyarrow.fs.FileSystem,
    dest: str,
    policy: RetryPolicy,
    *,
    after_first_file: Callable[[], None] | None = None,
) -> None:
    """Copy the complete checkpoint at `local` to `dest` on `fs`, `manifest.json` last, each file retried while the
    store is away. Raises `RetriesExhausted` past the bound, `OSError` for what waiting cannot cure.
    `after_first_file` runs once the weights are in storage and the manifest is not (drills kill the uploader there).
    """

    def copy(name: str) -> None:
        with (local / name).open("rb") as source, fs.open_output_stream(f"{dest}/{name}") as out:
            while chunk := source.read(8 << 20):
                out.write(chunk)

    def step(what: str, call: Callable[[], None]) -> None:
        retry(call, what=what, transient=transient_storage_error, policy=policy)

    step(f"mkdir {dest}", lambda: fs.create_dir(dest, recursive=True))
    for name in UPLOAD_ORDER:
        step(f"upload of {dest}/{name}", functools.partial(copy, name))
        if name == UPLOAD_ORDER[0] and after_first_file is not None:
            after_first_file()


def save_checkpoint(
    model_state: dict[str, Any],
    state: TrainState,
    fs: pyarrow.fs.FileSystem,
    dest: str,
    policy: RetryPolicy,
    *,
    after_first_file: Callable[[], None] | None = None,
    after_first_upload: Callable[[], None] | None = None,
) -> str | None:
    """Write the checkpoint of `state` locally and upload it to `dest`; `dest` when it is complete in storage, None
    when it was skipped (no space left to write it, or the store away past `policy`'s bound), with the reason logged.
    The hooks run once the weights are written locally (`after_first_file`) and in storage (`after_first_upload`).
    """
    with tempfile.TemporaryDirectory(prefix="resnet-orch-ckpt-") as tmp:
        try:
            local = write_checkpoint(Path(tmp) / "checkpoint", model_state, state, after_first_file=after_first_file)
        except CheckpointError as exc:
            logger.error("checkpoint of step %d skipped: %s; training goes on", state.step, exc)
            return None
        try:
            upload_checkpoint(local, fs, dest, policy, after_first_file=after_first_upload)
        except (RetriesExhausted, OSError) as exc:
            why = (
                f"no space left in the trial's storage ({exc})"
                if no_space(exc)
                else f"the storage did not take it within outages.retry_s={policy.max_wait_s:g} s ({exc})"
            )
            logger.warning(
                "checkpoint of step %d not uploaded to %s: %s; training goes on, the previous checkpoint stays the "
                "newest complete one",
                state.step,
                dest,
                why,
            )
            _remove_partial(fs, dest)
            return None
    return dest


def _remove_partial(fs: pyarrow.fs.FileSystem, dest: str) -> None:
    """Best effort (the store may still be away): a folder without its manifest is never loaded anyway."""
    try:
        fs.delete_dir(dest)
    except OSError as exc:
        logger.info("partial checkpoint %s left in storage (%s); it has no manifest and is never loaded", dest, exc)
