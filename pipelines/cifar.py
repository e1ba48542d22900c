"""CIFAR-10 (Krizhevsky 2009) from its python archive, as the shard sets of He et al. 2015, Section 4.2.

The archive (`cifar-10-python.tar.gz`, or the folder it extracts to) holds pickled dicts: `data_batch_1..5` (the
50,000 training images) and `test_batch` (the 10,000 test images), each `{b"data": uint8 N x 3072, b"labels": [N]}`
with a row's 3072 bytes the 32x32 R, G and B planes in row-major order; `batches.meta` names the classes.

`data shard` writes `train` (all 50k, or 45k with a 5k held-out `val` as the paper's split "45k/5k train/val"),
and `test` (the 10k the paper reports in Table 6). Images are stored as PNG: lossless, so every pixel the network
sees is the original. The per-pixel mean image is computed over `train` only, at the native 32x32.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipelines import presets
from pipelines.codecs import CheckedImage
from pipelines.sharding import ShardJob
from pipelines.sources import ShardingError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_IMAGES = 50_000
# The paper's held-out split (Section 4.2): 45k training images, 5k validation images.
PAPER_VAL_IMAGES = 5_000
_PIXELS = presets.CIFAR_SIZE * presets.CIFAR_SIZE * 3
# What the archive's pickles may construct: numpy arrays (and their dtypes), and bytes as a Python 3 protocol-2 pickle
# writes them (`_codecs.encode`). Anything else in a pickle could run code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


@dataclass(frozen=True)
class CifarSample:
    key: str  # "<batch>_<row>", e.g. "data_batch_1_00042"
    label: int
    planes: bytes  # 3072 bytes: the R, G and B planes of the 32x32 image, each row-major

    def rgb(self) -> np.ndarray:
        """uint8 32 x 32 x 3."""
        size = presets.CIFAR_SIZE
        return np.frombuffer(self.planes, dtype=np.uint8).reshape(3, size, size).transpose(1, 2, 0)


class CifarCodec:
    """CIFAR-10 rows as lossless PNG."""

    image_ext = "png"

    def identity(self, sample: CifarSample) -> str:
        return f"{sample.key}\t{sample.label}\t{hashlib.sha256(sample.planes).hexdigest()}"

    def size_hint(self, sample: CifarSample) -> int:
        return len(sample.planes)

    def encode(self, sample: CifarSample, mean_size: int | None) -> CheckedImage:
        from PIL import Image

        from pipelines.mean_image import warp

        rgb = sample.rgb()
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, format="PNG")
        pixels = None if mean_size is None else warp(rgb, mean_size)
        return CheckedImage(sample.key, sample.label, sample.key, out.getvalue(), pixels=pixels)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise ShardingError(
                f"the CIFAR-10 batch wants to construct {module}.{name}; only numpy arrays are expected"
            )
        return super().find_class(module, name)


def _load(stream: IO[bytes], name: str) -> dict[bytes, Any]:
    try:
        batch = _ArrayUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ShardingError(f"CIFAR-10 {name}: not a pickled batch ({exc})") from None
    if not isinstance(batch, dict):
        raise ShardingError(f"CIFAR-10 {name}: expected a pickled dict, got {type(batch).__name__}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}


def _batch_samples(batch: dict[bytes, Any], name: str) -> list[CifarSample]:
    if b"data" not in batch or b"labels" not in batch:
        raise ShardingError(f"CIFAR-10 {name}: needs the keys b'data' and b'labels', found {sorted(batch)}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = [int(v) for v in batch[b"labels"]]
    if data.ndim != 2 or data.shape[1] != _PIXELS or data.shape[0] != len(labels):
        raise ShardingError(
            f"CIFAR-10 {name}: b'data' is {data.shape} for {len(labels)} labels; expected N x {_PIXELS} (32x32 RGB)"
        )
    bad = sorted({v for v in labels if not 0 <= v < len(CLASSES)})
    if bad:
        raise ShardingError(f"CIFAR-10 {name}: labels {bad[:5]} are outside 0..{len(CLASSES) - 1}")
    return [CifarSample(f"{name}_{row:05d}", label, data[row].tobytes()) for row, label in enumerate(labels)]


def is_cifar_source(src: Path) -> bool:
    """`src` is the CIFAR-10 python archive or a folder holding its batches (directly or in cifar-10-batches-py)."""
    if src.is_file():
        return src.name.endswith((".tar.gz", ".tgz"))
    return _batch_folder(src) is not None


def _batch_folder(src: Path) -> Path | None:
    for folder in (src, src / "cifar-10-batches-py"):
        if (folder / TRAIN_BATCHES[0]).is_file():
            return folder
    return None


def _batches(src: Path) -> Iterator[tuple[str, dict[bytes, Any]]]:
    """(name, unpickled dict) of every batch and the meta file present in `src`."""
    wanted = (*TRAIN_BATCHES, TEST_BATCH, META)
    if src.is_file():
        try:
            with tarfile.open(src, "r:*") as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    stream = tar.extractfile(member) if member.isfile() and name in wanted else None
                    if stream is not None:
                        yield name, _load(stream, name)
        except (tarfile.TarError, OSError) as exc:
            raise ShardingError(f"SRC {src}: cannot read it as the CIFAR-10 archive ({exc})") from None
        return
    folder = _batch_folder(src)
    if folder is None:
        raise ShardingError(f"SRC {src}: no {TRAIN_BATCHES[0]} in it or in {src / 'cifar-10-batches-py'}")
    for name in wanted:
        if (folder / name).is_file():
            with open(folder / name, "rb") as stream:
                yield name, _load(stream, name)


def read_cifar(src: Path) -> tuple[list[CifarSample], list[CifarSample], tuple[str, ...]]:
    """(training samples, test samples, class names) of the archive or folder `src`; every batch must be there."""
    batches = dict(_batches(src))
    missing = [name for name in (*TRAIN_BATCHES, TEST_BATCH) if name not in batches]
    if missing:
        raise ShardingError(f"SRC {src}: the CIFAR-10 batches {', '.join(missing)} are missing; give the whole archive")
    names = batches.get(META, {}).get(b"label_names")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names) if names else CLASSES
    if len(classes) != len(CLASSES):
        raise ShardingError(f"SRC {src}: {META} names {len(classes)} classes; CIFAR-10 has {len(CLASSES)}")
    train = [s for name in TRAIN_BATCHES for s in _batch_samples(batches[name], name)]
    return train, _batch_samples(batches[TEST_BATCH], TEST_BATCH), classes


def cifar_jobs(
    src: Path, dest: str, *, val_images: int = 0, split_seed: int = 0, mean_image: bool = True
) -> dict[str, ShardJob]:
    """The shard sets of `data shard` for CIFAR-10: DEST/train, DEST/val (when `val_images` > 0: that many training
    images, drawn with `split_seed`, held out) and DEST/test."""
    train, test, classes = read_cifar(src)
    if not 0 <= val_images < len(train):
        raise ShardingError(
            f"--cifar-val {val_images}: hold out 0..{len(train) - 1} of the {len(train)} training images "
            f"(the paper's split: {PAPER_VAL_IMAGES})"
        )
    held_out = set(np.random.default_rng(split_seed).permutation(len(train))[:val_images].tolist())
    splits = {
        "train": [s for i, s in enumerate(train) if i not in held_out],
        "val": [s for i, s in enumerate(train) if i in held_out],
        "test": test,
    }
    class_map = {name: index for index, name in enumerate(classes)}
    root = dest.rstrip("/")
    return {
        split: ShardJob(
            dest=f"{root}/{split}",
            samples=tuple(samples),
            codec=CifarCodec(),
            classes=class_map,
            source=f"{src.resolve()}:{split}",
            # The mean is the training images' (Section 4.2: "the per-pixel mean subtracted"), at their own 32x32.
            mean_size=presets.CIFAR_SIZE if mean_image and split == "train" else None,
        )
        for split, samples in splits.items()
        if samples
    }
