"""What `data shard SRC DEST` writes where: one `ShardJob` per shard set, whatever SRC is.

SRC is an ImageNet-style folder (a single split, or a dataset root with `train/` and `val/` split folders, see
`pipelines.sources.split_jobs`) or the CIFAR-10 python archive (`pipelines.cifar`). The mean image is computed for
training sets only (a single folder counts as one): the presets subtract the training images' mean everywhere.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import presets
from pipelines.cifar import cifar_jobs, is_cifar_source
from pipelines.codecs import FileCodec
from pipelines.sharding import ShardJob
from pipelines.sources import ShardingError, discover_source, split_jobs


def shard_jobs(
    src: Path,
    dest: str,
    *,
    labels: Path | None = None,
    mean_image: bool = True,
    cifar_val: int = 0,
    split_seed: int = 0,
) -> dict[str, ShardJob]:
    """split name ('' for a single folder) -> its job; `cifar_val` images of CIFAR-10's training set are held out."""
    if is_cifar_source(src):
        if labels is not None:
            raise ShardingError("--labels applies to image folders; the CIFAR-10 archive carries its labels")
        return cifar_jobs(src, dest, val_images=cifar_val, split_seed=split_seed, mean_image=mean_image)
    if cifar_val:
        raise ShardingError(f"--cifar-val applies to the CIFAR-10 archive; SRC {src} is an image folder")
    jobs = {}
    for name, (split_src, split_dest) in split_jobs(src, dest, labels).items():
        source = discover_source(split_src, labels)
        mean_size = presets.MEAN_IMAGE_SIZE if mean_image and name in ("", "train") else None
        jobs[name] = ShardJob(
            split_dest, source.samples, FileCodec(), source.classes, str(split_src.resolve()), mean_size
        )
    return jobs
