"""Building blocks of He et al. 2015 (arXiv:1512.03385): the basic and bottleneck blocks and the shortcuts.

Module names (`conv1`, `bn1`, ..., `downsample.0/.1`) and creation order are torchvision's
(`torchvision/models/resnet.py`), so its state_dicts load with `strict=True` and a fixed seed gives the same
initial weights.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

# Section 3.3 (options A, B) and Section 4.1 "Identity vs. Projection Shortcuts" / Table 3 (C): (A) zero-padding
# identity when dimensions grow, (B) projection when dimensions grow, identity otherwise, (C) projection everywhere.
ShortcutOption = Literal["A", "B", "C"]
SHORTCUT_OPTIONS: tuple[ShortcutOption, ...] = ("A", "B", "C")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: "identity mapping, with extra zero entries padded for increasing dimensions ... when the
    shortcuts go across feature maps of two sizes, they are performed with a stride of 2" (Section 3.3).

    No parameters, so an option-A net has exactly the parameter count of its plain counterpart (Table 3).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A can only grow channels, got {in_channels} -> {out_channels}")
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            # Subsampling by slicing matches the spatial size of the strided conv (3x3/pad 1 or 1x1/pad 0).
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(option: ShortcutOption, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut of one block; `None` means identity."""
    dims_grow = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and dims_grow):
        # torchvision's `downsample`: 1x1 conv (strided) + BN, "done by 1x1 convolutions" (Section 3.3).
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    if option == "A" and dims_grow:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (Figure 5 left): ResNet-18/34 and the CIFAR nets."""

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *, residual: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (Figure 5 right): ResNet-50/101/152.

    `stride_in_1x1=True` is the paper's V1: "downsampling is performed by conv3_1, conv4_1, and conv5_1 with a
    stride of 2" where conv*_1 is the block's first 1x1 (Table 1; the released Caffe models). False is V1.5,
    torchvision's default, which strides the 3x3 instead: more multiply-adds (ResNet-50 4.1 vs 3.9 G) and, per
    torchvision's note, better accuracy (https://ngc.nvidia.com/catalog/model-scripts/nvidia:resnet_50_v1_5_for_pytorch).
    """

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        residual: bool = True,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)
