"""DALI pipeline definitions: one augmentation graph per split, the device is a parameter.

Pattern of DALI's ResNet-50 example (docs/examples/use_cases/pytorch/resnet50/main.py): decode with
`device="mixed"` on a GPU (nvJPEG, ROI-decoding only the random crop), on the CPU otherwise
(`device_id=None`, libjpeg-turbo); every later operator then runs where the decoded images are.
`shard_id`/`num_shards`/`seed` are arguments, never globals: the loader passes rank, world size and a
seed derived from (sweep seed, epoch, rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nvidia.dali import fn as _fn
from nvidia.dali import pipeline_def
from nvidia.dali import types as _types
from nvidia.dali.pipeline import Pipeline

from pipelines import presets

# DALI's stubs type operator outputs as `DataNode | Sequence[DataNode] | None` and miss the enum
# constants: the graph code is typed through Any instead of a cast at every call.
fn: Any = _fn
types: Any = _types

READER_NAME = "reader"
Layout = Literal["CHW", "HWC"]


@dataclass(frozen=True)
class ReaderArgs:
    """What `fn.readers.webdataset` reads: tar URIs (local or s3://) and their DALI index files."""

    paths: tuple[str, ...]
    index_paths: tuple[str, ...]
    shard_id: int
    num_shards: int
    shuffle: bool
    initial_fill: int = 1024


def _read(reader: ReaderArgs) -> tuple[Any, Any]:
    jpegs, labels = fn.readers.webdataset(
        name=READER_NAME,
        paths=list(reader.paths),
        index_paths=list(reader.index_paths),
        ext=["jpg", "cls"],
        missing_component_behavior="error",
        shard_id=reader.shard_id,
        num_shards=reader.num_shards,
        random_shuffle=reader.shuffle,
        initial_fill=reader.initial_fill,
        # Each rank's last batch is padded by repeating its last sample; the loader marks those samples
        # as padding (IGNORE_INDEX) by position, so every sample counts exactly once per epoch.
        pad_last_batch=True,
        # Samples are read from one pipeline per epoch: never moving to another shard on wrap-around.
        stick_to_shard=True,
    )
    return jpegs, labels


def _normalize(images: Any, *, crop: int | None, mirror: Any, mean: Any, dtype: Any, layout: Layout) -> Any:
    """Crop (center, unless crop_pos given by the caller), flip, (x - mean) / std, cast, transpose."""
    kwargs: dict[str, Any] = {} if crop is None else {"crop": (crop, crop)}
    return fn.crop_mirror_normalize(
        images,
        dtype=dtype,
        output_layout=layout,
        mean=mean,
        std=[s * 255.0 for s in presets.IMAGENET_STD],
        mirror=mirror,
        **kwargs,
    )


def _imagenet_mean() -> list[float]:
    return [m * 255.0 for m in presets.IMAGENET_MEAN]


def _pca_mean() -> Any:
    """Per-image mean with the PCA colour offset folded in: (x + delta - mean) = (x - (mean - delta)).

    delta = V @ (alpha * lambda), alpha ~ N(0, 0.1) (Krizhevsky et al. 2012, Sec. 4.1), on 0..255 pixels.
    """
    alphas = [fn.random.normal(stddev=presets.PCA_ALPHA_STD) for _ in range(3)]
    channels = []
    for c in range(3):
        delta = sum(presets.PCA_EIGVEC[c][j] * presets.PCA_EIGVAL[j] * alphas[j] for j in range(3))
        channels.append(presets.IMAGENET_MEAN[c] * 255.0 - delta * 255.0)
    return fn.stack(*channels)


@pipeline_def(enable_checkpointing=True)
def train_pipeline(
    reader: ReaderArgs, preset: str, image_size: int, decoder: str, dtype: Any, layout: Layout
) -> tuple[Any, Any]:
    jpegs, labels = _read(reader)
    mirror = fn.random.coin_flip(probability=presets.FLIP_PROBABILITY)
    if preset == "standard":
        # RandomResizedCrop: the decoder decodes only the sampled crop window (ROI decode).
        images = fn.decoders.image_random_crop(
            jpegs,
            device=decoder,
            output_type=types.RGB,
            random_area=list(presets.RRC_SCALE),
            random_aspect_ratio=list(presets.RRC_RATIO),
            num_attempts=100,
        )
        images = fn.resize(images, resize_x=image_size, resize_y=image_size, antialias=True)
        images = _normalize(images, crop=None, mirror=mirror, mean=_imagenet_mean(), dtype=dtype, layout=layout)
    else:
        # He et al. 2015, Sec. 3.4: shorter side ~ U[256, 480], random 224 crop, flip, PCA colour.
        images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
        short = fn.random.uniform(range=list(presets.PAPER_SHORT_SIDE_RANGE))
        images = fn.resize(images, resize_shorter=short, antialias=True)
        images = fn.crop_mirror_normalize(
            images,
            dtype=dtype,
            output_layout=layout,
            crop=(image_size, image_size),
            crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
            crop_pos_y=fn.random.uniform(range=[0.0, 1.0]),
            mean=_pca_mean(),
            std=[s * 255.0 for s in presets.IMAGENET_STD],
            mirror=mirror,
        )
    return images, labels


@pipeline_def(enable_checkpointing=True)
def val_pipeline(
    reader: ReaderArgs, image_size: int, resize_size: int, decoder: str, dtype: Any, layout: Layout, ten_crop: bool
) -> tuple[Any, Any]:
    jpegs, labels = _read(reader)
    images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
    images = fn.resize(images, resize_shorter=resize_size, antialias=True)
    if not ten_crop:
        out = _normalize(images, crop=image_size, mirror=0, mean=_imagenet_mean(), dtype=dtype, layout=layout)
        return out, labels
    # 10-crop (He et al. 2015, Sec. 3.4): corners + center, each also flipped; stacked as a new
    # leading axis per sample so the loader can average the 10 predictions of one image.
    crops = []
    for mirror in (0, 1):
        for x, y in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)):
            crops.append(
                fn.crop_mirror_normalize(
                    images,
                    dtype=dtype,
                    output_layout=layout,
                    crop=(image_size, image_size),
                    crop_pos_x=x,
                    crop_pos_y=y,
                    mean=_imagenet_mean(),
                    std=[s * 255.0 for s in presets.IMAGENET_STD],
                    mirror=mirror,
                )
            )
    return fn.stack(*crops), labels


