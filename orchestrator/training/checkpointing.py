"""A trial's full training state on disk, written atomically, and the count of a trial's attempts.

Checkpoint directory layout (one per `ray.train.report`, persisted by Ray Train to the trial's storage):

    model.pt          the model's `state_dict` (no DDP `module.` prefix; loadable by `models.get_model(...)`)
    train_state.pt    step/epoch/attempt, optimizer, LR schedule, and per rank: loader position, RNG states,
                      samples trained this epoch; plus the trial's per-step loss and learning-rate history
    manifest.json     written last: format version, step, and the size and SHA-256 of each file above

A directory is complete only when `manifest.json` is present and matches the files (`read_checkpoint` refuses
anything else); it is assembled in a temporary sibling and renamed into place, so a writer killed halfway leaves
no directory that could be reported or loaded as the latest. Ray Train registers a reported checkpoint only after
every rank has reported and the upload finished, so a kill during the upload leaves the previous one as latest.
The loader's mid-epoch position lives in the same checkpoint as the weights: a restart resumes at exactly the
batch that would have come next (ray-project/ray#37633, #48224 replay or skip data without this).

Both files hold only tensors and plain values (numbers, strings, lists, dicts) and are read with
`torch.load(weights_only=True)`: a file that would run code when unpickled (anyone who can write to the storage
could plant one) is refused, never executed. `load_newest_checkpoint` resumes from the newest checkpoint that
reads, skipping with a warning each one that is corrupt or refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import torch

from orchestrator.training.metric_names import IS_EPOCH_END, STEP
from pipelines.files import sha256_file
from pipelines.retrying_fs import NO_SPACE

logger = logging.getLogger(__name__)

# 2: every object in train_state.pt is one `torch.load(weights_only=True)` accepts (numpy's RNG state as a list).
FORMAT_VERSION = 2
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
MANIFEST_FILE = "manifest.json"
ATTEMPTS_DIR = "attempts"
CHECKPOINT_PREFIX = "checkpoint-step"


class CheckpointError(RuntimeError):
    """A checkpoint directory that is incomplete or corrupt."""


@dataclass
class RankState:
    """What differs between ranks: where each rank's loader is, and each rank's RNG streams."""

    loader: dict[str, Any] | None  # None at an epoch boundary: the next epoch starts fresh
    rng: dict[str, Any]


@dataclass
class TrainState:
    """Everything besides the weights that a restart needs to continue exactly where the checkpoint was taken."""

    step: int  # optimizer steps completed over the whole trial
    epoch: int  # the epoch the next step belongs to
    epoch_step: int  # steps of `epoch` already completed
    attempt: int  # the attempt that wrote this checkpoint (0: the first)
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    ranks: list[RankState]
    # Rank 0's training loss of every completed step, in step order: the audit trail that shows a restart
    # reproduced the uninterrupted run.
    step_losses: list[float] = field(default_factory=list)
    # The learning rate of every completed step, in step order (the same audit for the schedule and its state).
    step_lrs: list[float] = field(default_factory=list)
    # Global samples trained in each completed epoch.
    epoch_sizes: list[int] = field(default_factory=list)
    # Sums over all ranks for the current epoch so far (samples, loss, correct top-1/top-5, timings).
    epoch_totals: dict[str, float] = field(default_factory=dict)
    # The metrics of every report so far, in step order, the last one the report this checkpoint went with. A worker
    # killed between a report and Ray Train's next poll of the workers takes that report with it, and the one
    # before may still wait in the worker's one-slot result queue, so a restart re-sends those its checkpoint has
    # and Ray Train had not registered (`unsent_reports`): mid-epoch ones too, or their steps go missing in MLflow.
    reports: list[dict[str, Any]] = field(default_factory=list)
    # Preemption notices checkpointed for over all attempts (`training/preemption.py`).
    preemptions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "attempt": self.attempt,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "ranks": [vars(r) for r in self.ranks],
            "step_losses": self.step_losses,
            "step_lrs": self.step_lrs,
            "epoch_sizes": self.epoch_sizes,
            "epoch_totals": self.epoch_totals,
            "reports": self.reports,
            "preemptions": self.preemptions,
        }

    @property
    def epoch_reports(self) -> list[dict[str, Any]]:
        """The epoch-end reports so far, in epoch order."""
        return [r for r in self.reports if r.get(IS_EPOCH_END)]

    @property
    def report(self) -> dict[str, Any]:
        """The report this checkpoint went with ({} before the first)."""
        return self.reports[-1] if self.reports else {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        data = dict(data)
        if "reports" not in data:
            # A state written before every report was kept: its epoch ends and its own report.
            ends, own = data.pop("epoch_reports", []), data.pop("report", {})
            data["reports"] = [*ends, own] if own and own not in ends else list(ends)
        return cls(**{**data, "ranks": [RankState(**r) for r in data["ranks"]]})


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain values (what a weights-only `torch.load` reads back)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_synced(obj: Any, path: Path) -> None:
    with path.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def write_checkpoint(
    directory: Path,
    model_state: dict[str, torch.Tensor],
    state: TrainState,
    *,
    after_first_file: Callable[[], None] | None = None,
) -> Path:
    """Write a complete checkpoint at `directory` (which must not exist) and return it.

    `after_first_file` runs once the weights are on disk but nothing is complete yet (fault-injection drills
    kill the writer there).
    """
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"checkpoint directory {directory} already exists; pass a fresh path")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    except OSError as exc:
        full = _no_space_error(exc, directory, state)
        if full is None:
            raise
        raise full from exc
    try:
        _save_synced(model_state, tmp / MODEL_FILE)
        if after_first_file is not None:
            after_first_file()
        _save_synced(state.to_dict(), tmp / STATE_FILE)
        manifest = {
            "format": FORMAT_VERSION,
            "step": state.step,
            "epoch": state.epoch,
            "epoch_step": state.epoch_step,
            "attempt": state.attempt,
            "files": {
                name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                for name in (MODEL_FILE, STATE_FILE)
            },
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(tmp, directory)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _no_space_error(exc, directory, state)
        if full is not None:
            raise full from exc
        raise
    return directory


def _no_space_error(exc: BaseException, directory: Path, state: TrainState) -> CheckpointError | None:
    """A `CheckpointError` that says what to do when `exc` is a full disk (torch.save reports it as a RuntimeError
    whose cause, or text, is the OSError); None for any other error."""
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in NO_SPACE):
        cause = cause.__cause__ or cause.__context__
    if cause is None and not any(text in str(exc) for text in ("No space left", "file write failed")):
        return None
    return CheckpointError(
        f"no space left on the device of {directory.parent} for the checkpoint of step {state.step}: its partial "
        "files are removed and the previous checkpoint is intact; free space there or set TMPDIR to a larger disk"
    )


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint; `CheckpointError` naming what is missing or corrupt otherwise."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST_FILE}: the checkpoint was not completely written")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path}: format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}"
        )
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            raise CheckpointError(f"{path} is missing or does not match {MANIFEST_FILE}: the checkpoint is corrupt")
    return manifest


def _load(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load` of tensors and plain containers only; anything else is a `CheckpointError`, never executed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the offending global ("... unsupported GLOBAL posix.system ...") among lines of advice.
        lines = [line.strip() for line in str(exc).splitlines() if "unsupported" in line.lower()]
        detail = f" ({lines[0].rstrip('.')})" if lines else ""
        raise CheckpointError(
            f"{path} holds objects besides tensors and plain values{detail}: refused without running them; it was "
            "not written by resnet-orch or has been tampered with"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}): the file is corrupt") from None


def read_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], TrainState]:
    """(model state_dict, TrainState) of a complete checkpoint; `CheckpointError` if corrupt or refused."""
    directory = Path(directory)
    read_manifest(directory)
    model_state = _load(directory / MODEL_FILE, map_location)
    data = _load(directory / STATE_FILE, "cpu")
    try:
        state = TrainState.from_dict(data)
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"{directory / STATE_FILE} is not a training state ({exc})") from None
    return model_state, state


def read_model_state(directory: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Only the weights (for evaluation or model registration)."""
    directory = Path(directory)
    read_manifest(directory)
    weights: dict[str, Any] = _load(directory / MODEL_FILE, map_location)
    return weights


