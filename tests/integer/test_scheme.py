"""The integer arithmetic against hand-worked values: rounding half up, saturation, multiplier + shift."""

import numpy as np
import pytest

from nfedge.errors import NfedgeError
from nfedge.integer.scheme import (add_rescaled, apply_scale, quantize_add_factors, quantize_bias, quantize_multiplier,
                                   quantize_to_int8, requantize)

HALF = 2**30  # M for a factor of 0.5 at shift 31


@pytest.mark.parametrize("v, m, shift, want", [
    (5, HALF, 31, 3),     # 2.5 -> 3 (half up)
    (-5, HALF, 31, -2),   # -2.5 -> -2 (half up is towards +infinity, not away from zero)
    (7, HALF, 32, 2),     # 1.75 -> 2
    (-7, HALF, 32, -2),   # -1.75 -> -2
    (6, HALF, 32, 2),     # 1.5 -> 2
    (-6, HALF, 32, -1),   # -1.5 -> -1
    (0, HALF, 31, 0),
    (2**31 - 1, 2**31 - 1, 62, 1),  # the largest operands stay exact in int64: (2^31-1)^2 / 2^62 = 0.99999... -> 1
])
def test_apply_scale_rounds_half_up(v, m, shift, want):
    assert int(apply_scale(np.array([v]), m, shift)[0]) == want


def test_requantize_saturates_and_clamps_relu():
    acc = np.array([1000, -1000, -3, 3])
    assert requantize(acc, 1, 2**30, 30).tolist() == [127, -128, -3, 3]  # factor 1
    assert requantize(acc, 1, 2**30, 30, lo=0).tolist() == [127, 0, 0, 3]  # fused ReLU
    assert requantize(acc, -1, 2**30, 30).tolist() == [-128, 127, 3, -3]  # a negative factor negates the accumulator


@pytest.mark.parametrize("factor, want", [(0.5, (1, 2**30, 31)), (1.0, (1, 2**30, 30)), (-0.25, (-1, 2**30, 32)),
                                          (0.75, (1, 3 * 2**29, 31)), (0.0, (1, 0, 2))])
def test_quantize_multiplier(factor, want):
    assert quantize_multiplier(factor) == want


def test_quantize_multiplier_is_accurate_to_2_pow_minus_31():
    for f in np.random.default_rng(0).uniform(1e-6, 10, 1000):
        sign, m, shift = quantize_multiplier(float(f))
        assert 2**30 <= m < 2**31 and sign == 1
        assert abs(m * 2.0**-shift - f) <= f * 2.0**-31


@pytest.mark.parametrize("factor", [2.0**40, 2.0**-40, float("inf"), float("nan")])
def test_degenerate_factors_are_errors(factor):
    with pytest.raises(NfedgeError):
        quantize_multiplier(factor)


def test_apply_scale_refuses_an_int32_overflow():
    with pytest.raises(NfedgeError, match="int32"):
        apply_scale(np.array([2**31]), HALF, 31)


def test_add_rescaled():
    ma, mb, shift = quantize_add_factors(1.0, 0.5)
    assert (ma, mb, shift) == (2**30, 2**29, 30)
    assert add_rescaled(np.array([10, 100, -100]), np.array([3, 100, -100]), ma, mb, shift).tolist() == [12, 127, -128]
    assert add_rescaled(np.array([120]), np.array([20]), ma, mb, shift, -127, 127).tolist() == [127]  # clip to [-1, 1]


def test_input_and_bias_quantization():
    assert quantize_to_int8(np.array([1.0, -1.0, 0.5 / 127, -0.5 / 127, 2.0]), 1 / 127).tolist() == [127, -127, 1, 0, 127]
    assert quantize_bias(np.array([0.25, -0.25]), np.array([0.5, 0.5])).tolist() == [1, 0]  # 0.5 -> 1, -0.5 -> 0
    with pytest.raises(NfedgeError, match="int32"):
        quantize_bias(np.array([1.0]), np.array([1e-12]))
