"""The per-pixel mean image of a training shard set, which the `paper` and `cifar` presets subtract (He et al. 2015,
Sec. 3.4 and 4.2, after Krizhevsky et al. 2012).

`data shard` warps every image it writes to `size x size` (`presets.MEAN_IMAGE_SIZE`; CIFAR-10 its own 32x32), adds it
to exact integer sums per shard (kept next to the shard, so a resumed run adds the shards it keeps without decoding
them again) and, when every shard is whole, writes the mean next to the manifest:

    mean_image.npy   float32 size x size x 3, RGB on 0..255 pixels
    manifest.json    "mean_image": {"name", "size", "samples", "channel_mean", "channel_std", "sha256"}

`channel_mean`/`channel_std` are over every pixel of the warped images (0..255 scale): the presets divide by that std.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.storage import Store

MEAN_IMAGE_NAME = "mean_image.npy"


class MeanImageError(ValueError):
    """A shard set without a usable mean image; the message names the set and the fix."""


def warp(rgb: np.ndarray, size: int) -> np.ndarray:
    """`rgb` (uint8 H x W x 3) resized to `size x size` ignoring its aspect ratio (bilinear, antialiased), so every
    image contributes to every position of the mean."""
    if rgb.shape[:2] == (size, size):
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


@dataclass
class PixelSums:
    """Exact integer sums of warped uint8 images: per pixel and channel, and per-channel sums of squares."""

    size: int
    total: np.ndarray = field(init=False)  # int64 size x size x 3
    squares: np.ndarray = field(init=False)  # int64 [3]
    count: int = 0

    def __post_init__(self) -> None:
        self.total = np.zeros((self.size, self.size, 3), dtype=np.int64)
        self.squares = np.zeros(3, dtype=np.int64)

    def add(self, pixels: np.ndarray) -> None:
        if pixels.shape != (self.size, self.size, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 {self.size}x{self.size}x3 pixels, got {pixels.dtype} {pixels.shape}")
        wide = pixels.astype(np.int64)
        self.total += wide
        self.squares += (wide * wide).sum(axis=(0, 1))
        self.count += 1

    def merge(self, other: PixelSums) -> None:
        if other.size != self.size:
            raise ValueError(f"cannot add {other.size}x{other.size} sums to {self.size}x{self.size} sums")
        self.total += other.total
        self.squares += other.squares
        self.count += other.count

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez(out, total=self.total, squares=self.squares, count=np.int64(self.count))
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PixelSums:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            sums = cls(int(arrays["total"].shape[0]))
            sums.total = arrays["total"].astype(np.int64)
            sums.squares = arrays["squares"].astype(np.int64)
            sums.count = int(arrays["count"])
        return sums

    def mean_image(self) -> MeanImage:
        if self.count == 0:
            raise MeanImageError("no image was added: there is no mean image to compute")
        pixels = self.total / self.count
        n = self.count * self.size * self.size
        channel_mean = self.total.sum(axis=(0, 1)) / n
        channel_std = np.sqrt(np.maximum(self.squares / n - channel_mean**2, 0.0))
        return MeanImage(
            pixels=pixels.astype(np.float32),
            channel_mean=tuple(float(v) for v in channel_mean),
            channel_std=tuple(float(v) for v in channel_std),
            samples=self.count,
        )


@dataclass(frozen=True)
class MeanImage:
    pixels: np.ndarray = field(compare=False)  # float32 size x size x 3, 0..255
    channel_mean: tuple[float, ...]
    channel_std: tuple[float, ...]
    samples: int

    @property
    def size(self) -> int:
        return int(self.pixels.shape[0])


def write_mean_image(store: Store, mean: MeanImage) -> dict[str, Any]:
    """Write `mean_image.npy` to `store`; returns the manifest's `mean_image` entry."""
    out = io.BytesIO()
    np.save(out, mean.pixels, allow_pickle=False)
    data = out.getvalue()
    store.put_bytes(MEAN_IMAGE_NAME, data)
    return {
        "name": MEAN_IMAGE_NAME,
        "size": mean.size,
        "samples": mean.samples,
        "channel_mean": list(mean.channel_mean),
        "channel_std": list(mean.channel_std),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def read_mean_image(store: Store, entry: dict[str, Any] | None, uri: str) -> MeanImage:
    """The mean image a manifest's `mean_image` entry names (`uri` names the shard set in errors)."""
    if not entry:
        raise MeanImageError(
            f"{uri} has no mean image (sharded with --no-mean-image): the paper and cifar presets subtract the "
            "per-pixel mean of the training shards; shard them again without --no-mean-image, or use preset standard"
        )
    data = store.read_bytes(entry["name"])
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise MeanImageError(f"{store.location.join(entry['name'])} does not match its manifest's sha256; shard again")
    pixels = np.load(io.BytesIO(data), allow_pickle=False)
    return MeanImage(
        pixels=pixels.astype(np.float32),
        channel_mean=tuple(float(v) for v in entry["channel_mean"]),
        channel_std=tuple(float(v) for v in entry["channel_std"]),
        samples=int(entry["samples"]),
    )
