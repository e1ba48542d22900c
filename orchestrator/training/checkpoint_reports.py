"""Each report to Ray Train with the checkpoint that goes with it, in the mode `checkpoint.upload` names.

Ray Train's reports are collective: every rank calls `ray.train.report` at the same points, and rank 0 attaches the
checkpoint it put in the trial's storage itself (reported with `CheckpointUploadMode.NO_UPLOAD`; a checkpoint that
had to be skipped leaves its report without one and training goes on, see `checkpoint_upload`).

`sync`: rank 0 writes and uploads the checkpoint of a report before every rank makes it.
`async`: rank 0 starts the upload (`background_upload`) and the steps run on; every rank holds the report back and
makes it at the next report point, where rank 0 first waits for that upload (at most one is in flight) and attaches
the checkpoint if it completed. No message between ranks is needed: each rank holds back exactly the report of the
previous point. A report that closes an epoch, a just-in-time one and the last one are not held back: rank 0 waits
for their upload (an epoch's end drives the sweep's scheduler and its tracking; the last checkpoint is never lost).
Each report goes out with the checkpoint of its own step, so a restart re-sends exactly those of its checkpoint
that Ray Train never registered (`checkpointing.unsent_reports`), held-back ones included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow.fs
import ray.train

from orchestrator.sweep.config import TrialConfig
from orchestrator.training import metric_names as m
from orchestrator.training.accounting import InvariantError
from orchestrator.training.background_upload import BackgroundUpload, Uploaded
from orchestrator.training.chaos import Point
from orchestrator.training.checkpoint_upload import save_checkpoint
from orchestrator.training.checkpointing import TrainState, checkpoint_dir_name
from pipelines.retrying_fs import unwrapped

# `chaos(point, step)`: the drill hook of `train_loop` (a rank may kill itself at the checkpoint of `step`).
Chaos = Callable[[Point, int], None]


class CheckpointReports:
    """One rank's reports of one attempt."""

    def __init__(self, cfg: TrialConfig, fs: pyarrow.fs.FileSystem, trial_path: str, rank: int, chaos: Chaos) -> None:
        """`fs` and `trial_path`: Ray Train's storage filesystem and the trial's folder in it."""
        self.cfg = cfg
        self.ray_fs = fs
        self.trial_path = trial_path
        self.rank = rank
        self.chaos = chaos
        # Retried under `outages.retry_s` alone, then skipped (Ray Train's calls wait longer).
        self.fs = unwrapped(fs)
        self.uploads: BackgroundUpload | None = None
        if rank == 0 and cfg.checkpoint.upload == "async":
            # The drill's kill comes once the weights are in storage and the manifest is not: a cut-off upload.
            self.uploads = BackgroundUpload(
                self.fs, cfg.outages.policy(), after_first_upload=lambda step: chaos("checkpoint", step)
            )
        self.held_back: dict[str, Any] | None = None

    def publish(self, metrics: dict[str, Any], model_state: dict[str, Any], state: TrainState, *, wait: bool) -> None:
        """Report `metrics` with the checkpoint of `state` (rank 0: `model_state` and `state`); `wait`: not held
        back in async mode (an epoch's end, a just-in-time checkpoint)."""
        if self.cfg.checkpoint.upload == "sync":
            self._report(metrics, self._save(model_state, state))
            return
        held_back, self.held_back = self.held_back, metrics
        previous = self.uploads.submit(model_state, state, self._dest(state)) if self.uploads is not None else None
        if self.uploads is None:
            self.chaos("checkpoint", state.step)
        if held_back is not None:
            self._report(held_back, previous)
        if wait:
            self.flush()

    def flush(self) -> None:
        """Make the report held back, rank 0 waiting for its upload first."""
        if self.held_back is None:
            return
        metrics, self.held_back = self.held_back, None
        self._report(metrics, self.uploads.wait() if self.uploads is not None else None)

    def close(self) -> None:
        if self.uploads is not None:
            self.uploads.close()

    def _dest(self, state: TrainState) -> str:
        return f"{self.trial_path}/{checkpoint_dir_name(state.step, state.attempt)}"

    def _save(self, model_state: dict[str, Any], state: TrainState) -> Uploaded | None:
        """Sync mode: rank 0 writes and uploads the checkpoint of now (`checkpoint_upload.save_checkpoint`)."""
        if self.rank != 0:
            self.chaos("checkpoint", state.step)
            return None
        step = state.step
        dest = save_checkpoint(
            model_state,
            state,
            self.fs,
            self._dest(state),
            self.cfg.outages.policy(),
            after_first_file=lambda: self.chaos("checkpoint", step),
        )
        return Uploaded(step, dest)

    def _report(self, metrics: dict[str, Any], uploaded: Uploaded | None) -> None:
        """`ray.train.report(metrics)`, with rank 0's checkpoint of the same step when it is complete in storage."""
        if uploaded is not None and uploaded.step != metrics[m.STEP]:
            raise InvariantError(
                f"the report of step {metrics[m.STEP]} would carry the checkpoint of step {uploaded.step}: reports "
                "and uploads went out of step"
            )
        if uploaded is None or uploaded.dest is None:
            ray.train.report(metrics)  # no checkpoint (another rank, or skipped): the previous stays the newest
            return
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint(uploaded.dest, filesystem=self.ray_fs),
            checkpoint_dir_name=uploaded.dest.rstrip("/").rsplit("/", 1)[-1],
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
        )