def register_attempt(fs: pyarrow.fs.FileSystem, trial_fs_path: str) -> int:
    """Record that an attempt of the trial at `trial_fs_path` starts; return its 0-based number.

    Ray Train does not tell a train function how many times it was started; a marker per attempt in the trial's
    storage does, on every node and across driver restarts. Call from one rank only.
    """
    directory = f"{trial_fs_path}/{ATTEMPTS_DIR}"
    attempt = count_attempts(fs, trial_fs_path)
    fs.create_dir(directory, recursive=True)
    with fs.open_output_stream(f"{directory}/attempt-{attempt:04d}") as marker:
        marker.write(str(attempt).encode())
    return attempt


def count_attempts(fs: pyarrow.fs.FileSystem, trial_fs_path: str) -> int:
    selector = pyarrow.fs.FileSelector(f"{trial_fs_path}/{ATTEMPTS_DIR}", allow_not_found=True)
    return sum(1 for info in fs.get_file_info(selector) if info.base_name.startswith("attempt-"))


def checkpoint_dirs(fs: pyarrow.fs.FileSystem, trial_fs_path: str) -> list[str]:
    """The trial's checkpoint directories, newest first (`checkpoint_dir_name` sorts by step)."""
    selector = pyarrow.fs.FileSelector(trial_fs_path, allow_not_found=True)
    return sorted(
        (
            info.path
            for info in fs.get_file_info(selector)
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX)
        ),
        key=lambda path: path.rsplit("/", 1)[-1],
        reverse=True,
    )


