"""NeuralFuse generators and UIP: exact parameter counts (paper Table 7), shapes, MACs, transform."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nfedge.errors import NfedgeError
from nfedge.models import GENERATORS, create_generator, list_generators
from nfedge.models.generators import neuralfuse_transform

PARAMS = {  # REFERENCE section 4, 3x32x32
    "ConvL": 723_273,
    "ConvS": 113_187,
    "DeConvL": 647_785,
    "DeConvS": 156_777,
    "UNetL": 482_771,
    "UNetS": 121_195,
}
PAPER_MACS = {"ConvL": 80.5e6, "ConvS": 10.34e6, "DeConvL": 64.69e6, "DeConvS": 22.44e6,
              "UNetL": 41.41e6, "UNetS": 10.58e6}
NFEDGE_TINY = {"ConvT": 7_851, "UNetT": 30_469}  # nfedge's MCU-size generators (1 x 32 x 32)
ALL = sorted(PARAMS) + ["UIP"] + sorted(NFEDGE_TINY)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered():
    assert sorted(list_generators(), key=str.lower) == sorted(ALL, key=str.lower)
    assert "convl" in GENERATORS and GENERATORS.canonical("unets") == "UNetS"


def test_unknown_name_lists_known():
    with pytest.raises(NfedgeError) as e:
        create_generator("ConvXL")
    msg = str(e.value)
    assert "ConvXL" in msg and all(n in msg for n in ALL) and "\n" not in msg


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_exact(name):
    assert n_params(create_generator(name, in_channels=3, input_size=(32, 32))) == PARAMS[name]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_channels,size", [(1, (32, 32)), (3, (32, 32)), (3, (64, 48))])
def test_output_has_input_shape(name, in_channels, size):
    g = create_generator(name, in_channels=in_channels, input_size=size)
    x = torch.randn(2, in_channels, *size)
    y = g(x)  # train mode too: BN must accept the smallest maps at batch 2
    assert y.shape == x.shape
    g.eval()
    with torch.no_grad():
        f = neuralfuse_transform(g, x)
    assert f.shape == x.shape and f.min() >= -1 and f.max() <= 1


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(28, 28), (36, 32), (32, 20)])
def test_size_not_multiple_of_8(name, size):
    if name == "UIP":  # no pooling: any size
        assert create_generator(name, input_size=size)(torch.zeros(1, 3, *size)).shape == (1, 3, *size)
        return
    with pytest.raises(NfedgeError, match="multiples of 8") as e:
        create_generator(name, input_size=size)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["ConvL", "ConvS", "DeConvL", "DeConvS"])
def test_tanh_head_bounds_perturbation(name):
    g = create_generator(name).eval()
    with torch.no_grad():
        assert g(torch.randn(2, 3, 32, 32) * 10).abs().max() <= 1


def test_uip_is_tanh_p():
    g = create_generator("UIP", in_channels=1, input_size=(32, 32))
    assert n_params(g) == 32 * 32 and g.P.shape == (1, 1, 32, 32)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert torch.equal(g(x), torch.zeros_like(x))  # P starts at zeros
    with torch.no_grad():
        g.P.normal_()
    torch.testing.assert_close(g(x), torch.tanh(g.P).expand_as(x))
    torch.testing.assert_close(neuralfuse_transform(g, x), torch.clamp(x + torch.tanh(g.P), -1, 1))
    g(x).sum().backward()
    assert g.P.grad is not None and g.P.grad.shape == g.P.shape


def test_transform_gradient_reaches_generator():
    g = create_generator("ConvS", in_channels=1)
    neuralfuse_transform(g, torch.randn(2, 1, 32, 32) * 0.1).sum().backward()
    assert all(p.grad is not None for p in g.parameters())


def _torch_macs(m: nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc:
        m(x)
    return fc.get_total_flops() / 2


def test_convl_macs_match_paper():
    # The only generator whose conv-only MACs land within 2% of the paper (79.63M vs 80.5M).
    macs = _torch_macs(create_generator("ConvL").eval(), torch.zeros(1, 3, 32, 32))
    assert macs == pytest.approx(PAPER_MACS["ConvL"], rel=0.02)


def _paper_style_macs(m: nn.Module, x: torch.Tensor) -> float:
    """MACs counted the way the paper's tool (ptflops-like) counts them, to check the layer lists.

    Differences from torch's counter: a ConvTranspose is charged per *output* pixel (torch charges the
    true cost, per input pixel: s^2 fewer), and conv bias (1 per output), BN (2 per element), ReLU (1),
    max-pool (1 per input element) and upsample (1 per output element) are counted too.
    """
    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            total += out[0, 0].numel() * mod.in_channels * mod.out_channels * mod.weight[0, 0].numel()
            total += out.numel() if mod.bias is not None else 0
        elif isinstance(mod, nn.BatchNorm2d):
            total += 2 * out.numel()
        elif isinstance(mod, (nn.ReLU, nn.Upsample)):
            total += out.numel()
        elif isinstance(mod, nn.MaxPool2d):
            total += inp[0].numel()

    handles = [mod.register_forward_hook(hook) for mod in m.modules() if not list(mod.children())]
    with torch.no_grad():
        m(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_macs_paper_convention(name):
    g = create_generator(name).eval()
    assert _paper_style_macs(g, torch.zeros(1, 3, 32, 32)) == pytest.approx(PAPER_MACS[name], rel=0.005)


@pytest.mark.parametrize("name", ALL)
def test_torch_export(name):
    g = create_generator(name, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    ep = torch.export.export(g, (x,))
    torch.testing.assert_close(ep.module()(x), g(x))


@pytest.mark.parametrize("name", sorted(NFEDGE_TINY))
def test_tiny_generators(name):
    g = create_generator(name, in_channels=1)
    assert n_params(g) == NFEDGE_TINY[name]
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert g(x).shape == x.shape
