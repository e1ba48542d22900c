"""How the samples of a source become tar members: one `Codec` per kind of source, giving each sample's image bytes
(or why it was skipped) and, when the mean image is being computed, its pixels warped to the mean's size.

`FileCodec` reads the image files of an ImageNet-style folder (`pipelines.sources`); `pipelines.cifar.CifarCodec`
the rows of the CIFAR-10 archive. `pipelines.sharding` writes whatever they give.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipelines.mean_image import warp
from pipelines.sources import SourceSample

# Quality for images we must re-encode (grayscale/CMYK/PNG): high enough not to add visible artefacts.
_REENCODE_QUALITY = 95


@dataclass(frozen=True)
class CheckedImage:
    """One sample ready for a tar: its image bytes (None: undecodable, skipped) and, when the mean image is being
    computed, the image warped to the mean's size (`pipelines.mean_image.warp`)."""

    key: str  # the tar member stem wanted (made unique within its shard)
    label: int
    source: str  # where it came from, named in the report
    data: bytes | None
    reencoded: bool = False
    error: str = ""
    pixels: np.ndarray | None = None


class Codec(Protocol):
    """How the samples of one kind of source go into shards."""

    image_ext: str  # the tar member extension of the image ("jpg", "png")

    def identity(self, sample: Any) -> str:
        """One line that changes whenever what the sample writes changes (its share of the shard's plan hash)."""
        ...

    def size_hint(self, sample: Any) -> int:
        """About the bytes the sample adds to a shard, to size shards before encoding."""
        ...

    def encode(self, sample: Any, mean_size: int | None) -> CheckedImage: ...


def check_image(sample: SourceSample, mean_size: int | None = None) -> CheckedImage:
    """Decode fully; keep RGB JPEGs byte-for-byte, re-encode anything else (grayscale, CMYK, PNG...) to
    RGB JPEG; report an undecodable file instead of raising. With `mean_size`, also warp the decoded image for the
    mean image."""
    from PIL import Image

    def checked(data: bytes, rgb: Any, reencoded: bool = False) -> CheckedImage:
        pixels = None if mean_size is None else warp(np.asarray(rgb.convert("RGB")), mean_size)
        return CheckedImage(sample.path.stem, sample.label, str(sample.path), data, reencoded, pixels=pixels)

    try:
        data = sample.path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # full decode: catches truncated files that Image.open alone accepts
            if img.format == "JPEG" and img.mode == "RGB":
                return checked(data, img)
            rgb = img.convert("RGB")
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=_REENCODE_QUALITY)
        return checked(out.getvalue(), rgb, reencoded=True)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        error = f"{type(exc).__name__}: {exc}"
        return CheckedImage(sample.path.stem, sample.label, str(sample.path), None, error=error)


class FileCodec:
    """Image files of an ImageNet-style folder (`pipelines.sources`), kept as RGB JPEG."""

    image_ext = "jpg"

    def identity(self, sample: SourceSample) -> str:
        return f"{sample.path.name}\t{sample.path.stat().st_size}\t{sample.label}"

    def size_hint(self, sample: SourceSample) -> int:
        return sample.path.stat().st_size

    def encode(self, sample: SourceSample, mean_size: int | None) -> CheckedImage:
        return check_image(sample, mean_size)
