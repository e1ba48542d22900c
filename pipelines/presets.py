"""Recipe constants of the input pipelines, in one place (both the DALI and the torch path read them).

Sizes follow He et al. 2015, Sec. 3.4: train crops of 224x224, test images resized so the shorter
side is 256 with a 224 center crop; the paper's scale augmentation samples the shorter side in [256, 480].
"""

from __future__ import annotations

from typing import Final

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

# The paper subtracts a per-pixel mean (Sec. 3.4). A random crop of a randomly rescaled image sees
# every position of that mean image, so like fb.resnet.torch we use the per-channel mean (and std,
# so both presets feed the model inputs of the same scale).

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
