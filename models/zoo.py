"""The registered models: every net of He et al. 2015 plus a tiny `test_resnet` for CI."""

from __future__ import annotations

from functools import partial

from models.blocks import BasicBlock
from models.registry import register_model
from models.resnet import IMAGENET_LAYOUTS, ResNet, cifar_resnet

# Section 4.2 / Table 6: n = 3, 5, 7, 9, 18, 200.
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110, 1202)

# The ImageNet nets are `ResNet` with a Table 1 layout bound; its keyword-only parameters are their options.
for _depth, (_block, _layers) in IMAGENET_LAYOUTS.items():
    register_model(partial(ResNet, _block, _layers, "imagenet"), name=f"resnet{_depth}")
for _depth in CIFAR_DEPTHS:
    register_model(partial(cifar_resnet, _depth), name=f"cifar_resnet{_depth}")

# ImageNet layout with one basic block per stage and 8..64 filters (0.14M parameters with 1000 classes): the whole
# submit path runs on a CPU in seconds (timm registers a `test_resnet` for the same reason).
register_model(partial(ResNet, BasicBlock, (1, 1, 1, 1), "imagenet", base_width=8), name="test_resnet")
