"""Checkpoint files: complete or absent, verified on read, loaded as data (never run); a corrupt or tampered latest
checkpoint gives way to the one before it; attempt markers on a pyarrow filesystem."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs
import pytest
import torch

from orchestrator.training.checkpointing import (
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    RankState,
    TrainState,
    capture_rng,
    checkpoint_dir_name,
    count_attempts,
    latest_complete_checkpoint,
    load_newest_checkpoint,
    read_checkpoint,
    register_attempt,
    restore_rng,
    unsent_reports,
    write_checkpoint,
)
from tests.training.checkpoint_tampering import flip_bit, malicious_state, plant_payload, truncate


def _state(step: int = 7) -> TrainState:
    return TrainState(
        step=step,
        epoch=1,
        epoch_step=3,
        attempt=0,
        optimizer={"state": {}, "param_groups": []},
        schedule={"plateau_scale": 1.0, "best_metric": 0.5, "bad_epochs": 0},
        ranks=[RankState(loader={"epoch": 1, "batch": 3}, rng=capture_rng())],
        step_losses=[6.9, 6.8],
        epoch_sizes=[1000],
        epoch_totals={"samples": 96.0},
    )


def test_round_trip(tmp_path: Path) -> None:
    weights = {"w": torch.arange(4.0)}
    directory = write_checkpoint(tmp_path / "ckpt", weights, _state())
    model_state, state = read_checkpoint(directory)
    assert torch.equal(model_state["w"], weights["w"])
    assert (state.step, state.epoch, state.epoch_step, state.step_losses) == (7, 1, 3, [6.9, 6.8])
    assert state.ranks[0].loader == {"epoch": 1, "batch": 3}
    assert state.epoch_totals == {"samples": 96.0}


def test_unsent_reports_are_those_after_the_registered_checkpoint_once_each(tmp_path: Path) -> None:
    # Epochs of 8 steps, a checkpoint every 3: reports at 3, 6, the epoch end 8, 9, 12, 15, the epoch end 16 and 17,
    # whose checkpoint this is.
    steps = [3, 6, 8, 9, 12, 15, 16, 17]
    reports = [{"step": s, "is_epoch_end": s in (8, 16)} for s in steps]
    state = _state(step=17)
    state.reports = reports
    _, state = read_checkpoint(write_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(1)}, state))
    assert state.reports == reports
    assert [r["step"] for r in state.epoch_reports] == [8, 16]
    assert state.report == reports[-1]

    def registered(step: int) -> str:
        return f"s3://bucket/trial/{checkpoint_dir_name(step, attempt=1)}"

    # Ray Train registered this very checkpoint: nothing was lost, nothing is sent twice.
    assert unsent_reports(state, registered(17)) == []
    assert unsent_reports(state, registered(21)) == []  # a newer one (this one was an older, readable fallback)
    # Its own report died with the worker before Ray Train collected it.
    assert unsent_reports(state, registered(16)) == [reports[-1]]
    # The report of step 15 waited in the worker's result queue behind the registered 12: mid-epoch reports are
    # re-sent too, or MLflow's history of the trial misses step 15.
    assert [r["step"] for r in unsent_reports(state, registered(12))] == [15, 16, 17]
    # Nothing registered in this run: every report, in step order.
    assert [r["step"] for r in unsent_reports(state, None)] == steps


def test_a_state_written_with_epoch_reports_and_its_own_report_reads_as_its_reports() -> None:
    ends = [{"step": 8, "is_epoch_end": True}, {"step": 16, "is_epoch_end": True}]
    old = {k: v for k, v in _state(step=17).to_dict().items() if k != "reports"}
    mid = TrainState.from_dict({**old, "epoch_reports": ends, "report": {"step": 17, "is_epoch_end": False}})
    assert [r["step"] for r in mid.reports] == [8, 16, 17]
    at_end = TrainState.from_dict({**old, "epoch_reports": ends, "report": ends[-1]})
    assert at_end.reports == ends
    assert TrainState.from_dict({**old, "epoch_reports": [], "report": {}}).reports == []


def test_rng_states_restore_the_same_draws_after_a_weights_only_round_trip(tmp_path: Path) -> None:
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's legacy state, part of what must come back
    state = _state()
    first = (random.random(), float(np.random.standard_normal()), np.random.randint(1 << 30), torch.rand(3))
    _, loaded = read_checkpoint(write_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(1)}, state))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng(loaded.ranks[0].rng)
    again = (random.random(), float(np.random.standard_normal()), np.random.randint(1 << 30), torch.rand(3))
    assert again[:3] == first[:3]
    assert torch.equal(again[3], first[3])


def test_writer_killed_halfway_leaves_no_checkpoint(tmp_path: Path) -> None:
    class Killed(Exception):
        pass

    def die() -> None:
        raise Killed

    with pytest.raises(Killed):
        write_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(2)}, _state(), after_first_file=die)
    assert not (tmp_path / "ckpt").exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_partial_checkpoint_is_refused(tmp_path: Path) -> None:
    directory = write_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(2)}, _state())
    (directory / MODEL_FILE).write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=r"does not match manifest\.json"):
        read_checkpoint(directory)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="not completely written"):
        read_checkpoint(directory)


def test_attempts_and_latest_complete(tmp_path: Path) -> None:
    fs = pyarrow.fs.LocalFileSystem()
    trial = str(tmp_path / "trial")
    assert count_attempts(fs, trial) == 0
    assert [register_attempt(fs, trial) for _ in range(3)] == [0, 1, 2]
    assert count_attempts(fs, trial) == 3
    write_checkpoint(tmp_path / "trial" / "checkpoint-step000000010-attempt0", {"w": torch.zeros(1)}, _state(10))
    write_checkpoint(tmp_path / "trial" / "checkpoint-step000000020-attempt1", {"w": torch.zeros(1)}, _state(20))
    (tmp_path / "trial" / "checkpoint-step000000030-attempt1").mkdir()  # an upload that never completed
    latest = latest_complete_checkpoint(fs, trial)
    assert latest is not None and latest.endswith("checkpoint-step000000020-attempt1")


def _trial_with_checkpoints(tmp_path: Path, steps: list[int]) -> tuple[pyarrow.fs.FileSystem, str, list[str]]:
    fs, trial = pyarrow.fs.LocalFileSystem(), tmp_path / "trial"
    paths = []
    for step in steps:
        directory = trial / f"checkpoint-step{step:09d}-attempt0"
        write_checkpoint(directory, {"w": torch.full((4,), float(step))}, _state(step))
        paths.append(str(directory))
    return fs, str(trial), paths


def test_a_tampered_train_state_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    fs, _, [path] = _trial_with_checkpoints(tmp_path, [10])
    plant_payload(fs, path, str(marker))
    with pytest.raises(CheckpointError, match=r"GLOBAL posix\.system.*refused without running them"):
        read_checkpoint(Path(path))
    assert not marker.exists()
    # The payload is real: an unsafe load (what reading the train state used to be) runs it.
    unsafe = f"import torch; torch.load({str(Path(path) / STATE_FILE)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", unsafe], check=True, capture_output=True)
    assert marker.exists()


def test_resume_skips_corrupt_and_tampered_checkpoints_naming_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "payload-ran"
    fs, trial, paths = _trial_with_checkpoints(tmp_path, [10, 20, 30, 40])
    truncate(fs, paths[3], MODEL_FILE)  # newest: a file cut short
    flip_bit(fs, paths[2], STATE_FILE)  # a flipped bit, same size
    plant_payload(fs, paths[1], str(marker))  # a pickle that runs code, its manifest made to agree
    with caplog.at_level(logging.WARNING, logger="orchestrator.training.checkpointing"):
        found = load_newest_checkpoint(fs, trial)
    assert found is not None
    path, weights, state = found
    assert path == paths[0]
    assert state.step == 10
    assert torch.equal(weights["w"], torch.full((4,), 10.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert warnings[0].startswith(f"skipping checkpoint {paths[3]}: ")
    assert "model.pt is" in warnings[0] and "truncated" in warnings[0]
    assert warnings[1].startswith(f"skipping checkpoint {paths[2]}: ")
    assert "does not match manifest.json" in warnings[1]
    assert warnings[2].startswith(f"skipping checkpoint {paths[1]}: ")
    assert "refused without running them" in warnings[2]
    assert not marker.exists()
    # What a restart would use without the fallback is the newest complete-looking one by sizes alone.
    assert latest_complete_checkpoint(fs, trial) == paths[2]


def test_resume_with_no_readable_checkpoint_fails_naming_them(tmp_path: Path) -> None:
    fs, trial, paths = _trial_with_checkpoints(tmp_path, [10])
    flip_bit(fs, paths[0], MODEL_FILE)
    with pytest.raises(CheckpointError, match=r"no checkpoint of .* can be read: .*checkpoint-step000000010"):
        load_newest_checkpoint(fs, trial)
    assert load_newest_checkpoint(fs, str(tmp_path / "no-trial")) is None


def test_a_checkpoint_of_the_previous_format_is_refused_by_its_manifest(tmp_path: Path) -> None:
    directory = write_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(2)}, _state())
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    (directory / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(CheckpointError, match="format 1, this version reads 2"):
        read_checkpoint(directory)


def test_malicious_state_bytes_are_a_loadable_pickle_only_when_unsafe(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "state.pt").write_bytes(malicious_state(str(marker)))
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "state.pt", weights_only=True)
    assert not marker.exists()
