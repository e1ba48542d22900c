"""`validate` on search spaces (the same trials on every run) and its GPU-hour estimates from `resnet-orch bench`
figures: unknown without one, the measured figure for the same net, a scaled one for another net."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.training.throughput import Figure, load_figures, save_figure


def _sweep_file(tmp_path: Path, shards: str, **overrides: Any) -> Path:
    sweep = {
        "name": "est",
        "model": {"arch": "test_resnet", "base_width": 8},
        "recipe": {"batch_size": 16, "epochs": 3, "image_size": 32, "resize_size": 40},
        "data": {"train": shards},
        "resources": {"workers": 2, "gpus_per_worker": 1},
        **overrides,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    return path


def _validate(path: Path) -> dict[str, Any]:
    done = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert done.exit_code == 0, done.output
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


def test_search_sweep_expands_to_the_same_trials_on_two_validate_runs(
    home: Path, tiny_shards_local: str, tmp_path: Path
) -> None:
    search = {"lr": {"loguniform": [0.01, 0.5]}, "weight_decay": {"choice": [1e-4, 5e-5]}}
    path = _sweep_file(tmp_path, tiny_shards_local, search=search, num_samples=4)
    first, second = _validate(path), _validate(path)
    assert len(first["trials"]) == 4
    assert [t["config"] for t in first["trials"]] == [t["config"] for t in second["trials"]]
    lrs = [t["config"]["recipe"]["lr"] for t in first["trials"]]
    assert len(set(lrs)) == 4 and all(0.01 <= lr <= 0.5 for lr in lrs)
    text = CliRunner().invoke(app, ["validate", str(path)]).stdout
    for trial in first["trials"]:
        assert trial["id"] in text


def test_estimate_is_unknown_without_a_figure_then_follows_the_stored_one(
    home: Path, tiny_shards_local: str, tmp_path: Path
) -> None:
    path = _sweep_file(tmp_path, tiny_shards_local)
    trial = _validate(path)["trials"][0]
    assert trial["estimate"] == ["GPU-hours per trial: unknown: run `resnet-orch bench`"]

    macs = trial["macs_per_image"]
    # 48 train images, batch 16: 3 steps per epoch, 3 epochs = 144 images; 2 GPUs of 1 each, every image once per
    # device-second at `images_per_s`: 144 x 1 GPU / images_per_s device-seconds of GPU time per image stream.
    gpu = Figure("NVIDIA Test GPU", "test_resnet", 32, 400.0, macs, 16, 10, time.time())
    save_figure(home, gpu)
    assert load_figures(home) == [gpu]
    expected_hours = 144 * 1.0 / 400.0 / 3600.0
    line = _validate(path)["trials"][0]["estimate"]
    assert line == [
        f"GPU-hours per trial: ~{expected_hours:.3g} GPU-hours on NVIDIA Test GPU (144 images at 400.0 images/s per "
        "device; measured for test_resnet at 32px)"
    ]

    # The same net, wider: scaled by forward multiply-adds from its own figure.
    wide = _sweep_file(tmp_path, tiny_shards_local, model={"arch": "test_resnet", "base_width": 16})
    trial = _validate(wide)["trials"][0]
    scaled = 400.0 * macs / trial["macs_per_image"]
    assert trial["estimate"] == [
        f"GPU-hours per trial: ~{144 / scaled / 3600.0:.3g} GPU-hours on NVIDIA Test GPU (144 images at "
        f"{scaled:,.1f} images/s per device; scaled by multiply-adds from test_resnet at 32px)"
    ]
    # Another net: from the hardware's newest figure (ResNet-50 at 224 px), scaled the same way.
    big = Figure("NVIDIA Test GPU", "resnet50", 224, 1000.0, 4_100_000_000, 64, 10, time.time() + 1)
    save_figure(home, big)
    other = _sweep_file(tmp_path, tiny_shards_local, model={"depth": 18, "base_width": 8})
    trial = _validate(other)["trials"][0]
    scaled = 1000.0 * 4_100_000_000 / trial["macs_per_image"]
    assert trial["estimate"] == [
        f"GPU-hours per trial: ~{144 / scaled / 3600.0:.3g} GPU-hours on NVIDIA Test GPU (144 images at "
        f"{scaled:,.1f} images/s per device; scaled by multiply-adds from resnet50 at 224px)"
    ]
    # A CPU sweep has no GPU figure to use: a GPU figure is never used for CPU workers.
    cpu = _sweep_file(tmp_path, tiny_shards_local, resources={"workers": 2})
    assert _validate(cpu)["trials"][0]["estimate"] == [
        "CPU worker-hours per trial: unknown: run `resnet-orch bench` on a CPU node"
    ]


def test_bench_measures_and_stores_a_figure(home: Path) -> None:
    done = CliRunner().invoke(app, ["bench", "test_resnet", "--image-size", "32", "--batch-size", "4", "--steps", "2"])
    assert done.exit_code == 0, done.output
    (figure,) = load_figures(home)
    assert (figure.model, figure.image_size, figure.batch_size, figure.steps) == ("test_resnet", 32, 4, 2)
    assert figure.hardware.startswith("cpu:") and figure.images_per_s > 0
    from models import get_model
    from models.summary import count_macs

    assert figure.macs_per_image == count_macs(get_model("test_resnet"), 32)
    assert f"{figure.images_per_s:,.1f} images/s" in done.stdout
    refused = CliRunner().invoke(app, ["bench", "resnet9"])
    assert refused.exit_code == 2 and "'resnet9' is not a registered model" in refused.output
