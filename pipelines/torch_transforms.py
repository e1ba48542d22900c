"""The DALI graph of `pipelines.dali` in torch, for the fallback loader: per-sample transforms and batch normalization.

Evaluation views match DALI's within float tolerance on the same decoded image, so a protocol's numbers do not
depend on the backend: `resize` is DALI's `fn.resize(antialias=True, subpixel_scale=False)` (a triangle filter as
wide as the scale when shrinking, linear interpolation when enlarging, edge pixels repeated past the border; where
torchvision instead drops the taps past the border and renormalizes), `shorter_side_shape` and `crop` round as DALI
does (half up). Training augmentation draws its randomness from torch, so it matches DALI's in distribution only.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from pipelines import presets
from pipelines.normalization import Normalization


@functools.lru_cache(maxsize=4096)
def _resize_weights(n_in: int, n_out: int) -> torch.Tensor:
    """n_out x n_in float32 matrix: output pixel i = sum_j W[i, j] * input pixel j along one axis."""
    scale = n_in / n_out
    radius = max(scale, 1.0)
    pad = math.ceil(radius) + 1
    taps = torch.arange(-pad, n_in + pad, dtype=torch.float64)
    centers = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5
    weights = (1.0 - (taps[None, :] - centers[:, None]).abs() / radius).clamp(min=0.0)
    weights /= weights.sum(dim=1, keepdim=True)
    out = weights[:, pad : pad + n_in].clone()
    out[:, 0] += weights[:, :pad].sum(dim=1)  # taps before the first pixel read the first pixel
    out[:, -1] += weights[:, pad + n_in :].sum(dim=1)
    return out.float()


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float C x H x W -> C x height x width, as DALI's antialiased linear resize."""
    if image.shape[-2:] == (height, width):
        return image.float()
    rows = _resize_weights(image.shape[-2], height)
    cols = _resize_weights(image.shape[-1], width)
    return rows @ image.float() @ cols.T


def shorter_side_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """The shape DALI's `resize_shorter` gives: the shorter side `shorter`, the longer one scaled and rounded half
    up."""
    if height <= width:
        return shorter, math.floor(width * shorter / height + 0.5)
    return math.floor(height * shorter / width + 0.5), shorter


def resize_shorter(image: torch.Tensor, shorter: int) -> torch.Tensor:
    return resize(image, *shorter_side_shape(image.shape[-2], image.shape[-1], shorter))


def crop(image: torch.Tensor, size: int, pos_x: float, pos_y: float) -> torch.Tensor:
    """The `size` x `size` window at relative position (pos_x, pos_y) of the free margin, anchors rounded half up
    (DALI's `crop_pos_x/y`)."""
    height, width = image.shape[-2:]
    top = math.floor(pos_y * (height - size) + 0.5)
    left = math.floor(pos_x * (width - size) + 0.5)
    return image[..., top : top + size, left : left + size]


def subtract_mean_image(image: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """float 3 x H x W minus the preset's mean image warped to H x W (unchanged when the preset has none)."""
    if norm.mean_image is None:
        return image.float()
    mean = torch.from_numpy(np.ascontiguousarray(norm.mean_image.transpose(2, 0, 1)))
    return image.float() - resize(mean, image.shape[-2], image.shape[-1])


def normalize(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """(x - mean) / std per channel, channels at dim -3, 0..255 pixels (after any mean image)."""
    shape = (3, 1, 1)
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(shape)
    std = torch.tensor(norm.std, dtype=torch.float32).view(shape)
    return (images.float() - mean) / std


def eval_views(image: torch.Tensor, views: presets.EvalViews, norm: Normalization) -> torch.Tensor | list[torch.Tensor]:
    """The normalized views of one decoded uint8 3 x H x W image, as `pipelines.dali.eval_views` makes them.

    center: 3 x s x s; ten_crop: 10 x 3 x s x s; multi_scale: [scale 0, its mirror, scale 1, ...], each 3 x h x w.
    """

    def resized(shorter: int) -> torch.Tensor:
        return normalize(subtract_mean_image(resize_shorter(image.float(), shorter), norm), norm)

    if views.protocol == "multi_scale":
        return [view for s in views.scales for base in (resized(s),) for view in (base, base.flip(-1))]
    base = resized(views.resize_size)
    if views.protocol == "center":
        return crop(base, views.image_size, 0.5, 0.5).contiguous()
    crops = [crop(base, views.image_size, x, y) for x, y in presets.TEN_CROP_POSITIONS]
    return torch.stack(crops + [c.flip(-1) for c in crops])


class SubtractMeanImage(v2.Transform):
    """uint8 or float 3 x H x W -> float, minus the mean image warped to H x W (`subtract_mean_image`)."""

    def __init__(self, norm: Normalization) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, *inputs: Any) -> Any:
        return subtract_mean_image(inputs[0], self.norm)


def train_transform(preset: presets.Preset, image_size: int, norm: Normalization) -> v2.Transform:
    """The geometric part of the DALI train graph for `preset`, per sample (same presets constants); colour (PCA)
    and normalization follow on the whole batch in `finish_batch`."""
    if preset == "standard":
        return v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=presets.RRC_SCALE, ratio=presets.RRC_RATIO, antialias=True),
                v2.RandomHorizontalFlip(presets.FLIP_PROBABILITY),
            ]
        )
    if preset == "cifar":
        # torchvision's RandomCrop pads with zeros, then draws each offset uniformly in 0..2*pad: the DALI graph.
        return v2.Compose(
            [
                SubtractMeanImage(norm),
                v2.RandomCrop(image_size, padding=presets.CIFAR_PAD, fill=0.0),
                v2.RandomHorizontalFlip(presets.FLIP_PROBABILITY),
            ]
        )
    low, high = (int(v) for v in presets.PAPER_SHORT_SIDE_RANGE)
    return v2.Compose(
        [
            v2.RandomShortestSize(min_size=list(range(low, high + 1)), antialias=True),
            SubtractMeanImage(norm),
            v2.RandomCrop(image_size),
            v2.RandomHorizontalFlip(presets.FLIP_PROBABILITY),
        ]
    )


def finish_batch(images: torch.Tensor, norm: Normalization, pca: bool) -> torch.Tensor:
    """N x 3 x H x W (uint8, or float after a mean image) -> normalized float32, in a few whole-batch ops (per-sample
    small ops cost more in dispatch than in arithmetic). With `pca`, adds the AlexNet PCA colour offset
    V @ (alpha * lambda), alpha ~ N(0, 0.1) per image (Krizhevsky et al. 2012, Sec. 4.1), on 0..255 pixels."""
    out = images.float()
    if pca:
        alpha = torch.randn(images.shape[0], 3) * presets.PCA_ALPHA_STD
        offset = (alpha * torch.tensor(presets.PCA_EIGVAL)) @ torch.tensor(presets.PCA_EIGVEC).T  # [N, 3]
        out = out + 255.0 * offset.view(images.shape[0], 3, 1, 1)
    return normalize(out, norm)
