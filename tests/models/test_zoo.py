"""Base-model zoo: exact parameter counts (paper / pytorch-cifar), shapes, MACs, registry, export."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nfedge.errors import NfedgeError
from nfedge.models import BASE_MODELS, create_base_model, list_base_models

PARAMS = {  # REFERENCE section 5, 3x32x32, 10 classes
    "resnet18": 11_173_962,
    "resnet50": 23_520_842,
    "vgg11": 9_231_114,
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,
}
PAPER_MACS = {"resnet18": 557.14e6, "resnet50": 1.31e9, "vgg11": 153.5e6, "vgg16": 314.43e6, "vgg19": 399.47e6}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def conv_linear_macs(m: torch.nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc:
        m(x)
    return fc.get_total_flops() / 2


def test_registered():
    assert set(PARAMS) <= set(list_base_models())
    assert "ResNet18" in BASE_MODELS  # case-insensitive


def test_unknown_name_lists_known():
    with pytest.raises(NfedgeError) as e:
        create_base_model("resnet34")
    msg = str(e.value)
    assert "resnet34" in msg and all(n in msg for n in PARAMS) and "\n" not in msg


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_exact(name):
    assert n_params(create_base_model(name, in_channels=3, num_classes=10)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_macs_match_paper(name):
    # torch's counter sees only conv/linear (no BN/ReLU/pool); the paper's totals are within 1%.
    macs = conv_linear_macs(create_base_model(name).eval(), torch.zeros(1, 3, 32, 32))
    assert macs == pytest.approx(PAPER_MACS[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("in_channels,num_classes", [(1, 43), (3, 10)])
def test_forward_shape(name, in_channels, num_classes):
    m = create_base_model(name, in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        y = m(torch.randn(2, in_channels, 32, 32))
    assert y.shape == (2, num_classes)


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_larger_input_same_params(name):
    m = create_base_model(name).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 48)).shape == (1, 10)
    assert n_params(m) == PARAMS[name]


def test_in_channels_changes_only_stem():
    m1, m3 = create_base_model("resnet18", in_channels=1), create_base_model("resnet18", in_channels=3)
    assert n_params(m3) - n_params(m1) == 2 * 64 * 9


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_torch_export(name):
    m = create_base_model(name, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x))
