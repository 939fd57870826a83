"""The exact integer reference of an integer program (docs/INTEGER.md): what the target must compute, bit for
bit. Activations are int8 values, accumulators int32, rescaling int64 (nfedge.integer.scheme), all held in
torch int64 tensors (vectorized and multi-threaded; the same formulas as scheme's numpy path).

The multiply-accumulates of conv and linear layers run as float products of integer-valued tensors: every
product (|a*b| <= 128*128 = 2^14) and every partial sum (|acc| <= K * 2^14 for K = Cin*kH*kW terms) is an
integer the float type represents exactly: float32 while K * 2^14 < 2^24 (K <= 1024: every layer of nfedge's
small models), float64 beyond (exact up to K < 5e11). The results are the integer dot products; they are checked
to be integers and converted to int64 before anything is rounded. tests/integer/ compares them with a plain int64
einsum, at the largest K and the most extreme operands.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nfedge.errors import NfedgeError
from nfedge.integer.program import INPUT, Op, Program, crop_size, pad_amounts
from nfedge.integer.scheme import INT8_MAX, INT8_MIN, add_rescaled, quantize_add_factors, requantize
from nfedge.sram.image import WeightImage

F32_EXACT_TERMS = 1024  # K * 2^14 < 2^24: float32 sums of int8 x int8 products stay exact integers


def _exact_int(y: torch.Tensor) -> torch.Tensor:
    if not bool(torch.equal(y, torch.round(y))):  # cannot happen within the bounds above (see the module doc)
        raise NfedgeError("integer reference: an accumulator left the float type's exact range")
    return y.to(torch.int64)


def _per_channel(v, ndim: int) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v, dtype=np.int64)).reshape(1, -1, *([1] * (ndim - 2)))


def image_codes(prog: Program, image: WeightImage | None) -> dict[str, np.ndarray]:
    """The int8 codes the program multiplies with: from `image` (a base model: clean or faulty, as stored) or
    the program's own constants (a generator)."""
    if not prog.weights_from_image:
        return prog.constants
    if image is None:
        raise NfedgeError("integer reference: a base-model program needs the memory image")
    entries = {t.name: t for t in image.manifest.tensors}
    return {k: image.tensor_codes(entries[k]).astype(np.int64) for k in prog.weight_scales}


def run_integer(prog: Program, x_q, codes: dict[str, np.ndarray], keep: bool = False):
    """int8 input [N, C, H, W] (integer array) -> the program's output integers (int8 values, or int32 logits) as an
    int64 numpy array; with `keep`, every tensor by name instead."""
    if not prog.calibrated:
        raise NfedgeError("integer reference: the program is not calibrated")
    x = torch.as_tensor(np.asarray(x_q, dtype=np.int64))
    if x.numel() and (int(x.min()) < INT8_MIN or int(x.max()) > INT8_MAX):
        raise NfedgeError("integer reference: inputs must be int8 values")
    w = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in codes.items()}
    t = {INPUT: x}
    for op in prog.ops:
        t[op.output] = integer_op(prog, op, [t[i] for i in op.inputs], w)
    return {k: v.numpy() for k, v in t.items()} if keep else t[prog.output].numpy()


def _mac(op: Op, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The int32 accumulators of conv / conv_transpose / linear, exact (see the module doc)."""
    terms = int(np.prod(w.shape[1:])) if not op.attrs.get("transposed") else int(w.shape[0] * np.prod(w.shape[2:]))
    ftype = torch.float32 if terms <= F32_EXACT_TERMS else torch.float64
    xf, wf = x.to(ftype), w.to(ftype)
    if op.kind == "linear":
        return _exact_int(xf @ wf.T)
    if op.attrs.get("transposed"):
        return _exact_int(F.conv_transpose2d(xf, wf, stride=op.attrs["stride"], padding=op.attrs["padding"],
                                             output_padding=op.attrs["output_padding"]))
    return _exact_int(F.conv2d(xf, wf, stride=op.attrs["stride"], padding=op.attrs["padding"],
                               groups=op.attrs.get("groups", 1)))


def _table(op: Op, y: torch.Tensor) -> torch.Tensor:
    """lut[y + 128] where the op ends in a table activation (its int8 pre-activation y), else y."""
    return torch.as_tensor(np.asarray(op.params["lut"], dtype=np.int64))[y - INT8_MIN] if "lut" in op.params else y


def _window_sum(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """The int sums over each pooling window (float64 holds them exactly: |sum| <= 128 k^2)."""
    return F.avg_pool2d(x.to(torch.float64), kernel, stride, divisor_override=1).to(torch.int64)


def integer_op(prog: Program, op: Op, a: list, codes: dict) -> torch.Tensor:
    """One operator of the integer reference on its integer inputs (torch int64 tensors)."""
    p = op.params
    a = [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v, dtype=np.int64)) for v in a]
    if op.kind in ("conv", "linear"):
        w = codes[prog.weight_key(op)]
        w = w if isinstance(w, torch.Tensor) else torch.as_tensor(np.asarray(w, dtype=np.int64))
        acc = _mac(op, a[0], w)
        nd = acc.dim()
        acc = acc + _per_channel(p["bias_q"], nd)
        y = requantize(acc, _per_channel(p["sign"], nd), _per_channel(p["mult"], nd), _per_channel(p["shift"], nd),
                       p["lo"], p["hi"])
        return _table(op, y)
    if op.kind == "add":
        return _table(op, add_rescaled(a[0], a[1], p["ma"], p["mb"], p["shift"], p["lo"], p["hi"]))
    if op.kind == "maxpool":  # padding never wins: torch pads max pooling with -inf (float64 holds int8 exactly)
        k = op.attrs["kernel"]
        y = F.max_pool2d(a[0].to(torch.float64), k, op.attrs.get("stride", k), op.attrs.get("padding", 0))
        return y.to(torch.int64)
    if op.kind == "avgpool":
        s = (_window_sum(a[0], op.attrs["kernel"], op.attrs["stride"]) if "kernel" in op.attrs
             else a[0].sum(dim=(2, 3), keepdim=True))
        return requantize(s, p["sign"], p["mult"], p["shift"])
    if op.kind == "pad":
        return F.pad(a[0], pad_amounts(op, tuple(a[0].shape)))
    if op.kind == "crop":
        rows, cols = crop_size(op, [tuple(v.shape) for v in a])
        return a[0][:, :, :rows, :cols]
    if op.kind == "upsample":
        f = op.attrs["factor"]
        return a[0].repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)
    if op.kind == "concat":
        return torch.cat([requantize(v, sg, m, sh) for v, (sg, m, sh) in zip(a, p["mults"])], dim=1)
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