def _incomplete(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    """Why the checkpoint at `path` is not completely in storage (no manifest, a file missing or of another size
    than the manifest says: an upload that never finished, a truncated file); None when it is."""
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST_FILE}") as stream:
            manifest = json.loads(stream.read())
    except (FileNotFoundError, OSError, ValueError):
        return f"no readable {MANIFEST_FILE}: the checkpoint was not completely written"
    files = manifest.get("files", {})
    infos = fs.get_file_info([f"{path}/{name}" for name in files])
    for info, (name, spec) in zip(infos, files.items(), strict=True):
        if info.size != spec["bytes"]:
            size = "missing" if info.type == pyarrow.fs.FileType.NotFound else f"{info.size} bytes"
            return f"{name} is {size}, {MANIFEST_FILE} says {spec['bytes']} bytes: the file is truncated or incomplete"
    return None


def latest_complete_checkpoint(fs: pyarrow.fs.FileSystem, trial_fs_path: str) -> str | None:
    """The trial's checkpoint with the most steps whose files are all in storage at their manifest's sizes.

    Ray Train registers a reported checkpoint only at its next poll of the workers (every ~2 s), so a worker that
    dies right after a report can leave a complete checkpoint that `ray.train.get_checkpoint()` does not know.
    Any complete checkpoint is a consistent snapshot (loader position and RNGs included), so resuming from the
    newest loses the least work.
    """
    return next((path for path in checkpoint_dirs(fs, trial_fs_path) if _incomplete(fs, path) is None), None)


def load_newest_checkpoint(
    fs: pyarrow.fs.FileSystem, trial_fs_path: str, map_location: str | torch.device = "cpu"
) -> tuple[str, dict[str, Any], TrainState] | None:
    """(path, model state_dict, TrainState) of the trial's newest checkpoint that reads completely; None if the
    trial has no checkpoint directory.

    A checkpoint that does not (incomplete, truncated, a hash mismatch, a file refused as unsafe) is skipped with a
    warning naming it, and the one before it is tried: a corrupt latest checkpoint costs the steps since the
    previous one instead of failing every restart. `CheckpointError` when there are checkpoints but none reads.
    """
    skipped: list[str] = []
    for path in checkpoint_dirs(fs, trial_fs_path):
        with tempfile.TemporaryDirectory(prefix="resnet-orch-resume-") as tmp:
            try:
                reason = _incomplete(fs, path)
                if reason is not None:
                    raise CheckpointError(reason)
                pyarrow.fs.copy_files(
                    path, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
                )
                model_state, state = read_checkpoint(Path(tmp), map_location)
            except CheckpointError as exc:
                # Name the files in storage, not in the local copy.
                why = str(exc).replace(f"{tmp}/", "")
                logger.warning("skipping checkpoint %s: %s; trying the one before it", path, why)
                skipped.append(f"{path}: {why}")
                continue
        return path, model_state, state
    if skipped:
        raise CheckpointError(f"no checkpoint of {trial_fs_path} can be read: " + "; ".join(skipped))
    return None


def unsent_reports(state: TrainState, registered: str | None) -> list[dict[str, Any]]:
    """The reports of `state` after the checkpoint Ray Train last registered
    (`registered`, its path; None: none), in step order: those the sweep may never have received. Ray Train
    registers a checkpoint when it passes its report on, so everything up to that one arrived."""
    after = checkpoint_step(registered) if registered is not None else -1
    reports = {int(r[STEP]): r for r in state.reports if int(r[STEP]) > after}
    return [reports[step] for step in sorted(reports)]


def checkpoint_step(path: str) -> int:
    """The step in a checkpoint directory's name (`checkpoint_dir_name`)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return int(name.removeprefix(CHECKPOINT_PREFIX).split("-", 1)[0])


def checkpoint_dir_name(step: int, attempt: int) -> str:
    """Sorts by step; the attempt keeps a re-run of a step from overwriting a checkpoint it could not commit."""
    return f"{CHECKPOINT_PREFIX}{step:09d}-attempt{attempt}"
