"""The registry's contract: names, options and the errors a sweep author sees for a typo."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from models import BasicBlock, ResNet, get_model, list_models, model_options, register_model
from models.resnet import cifar_resnet

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
CIFAR = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110", "cifar_resnet1202"]


def test_every_net_of_the_paper_is_registered_in_natural_order() -> None:
    assert list_models() == [*CIFAR, *IMAGENET, "test_resnet"]
    assert list_models("cifar_*") == CIFAR


def test_imagenet_options_and_defaults() -> None:
    assert model_options("resnet50") == {
        "residual": True,
        "shortcut": "B",
        "variant": "v1.5",
        "zero_init_residual": False,
        "num_classes": 1000,
        "base_width": 64,
    }
    # The CI net is the same builder with a smaller layout and width: the same switches reach it.
    assert model_options("test_resnet") == {**model_options("resnet50"), "base_width": 8}
    # Section 4.2: the CIFAR nets are option A by definition, so they take no shortcut/variant switch.
    assert model_options("cifar_resnet20") == {
        "residual": True,
        "zero_init_residual": False,
        "num_classes": 10,
        "base_width": 16,
    }


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet19' \(did you mean 'resnet18'\?\)") as err:
        get_model("resnet19")
    assert "cifar_resnet1202, resnet18, resnet34" in str(err.value)


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=r"^resnet50 has no option 'width'; valid options: base_width, num_classes, residual, shortcut, variant, "
        r"zero_init_residual$",
    ):
        get_model("resnet50", width=32)
    with pytest.raises(ValueError, match=r"cifar_resnet20 has no option 'shortcut'"):
        get_model("cifar_resnet20", shortcut="B")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"shortcut": "D"}, r"^shortcut='D' is not valid; choose one of 'A', 'B', 'C'$"),
        ({"variant": "v2"}, r"^variant='v2' is not valid; choose one of 'v1', 'v1.5'$"),
        ({"residual": "yes"}, r"^residual must be True or False, got 'yes'$"),
        ({"zero_init_residual": 1}, r"^zero_init_residual must be True or False, got 1$"),
        ({"base_width": 0}, r"^base_width must be a positive integer, got 0$"),
        ({"num_classes": 10.0}, r"^num_classes must be a positive integer, got 10.0$"),
        ({"residual": False, "zero_init_residual": True}, r"zero_init_residual=True needs residual=True"),
    ],
)
def test_bad_option_values_name_the_field_and_the_choices(overrides: dict[str, object], message: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        get_model("resnet18", **overrides)


@pytest.mark.parametrize("depth", [0, 2, 19, 21, 100])
def test_cifar_depth_must_be_6n_plus_2(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"CIFAR ResNet depth must be 6n\+2 with n >= 1 .*, got {depth}$"):
        cifar_resnet(depth)


def test_cifar_depth_of_the_form_6n_plus_2_builds_n_blocks_per_stage() -> None:
    model = cifar_resnet(8)  # n = 1, not one of the paper's depths but a valid member of the family
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 1]


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match=r"^model 'resnet50' is already registered; pick another name$"):
        register_model(partial(ResNet, BasicBlock, (1, 1, 1, 1)), name="resnet50")


def test_registering_a_nameless_builder_needs_a_name() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        register_model(partial(ResNet, BasicBlock, (1, 1, 1, 1)))


def test_overrides_reach_the_model() -> None:
    model = get_model("test_resnet", num_classes=7, base_width=4)
    assert model.fc.out_features == 7
    assert model.conv1.out_channels == 4