def build(
    split: str,
    reader: ReaderArgs,
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    seed: int,
    preset: str = "standard",
    image_size: int = presets.TRAIN_SIZE,
    resize_size: int = presets.VAL_RESIZE,
    fp16: bool = False,
    layout: Layout = "CHW",
    ten_crop: bool = False,
    checkpoint: bytes | None = None,
    prefetch_queue_depth: int = 2,
) -> Pipeline:
    """A built train or val pipeline; `checkpoint` restores a state from `Pipeline.checkpoint()`."""
    decoder = "cpu" if device_id is None else "mixed"
    dtype = types.FLOAT16 if fp16 else types.FLOAT
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "num_threads": num_threads,
        "device_id": device_id,
        "seed": seed,
        "checkpoint": checkpoint,
        "prefetch_queue_depth": prefetch_queue_depth,
    }
    if split == "train":
        pipe = train_pipeline(
            reader=reader, preset=preset, image_size=image_size, decoder=decoder, dtype=dtype, layout=layout, **common
        )
    else:
        pipe = val_pipeline(
            reader=reader,
            image_size=image_size,
            resize_size=resize_size,
            decoder=decoder,
            dtype=dtype,
            layout=layout,
            ten_crop=ten_crop,
            **common,
        )
    pipe.build()
    return pipe
