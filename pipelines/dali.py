"""DALI pipeline definitions: one augmentation graph per split, the device is a parameter.

Pattern of DALI's ResNet-50 example (docs/examples/use_cases/pytorch/resnet50/main.py): decode with
`device="mixed"` on a GPU (nvJPEG, ROI-decoding only the random crop), on the CPU otherwise
(`device_id=None`, libjpeg-turbo); every later operator then runs where the decoded images are.
`shard_id`/`num_shards`/`seed` are arguments, never globals: the loader passes rank, world size and a
seed derived from (sweep seed, epoch, rank).

The evaluation views (`eval_views`) resize in float with `subpixel_scale=False` and crop at DALI's rounded anchors:
`pipelines.torch_transforms` computes the same views from the same decoded image, within float tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from nvidia.dali import fn as _fn
from nvidia.dali import pipeline_def
from nvidia.dali import types as _types
from nvidia.dali.pipeline import Pipeline

from pipelines import presets
from pipelines.normalization import Normalization, channel_normalization

# DALI's stubs type operator outputs as `DataNode | Sequence[DataNode] | None` and miss the enum
# constants: the graph code is typed through Any instead of a cast at every call.
fn: Any = _fn
types: Any = _types

READER_NAME = "reader"
Layout = Literal["CHW", "HWC"]
# Longest `.cls` payload the label decoder reads: ASCII decimal class indices below 10**8.
_LABEL_DIGITS = 8


@dataclass(frozen=True)
class ReaderArgs:
    """What `fn.readers.webdataset` reads: tar URIs (local or s3://) and their DALI index files."""

    paths: tuple[str, ...]
    index_paths: tuple[str, ...]
    shard_id: int
    num_shards: int
    shuffle: bool
    initial_fill: int = 1024
    image_ext: str = "jpg"
    read_ahead: bool = False  # DALI `read_ahead`: read each whole shard into memory when it is opened


def decode_labels(cls: Any) -> Any:
    """WebDataset `.cls` payloads (ASCII decimal bytes, e.g. b"417") -> one int64 per sample, inside the graph.

    The digits are right-aligned into `_LABEL_DIGITS` places (a slice from `len - 8`, padded with b"0") and
    weighted by powers of ten: no per-sample Python on the training thread.
    """
    length = cls.shape(dtype=types.INT32)
    digits = fn.slice(
        cls,
        start=length - _LABEL_DIGITS,
        shape=[_LABEL_DIGITS],
        axes=[0],
        out_of_bounds_policy="pad",
        fill_values=ord("0"),
    )
    weights = types.Constant(np.array([10**i for i in range(_LABEL_DIGITS - 1, -1, -1)], dtype=np.int32))
    return fn.reductions.sum((fn.cast(digits, dtype=types.INT32) - ord("0")) * weights, axes=[0])


def _read(reader: ReaderArgs) -> tuple[Any, Any]:
    encoded, labels = fn.readers.webdataset(
        name=READER_NAME,
        paths=list(reader.paths),
        index_paths=list(reader.index_paths),
        ext=[reader.image_ext, "cls"],
        missing_component_behavior="error",
        shard_id=reader.shard_id,
        num_shards=reader.num_shards,
        random_shuffle=reader.shuffle,
        initial_fill=reader.initial_fill,
        # Each rank's last batch is padded by repeating its last sample; the loader marks those samples
        # as padding (IGNORE_INDEX) by position, so every sample counts exactly once per epoch.
        pad_last_batch=True,
        # One pipeline serves every epoch of a trial: at an epoch's end the reader wraps around within its own
        # range, so each epoch again reads each of the rank's samples once (the shuffle buffer mixes them anew).
        stick_to_shard=True,
        read_ahead=reader.read_ahead,
    )
    return encoded, decode_labels(labels)


def subtract_mean_image(images: Any, norm: Normalization) -> Any:
    """`images` minus the preset's mean image warped to each image's shape (float), or `images` as they are."""
    if norm.mean_image is None:
        return images
    mean = fn.constant(
        fdata=norm.mean_image.ravel().tolist(), shape=list(norm.mean_image.shape), layout="HWC", dtype=types.FLOAT
    )
    if images.device == "gpu":
        mean = mean.gpu()
    size = images.shape(dtype=types.FLOAT)[0:2]
    warped = fn.resize(mean, size=size, antialias=True, subpixel_scale=False, dtype=types.FLOAT)
    return images - warped


def _normalize(images: Any, norm: Normalization, *, dtype: Any, layout: Layout, **crop: Any) -> Any:
    """(x - mean) / std, flipped and cropped as `crop` says (crop, crop_pos_x/y, mirror), cast, transposed."""
    return fn.crop_mirror_normalize(
        images, dtype=dtype, output_layout=layout, mean=list(norm.mean), std=list(norm.std), **crop
    )


def _pca_mean(norm: Normalization) -> Any:
    """Per-image mean with the PCA colour offset folded in: (x + delta - mean) = (x - (mean - delta)).

    delta = V @ (alpha * lambda), alpha ~ N(0, 0.1) (Krizhevsky et al. 2012, Sec. 4.1), on 0..255 pixels.
    """
    alphas = [fn.random.normal(stddev=presets.PCA_ALPHA_STD) for _ in range(3)]
    channels = []
    for c in range(3):
        delta = sum(presets.PCA_EIGVEC[c][j] * presets.PCA_EIGVAL[j] * alphas[j] for j in range(3))
        channels.append(norm.mean[c] - delta * 255.0)
    return fn.stack(*channels)


def eval_views(images: Any, args: presets.EvalViews, norm: Normalization, *, dtype: Any, layout: Layout) -> list[Any]:
    """The outputs one protocol makes of decoded uint8 HWC `images` (He et al. 2015, Sec. 3.4, "In testing").

    center: one crop of `image_size` from the image resized to shorter side `resize_size`. ten_crop: one output of
    10 crops stacked on a new leading axis per sample (corners + center, then their mirrors). multi_scale: two
    outputs per scale (the whole image resized to that shorter side, then its mirror): the network runs fully
    convolutionally on them, so their sizes differ from image to image.
    """

    def resized(shorter: int) -> Any:
        out = fn.resize(images, resize_shorter=shorter, antialias=True, subpixel_scale=False, dtype=types.FLOAT)
        return subtract_mean_image(out, norm)

    if args.protocol == "multi_scale":
        return [
            _normalize(resized(s), norm, dtype=dtype, layout=layout, mirror=mirror)
            for s in args.scales
            for mirror in (0, 1)
        ]
    base = resized(args.resize_size)
    crop = (args.image_size, args.image_size)
    if args.protocol == "center":
        return [_normalize(base, norm, dtype=dtype, layout=layout, crop=crop, mirror=0)]
    crops = [
        _normalize(base, norm, dtype=dtype, layout=layout, crop=crop, crop_pos_x=x, crop_pos_y=y, mirror=mirror)
        for mirror in (0, 1)
        for x, y in presets.TEN_CROP_POSITIONS
    ]
    return [fn.stack(*crops)]


def _cifar_train(images: Any, image_size: int, norm: Normalization, *, dtype: Any, layout: Layout) -> Any:
    """He et al. 2015, Sec. 4.2: mean-subtracted image padded with 4 zeros per side, a random `image_size` crop of it
    at one of the (2 * pad + 1)^2 integer offsets, mirrored with probability 1/2."""
    centered = subtract_mean_image(images, norm)
    padded_size = image_size + 2 * presets.CIFAR_PAD
    padded = fn.crop(
        centered,
        crop=(padded_size, padded_size),
        crop_pos_x=0.5,
        crop_pos_y=0.5,
        out_of_bounds_policy="pad",
        fill_values=0.0,
    )
    # crop_pos * (padded - crop) is the offset: k / (2 * pad) hits every integer offset 0..2*pad exactly.
    offsets = [k / (2 * presets.CIFAR_PAD) for k in range(2 * presets.CIFAR_PAD + 1)]
    return _normalize(
        padded,
        norm,
        dtype=dtype,
        layout=layout,
        crop=(image_size, image_size),
        crop_pos_x=fn.random.uniform(values=offsets),
        crop_pos_y=fn.random.uniform(values=offsets),
        mirror=fn.random.coin_flip(probability=presets.FLIP_PROBABILITY),
    )


@pipeline_def(enable_checkpointing=True)
def train_pipeline(
    reader: ReaderArgs, preset: str, image_size: int, decoder: str, dtype: Any, layout: Layout, norm: Normalization
) -> tuple[Any, Any]:
    encoded, labels = _read(reader)
    if preset == "cifar":
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        return _cifar_train(images, image_size, norm, dtype=dtype, layout=layout), labels
    mirror = fn.random.coin_flip(probability=presets.FLIP_PROBABILITY)
    if preset == "standard":
        # RandomResizedCrop: the decoder decodes only the sampled crop window (ROI decode).
        images = fn.decoders.image_random_crop(
            encoded,
            device=decoder,
            output_type=types.RGB,
            random_area=list(presets.RRC_SCALE),
            random_aspect_ratio=list(presets.RRC_RATIO),
            num_attempts=100,
        )
        images = fn.resize(images, resize_x=image_size, resize_y=image_size, antialias=True)
        if dtype == types.UINT8:
            # Raw pixels, flipped and laid out: the loader normalizes and casts them where the model runs (a
            # quarter of float32's bytes through DALI's buffers and the host-to-device copy).
            return fn.crop_mirror_normalize(images, dtype=dtype, output_layout=layout, mirror=mirror), labels
        return _normalize(images, norm, dtype=dtype, layout=layout, mirror=mirror), labels
    # He et al. 2015, Sec. 3.4: shorter side ~ U[256, 480], per-pixel mean subtracted, random 224 crop, flip, PCA
    # colour.
    images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
    short = fn.random.uniform(range=list(presets.PAPER_SHORT_SIDE_RANGE))
    images = subtract_mean_image(fn.resize(images, resize_shorter=short, antialias=True), norm)
    images = fn.crop_mirror_normalize(
        images,
        dtype=dtype,
        output_layout=layout,
        crop=(image_size, image_size),
        crop_pos_x=fn.random.uniform(range=[0.0, 1.0]),
        crop_pos_y=fn.random.uniform(range=[0.0, 1.0]),
        mean=_pca_mean(norm),
        std=list(norm.std),
        mirror=mirror,
    )
    return images, labels


@pipeline_def(enable_checkpointing=True)
def val_pipeline(
    reader: ReaderArgs, views: presets.EvalViews, decoder: str, dtype: Any, layout: Layout, norm: Normalization
) -> tuple[Any, ...]:
    encoded, labels = _read(reader)
    images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
    return (*eval_views(images, views, norm, dtype=dtype, layout=layout), labels)


def raw_output(split: str, preset: str) -> bool:
    """Whether the graph of (`split`, `preset`) can end in uint8 pixels: only the standard train preset's does, the
    others subtract a mean image or resize in float before their last operator."""
    return split == "train" and preset == "standard"


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
    views: presets.EvalViews | None = None,
    norm: Normalization | None = None,
    fp16: bool = False,
    uint8: bool = False,
    layout: Layout = "CHW",
    checkpoint: bytes | None = None,
    prefetch_queue_depth: int = 2,
) -> Pipeline:
    """A built train or val pipeline; `checkpoint` restores a state from `Pipeline.checkpoint()`.

    `norm`: the preset's `Normalization` (default: the per-channel ImageNet one); `views`: the val protocol.
    `uint8`: the standard train preset outputs raw uint8 pixels (see `raw_output`), normalized by the caller."""
    decoder = "cpu" if device_id is None else "mixed"
    if uint8 and not raw_output(split, preset):
        raise ValueError(f"uint8 output: only the standard train preset has it, not {split} {preset}")
    dtype = types.UINT8 if uint8 else types.FLOAT16 if fp16 else types.FLOAT
    norm = norm if norm is not None else channel_normalization()
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
            reader=reader,
            preset=preset,
            image_size=image_size,
            decoder=decoder,
            dtype=dtype,
            layout=layout,
            norm=norm,
            **common,
        )
    else:
        views = views if views is not None else presets.EvalViews(image_size=image_size)
        pipe = val_pipeline(
            reader=reader, views=views, decoder=decoder, dtype=dtype, layout=layout, norm=norm, **common
        )
    pipe.build()
    return pipe
