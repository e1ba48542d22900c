"""The sweep's progress on disk as a snapshot plus a journal of changes, so that a trial event costs its own bytes.

A sweep of hundreds of trials has thousands of events (start, each report, restart, end); rewriting every trial's
status at each would write O(trials) bytes per event. Instead `progress.json` is a snapshot naming its journal
(`"journal"`), and each save appends one line to that journal holding only what changed: the top-level fields that
differ and the full status of each trial that differs (a line replaces whole trials, so replaying it twice is
harmless). When the journal has grown past the snapshot (or another process wrote the snapshot), the next save
writes a fresh snapshot with a new journal name and removes the old journal: O(changes) bytes per event, amortized.

Readers take the snapshot, then its journal; a journal removed under them means a newer snapshot, read again. A
last line without its newline is a write in progress and is left for the next read. Works on plain JSON dicts.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.files import write_atomic

JOURNAL_KEY = "journal"
# Below this a snapshot is cheaper than keeping a journal apart (a small sweep compacts at every few events).
_MIN_JOURNAL_BYTES = 64 * 1024


@dataclass
class _Written:
    """What this process last wrote at a path: enough to diff the next save against, and to see another writer."""

    fields: dict[str, Any]
    trials: dict[str, dict[str, Any]]
    journal: str
    snapshot_bytes: int
    journal_bytes: int
    snapshot_stat: tuple[int, int]  # (inode, mtime_ns) of the snapshot as written


_written: dict[Path, _Written] = {}


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def _split(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    fields = {key: value for key, value in data.items() if key not in ("trials", JOURNAL_KEY)}
    return fields, {trial["id"]: trial for trial in data["trials"]}


def write(path: Path, data: dict[str, Any]) -> int:
    """Save `data` (a progress as JSON: top-level fields and a `trials` list of dicts with an `id`); returns the
    bytes written: one journal line of the changes, or a snapshot when one is due."""
    path = Path(path)
    fields, trials = _split(data)
    last = _written.get(path)
    fresh = last is not None and path.exists() and _stat(path) == last.snapshot_stat
    if last is None or not fresh or last.journal_bytes > max(last.snapshot_bytes, _MIN_JOURNAL_BYTES):
        return _snapshot(path, fields, trials, last)
    changed = [trial for trial_id, trial in trials.items() if last.trials.get(trial_id) != trial]
    line = json.dumps({"fields": {k: v for k, v in fields.items() if last.fields.get(k) != v}, "trials": changed})
    payload = (line + "\n").encode()
    with open(path.parent / last.journal, "ab") as journal:
        journal.write(payload)
        journal.flush()
        os.fsync(journal.fileno())
    last.fields, last.trials = fields, trials
    last.journal_bytes += len(payload)
    return len(payload)


def _snapshot(path: Path, fields: dict[str, Any], trials: dict[str, dict[str, Any]], last: _Written | None) -> int:
    # The journal the file names, and the one this process wrote last (gone from the file if another wrote it).
    old = {_journal_of(path), last.journal if last is not None else None} - {None}
    journal = f"{path.name}.{secrets.token_hex(4)}.changes.jsonl"
    payload = json.dumps({**fields, "trials": list(trials.values()), JOURNAL_KEY: journal}, indent=1).encode()
    write_atomic(path, payload)
    for name in old:
        (path.parent / str(name)).unlink(missing_ok=True)  # every change in it is in the snapshot now
    _written[path] = _Written(fields, trials, journal, len(payload), 0, _stat(path))
    return len(payload)


def _journal_of(path: Path) -> str | None:
    try:
        journal = json.loads(path.read_text(encoding="utf-8")).get(JOURNAL_KEY)
        return None if journal is None else str(journal)
    except (FileNotFoundError, ValueError):
        return None


def forget(path: Path) -> None:
    """Drop what this process knows of `path` (another writer takes over, e.g. a full `save_model`)."""
    _written.pop(Path(path), None)


def read(path: Path) -> dict[str, Any]:
    """The progress at `path`: its snapshot with its journal's changes applied, in order."""
    for _ in range(10):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        journal = data.pop(JOURNAL_KEY, None)
        if journal is None:
            return dict(data)
        try:
            text = (Path(path).parent / journal).read_bytes().decode()
        except FileNotFoundError:
            if _journal_of(path) != journal:
                continue  # compacted while we read: the new snapshot holds it all
            return dict(data)  # no change since the snapshot
        index = {trial["id"]: n for n, trial in enumerate(data["trials"])}
        for line in text.split("\n")[:-1]:  # the part after the last newline is still being written
            change = json.loads(line)
            data.update(change["fields"])
            for trial in change["trials"]:
                data["trials"][index[trial["id"]]] = trial
        return dict(data)
    raise RuntimeError(f"{path}: rewritten 10 times while being read; try again")
