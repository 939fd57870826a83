"""The exact integer reference of an integer program (docs/INTEGER.md): what the target must compute, bit for
bit. Activations are int8 values, accumulators int32, rescaling int64 (nfedge.integer.scheme).

The multiply-accumulates of conv and linear layers run as float64 BLAS products of integer-valued arrays:
every product (|a*b| <= 128*128) and every partial sum (|acc| <= K * 2^14 for K = Cin*kH*kW terms, far
below 2^53 for any K < 5e11) is an integer that float64 represents exactly, so the result IS the integer
dot product; it is converted to int64 and checked before anything is rounded. tests/integer/ compares it
with a plain int64 implementation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nfedge.errors import NfedgeError
from nfedge.integer.program import INPUT, Op, Program
from nfedge.integer.scheme import INT8_MAX, INT8_MIN, add_rescaled, quantize_add_factors, requantize
from nfedge.sram.image import WeightImage

F64_EXACT = 2**53


def _exact_int(y: torch.Tensor) -> np.ndarray:
    a = y.numpy()
    if not np.all(np.abs(a) < F64_EXACT):  # cannot happen for int8 operands (see the module doc)
        raise NfedgeError("integer reference: an accumulator left float64's exact range")
    return a.astype(np.int64)


def _per_channel(v, ndim: int) -> np.ndarray:
    return np.asarray(v, dtype=np.int64).reshape(1, -1, *([1] * (ndim - 2)))


def image_codes(prog: Program, image: WeightImage | None) -> dict[str, np.ndarray]:
    """The int8 codes the program multiplies with: from `image` (a base model: clean or faulty, as stored) or
    the program's own constants (a generator)."""
    if not prog.weights_from_image:
        return prog.constants
    if image is None:
        raise NfedgeError("integer reference: a base-model program needs the memory image")
    entries = {t.name: t for t in image.manifest.tensors}
    return {k: image.tensor_codes(entries[k]).astype(np.int64) for k in prog.weight_scales}


def run_integer(prog: Program, x_q: np.ndarray, codes: dict[str, np.ndarray], keep: bool = False):
    """int8 input [N, C, H, W] (int64 array) -> the program's output integers (int8 values, or int32 logits);
    with `keep`, every tensor by name instead."""
    if not prog.calibrated:
        raise NfedgeError("integer reference: the program is not calibrated")
    x_q = np.asarray(x_q, dtype=np.int64)
    if x_q.min(initial=0) < INT8_MIN or x_q.max(initial=0) > INT8_MAX:
        raise NfedgeError("integer reference: inputs must be int8 values")
    t = {INPUT: x_q}
    for op in prog.ops:
        t[op.output] = integer_op(prog, op, [t[i] for i in op.inputs], codes)
    return t if keep else t[prog.output]


def integer_op(prog: Program, op: Op, a: list[np.ndarray], codes: dict[str, np.ndarray]) -> np.ndarray:
    """One operator of the integer reference on its integer inputs."""
    p = op.params
    if op.kind in ("conv", "linear"):
        w = torch.from_numpy(codes[prog.weight_key(op)].astype(np.float64))
        xin = torch.from_numpy(a[0].astype(np.float64))
        if op.kind == "linear":
            acc = _exact_int(xin @ w.T)
        elif op.attrs.get("transposed"):
            acc = _exact_int(F.conv_transpose2d(xin, w, stride=op.attrs["stride"], padding=op.attrs["padding"],
                                                output_padding=op.attrs["output_padding"]))
        else:
            acc = _exact_int(F.conv2d(xin, w, stride=op.attrs["stride"], padding=op.attrs["padding"]))
        nd = acc.ndim
        acc = acc + _per_channel(p["bias_q"], nd)
        y = requantize(acc, _per_channel(p["sign"], nd), _per_channel(p["mult"], nd), _per_channel(p["shift"], nd),
                       p["lo"], p["hi"])
        return p["lut"][y - INT8_MIN] if op.activation == "tanh" else y
    if op.kind == "maxpool":
        k = op.attrs["kernel"]
        n, c, h, w_ = a[0].shape
        return a[0][:, :, : h // k * k, : w_ // k * k].reshape(n, c, h // k, k, w_ // k, k).max(axis=(3, 5))
    if op.kind == "avgpool":
        return requantize(a[0].sum(axis=(2, 3), keepdims=True), p["sign"], p["mult"], p["shift"])
    if op.kind == "upsample":
        return a[0].repeat(op.attrs["factor"], axis=2).repeat(op.attrs["factor"], axis=3)
    if op.kind == "concat":
        return np.concatenate([requantize(v, sg, m, sh) for v, (sg, m, sh) in zip(a, p["mults"])], axis=1)
    if op.kind == "flatten":
        return a[0].reshape(a[0].shape[0], -1)
    raise AssertionError(op.kind)  # trace_program emits only the kinds above


def front_factors(gprog: Program) -> tuple[int, int, int]:
    """(Mx, Mg, shift) of F(x) = clip(x + G(x), -1, 1) in integers: x and F(x) at the input scale 1/127."""
    s_x = gprog.scales[INPUT]
    return quantize_add_factors(1.0, gprog.scales[gprog.output] / s_x)


def run_front(gprog: Program, x_q: np.ndarray) -> np.ndarray:
    """F(x) as int8 values at the input scale: saturate(x + rescale(G(x))) to [-127, 127] (= clip to [-1, 1])."""
    g_q = run_integer(gprog, x_q, gprog.constants)
    mx, mg, shift = front_factors(gprog)
    return add_rescaled(x_q, g_q, mx, mg, shift, -INT8_MAX, INT8_MAX)
