"""nfedge.deploy.compile.export: the image-weighted base model (the single source of truth) and ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cnn_xs_with_bn_stats
from torch import nn

from nfedge.deploy.compile.export import (
    ImageWeightedModel,
    NeuralFuseFront,
    export_base_onnx,
    export_generator_onnx,
    image_tensor,
)
from nfedge.errors import NfedgeError
from nfedge.models import create_base_model
from nfedge.sram.image import build_image, with_codes


def _model(seed: int = 0) -> nn.Module:
    return cnn_xs_with_bn_stats(seed)


def _generator() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 1, 3, padding=1), nn.Tanh()).eval()


def _flip(codes: np.ndarray, positions, masks) -> np.ndarray:
    out = codes.copy()
    for p, m in zip(positions, masks):
        out[p] = np.int8(np.uint8(out[p].view(np.uint8) ^ np.uint8(m)).view(np.int8))
    return out


@pytest.mark.parametrize("per_channel", [False, True])
def test_matches_dequantized_weights(per_channel):
    m = _model()
    img = build_image(m, 4, per_channel=per_channel)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    ref = torch.func.functional_call(m, img.dequantized_weights(), (x,))
    got = ImageWeightedModel(m, img.manifest)(x, image_tensor(img))
    assert torch.equal(ref, got)


def test_faulty_image_changes_output_like_decoded_weights():
    m = _model()
    img = build_image(m, 8)
    bad = with_codes(img, _flip(img.codes, [0, 1, 100], [0x80, 0x40, 0x01]), faults={"test": True})
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    w = ImageWeightedModel(m, img.manifest)
    clean, faulty = w(x, image_tensor(img)), w(x, image_tensor(bad))
    assert not torch.allclose(clean, faulty)
    assert torch.equal(faulty, torch.func.functional_call(m, bad.dequantized_weights(), (x,)))


def test_wrapper_stays_in_eval_mode_and_frozen():
    w = ImageWeightedModel(_model(), build_image(_model(), 8).manifest)
    w.train()
    assert not w.model.training
    assert not any(p.requires_grad for p in w.model.parameters())


def test_manifest_of_another_model_is_rejected():
    img = build_image(_model(), 8)
    other = create_base_model("cnn-s", in_channels=1, num_classes=10)
    with pytest.raises(NfedgeError, match="do not belong together"):
        ImageWeightedModel(other, img.manifest)


def test_image_tensor_accepts_bytes_and_rejects_floats():
    img = build_image(_model(), 8)
    assert torch.equal(image_tensor(img.codes.tobytes()), image_tensor(img))
    assert torch.equal(image_tensor(img.codes.view(np.uint8)), image_tensor(img))
    with pytest.raises(NfedgeError, match="int8"):
        image_tensor(np.zeros(4, dtype=np.float32))


def test_front_is_clip_of_x_plus_g():
    g = _generator()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(NeuralFuseFront(g)(x), torch.clamp(x + g(x), -1, 1))


@pytest.mark.slow
def test_onnx_base_with_image_input_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = _model()
    img = build_image(m, 6, per_channel=True)
    path = export_base_onnx(m, img, tmp_path / "base.onnx", (1, 32, 32))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "image"]
    w = ImageWeightedModel(m, img.manifest)
    rng = np.random.default_rng(0)
    bad = _flip(img.codes, rng.choice(img.codes.size, 20, replace=False), rng.integers(1, 64, 20))
    x = (rng.random((3, 1, 32, 32), dtype=np.float32) * 2 - 1)  # batch 3: the batch dimension is dynamic
    outs = []
    for codes in (img.codes, bad):
        ref = w(torch.from_numpy(x), image_tensor(codes)).numpy()
        got = sess.run(None, {"x": x, "image": np.ascontiguousarray(codes)})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        outs.append(got)
    assert not np.allclose(outs[0], outs[1])  # the faulty image really went through the graph


@pytest.mark.slow
def test_onnx_generator_front_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    g = _generator()
    path = export_generator_onnx(g, tmp_path / "gen.onnx", (1, 32, 32))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((4, 1, 32, 32), dtype=np.float32) * 2 - 1
    ref = NeuralFuseFront(g)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-6)
