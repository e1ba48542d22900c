"""`models.summary`: counts on hand-computable nets, per-row totals, and the CLI's output and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from models import get_model
from models.summary import app, count_macs, count_params, summarize

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_counts_on_a_hand_computable_net() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False),  # 8x8 out: 64 positions x 8 x (3 x 3 x 3)
        nn.Conv2d(8, 8, kernel_size=3, stride=2, padding=1, groups=4),  # 4x4 out: 16 x 8 x (2 x 3 x 3)
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    assert count_macs(net, image_size=8) == 64 * 8 * 27 + 16 * 8 * 18 + 128 * 10
    assert count_params(net) == 8 * 27 + (8 * 18 + 8) + (128 * 10 + 10)


def test_rows_add_up_to_the_model_totals() -> None:
    with torch.device("meta"):
        model = get_model("resnet18")
    rows = summarize(model, image_size=224)
    top = [r for r in rows if r.depth == 0]
    assert [r.name for r in top] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    assert sum(r.params for r in top) == count_params(model) == 11_689_512
    assert sum(r.macs for r in top) == count_macs(model, 224)
    blocks = [r for r in rows if r.name.startswith("layer2.")]
    assert [(r.name, r.kind, r.output_shape) for r in blocks] == [
        ("layer2.0", "BasicBlock", (128, 28, 28)),
        ("layer2.1", "BasicBlock", (128, 28, 28)),
    ]
    assert sum(r.macs for r in blocks) == next(r.macs for r in top if r.name == "layer2")


def test_counting_leaves_the_model_as_it_was() -> None:
    model = get_model("test_resnet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, image_size=64)
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_cli_prints_layers_params_and_multiply_adds() -> None:
    code, out = invoke("resnet50", "--shortcut", "B")
    assert code == 0, out
    assert "layer3.5" in out
    assert "1024 x 14 x 14" in out
    assert "25,557,032" in out
    assert "4.09 G" in out
    assert "shortcut=B variant=v1.5" in out


def test_cli_options_change_the_model() -> None:
    code, out = invoke("resnet50", "--shortcut", "A", "--variant", "v1", "--stages")
    assert code == 0, out
    assert "22,780,456" in out  # option A: the plain net's count
    assert "3.50 G" in out
    assert "layer3.5" not in out
    code, out = invoke("resnet18", "--plain", "--image-size", "112")
    assert code == 0, out
    assert "residual=False" in out
    assert "at 112x112" in out
    code, out = invoke("cifar_resnet110")
    assert code == 0, out
    assert "at 32x32" in out  # the CIFAR stem's own resolution by default
    assert "1,727,962" in out


def test_cli_bad_input_exits_2_with_the_valid_choices() -> None:
    code, out = invoke("resnet19")
    assert code == 2
    assert "unknown model 'resnet19'" in out
    assert "resnet18" in out
    assert "Traceback" not in out
    code, out = invoke("resnet18", "--shortcut", "D")
    assert (code, "choose one of 'A', 'B', 'C'" in out) == (2, True)
    code, out = invoke("cifar_resnet20", "--variant", "v1")
    assert (code, "cifar_resnet20 has no option 'variant'" in out) == (2, True)


def test_python_dash_m_entry_point() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "models.summary", "test_resnet", "--stages"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "143,312" in proc.stdout
