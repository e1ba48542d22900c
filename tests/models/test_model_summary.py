"""`models.summary`: counts on hand-computable nets, per-row totals, a model left as it was (the command: tests/cli)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import get_model
from models.summary import count_macs, count_params, summarize

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
