"""Robust retraining (nfedge.train.robust, `train-base --robust`): the bit errors are the image's cell flips, the
gradient passes straight through, clipping bounds every deployed weight (a randbet run resumes exactly:
tests/train/test_base.py)."""

import numpy as np
import pytest
import torch

from nfedge.data import DataConfig
from nfedge.errors import NfedgeError
from nfedge.progress import QUIET
from nfedge.quant import dequantize, fake_quantize, quantizable_weight_names, quantize_symmetric
from nfedge.sram.faults import CellFaults, apply_cell_faults
from nfedge.train.base import TrainBaseConfig, train_base
from nfedge.train.checkpoint import load_checkpoint
from nfedge.train.robust import bit_error_weights, clip_weights_, random_bit_errors


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_bit_flipped_is_the_ones_complement(bits):
    q = 2 ** (bits - 1) - 1
    codes = torch.arange(-q, q + 1)
    got = random_bit_errors(codes, bits, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(got, -codes - 1)  # two's complement: ~c = -c - 1, sign-extended from b bits
    assert torch.equal(random_bit_errors(codes, bits, 0.0, torch.Generator()), codes)


def test_flips_are_the_images_cell_flips_at_rate_p():
    """The flipped codes equal nfedge.sram.faults' reading of the same cells flipped, and the rate is p."""
    bits, p = 6, 0.02
    codes = torch.randint(-31, 32, (50_000,), generator=torch.Generator().manual_seed(1))
    got = random_bit_errors(codes, bits, p, torch.Generator().manual_seed(2))
    stored = (codes & 63) ^ (got & 63)
    flipped = torch.nonzero(((stored.unsqueeze(1) >> torch.arange(bits)) & 1).reshape(-1)).squeeze(1).numpy()
    ref, _, changed = apply_cell_faults(codes.numpy().astype(np.int8), bits,
                                        CellFaults([flipped.astype(np.int64)], [], [], p))
    assert changed == len(flipped)
    assert torch.equal(torch.from_numpy(ref.astype(np.int64)), got)
    n = codes.numel() * bits
    assert abs(len(flipped) - p * n) < 5 * (n * p * (1 - p)) ** 0.5


def test_bit_error_weights_are_the_flipped_codes_with_a_straight_through_gradient(small_model):
    model = small_model.train()
    names = quantizable_weight_names(model)
    w = bit_error_weights(model, 8, False, 0.05, torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    changed = 0
    for n in names:
        codes, scale = quantize_symmetric(params[n], 8)
        flipped = random_bit_errors(codes, 8, 0.05, torch.Generator().manual_seed(0)) if n == names[0] else None
        if flipped is not None:  # the first tensor draws first from the same stream
            assert torch.equal(w[n].detach(), dequantize(flipped.to(torch.int8), scale))
        changed += int((w[n].detach() != fake_quantize(params[n], 8).detach()).sum())
    assert changed > 0
    weights = torch.randn_like(params[names[1]])
    (w[names[1]] * weights).sum().backward()
    fq_grad = torch.autograd.grad((fake_quantize(params[names[1]], 8) * weights).sum(), params[names[1]])[0]
    assert torch.equal(params[names[1]].grad, fq_grad)


def test_clip_bounds_every_quantized_weight(small_model):
    clip_weights_(small_model, 0.01)
    params, clipped = dict(small_model.named_parameters()), quantizable_weight_names(small_model)
    assert all(float(params[n].detach().abs().max()) <= float(torch.tensor(0.01)) for n in clipped)
    assert any(float(p.detach().abs().max()) > 0.01 for n, p in params.items() if n not in clipped)  # BN untouched


@pytest.mark.parametrize("robust", ["clip", "randbet"])
def test_train_base_robust_bounds_the_weights(tmp_path, robust):
    cfg = TrainBaseConfig(model="cnn-xs", epochs=2, batch_size=64, robust=robust, clip=0.05, robust_ber=0.02,
                          data=DataConfig(train_limit=1000, test_limit=200))
    model, meta = load_checkpoint(train_base(cfg, tmp_path, progress=QUIET))
    h = meta["meta"]["history"]
    assert meta["meta"]["config"]["robust"] == robust and h[1]["train_loss"] < h[0]["train_loss"]  # it learns
    params = dict(model.named_parameters())
    bound = float(torch.tensor(0.05))  # 0.05 in float32
    assert all(float(params[n].detach().abs().max()) <= bound for n in quantizable_weight_names(model))


@pytest.mark.parametrize("kw, match", [({"robust": "dropout"}, "robust must be one of"),
                                       ({"clip": 0.0}, "clip must be a positive"),
                                       ({"robust_ber": 0.5}, "robust_ber must be")])
def test_bad_robust_config(kw, match):
    with pytest.raises(NfedgeError, match=match) as e:
        TrainBaseConfig(**kw)
    assert "\n" not in str(e.value)
