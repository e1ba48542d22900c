"""The progress of a 200-trial sweep saved on every event: each save writes about what changed (the bytes this
process writes, read from the kernel's count in /proc/self/io, against the size of the changed trials computed
here), and every read gives exactly the progress saved, through snapshots, journal lines and another writer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from orchestrator.sweep import layout, progress_journal
from orchestrator.sweep.config import parse_sweep
from orchestrator.sweep.layout import create_sweep, save_progress, sweep_paths
from orchestrator.sweep.state import SweepState, TrialState, load_progress, save_model

TRIALS = 200
EVENTS = 300


def _written_bytes() -> int:
    """Bytes this process has passed to write(2) so far (the kernel's count, not ours)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def _trial_bytes(trial: object) -> int:
    return len(json.dumps(trial.model_dump(mode="json")))  # type: ignore[attr-defined]


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_each_event_writes_what_changed_not_every_trial(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    config = {
        "name": "queue",
        "grid": {"seed": list(range(TRIALS))},
        "model": {"arch": "test_resnet"},
        "recipe": {"steps_per_epoch": 1},
        "data": {"train": "/shards"},
    }
    sweep_file.write_text(json.dumps(config))
    record = create_sweep(sweep_file, parse_sweep(config))
    paths = sweep_paths(record.sweep_id)
    monkeypatch.setattr(layout, "STORAGE_COPY_S", float("inf"))  # the storage copy is timed, not per event
    progress = load_progress(paths.progress)
    full_size = len(progress.model_dump_json(indent=2))
    progress.state = SweepState.RUNNING
    save_progress(record, paths, progress)  # the first save of a process writes a snapshot (and the storage copy)

    rng = random.Random(0)
    changed_bytes = 0
    before = _written_bytes()
    for event in range(EVENTS):
        trial = progress.trials[rng.randrange(TRIALS)]
        if trial.state == TrialState.PENDING:
            progress.move(trial.id, TrialState.RUNNING)
        trial.metrics = {"step": float(event), "train_loss": rng.random()}
        trial.attempts = 1
        changed_bytes += _trial_bytes(trial)
        save_progress(record, paths, progress)
        if event % 29 == 0:
            assert load_progress(paths.progress) == progress
    written = _written_bytes() - before

    # A journal line per event (the changed trial plus `updated_at`), and now and then a snapshot that costs no more
    # than the journal it replaces: at most about three times the changes; rewriting every trial would be
    # EVENTS x full_size.
    assert written <= 3 * changed_bytes + full_size, (written, changed_bytes, full_size)
    assert written < EVENTS * full_size / 20, (written, EVENTS * full_size)
    assert load_progress(paths.progress) == progress
    # Old journals go when a snapshot replaces them: one left at most.
    assert len(list(paths.root.glob("progress.json.*.changes.jsonl"))) <= 1


def test_another_writer_and_a_torn_line_read_correctly(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    data = {"sweep": "s", "state": "RUNNING", "trials": [{"id": str(i), "state": "PENDING"} for i in range(3)]}
    progress_journal.forget(path)
    progress_journal.write(path, data)  # snapshot
    data["trials"][1] = {"id": "1", "state": "RUNNING"}
    progress_journal.write(path, data)  # journal line
    assert progress_journal.read(path) == {k: v for k, v in data.items()}
    journal = next(tmp_path.glob("progress.json.*.changes.jsonl"))
    with journal.open("a") as f:
        f.write('{"fields": {"state": "FAIL')  # a line still being written is not applied
    assert progress_journal.read(path)["state"] == "RUNNING"
    # Another process rewrites the whole file (a `cancel`): this writer notices and snapshots instead of appending
    # to a journal the new file does not name.
    other = {**data, "state": "CANCELLED"}
    save_model_like = json.dumps(other)
    path.write_text(save_model_like)
    assert progress_journal.read(path)["state"] == "CANCELLED"
    data["trials"][2] = {"id": "2", "state": "RUNNING"}
    progress_journal.write(path, data)
    assert progress_journal.read(path) == data
    assert not journal.exists()


def test_save_model_then_journal(tmp_path: Path) -> None:
    from tests.sweep.test_state import _progress

    progress = _progress(TrialState.RUNNING)
    path = tmp_path / "progress.json"
    save_model(path, progress)
    assert load_progress(path) == progress
