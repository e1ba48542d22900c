"""The nets against the paper's numbers: parameters, multiply-adds, shapes, shortcut semantics, training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from models import BasicBlock, Bottleneck, get_model, list_models
from models.blocks import ZeroPadShortcut
from models.summary import count_macs, count_params, summarize

DEPTHS = [18, 34, 50, 101, 152]
# torchvision's resnetNN() parameter counts (its weights' metadata `num_params`).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# Table 1, "FLOPs" row (multiply-adds, x10^9) at 224x224.
TABLE_1_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# Table 6, "# params", as printed (0.27M ... 19.4M).
TABLE_6_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}


def build(name: str, **overrides: Any) -> nn.Module:
    """Without weights: counting parameters and multiply-adds needs only shapes."""
    with torch.device("meta"):
        return get_model(name, **overrides)


@pytest.mark.parametrize("depth", DEPTHS)
def test_option_b_has_torchvisions_parameter_count(depth: int) -> None:
    assert count_params(build(f"resnet{depth}", shortcut="B", variant="v1.5")) == TORCHVISION_PARAMS[depth]
    # Where the stride sits does not change any weight shape.
    assert count_params(build(f"resnet{depth}", shortcut="B", variant="v1")) == TORCHVISION_PARAMS[depth]


@pytest.mark.parametrize("depth", DEPTHS)
def test_option_a_is_parameter_free_and_c_adds_projections(depth: int) -> None:
    plain = count_params(build(f"resnet{depth}", residual=False))
    option_a = count_params(build(f"resnet{depth}", shortcut="A"))
    option_b = count_params(build(f"resnet{depth}", shortcut="B"))
    option_c = count_params(build(f"resnet{depth}", shortcut="C"))
    assert option_a == plain  # Section 3.3, option (A): "This option introduces no extra parameter"
    assert plain < option_b < option_c


@pytest.mark.parametrize("depth", DEPTHS)
def test_v1_multiply_adds_match_table_1(depth: int) -> None:
    # Table 1 counts the paper's V1 (stride 2 in the bottleneck's first 1x1) with the projection shortcuts of
    # option B: measured 1.81, 3.66, 3.86, 7.57, 11.28 G, all within 2% of Table 1.
    macs = count_macs(build(f"resnet{depth}", variant="v1", shortcut="B"), image_size=224)
    assert macs == pytest.approx(TABLE_1_GMACS[depth] * 1e9, rel=0.05)


def test_table_1_is_v1_not_v1_5() -> None:
    # V1.5 moves the stride to the 3x3, so the first 1x1 of stages 2-4 runs at 4x the positions: ResNet-50 costs
    # 4.09 G, 7.6% above Table 1's 3.8 G. This pins which variant the paper's FLOPs describe.
    v1 = count_macs(build("resnet50", variant="v1"))
    v1_5 = count_macs(build("resnet50", variant="v1.5"))
    assert v1_5 > 3.8e9 * 1.05
    # conv1 of layer2.0, layer3.0, layer4.0: C_in x C_in/2 weights over 3/4 of the input positions each.
    assert v1_5 - v1 == 256 * 128 * (56**2 - 28**2) + 512 * 256 * (28**2 - 14**2) + 1024 * 512 * (14**2 - 7**2)


@pytest.mark.parametrize("depth", sorted(TABLE_6_PARAMS))
def test_cifar_parameter_counts_match_table_6(depth: int) -> None:
    printed = TABLE_6_PARAMS[depth]
    decimals = len(printed.split(".")[1]) - 1  # "0.27M" -> 2, "1.7M" -> 1
    params = count_params(build(f"cifar_resnet{depth}"))
    assert f"{params / 1e6:.{decimals}f}M" == printed
    assert count_params(build(f"cifar_resnet{depth}", residual=False)) == params  # option A: no extra weights


def test_imagenet_stage_shapes_match_table_1() -> None:
    rows = {r.name: r.output_shape for r in summarize(build("resnet50"), image_size=224)}
    assert rows["conv1"] == (64, 112, 112)
    assert rows["maxpool"] == (64, 56, 56)
    assert [rows[f"layer{i}"] for i in (1, 2, 3, 4)] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert rows["fc"] == (1000,)


def test_cifar_stage_shapes_match_section_4_2() -> None:
    # "feature maps of sizes {32, 16, 8} respectively ... numbers of filters are {16, 32, 64}"
    rows = {r.name: r.output_shape for r in summarize(build("cifar_resnet56"), image_size=32)}
    assert [rows[f"layer{i}"] for i in (1, 2, 3)] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert "maxpool" not in rows
    assert [len(getattr(build("cifar_resnet56"), f"layer{i}")) for i in (1, 2, 3)] == [9, 9, 9]


def test_variant_moves_the_stride_between_1x1_and_3x3() -> None:
    v1, v1_5 = build("resnet50", variant="v1"), build("resnet50", variant="v1.5")
    assert (v1.layer2[0].conv1.stride, v1.layer2[0].conv2.stride) == ((2, 2), (1, 1))
    assert (v1_5.layer2[0].conv1.stride, v1_5.layer2[0].conv2.stride) == ((1, 1), (2, 2))
    assert v1.layer2[0].downsample[0].stride == v1_5.layer2[0].downsample[0].stride == (2, 2)


def shortcut_kinds(model: nn.Module) -> list[str]:
    kinds = []
    for m in model.modules():
        if isinstance(m, BasicBlock | Bottleneck):
            ds = m.downsample
            kinds.append("id" if ds is None else "pad" if isinstance(ds, ZeroPadShortcut) else "proj")
    return kinds


def test_shortcut_options_place_projections_as_in_section_3_3() -> None:
    # ResNet-34: 16 blocks; dimensions grow at the first block of stages 2..4.
    grow = [0, 3, 7, 13]
    assert shortcut_kinds(build("resnet34", shortcut="A")) == ["pad" if i in grow[1:] else "id" for i in range(16)]
    assert shortcut_kinds(build("resnet34", shortcut="B")) == ["proj" if i in grow[1:] else "id" for i in range(16)]
    assert shortcut_kinds(build("resnet34", shortcut="C")) == ["proj"] * 16
    # Bottlenecks grow channels already in the first block (64 -> 256): option A zero-pads there too.
    assert shortcut_kinds(build("resnet50", shortcut="A")) == ["pad" if i in grow else "id" for i in range(16)]
    plain = build("resnet50", residual=False, shortcut="C")
    assert shortcut_kinds(plain) == ["id"] * 16
    assert not any(m.residual for m in plain.modules() if isinstance(m, Bottleneck))


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    # With the residual branch zeroed (zero-init last BN, eval mode) a block outputs relu(shortcut(x)).
    model = get_model("resnet50", shortcut="A", zero_init_residual=True, base_width=8).eval()
    block = model.layer2[0]  # 32 channels at stride 1 -> 64 channels at stride 2
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 64, 5, 5)
    torch.testing.assert_close(out[:, :32], F.relu(x[:, :, ::2, ::2]), rtol=0, atol=0)
    assert torch.count_nonzero(out[:, 32:]) == 0


class _CountAdds(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.adds = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor):
            self.adds += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("name", "blocks"), [("resnet18", 8), ("resnet50", 16), ("cifar_resnet20", 9)])
def test_plain_forward_has_no_residual_add(name: str, blocks: int) -> None:
    x = torch.randn(1, 3, 32, 32)
    counts = {}
    for residual in (True, False):
        model = get_model(name, residual=residual, base_width=4).eval()  # eval: BN adds nothing to a counter
        with torch.no_grad(), _CountAdds() as mode:
            model(x)
        counts[residual] = mode.adds
    assert counts == {True: blocks, False: 0}


def test_zero_init_residual_zeroes_exactly_the_last_bn_of_each_block() -> None:
    model = get_model("resnet50", zero_init_residual=True, base_width=8)
    zeroed = {n for n, p in model.named_parameters() if n.endswith("weight") and not p.any()}
    assert zeroed == {f"layer{s + 1}.{b}.bn3.weight" for s, n in enumerate((3, 4, 6, 3)) for b in range(n)}
    assert not any(name.endswith("weight") and not p.any() for name, p in get_model("resnet50").named_parameters())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_trains_on_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    logits = model(x)
    assert logits.shape == (2, model.fc.out_features)
    F.cross_entropy(logits, y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert model.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("variant", ["v1", "v1.5"])
@pytest.mark.parametrize("shortcut", ["A", "B", "C", "plain"])
def test_every_option_combination_trains_on_cpu(depth: int, variant: str, shortcut: str) -> None:
    options: dict[str, Any] = {"residual": False} if shortcut == "plain" else {"shortcut": shortcut}
    model = get_model(f"resnet{depth}", variant=variant, base_width=8, num_classes=5, **options)
    logits = model(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert model.conv1.weight.grad is not None
    assert model.conv1.weight.grad.abs().sum() > 0
