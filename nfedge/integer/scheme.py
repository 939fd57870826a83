"""The integer arithmetic of nfedge's integer mode (docs/INTEGER.md): fixed-point rescaling as TOSA's RESCALE
(scale32, single rounding), saturation, and the quantization of real scales into multiplier + shift.

Conventions (every array here is int64 on the host; the target uses the same formulas in int32/int64):
- activations: int8, symmetric (zero point 0), one real scale per tensor: real = q * s;
- weights: the memory image's b-bit codes, stored as int8, one scale per tensor or per output channel;
- accumulators and biases: int32 (a bias is quantized at the accumulator's scale s_in * s_w);
- a real factor f (e.g. s_in * s_w / s_out) is applied as sign * M * 2^-shift with M in [2^30, 2^31) and
  shift in [2, 62]: y = (v * M + 2^(shift-1)) >> shift, the shift arithmetic (floor), i.e. rounding half
  up (towards +infinity). TOSA requires M >= 0; a negative factor (a BatchNorm with gamma < 0 folded into
  a conv) negates the accumulator first, which is exact because |acc| < 2^31.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nfedge.errors import NfedgeError

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ACT_QMAX = 127  # symmetric activations: scale = max|x| / 127, so +-max|x| maps to +-127
MIN_SHIFT, MAX_SHIFT = 2, 62


def quantize_multiplier(factor: float) -> tuple[int, int, int]:
    """(sign, M, shift) with factor ~= sign * M * 2^-shift, M in [2^30, 2^31) (0 for a zero factor).

    The relative error is at most 2^-31. Factors too large or too small for a shift in [2, 62] are an error
    (they mean a degenerate scale, e.g. an activation that is always zero)."""
    if not math.isfinite(factor):
        raise NfedgeError(f"rescale factor {factor!r} is not finite")
    if factor == 0.0:
        return 1, 0, MIN_SHIFT
    sign = -1 if factor < 0 else 1
    mant, exp = math.frexp(abs(factor))  # abs(factor) = mant * 2^exp, mant in [0.5, 1)
    m = round(mant * 2**31)
    if m == 2**31:  # mantissa rounded up to 1.0
        m //= 2
        exp += 1
    shift = 31 - exp
    if not MIN_SHIFT <= shift <= MAX_SHIFT:
        raise NfedgeError(f"rescale factor {factor:.3g} needs shift {shift}, outside {MIN_SHIFT}..{MAX_SHIFT}")
    return sign, int(m), int(shift)


def _int64(v, like):
    """v as int64 in the array library of `like`: numpy for the readable reference, torch for the fast one."""
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(v, dtype=torch.int64, device=like.device)
    return np.asarray(v, dtype=np.int64)


def apply_scale(values, multiplier, shift):
    """(v * M + 2^(shift-1)) >> shift in int64 (TOSA apply_scale_32, single rounding). `multiplier` and `shift`
    are scalars or arrays broadcast against `values` (per channel: shape [C, 1, 1] for NCHW). numpy arrays or
    torch int64 tensors (the same formula: torch's >> on signed integers is arithmetic, as numpy's)."""
    v = values if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.int64)
    m, s = _int64(multiplier, v), _int64(shift, v)
    if int(m.min()) < 0 or int(m.max()) >= 2**31:
        raise NfedgeError("rescale multipliers must be in [0, 2^31)")
    if int(s.min()) < MIN_SHIFT or int(s.max()) > MAX_SHIFT:
        raise NfedgeError(f"rescale shifts must be in {MIN_SHIFT}..{MAX_SHIFT}")
    if v.numel() if isinstance(v, torch.Tensor) else v.size:
        if int(v.min()) < INT32_MIN or int(v.max()) > INT32_MAX:
            raise NfedgeError("rescale input outside int32 (an accumulator overflowed)")
    return (v * m + (_int64(1, v) << (s - 1))) >> s


HIGH_WORD_MIN_SHIFT = 33  # apply_scale_high_word is exact for shifts from here up


def apply_scale_high_word(values, signed_multiplier, shift):
    """apply_scale in 32-bit steps, for shift >= 33 (the kernels' fast epilogue, docs/INTEGER.md): with
    P = v * (sign*M) (a 32 x 32 -> 64-bit product) and hi = P >> 32 (SMMUL's high word),
    (P + 2^(shift-1)) >> shift == (hi + 2^(shift-33)) >> (shift-32). Exact: 2^(shift-1) only adds to the high
    word, and the low word's fraction (< 1) cannot carry a floor across a multiple of 2^(shift-32). Every
    intermediate fits int32 (|hi| < 2^30). numpy int64 arrays in, int64 out."""
    v = np.asarray(values, dtype=np.int64)
    m, s = np.asarray(signed_multiplier, dtype=np.int64), np.asarray(shift, dtype=np.int64)
    if int(s.min()) < HIGH_WORD_MIN_SHIFT:
        raise NfedgeError(f"the high-word rescale needs shifts >= {HIGH_WORD_MIN_SHIFT}")
    hi = (v * m) >> 32
    return (hi + (np.int64(1) << (s - 33))) >> (s - 32)


def saturate(values, lo: int = INT8_MIN, hi: int = INT8_MAX):
    return values.clamp(lo, hi) if isinstance(values, torch.Tensor) else np.clip(values, lo, hi)


def requantize(acc, sign, multiplier, shift, lo: int = INT8_MIN, hi: int = INT8_MAX):
    """int32 accumulators -> saturated integers in [lo, hi]: saturate(apply_scale(sign * acc, M, shift))."""
    a = acc if isinstance(acc, torch.Tensor) else np.asarray(acc, dtype=np.int64)
    return saturate(apply_scale(_int64(sign, a) * a, multiplier, shift), lo, hi)


def quantize_to_int8(x: np.ndarray, scale: float) -> np.ndarray:
    """Real values -> int8 at `scale`, round half up, saturated: how the input image is quantized (on the host,
    once) and how a float reference places values on the integer grid."""
    return saturate(np.floor(np.asarray(x, dtype=np.float64) / scale + 0.5)).astype(np.int64)


def quantize_bias(bias: np.ndarray, acc_scale: np.ndarray) -> np.ndarray:
    """A real bias at the accumulator's scale (per channel), round half up, as int32 (error when it overflows)."""
    q = np.floor(np.asarray(bias, dtype=np.float64) / np.asarray(acc_scale, dtype=np.float64) + 0.5)
    if np.any(np.abs(q) > INT32_MAX):
        raise NfedgeError("a bias does not fit int32 at its accumulator scale (input or weight scale too small)")
    return q.astype(np.int64)


def quantize_add_factors(fa: float, fb: float) -> tuple[int, int, int]:
    """(Ma, Mb, shift) for y = (a * Ma + b * Mb + 2^(shift-1)) >> shift ~= a * fa + b * fb, both factors positive:
    one shared shift, set by the larger factor (its M in [2^30, 2^31)), so the sum is rounded once."""
    if fa <= 0 or fb <= 0:
        raise NfedgeError("add: rescale factors must be positive")
    _, _, shift = quantize_multiplier(max(fa, fb))
    ma, mb = round(fa * 2.0**shift), round(fb * 2.0**shift)
    return int(ma), int(mb), int(shift)


def add_rescaled(a: np.ndarray, b: np.ndarray, ma: int, mb: int, shift: int, lo: int = INT8_MIN,
                 hi: int = INT8_MAX) -> np.ndarray:
    """saturate((a * Ma + b * Mb + 2^(shift-1)) >> shift): the integer add of two differently scaled int8 tensors."""
    if isinstance(a, torch.Tensor):  # the fast reference (torch int64 tensors): the same formula
        return saturate((a * ma + b * mb + (1 << (shift - 1))) >> shift, lo, hi)
    a64, b64 = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return saturate((a64 * ma + b64 * mb + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift), lo, hi)
