"""MLPerf Tiny reference models (nfedge/models/tiny.py): parameter counts derived from the mlcommons/tiny Keras
definitions (arithmetic in the factories' docstrings), Keras 'same' padding, reference pooling, shapes at the
reference inputs and at 1x32x32, and the weight memory image of their conv/linear weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nfedge.models import BASE_MODELS, create_base_model
from nfedge.models.tiny import KerasSamePad2d, keras_same_padding
from nfedge.quant import quantizable_weight_names
from nfedge.sram.image import build_image
from nfedge.train.perturb import fold_batchnorm

# name: (reference input C, H, W; classes; parameters (PyTorch: weights, biases, BN gamma/beta);
#        conv + linear weights (one byte each in the memory image); conv + linear layers; BatchNorm2d layers)
REF = {
    "resnet8": ((3, 32, 32), 10, 78_186, 77_360, 10, 7),
    "ds-cnn": ((1, 49, 10), 12, 23_756, 22_016, 10, 9),
    "mobilenet-v1-0.25": ((3, 96, 96), 2, 216_322, 208_112, 28, 27),
}
NAMES = sorted(REF)


def ref_model(name: str) -> nn.Module:
    (c, _, _), classes, *_ = REF[name]
    return create_base_model(name, in_channels=c, num_classes=classes).eval()


def test_registered_and_created_by_name():
    for name in NAMES:
        assert name in BASE_MODELS and name.upper() in BASE_MODELS
        assert BASE_MODELS.canonical(name) == name


def test_factory_defaults_are_the_reference_configuration():
    for name in NAMES:
        (c, h, w), classes, params, *_ = REF[name]
        m = BASE_MODELS.get(name)().eval()
        assert sum(p.numel() for p in m.parameters()) == params
        with torch.no_grad():
            assert m(torch.randn(1, c, h, w)).shape == (1, classes)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_exact(name):
    assert sum(p.numel() for p in ref_model(name).parameters()) == REF[name][2]


@pytest.mark.parametrize("name", NAMES)
def test_docstring_cites_the_count(name):
    doc = BASE_MODELS.get(name).__doc__
    assert f"{REF[name][2]:,} parameters" in doc and f"{REF[name][3]:,}" in doc


def test_keras_total_adds_batchnorm_moving_stats():
    # Keras trainable = PyTorch parameters; Keras's total adds the BN moving mean/var (PyTorch buffers)
    m = ref_model("resnet8")
    bn = sum(2 * b.num_features for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    assert bn == 480 and sum(p.numel() for p in m.parameters()) + bn == 78_666


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_at_reference_input(name):
    (c, h, w), classes, *_ = REF[name]
    with torch.no_grad():
        assert ref_model(name)(torch.randn(2, c, h, w)).shape == (2, classes)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels,num_classes", [(1, 10), (3, 43)])
def test_runs_at_32x32(name, in_channels, num_classes):
    m = create_base_model(name, in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        assert m(torch.randn(2, in_channels, 32, 32)).shape == (2, num_classes)


def _spatial(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    hs = [m.register_forward_hook(lambda mod, i, o: out.append(tuple(o.shape[-2:]))) for m in modules]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return out


def test_feature_map_sizes_are_keras_same():
    # Keras 'same': every layer gives ceil(n / stride)
    m = ref_model("resnet8")
    assert _spatial(m, [m.stem, m.stack1, m.stack2, m.stack3], torch.zeros(1, 3, 32, 32)) == [
        (32, 32), (32, 32), (16, 16), (8, 8)]
    m = ref_model("ds-cnn")
    assert _spatial(m, [m.stem, *m.blocks], torch.zeros(1, 1, 49, 10)) == [(25, 5)] * 5
    m = ref_model("mobilenet-v1-0.25")
    sizes = [48, 48, 24, 24, 12, 12, 6, 6, 6, 6, 6, 6, 3, 3]
    assert _spatial(m, [m.stem, *m.blocks], torch.zeros(1, 3, 96, 96)) == [(s, s) for s in sizes]


@pytest.mark.parametrize("n,k,s,pads", [
    (32, 3, 2, (0, 1)), (96, 3, 2, (0, 1)), (25, 3, 2, (1, 1)),  # stride 2: the odd pixel after
    (49, 10, 2, (4, 5)), (10, 4, 2, (1, 1)), (32, 10, 2, (4, 4)), (32, 4, 2, (1, 1)),  # ds-cnn stem
    (7, 3, 1, (1, 1)), (7, 4, 1, (1, 2)), (32, 1, 2, (0, 0)), (33, 1, 2, (0, 0)),  # 1x1 never pads
])
def test_keras_same_padding(n, k, s, pads):
    assert keras_same_padding(n, k, s) == pads
    assert math.floor((n + sum(pads) - k) / s) + 1 == math.ceil(n / s)


def test_stride2_pad_is_after_not_before():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = KerasSamePad2d(3, 2)(x)
    assert y.shape == (1, 1, 5, 5)
    assert torch.equal(y[..., :4, :4], x) and y[..., 4, :].abs().sum() == 0 and y[..., :, 4].abs().sum() == 0
    # and a conv behind it samples Keras's grid: output (0, 0) covers input rows/cols 0..2
    conv = nn.Conv2d(1, 1, 3, 2, bias=False)
    nn.init.ones_(conv.weight)
    assert conv(y)[0, 0, 0, 0] == x[0, 0, :3, :3].sum()


def test_ds_cnn_pools_like_the_reference():
    # AveragePooling2D(pool_size=(49 // 2, 10 // 2)) on the 25x5 map: one 24x5 window, the last row unused
    m = ref_model("ds-cnn")
    x = torch.randn(1, 1, 49, 10)
    with torch.no_grad():
        base = m(x)
        for row, changes in ((24, False), (23, True)):
            def bump(mod, inp, out, row=row):
                out = out.clone()
                out[:, :, row] += 100.0
                return out
            h = m.blocks.register_forward_hook(bump)
            changed = not torch.allclose(m(x), base)
            h.remove()
            assert changed == changes


@pytest.mark.parametrize("name", NAMES)
def test_memory_image_holds_every_conv_and_linear_weight(name):
    _, _, _, n_weights, n_layers, _ = REF[name]
    m = ref_model(name)
    layers = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert len(layers) == n_layers and sum(mod.weight.numel() for mod in layers) == n_weights
    names = quantizable_weight_names(m)
    assert len(names) == n_layers  # depthwise convs and the 1x1 shortcuts included; no bias, no BatchNorm
    image = build_image(m, bits=8)
    assert image.manifest.total_bytes == n_weights == image.codes.size
    assert [t.name for t in image.manifest.tensors] == names


# mobilenet is built from the same blocks as ds-cnn (and takes seconds more): the two below leave it out
@pytest.mark.parametrize("name", ["resnet8", "ds-cnn"])
def test_fx_traceable_batchnorm_folds(name):
    m = ref_model(name)
    folded = fold_batchnorm(m)
    assert folded.folded == REF[name][5]
    (c, h, w), *_ = REF[name]
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(folded.module(x), m(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet8", "ds-cnn"])
def test_torch_export(name):
    m = ref_model(name)
    (c, h, w), *_ = REF[name]
    x = torch.randn(2, c, h, w)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x))
