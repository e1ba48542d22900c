"""The registered models: every net of He et al. 2015 plus a tiny `test_resnet` for CI."""

from __future__ import annotations

from functools import partial

from models.blocks import BasicBlock, ShortcutOption
from models.registry import register_model
from models.resnet import IMAGENET_LAYOUTS, ResNet, Variant, cifar_resnet, imagenet_resnet

# Section 4.2 / Table 6: n = 3, 5, 7, 9, 18, 200.
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110, 1202)

for _depth in IMAGENET_LAYOUTS:
    register_model(partial(imagenet_resnet, _depth), name=f"resnet{_depth}")
for _depth in CIFAR_DEPTHS:
    register_model(partial(cifar_resnet, _depth), name=f"cifar_resnet{_depth}")


@register_model
def test_resnet(
    *,
    residual: bool = True,
    shortcut: ShortcutOption = "B",
    variant: Variant = "v1.5",
    zero_init_residual: bool = False,
    num_classes: int = 1000,
    base_width: int = 8,
) -> ResNet:
    """ImageNet layout with one basic block per stage and 8..64 filters (0.14M parameters with 1000 classes):
    the whole submit path runs on a CPU in seconds (timm registers a `test_resnet` for the same reason)."""
    return ResNet(
        BasicBlock,
        (1, 1, 1, 1),
        stem="imagenet",
        residual=residual,
        shortcut=shortcut,
        variant=variant,
        zero_init_residual=zero_init_residual,
        num_classes=num_classes,
        base_width=base_width,
    )
