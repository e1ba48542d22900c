"""Option B V1.5 is torchvision's ResNet: same parameter names, same initial weights, same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from models import get_model

DEPTHS = [18, 34, 50, 101, 152]


def torchvision_resnet(depth: int, **kwargs: object) -> nn.Module:
    return getattr(torchvision.models, f"resnet{depth}")(weights=None, **kwargs)  # weights=None: no download


def randomize_batch_norms(model: nn.Module) -> None:
    # Fresh BNs are the identity in eval mode (mean 0, var 1, scale 1, shift 0) and would hide a BN loaded into
    # the wrong place.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("depth", DEPTHS)
def test_torchvision_state_dict_loads_strict_and_gives_the_same_output(depth: int) -> None:
    torch.manual_seed(depth)
    reference = torchvision_resnet(depth)
    randomize_batch_norms(reference)
    ours = get_model(f"resnet{depth}", shortcut="B", variant="v1.5")
    result = ours.load_state_dict(reference.state_dict(), strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x))


@pytest.mark.parametrize("zero_init_residual", [False, True])
@pytest.mark.parametrize("depth", [18, 50])
def test_same_seed_gives_torchvisions_initial_weights(depth: int, zero_init_residual: bool) -> None:
    # A residual-B-V1.5 run starts from exactly the weights a torchvision reference run starts from.
    torch.manual_seed(0)
    reference = torchvision_resnet(depth, zero_init_residual=zero_init_residual).state_dict()
    torch.manual_seed(0)
    ours = get_model(f"resnet{depth}", zero_init_residual=zero_init_residual).state_dict()
    assert list(ours) == list(reference)
    assert [k for k in ours if not torch.equal(ours[k], reference[k])] == []


def test_parameter_names_differ_from_torchvision_only_where_the_architecture_does() -> None:
    # Option A has no projection weights, option C has one in every block: loading torchvision's state_dict
    # strictly must fail there, naming the keys.
    reference = torchvision_resnet(18).state_dict()
    option_a = get_model("resnet18", shortcut="A")
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "layer2.0.downsample.0.weight"'):
        option_a.load_state_dict(reference, strict=True)
    option_c = get_model("resnet18", shortcut="C")
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "layer1.0.downsample.0.weight"'):
        option_c.load_state_dict(reference, strict=True)
