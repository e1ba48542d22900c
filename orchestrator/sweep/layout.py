"""Sweep ids and the local layout under RESNET_ORCH_HOME (default ~/.resnet-orch).

    $RESNET_ORCH_HOME/
      sweeps/<sweep id>/sweep.yaml      the submitted file, as submitted
                        record.json     SweepRecord (written by `submit`)
                        progress.json   SweepProgress: a snapshot + progress.json.<token>.changes.jsonl, the
                                        changes since (`progress_journal`; written by the driver as trials move)
                        driver.log      the driver's log when it runs locally
      storage/                          Ray Tune/Train storage (checkpoints, experiment state)
              <sweep id>/progress.json  the driver's copy of progress.json, where a client off the cluster reads it
      mlflow/mlflow.db, mlflow/artifacts/   the embedded MLflow store
      ray/                              the local Ray head's temp dir

Everything a user or a test run touches is under one root, so two of them never collide.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.sweep import progress_journal
from orchestrator.sweep.config import ConfigError, SweepConfig, TrialConfig
from orchestrator.sweep.job_env import has_password
from orchestrator.sweep.state import (
    SweepProgress,
    SweepRecord,
    TrialStatus,
    load_progress,
    load_record,
    save_model,
)
from pipelines.retry import ONE_TRY
from pipelines.storage import open_store

logger = logging.getLogger(__name__)

HOME_ENV = "RESNET_ORCH_HOME"
# The name of the progress copy in a sweep's storage folder (next to its Tune state and trial checkpoints).
STORAGE_PROGRESS = "progress.json"
# How often at most the whole progress is copied to the sweep's storage while its state stays the same.
STORAGE_COPY_S = 2.0
_copied: dict[Path, tuple[float, Any]] = {}  # progress file -> (monotonic time, sweep state) of its last copy


class SweepNotFound(LookupError):
    """No sweep with that id (or prefix) under RESNET_ORCH_HOME."""


def orch_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".resnet-orch").expanduser().resolve()


def default_storage() -> Path:
    return orch_home() / "storage"


def embedded_tracking_uri() -> str:
    return f"sqlite:///{orch_home() / 'mlflow' / 'mlflow.db'}"


def embedded_artifact_root() -> Path:
    return orch_home() / "mlflow" / "artifacts"


def tracking_uri(configured: str | None = None) -> str:
    """The MLflow store to use: the one configured (sweep file, option), else MLFLOW_TRACKING_URI, else embedded."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def sweep_file(self) -> Path:
        return self.root / "sweep.yaml"

    @property
    def record(self) -> Path:
        return self.root / "record.json"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def driver_log(self) -> Path:
        return self.root / "driver.log"


def sweep_paths(sweep_id: str) -> SweepPaths:
    return SweepPaths(orch_home() / "sweeps" / sweep_id)


