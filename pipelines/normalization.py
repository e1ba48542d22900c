"""What a preset subtracts from and divides its pixels by, for both backends (`pipelines.dali`, `torch_transforms`).

`standard`: the per-channel ImageNet mean and std (the torchvision reference values). `paper` and `cifar`: the
per-pixel mean image of the training shards and their per-channel std (`pipelines.mean_image`, written by `data
shard`), which the pipelines warp to each image's resized shape and subtract before cropping (He et al. 2015,
Sec. 3.4 and 4.2). All values are on 0..255 pixels: out = (pixel - mean_image - mean) / std.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines import presets
from pipelines.mean_image import read_mean_image
from pipelines.sharding import read_manifest
from pipelines.storage import open_store


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]  # per channel, subtracted after the mean image
    std: tuple[float, ...]  # per channel
    mean_image: np.ndarray | None = field(default=None, compare=False)  # float32 R x R x 3, or None


def channel_normalization() -> Normalization:
    """The `standard` preset's per-channel ImageNet mean and std."""
    return Normalization(
        mean=tuple(m * 255.0 for m in presets.IMAGENET_MEAN), std=tuple(s * 255.0 for s in presets.IMAGENET_STD)
    )


def preset_normalization(preset: presets.Preset, mean_source: str) -> Normalization:
    """The normalization of `preset`; `mean_source` is the training shard set whose mean image `paper` and `cifar`
    subtract (read from its storage)."""
    if preset == "standard":
        return channel_normalization()
    manifest = read_manifest(mean_source)
    mean = read_mean_image(open_store(mean_source), manifest.get("mean_image"), mean_source)
    return Normalization(mean=(0.0, 0.0, 0.0), std=mean.channel_std, mean_image=mean.pixels)


def normalize_pixels(pixels: torch.Tensor, norm: Normalization, dtype: torch.dtype) -> torch.Tensor:
    """uint8 N x 3 x H x W pixels (any memory format, any device) -> (x - mean) / std in `dtype`, as
    x * (1 / std) + (-mean / std): the cast fused into the multiply, one more pass for the add, on the device the
    model runs on (a GPU reads a quarter of float32's bytes over PCIe)."""
    shape = (1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float64).view(shape)
    scale = (1.0 / std).to(device=pixels.device, dtype=torch.float32)
    bias = (-torch.tensor(norm.mean, dtype=torch.float64).view(shape) / std).to(pixels.device, torch.float32)
    return torch.mul(pixels, scale).add_(bias).to(dtype)
