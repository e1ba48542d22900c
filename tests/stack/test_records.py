"""What the local stack records: its state file round-trips, its paths follow RESNET_ORCH_HOME, and Ray's temp dir
stays short enough for Ray's Unix sockets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.stack.processes import ServiceRecord
from orchestrator.stack.records import StackPaths, StackState


def test_state_file_round_trips() -> None:
    record = ServiceRecord("s3", 123, "http://127.0.0.1:9", (9,), "/x.log", "1.00")
    state = StackState("127.0.0.1", "b", "127.0.0.1:1", "/tmp/r", "/c.json", {"s3": record})
    assert StackState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_ray_temp_dir_stays_short_for_long_homes(tmp_path: Path) -> None:
    # Ray's Unix sockets live under <temp-dir>/session_.../sockets/ and Linux caps their path at 107 bytes.
    paths = StackPaths.from_env(tmp_path / ("deep" * 30))
    assert len(str(paths.ray_temp_dir)) <= 40
    assert StackPaths.from_env(tmp_path / ("deep" * 30)).ray_temp_dir == paths.ray_temp_dir
    assert StackPaths.from_env(tmp_path / "other").ray_temp_dir != paths.ray_temp_dir


def test_home_comes_from_resnet_orch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_ORCH_HOME", str(tmp_path / "h"))
    assert StackPaths.from_env().state_file == tmp_path / "h" / "stack" / "state.json"
