"""The final evaluation's arithmetic: per-view logits (grouped by shape, chunked), the mean of softmax scores, and the
invariant that every val sample counts once. A single-process gloo group stands in for the trial's ranks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from models import get_model
from orchestrator.training.accounting import InvariantError
from orchestrator.training.evaluation import evaluate_protocol, mean_scores, view_logits
from pipelines.loader import Batch
from pipelines.presets import IGNORE_INDEX

CPU = torch.device("cpu")


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class FirstPixels(nn.Module):
    """logits = the first row's first 3 values of channel 0: a model whose scores the test writes into the image."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(1)  # a buffer, so the rank-0 broadcast has something to do

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :3]


def _image(logits: list[float], height: int, width: int) -> torch.Tensor:
    image = torch.zeros(3, height, width)
    image[0, 0, :3] = torch.tensor(logits)
    return image


class ListLoader:
    """The `Loader` surface `evaluate_protocol` uses, over fixed batches."""

    def __init__(self, batches: list[Batch], samples_per_epoch: int) -> None:
        self.batches = batches
        self.samples_per_epoch = samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        assert epoch == 0

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)


def test_scores_are_the_mean_of_softmax_not_of_logits() -> None:
    # One view sure of class 0, two fairly sure of class 1: the mean logits pick 0, the mean scores pick 1.
    logits = torch.tensor([[[50.0, 0.0, 0.0]], [[0.0, 5.0, 0.0]], [[0.0, 5.0, 0.0]]])
    assert int(logits.mean(dim=0).argmax()) == 0
    scores = mean_scores(logits)
    assert int(scores.argmax()) == 1
    p = math.exp(5) / (math.exp(5) + 2)
    assert scores[0].tolist() == pytest.approx([(1 + 2 * (1 - p) / 2) / 3, 2 * p / 3, 2 * (1 - p) / 2 / 3], rel=1e-6)


def test_view_logits_groups_by_shape_and_chunks_like_one_at_a_time() -> None:
    torch.manual_seed(0)
    model = get_model("test_resnet", base_width=8, num_classes=7).eval()
    shapes = [(32, 40), (40, 32), (32, 40), (32, 32), (32, 40)]
    views = tuple(tuple(torch.randn(3, h + 8 * v, w + 8 * v) for h, w in shapes) for v in range(4))
    batch = Batch(torch.empty(5, 0), torch.arange(5), views=views)
    with torch.no_grad():
        got = view_logits(model, batch, CPU, chunk=2)
        one_by_one = torch.stack([torch.cat([model(image[None]) for image in view]) for view in views])
    assert got.shape == (4, 5, 7)
    torch.testing.assert_close(got, one_by_one, atol=1e-5, rtol=1e-5)
    crops = torch.randn(3, 10, 3, 32, 32)  # 10-crop: N x 10 x C x H x W
    with torch.no_grad():
        got = view_logits(model, Batch(crops, torch.arange(3)), CPU, chunk=7)
        expected = torch.stack([model(crops[:, v]) for v in range(10)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_final_evaluation_counts_every_sample_once_and_refuses_a_short_pass(process_group: None) -> None:
    model = FirstPixels()
    # Sample 0 (label 1): the mean-of-softmax case above, over multi-scale views of two sizes. Sample 1 (label 2):
    # sure of class 2. Sample 2: padding (the rank's last batch), which must not count.
    per_view = [[50.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 5.0, 0.0]]
    views = tuple(
        (_image(per_view[v], 6, 8), _image([0.0, 0.0, 9.0], 8, 6), _image([9.0, 0.0, 0.0], 8, 6)) for v in range(3)
    )
    batch = Batch(torch.empty(3, 0), torch.tensor([1, 2, IGNORE_INDEX]), views=views)
    metrics = evaluate_protocol(
        model, ListLoader([batch], 2), CPU, bf16=False, protocol="multi_scale", val_uri="/val", chunk=4
    )
    p = math.exp(5) / (math.exp(5) + 2)
    sure = math.exp(9) / (math.exp(9) + 2)
    assert metrics["final_multi_scale_top1_err"] == 0.0
    assert metrics["final_multi_scale_top5_err"] == 0.0
    assert metrics["final_multi_scale_samples"] == 2
    assert metrics["final_multi_scale_loss"] == pytest.approx((-math.log(2 * p / 3) - math.log(sure)) / 2, rel=1e-6)
    with pytest.raises(InvariantError, match=r"the final ten_crop evaluation evaluated 2 samples over all ranks, but "):
        evaluate_protocol(model, ListLoader([batch], 3), CPU, bf16=False, protocol="ten_crop", val_uri="/v", chunk=4)