def new_sweep_id(name: str, now: float | None = None) -> str:
    """`quickstart-20261125-193501-a3f9`: sortable by time, unique across users of one home."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def list_sweep_ids() -> list[str]:
    root = orch_home() / "sweeps"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "record.json").is_file()]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime)]


def resolve_sweep_id(text: str | None) -> str:
    """A full id, a unique prefix, or None for the newest sweep."""
    ids = list_sweep_ids()
    if not ids:
        raise SweepNotFound(f"no sweeps under {orch_home()}; submit one with `resnet-orch submit sweep.yaml`")
    if text is None:
        return ids[-1]
    if text in ids:
        return text
    matches = [i for i in ids if i.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SweepNotFound(f"no sweep {text!r} under {orch_home()}; `resnet-orch list` shows the sweeps")
    raise SweepNotFound(f"{text!r} matches {len(matches)} sweeps ({', '.join(matches)}); give more of the id")


def trial_storage(sweep_id: str, config: SweepConfig) -> str:
    """Where this sweep's Ray storage goes: the sweep's `storage:` or the home default, one folder per sweep."""
    base = config.storage or str(default_storage())
    return f"{base.rstrip('/')}/{sweep_id}"


def preview(config: SweepConfig) -> list[dict[str, Any]]:
    """What `validate` shows of each trial: its id, multiply-adds per image, and the config it would run with."""
    from models import get_model
    from models.summary import count_macs

    trials = config.expand(storage_root=trial_storage("<sweep id>", config))
    macs: dict[str, int] = {}  # the same model at the same size is counted once
    described = []
    for trial in trials:
        kwargs = trial.model.model_kwargs()
        key = json.dumps([trial.model.registry_name, kwargs, trial.recipe.image_size], sort_keys=True)
        if key not in macs:
            macs[key] = count_macs(get_model(trial.model.registry_name, **kwargs), trial.recipe.image_size)
        described.append({"id": trial.trial_id, "macs_per_image": macs[key], "config": trial.model_dump(mode="json")})
    return described


def expand(sweep_id: str, config: SweepConfig) -> list[TrialConfig]:
    """The sweep's trials, each storing under this sweep's own folder (so a resubmit never reuses old state)."""
    storage = trial_storage(sweep_id, config)
    ours = {"storage": storage, "sweep_id": sweep_id}
    return [t.model_copy(update=ours) for t in config.expand(storage_root=storage)]


def create_sweep(sweep_file: Path, config: SweepConfig, *, ray_address: str | None = None) -> SweepRecord:
    """Write the sweep's folder (file copy, record, all trials PENDING) before anything is submitted."""
    tracking = config.tracking
    if has_password(tracking_uri(tracking.uri)):
        # The URI is recorded with the sweep and printed by `submit` (the sweep file's own is refused at load).
        raise ConfigError(
            "MLFLOW_TRACKING_URI carries a password; set it without one and give MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    sweep_id = new_sweep_id(config.name)
    paths = sweep_paths(sweep_id)
    paths.root.mkdir(parents=True)
    shutil.copyfile(sweep_file, paths.sweep_file)
    record = SweepRecord(
        sweep_id=sweep_id,
        name=config.name,
        sweep_file=str(sweep_file.resolve()),
        storage=trial_storage(sweep_id, config),
        tracking_uri=tracking_uri(tracking.uri),
        experiment=tracking.experiment or config.name,
        registered_model=tracking.registered_model or config.name,
        ray_address=ray_address,
    )
    trials = [TrialStatus(id=t.trial_id, config=t.model_dump(mode="json")) for t in expand(sweep_id, config)]
    save_model(paths.progress, SweepProgress(sweep=sweep_id, trials=trials))
    save_model(paths.record, record)
    return record


def load_sweep_record(sweep_id: str) -> SweepRecord:
    return load_record(sweep_paths(sweep_id).record)


def save_progress(record: SweepRecord, paths: SweepPaths, progress: SweepProgress) -> None:
    """Write the sweep's progress to its folder (what changed: `progress_journal`), then a copy into the sweep's
    storage.

    A driver on another cluster writes its folder there, out of the client's reach; the sweep's storage is the one
    place both sides reach (S3 on a real cluster: docs/cluster.md), so `status`, `submit --wait` and `cancel` read
    the copy there, with no service of our own in between. The copy is whole, so it is made at most every
    `STORAGE_COPY_S` seconds, and at once when the sweep's state changes.
    """
    progress.updated_at = time.time()
    progress_journal.write(paths.progress, json.loads(progress.model_dump_json()))
    now = time.monotonic()
    copied_at, copied_state = _copied.get(paths.progress, (-math.inf, None))
    if now - copied_at < STORAGE_COPY_S and copied_state == progress.state:
        return
    try:
        # One try: the sweep's events must not wait for storage; the next write catches up.
        open_store(record.storage, ONE_TRY).put_bytes(STORAGE_PROGRESS, progress.model_dump_json(indent=2).encode())
        _copied[paths.progress] = (now, progress.state)
    except Exception as exc:  # storage unreachable for a moment: the next write catches up; the sweep goes on
        logger.warning("could not copy the progress of sweep %s to %s: %s", record.sweep_id, record.storage, exc)


def fetch_progress(storage: str) -> SweepProgress | None:
    """The progress copy in a sweep's storage, None where there is none yet (the driver has not started)."""
    store = open_store(storage, ONE_TRY)  # `status` answers at once; its caller falls back to the local copy
    if not store.exists(STORAGE_PROGRESS):
        return None
    return SweepProgress.model_validate_json(store.read_bytes(STORAGE_PROGRESS))


def load_sweep_progress(sweep_id: str) -> SweepProgress:
    """The sweep's progress; for a driver on another cluster, its copy in the sweep's storage (kept here too)."""
    paths = sweep_paths(sweep_id)
    record = load_record(paths.record)
    if not record.local:
        try:
            remote = fetch_progress(record.storage)
        except Exception as exc:  # storage out of reach (or no credentials here): the last copy kept is all we have
            logger.warning("cannot read the progress of sweep %s from %s: %s", sweep_id, record.storage, exc)
            remote = None
        if remote is not None:
            # Kept in the folder: `resume` uploads it to the new driver, and it outlives the storage.
            save_model(paths.progress, remote)
            return remote
    return load_progress(paths.progress)
