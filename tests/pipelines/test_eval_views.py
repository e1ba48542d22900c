"""The paper's testing views (center, 10-crop, multi-scale): the DALI graph and the torch fallback make the same
numbers from the same decoded image, and both follow the geometry they claim."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from pipelines import dali, presets, torch_transforms
from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.normalization import Normalization, channel_normalization, preset_normalization

CPU = torch.device("cpu")
# 0..255 pixels normalized by std ~ 57: DALI's float filter tables differ from the exact weights by ~1e-2 pixel.
ATOL = 1e-3


def _decoded(images_dir: Path, count: int) -> list[torch.Tensor]:
    files = sorted(images_dir.glob("*.JPEG"))[:count]
    return [decode_image(str(f), mode=ImageReadMode.RGB) for f in files]


def _dali_views(images: list[torch.Tensor], views: presets.EvalViews, norm: Normalization) -> list[list[np.ndarray]]:
    """outputs x samples of `dali.eval_views` run on the given decoded images (external source, CPU)."""
    from nvidia.dali import fn, pipeline_def, types

    hwc = [img.permute(1, 2, 0).contiguous().numpy() for img in images]

    @pipeline_def(batch_size=len(hwc), num_threads=1, device_id=None)
    def pipe() -> Any:
        decoded = fn.external_source(source=lambda: hwc, batch=True, layout="HWC")
        return tuple(dali.eval_views(decoded, views, norm, dtype=types.FLOAT, layout="CHW"))

    built = pipe()
    built.build()
    return [[np.array(out.at(i)) for i in range(len(hwc))] for out in built.run()]


def _mean_image_norm() -> Normalization:
    # A smooth, non-constant mean image, so warping it to each image's shape matters.
    ramp = np.linspace(0.0, 1.0, presets.MEAN_IMAGE_SIZE)
    mean = 100.0 + 60.0 * ramp[:, None, None] + np.array([0.0, -40.0, 20.0]) * ramp[None, :, None]
    return Normalization(mean=(0.0, 0.0, 0.0), std=(58.0, 57.0, 57.5), mean_image=mean.astype(np.float32))


@pytest.mark.parametrize("norm_kind", ["channel", "mean_image"])
@pytest.mark.parametrize(
    "views",
    [
        presets.EvalViews("center", image_size=64, resize_size=73),  # odd margin: catches crop rounding
        presets.EvalViews("ten_crop", image_size=64, resize_size=73),
        presets.EvalViews("multi_scale", scales=(37, 64, 100)),  # shrinking and enlarging
    ],
    ids=["center", "ten_crop", "multi_scale"],
)
def test_dali_and_torch_views_of_the_same_decoded_image(
    views: presets.EvalViews, norm_kind: str, tiny_images_dir: Path
) -> None:
    norm = channel_normalization() if norm_kind == "channel" else _mean_image_norm()
    images = _decoded(tiny_images_dir, 6)
    from_dali = _dali_views(images, views, norm)
    for i, image in enumerate(images):
        ours = torch_transforms.eval_views(image, views, norm)
        if views.protocol == "multi_scale":
            assert isinstance(ours, list) and len(ours) == len(from_dali) == 2 * len(views.scales)
            for scale_index, shorter in enumerate(views.scales):
                shape = torch_transforms.shorter_side_shape(image.shape[1], image.shape[2], shorter)
                assert ours[2 * scale_index].shape == (3, *shape)
            pairs = [(torch.from_numpy(out[i]), mine) for out, mine in zip(from_dali, ours, strict=True)]
        else:
            assert isinstance(ours, torch.Tensor) and len(from_dali) == 1
            pairs = [(torch.from_numpy(from_dali[0][i]), ours)]
        for expected, got in pairs:
            assert expected.shape == got.shape
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_ten_crop_is_corners_center_then_their_mirrors(tiny_images_dir: Path) -> None:
    image = _decoded(tiny_images_dir, 1)[0]
    norm = channel_normalization()
    crops = torch_transforms.eval_views(image, presets.EvalViews("ten_crop", 32, 41), norm)
    base = torch_transforms.normalize(torch_transforms.resize_shorter(image.float(), 41), norm)
    height, width = base.shape[-2:]
    assert isinstance(crops, torch.Tensor) and crops.shape == (10, 3, 32, 32)
    # Margins 9 (odd) and width - 32: the center anchor rounds half up, as DALI's crop_pos does.
    top_center, left_center = math.floor((height - 32) / 2 + 0.5), math.floor((width - 32) / 2 + 0.5)
    anchors = [(0, 0), (0, width - 32), (height - 32, 0), (height - 32, width - 32), (top_center, left_center)]
    for k, (top, left) in enumerate(anchors):
        torch.testing.assert_close(crops[k], base[:, top : top + 32, left : left + 32])
        torch.testing.assert_close(crops[5 + k], base[:, top : top + 32, left : left + 32].flip(-1))


def test_resize_is_torchvisions_inside_and_dalis_at_the_border() -> None:
    # The weights are those of torchvision's antialiased bilinear resize (PIL's triangle filter) except that taps past
    # the border read the edge pixel instead of being dropped: equal away from the border.
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(3, 75, 100))).float()
    for height, width in ((40, 53), (150, 200), (75, 100)):
        ours = torch_transforms.resize(image, height, width)
        reference = F.resize(image, [height, width], antialias=True)
        torch.testing.assert_close(ours[:, 1:-1, 1:-1], reference[:, 1:-1, 1:-1], atol=1e-3, rtol=0)
    assert torch_transforms.shorter_side_shape(2, 3, 5) == (5, 8)  # 7.5 rounds up, as DALI's resize_shorter
    assert torch_transforms.shorter_side_shape(500, 375, 256) == (341, 256)
    assert torch_transforms.shorter_side_shape(77, 101, 256) == (256, 336)


@pytest.mark.parametrize("preset", ["standard", "paper"])
@pytest.mark.parametrize(
    ("protocol", "scales"), [("center", ()), ("ten_crop", ()), ("multi_scale", (32, 48))], ids=["center", "ten", "ms"]
)
def test_both_loaders_give_the_same_views(
    protocol: str, scales: tuple[int, ...], preset: str, sample_shards_local: str
) -> None:
    # Through each backend's own decoder and reader (libjpeg-turbo in both), over real ImageNet JPEGs.
    spec = LoaderSpec(
        uri=sample_shards_local,
        split="val",
        batch_size=12,
        image_size=32,
        resize_size=43,
        protocol=protocol,  # type: ignore[arg-type]
        scales=scales,
        preset=preset,  # type: ignore[arg-type]
        num_threads=1,
    )
    batches = {}
    for backend in ("dali", "torch"):
        loader = make_loader(spec.model_copy(update={"backend": backend}), 1, 3, CPU)
        batches[backend] = next(iter(loader))
    dali_batch, torch_batch = batches["dali"], batches["torch"]
    assert torch.equal(dali_batch.labels, torch_batch.labels)
    if protocol == "multi_scale":
        assert len(dali_batch.views) == len(torch_batch.views) == 4 and dali_batch.images.numel() == 0
        for dali_view, torch_view in zip(dali_batch.views, torch_batch.views, strict=True):
            for a, b in zip(dali_view, torch_view, strict=True):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(dali_batch.images, torch_batch.images, atol=ATOL, rtol=0)


def test_paper_val_view_subtracts_the_training_mean_image(sample_shards_local: str, tiny_images_dir: Path) -> None:
    # The view of the paper preset is the standard one with the warped mean image in place of the channel means.
    norm = preset_normalization("paper", sample_shards_local)
    assert norm.mean_image is not None and norm.mean_image.shape == (presets.MEAN_IMAGE_SIZE,) * 2 + (3,)
    image = _decoded(tiny_images_dir, 1)[0]
    view = torch_transforms.eval_views(image, presets.EvalViews("center", 32, 40), norm)
    resized = torch_transforms.resize_shorter(image.float(), 40)
    mean = torch_transforms.resize(torch.from_numpy(norm.mean_image).permute(2, 0, 1), *resized.shape[-2:])
    expected = torch_transforms.crop((resized - mean) / torch.tensor(norm.std).view(3, 1, 1), 32, 0.5, 0.5)
    torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)
