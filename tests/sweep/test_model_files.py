"""`pull`'s three formats, each loaded by a fresh Python that cannot import resnet-orch, give the trained model's
outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

from models import get_model
from orchestrator.cli import app
from orchestrator.sweep.config import parse_sweep
from orchestrator.sweep.tracking import Tracker, log_trial_model

# The fresh interpreter: isolated (-I: no PYTHONPATH, no user site, not the current directory) and without the site
# module (-S: no .pth file runs, so the editable install of resnet-orch is not on the path), given only the folder
# that holds torch and torchvision.
LOADER = """
import sys
sys.path[:0] = [{site!r}]
for name in ("orchestrator", "models", "pipelines"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{{name}} is importable here; the test must load the files without resnet-orch")
import torch
import torchvision

images = torch.load("images.pt", weights_only=True)
with torch.no_grad():
    outputs = {{
        "export": torch.export.load("model.pt2").module()(images),
        "torchscript": torch.jit.load("model.pt")(images),
    }}
    payload = torch.load("state.pt", weights_only=True)
    # resnet18 with shortcut B, v1.5 is torchvision's resnet18: its builder loads the state dict as is.
    net = getattr(torchvision.models, payload["model"])(num_classes=payload["kwargs"]["num_classes"])
    net.load_state_dict(payload["state_dict"], strict=True)
    outputs["state-dict"] = net.eval()(images)
torch.save({{"outputs": outputs, "model": payload["model"], "kwargs": payload["kwargs"],
            "image_size": payload["image_size"]}}, "outputs.pt")
"""


def trained_resnet18() -> torch.nn.Module:
    """A ResNet-18 after a few SGD steps on random images: BN statistics and weights away from their init."""
    torch.manual_seed(0)
    model = get_model("resnet18", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_each_pull_format_loads_without_resnet_orch_and_gives_the_models_outputs(tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(tracking_uri, "pull", tmp_path / "artifacts")
    sweep = {
        "name": "pull",
        "model": {"depth": 18, "num_classes": 10},
        "recipe": {"image_size": 32, "resize_size": 36, "batch_size": 4},
        "data": {"train": "/shards"},
    }
    [trial] = parse_sweep(sweep).expand(storage_root=str(tmp_path / "storage"))
    (tmp_path / "sweep.yaml").write_text("name: pull\n", encoding="utf-8")
    run_id = tracker.child_run(tracker.parent_run("pull-1", tmp_path / "sweep.yaml"), "pull-1", trial)
    model = trained_resnet18()
    log_trial_model(tracker, run_id, model, image_size=32, registered_model="pulled", version_tags={})

    files = {"export": "model.pt2", "torchscript": "model.pt", "state-dict": "state.pt"}
    for fmt, name in files.items():
        args = ["pull", "pulled/1", "-o", str(tmp_path / name), "--tracking-uri", tracking_uri]
        done = CliRunner().invoke(app, [*args, *(["--format", fmt] if fmt != "export" else [])])
        assert done.exit_code == 0, done.output
        assert done.stdout.strip() == f"pulled/1 -> {tmp_path / name} ({fmt})"
    images = torch.randn(3, 3, 32, 32)  # a batch size other than the registered example's
    torch.save(images, tmp_path / "images.pt")

    site = str(Path(torch.__file__).resolve().parent.parent)
    fresh = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOADER.format(site=site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    loaded = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert loaded["model"] == "resnet18"
    assert loaded["kwargs"] == trial.model.model_kwargs()
    assert loaded["image_size"] == 32
    with torch.no_grad():
        expected = model(images)
    for fmt in files:
        torch.testing.assert_close(loaded["outputs"][fmt], expected, msg=fmt)


def test_an_unknown_format_is_refused() -> None:
    done = CliRunner().invoke(app, ["pull", "m/1", "-o", "x.pt", "--format", "onnx"])
    assert done.exit_code == 2
    assert done.stderr.strip() == "error: --format 'onnx': choose one of export, torchscript, state-dict"
