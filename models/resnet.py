"""One `ResNet` builder for every net of He et al. 2015: the ImageNet family (Table 1) and the CIFAR-10
family (Section 4.2), residual or plain, with shortcut option A/B/C (Section 3.3) as a parameter.

Layout and names follow torchvision's `resnet.py` (`conv1`, `bn1`, `layer1..4`, `fc`): a torchvision
`resnetNN()` state_dict loads with `strict=True` into our option-B V1.5 net of the same depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.blocks import SHORTCUT_OPTIONS, BasicBlock, Bottleneck, ShortcutOption, make_shortcut

Block = type[BasicBlock] | type[Bottleneck]
Stem = Literal["imagenet", "cifar"]
Variant = Literal["v1", "v1.5"]
VARIANTS: tuple[Variant, ...] = ("v1", "v1.5")
STEMS: tuple[Stem, ...] = ("imagenet", "cifar")

# Table 1: blocks per stage (conv2_x .. conv5_x).
IMAGENET_LAYOUTS: dict[int, tuple[Block, tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """A stem, `len(layers)` stages of `block`s, global average pooling and a linear classifier.

    Stage `i` has width `base_width * 2**i` (x `block.expansion` at its output) and halves the resolution
    except for the first one, as in Table 1 (64..512) and Section 4.2 (16, 32, 64).

    - `stem="imagenet"`: 7x7/2 conv + 3x3/2 max pool (Table 1); `"cifar"`: one 3x3 conv, no pooling (Section 4.2).
    - `residual=False` is the paper's plain net: the same layers without any shortcut (Section 3.3); `shortcut`
      is then ignored (a plain net has none).
    - `variant` only affects bottleneck blocks: "v1" strides the first 1x1, "v1.5" the 3x3 (see `Bottleneck`).
    - `zero_init_residual` zeroes each block's last BN scale so every residual block starts as the identity
      (Goyal et al. 2017, arXiv:1706.02677, Section 5.1).

    The keyword-only parameters are the options `get_model` offers for a net registered as this class with its
    layout (`block`, `layers`, `stem`) bound (models/zoo.py).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        stem: Stem = "imagenet",
        *,
        residual: bool = True,
        shortcut: ShortcutOption = "B",
        variant: Variant = "v1.5",
        zero_init_residual: bool = False,
        num_classes: int = 1000,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        _check_choice("stem", stem, STEMS)
        _check_choice("shortcut", shortcut, SHORTCUT_OPTIONS)
        _check_choice("variant", variant, VARIANTS)
        _check_bool("residual", residual)
        _check_bool("zero_init_residual", zero_init_residual)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("base_width", base_width)
        if not layers or not all(isinstance(n, int) and n > 0 for n in layers):
            raise ValueError(f"layers must be a non-empty list of positive block counts, got {list(layers)}")
        if zero_init_residual and not residual:
            # A plain block whose last BN scale is 0 outputs relu(0) = 0 for every input: the net is dead.
            raise ValueError("zero_init_residual=True needs residual=True: a plain net would output zeros")

        self.residual = residual
        self.shortcut = shortcut
        # The resolution the stem was designed for: 224 crops (Section 3.4), 32x32 CIFAR images (Section 4.2).
        self.default_image_size = 224 if stem == "imagenet" else 32
        self.stride_in_1x1 = variant == "v1"
        self.inplanes = base_width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.stage_names: tuple[str, ...] = tuple(f"layer{i + 1}" for i in range(len(layers)))
        for i, (stage_name, blocks) in enumerate(zip(self.stage_names, layers, strict=True)):
            self.add_module(stage_name, self._make_layer(block, base_width * 2**i, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

        # torchvision's init: He et al. 2015b (arXiv:1502.01852), which the paper cites for its init (Section 3.4).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    m.zero_init_last()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            out_channels = planes * block.expansion
            # Created before its block, as torchvision does, so the same seed gives the same weights.
            downsample = (
                make_shortcut(self.shortcut, self.inplanes, out_channels, block_stride) if self.residual else None
            )
            extra: dict[str, Any] = {"stride_in_1x1": self.stride_in_1x1} if block is Bottleneck else {}
            layers.append(block(self.inplanes, planes, block_stride, downsample, residual=self.residual, **extra))
            self.inplanes = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(
    depth: int,
    *,
    residual: bool = True,
    zero_init_residual: bool = False,
    num_classes: int = 10,
    base_width: int = 16,
) -> ResNet:
    """The CIFAR-10 nets of Section 4.2: 6n+2 layers, three stages of n basic blocks with 16/32/64 filters,
    identity shortcuts everywhere ("we use identity shortcuts in all cases (i.e., option A)")."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...), got {depth}")
    return ResNet(
        BasicBlock,
        [(depth - 2) // 6] * 3,
        stem="cifar",
        residual=residual,
        shortcut="A",
        zero_init_residual=zero_init_residual,
        num_classes=num_classes,
        base_width=base_width,
    )


def _check_choice(field: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")


def _check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be True or False, got {value!r}")


def _check_positive_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
