"""Checkpoint files: complete or absent, verified on read; attempt markers on a pyarrow filesystem."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs
import pytest
import torch

from orchestrator.training.checkpointing import (
    MANIFEST_FILE,
    MODEL_FILE,
    CheckpointError,
    RankState,
    TrainState,
    capture_rng,
    count_attempts,
    latest_complete_checkpoint,
    read_checkpoint,
    register_attempt,
    restore_rng,
    write_checkpoint,
)


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


def test_rng_states_restore_the_same_draws(tmp_path: Path) -> None:
    saved = capture_rng()
    first = torch.rand(3)
    restore_rng(saved)
    assert torch.equal(torch.rand(3), first)


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
