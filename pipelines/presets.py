"""Recipe constants of the input pipelines, in one place (both the DALI and the torch path read them).

Sizes follow He et al. 2015, Sec. 3.4: train crops of 224x224, test images resized so the shorter
side is 256 with a 224 center crop; the paper's scale augmentation samples the shorter side in [256, 480].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# The input recipes: `standard` (Inception-style RandomResizedCrop, per-channel mean/std), `paper` (He et al. 2015,
# Sec. 3.4: scale augmentation, per-pixel mean, PCA colour) and `cifar` (Sec. 4.2: pad 4, random 32x32 crop, flip,
# per-pixel mean).
Preset = Literal["standard", "paper", "cifar"]
# How a val image becomes scores (Sec. 3.4, "In testing"): one center crop (what every epoch's validation uses),
# the "standard 10-crop testing" of corners + center and their mirrors, or the fully-convolutional form averaged over
# several scales (and mirrors).
Protocol = Literal["center", "ten_crop", "multi_scale"]
PROTOCOLS: Final[tuple[Protocol, ...]] = ("center", "ten_crop", "multi_scale")

TRAIN_SIZE: Final = 224
VAL_RESIZE: Final = 256
# He et al. 2015, Sec. 3.4: "resized with its shorter side randomly sampled in [256, 480]".
PAPER_SHORT_SIDE_RANGE: Final = (256.0, 480.0)
# Inception-style RandomResizedCrop (Szegedy et al. 2015), the torchvision reference recipe.
RRC_SCALE: Final = (0.08, 1.0)
RRC_RATIO: Final = (3.0 / 4.0, 4.0 / 3.0)
FLIP_PROBABILITY: Final = 0.5

# ImageNet RGB mean/std on [0, 1] pixels (the torchvision reference values).
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)

# The `paper` and `cifar` presets subtract "the per-pixel mean" (Sec. 3.4, after Krizhevsky et al. 2012, who
# subtract a 256x256 mean image before cropping). `data shard` stores that mean image with the training shards: every
# training image warped to MEAN_IMAGE_SIZE x MEAN_IMAGE_SIZE (CIFAR-10: its own 32x32) and averaged. The pipelines
# warp it back to each image's resized shape and subtract it before cropping, so every pixel of a crop or a
# multi-scale view loses the mean of the pixels at the same place of the training images. Those presets divide by the
# per-channel std stored next to it, so all presets feed the model inputs of the same scale.
MEAN_IMAGE_SIZE: Final = 256

# Multi-scale testing (Sec. 3.4): "images are resized such that the shorter side is in {224, 256, 384, 480, 640}".
PAPER_TEST_SCALES: Final = (224, 256, 384, 480, 640)
# 10-crop testing: crop positions (x, y) relative to the free margin, corners then center, each also mirrored.
TEN_CROP_POSITIONS: Final = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))


@dataclass(frozen=True)
class EvalViews:
    """How a val image becomes the views its scores are averaged over (`Protocol`), for both backends."""

    protocol: Protocol = "center"
    image_size: int = TRAIN_SIZE  # the crop (center, ten_crop)
    resize_size: int = VAL_RESIZE  # the shorter side the crops are taken from
    scales: tuple[int, ...] = ()  # multi_scale: the shorter sides, each view the whole image


# CIFAR-10 (Sec. 4.2): "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded
# image or its horizontal flip"; testing uses "the single view of the original 32x32 image".
CIFAR_SIZE: Final = 32
CIFAR_PAD: Final = 4

# PCA colour augmentation, "the standard color augmentation in [21]" (He et al. 2015, Sec. 3.4;
# Krizhevsky et al. 2012, Sec. 4.1). Eigen-values/-vectors of the RGB covariance of ImageNet pixels on
# [0, 1], as in fb.resnet.torch datasets/imagenet.lua; alpha ~ N(0, 0.1) per image and component.
PCA_EIGVAL: Final = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC: Final = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
PCA_ALPHA_STD: Final = 0.1

# Label of a padding sample (pad policy): PyTorch's CrossEntropyLoss ignore_index default, so padding
# adds nothing to the loss; metrics must mask `labels == IGNORE_INDEX` (see `Batch.valid`).
IGNORE_INDEX: Final = -100
