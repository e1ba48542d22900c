"""Before queueing: a `data:` location is a complete shard set with classes the model can output (and the train loop
checks the class count again on every rank)."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.config import SweepConfig, parse_sweep
from orchestrator.sweep.data_check import DataError, check_data, check_num_classes, read_shard_set
from pipelines.sharding import read_manifest


def test_fewer_outputs_than_dataset_classes_is_a_config_error() -> None:
    classes = {f"n{i:08d}": i for i in range(1000)}
    with pytest.raises(ValueError) as info:
        check_num_classes(10, classes, "train", "s3://b/imagenet/train")
    assert str(info.value) == (
        "model.num_classes is 10 but data.train (s3://b/imagenet/train) has 1000 classes; "
        "set model.num_classes: 1000 in the sweep file"
    )


def test_more_outputs_than_dataset_classes_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.sweep.data_check"):
        check_num_classes(1000, {"a": 0, "b": 1}, "val", "/shards/val")
        check_num_classes(2, {"a": 0, "b": 1}, "val", "/shards/val")
    assert [r.getMessage() for r in caplog.records] == [
        "model.num_classes is 1000 but data.val (/shards/val) has 2 classes: 998 outputs never see a label; "
        "set model.num_classes: 2 unless that is intended"
    ]


def test_class_count_check_reads_the_shard_manifest(tiny_shards_local: str) -> None:
    # The tiny set has 8 classes: a CIFAR net's default 10 outputs cover them, a 4-way head does not.
    classes = read_manifest(tiny_shards_local)["classes"]
    check_num_classes(10, classes, "train", tiny_shards_local)
    with pytest.raises(ValueError, match=r"has 8 classes; set model.num_classes: 8"):
        check_num_classes(4, classes, "train", tiny_shards_local)


def _sweep(train: str, val: str | None = None, **overrides: Any) -> SweepConfig:
    data = {"train": train} | ({"val": val} if val is not None else {})
    base = {"name": "d", "model": {"arch": "test_resnet", "num_classes": 8}, "data": data}
    return parse_sweep(base | overrides)


@pytest.fixture
def shards(tiny_shards_local: str, tmp_path: Path) -> Path:
    """A copy of the tiny shard set (8 classes, 48 samples in 3+ shards) that a test may damage."""
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_shards_local, copy)
    return copy


def test_a_complete_shard_set_passes(shards: Path) -> None:
    summary = read_shard_set(str(shards))
    assert (summary.samples, summary.num_classes) == (48, 8)
    assert check_data(_sweep(str(shards))) == []
    # A head wider than the classes trains on; said once for the sweep, not once per trial.
    wide = _sweep(str(shards), model={"arch": "test_resnet", "num_classes": 10}, grid={"seed": [0, 1]})
    assert check_data(wide) == [
        f"model.num_classes is 10 but data.train ({shards}) has 8 classes: 2 outputs never see a label; "
        "set model.num_classes: 8 unless that is intended"
    ]


def test_an_incomplete_shard_set_is_refused_naming_what_is_missing(shards: Path) -> None:
    manifest = read_manifest(str(shards))
    first, second = manifest["shards"][0], manifest["shards"][1]
    (shards / first["name"]).write_bytes((shards / first["name"]).read_bytes()[:1000])
    (shards / second["index"]).unlink()
    with pytest.raises(DataError) as info:
        check_data(_sweep(str(shards)))
    assert str(info.value) == (
        f"data.train: {shards / first['name']} is 1000 bytes, the manifest says {first['bytes']} (and 1 more): "
        f"{shards} is not a complete shard set; run `resnet-orch data shard SRC {shards}` again (it rewrites only "
        "what is missing)"
    )


def test_a_folder_without_manifest_and_a_head_too_small_are_both_named(shards: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        check_data(_sweep(str(shards), str(empty), model={"arch": "test_resnet", "num_classes": 4}))
    assert str(info.value).splitlines() == [
        f"data.val: {empty / 'manifest.json'} not found: {empty} is not a complete shard set; run "
        "`resnet-orch data shard SRC DEST` to completion first",
        f"model.num_classes is 4 but data.train ({shards}) has 8 classes; set model.num_classes: 8 in the sweep file",
    ]
    # A sweep for another cluster may name paths of that cluster's nodes: not here is not checked, not refused.
    assert check_data(_sweep(str(shards), str(empty)), on_this_machine=False) == [
        f"data.val: {empty} is not a shard set on this machine; not checked here"
    ]


def test_a_fault_after_the_last_step_the_data_gives_is_refused(shards: Path) -> None:
    # 48 samples, 1 worker, batches of 16: 3 steps per epoch, 2 epochs.
    recipe = {"batch_size": 16, "epochs": 2}
    check_data(_sweep(str(shards), recipe=recipe, chaos={"kill_rank": 0, "at_step": 6}))
    with pytest.raises(DataError) as info:
        check_data(_sweep(str(shards), recipe=recipe, chaos={"kill_rank": 0, "at_step": 7}))
    assert str(info.value) == (
        "chaos.at_step: 7 is beyond the last step of every trial (6 with data.train's 48 samples), so the fault would "
        "never fire; choose 1..6"
    )


def test_an_unreachable_store_is_a_warning_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:  # a port nothing listens on: connection refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    [warning] = check_data(_sweep("s3://nowhere/train"))
    assert warning.startswith("data.train not checked: s3://nowhere/train/manifest.json: cannot connect to http://127")


def test_a_missing_s3_shard_set_is_refused(learnable_shards_s3: tuple[str, str]) -> None:
    train, val = learnable_shards_s3
    assert check_data(_sweep(train, val, model={"arch": "test_resnet", "num_classes": 10})) == []
    missing = train.replace("/learnable/train", "/learnable/trian")
    with pytest.raises(DataError, match=r"^data.train: s3://.*/learnable/trian/manifest.json not found"):
        check_data(_sweep(missing, model={"arch": "test_resnet", "num_classes": 10}))


@pytest.mark.parametrize("command", ["validate", "submit"])
def test_cli_refuses_bad_data_before_anything_is_written(
    command: str, shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("RESNET_ORCH_HOME", str(home))
    sweep_file = tmp_path / "sweep.yaml"
    model = {"arch": "test_resnet", "num_classes": 4}
    sweep_file.write_text(json.dumps({"name": "d", "model": model, "data": {"train": str(shards)}}))
    result = CliRunner().invoke(app, [command, str(sweep_file)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {sweep_file}: model.num_classes is 4 but data.train ({shards}) has 8 classes; set model.num_classes: "
        "8 in the sweep file"
    )
    assert "Traceback" not in result.output
    assert not home.exists()
