import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfedge.errors import NfedgeError
from nfedge.quant import dequantize, fake_quantize, fake_quantized_weights, qmax, quantize_symmetric


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), per_channel=st.booleans(), seed=st.integers(0, 2**31 - 1),
       shape=st.sampled_from([(7,), (4, 9), (3, 2, 3, 3), (1, 5)]), scale=st.floats(1e-4, 1e3))
def test_quantize_dequantize_equals_fake_quantize(bits, per_channel, seed, shape, scale):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    codes, s = quantize_symmetric(w, bits, per_channel)
    q = qmax(bits)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= q
    assert torch.equal(dequantize(codes, s), fake_quantize(w, bits, per_channel))
    # max|w| maps to the largest code exactly (per tensor or per channel)
    if per_channel:
        assert torch.all(codes.reshape(shape[0], -1).abs().amax(1) == q)
    else:
        assert int(codes.abs().max()) == q


def test_round_to_nearest_and_range():
    w = torch.tensor([-1.0, -0.5, 0.0, 0.26, 0.74, 1.0])
    codes, s = quantize_symmetric(w, 2)  # q = 1: scale 1, codes in {-1, 0, 1}
    assert s.item() == 1.0
    assert codes.tolist() == [-1, 0, 0, 0, 1, 1]  # -0.5 rounds half to even -> 0


def test_all_zero_tensor_gets_unit_scale():
    codes, s = quantize_symmetric(torch.zeros(3, 3), 8)
    assert s.item() == 1.0 and not codes.any()


@pytest.mark.parametrize("bits", [1, 9, 0, 8.0])
def test_bits_outside_range_rejected(bits):
    with pytest.raises(NfedgeError, match="bits must be an integer in 2..8"):
        quantize_symmetric(torch.ones(2), bits)


def test_straight_through_gradient():
    w = torch.tensor([0.1, -0.3, 0.9, 1.0], requires_grad=True)
    fake_quantize(w, 4).sum().backward()
    assert torch.equal(w.grad, torch.ones(4))  # inside the clamp range the gradient passes straight


def test_fake_quantized_weights_cover_conv_and_linear_only(small_model):
    fq = fake_quantized_weights(small_model, 8)
    convs = [n for n, m in small_model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(fq) == sorted(f"{n}.weight" for n in convs)
    assert not any("bn" in n or n.endswith("bias") for n in fq)
    out = torch.func.functional_call(small_model, fq, (torch.randn(2, 1, 32, 32),))
    assert out.shape == (2, 10) and np.isfinite(out.detach().numpy()).all()
