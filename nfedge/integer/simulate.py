"""The float twin of an integer program: the same operators on real values, either plain (what calibration
observes) or fake-quantized (every tensor rounded to its integer grid, round half up with a straight-through
gradient), which reproduces the integer reference to within one step of each tensor's grid and can be
trained through (the generator's EOPM loss behind an integer base model)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nfedge.integer.program import INPUT, Op, Program, crop_size, pad_amounts
from nfedge.integer.scheme import INT8_MAX, INT8_MIN
from nfedge.integer.tables import TABLES


class _RoundHalfUpSTE(torch.autograd.Function):
    """floor(x + 0.5) (the integer path's rounding) with an identity gradient."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx, g):
        return g


def fake_quantize(x: torch.Tensor, scale: float, lo: int = INT8_MIN, hi: int = INT8_MAX) -> torch.Tensor:
    return torch.clamp(_RoundHalfUpSTE.apply(x / scale), lo, hi) * scale


def real_weight(codes: np.ndarray, scales: np.ndarray, axis: int, like: torch.Tensor) -> torch.Tensor:
    shape = [1] * codes.ndim
    shape[axis] = -1
    return (torch.from_numpy(codes).to(like.device, like.dtype)
            * torch.from_numpy(scales).to(like.device, like.dtype).reshape(shape))


def _channels(v: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.asarray(v, dtype=np.float64)).to(like.device, like.dtype)


def run_float(prog: Program, x: torch.Tensor, weights: dict[str, tuple[np.ndarray, np.ndarray]] | None,
              fake_quant: bool, observe: tuple[dict, dict] | None = None, live=None) -> torch.Tensor:
    """The program on real inputs x [N, C, H, W]. `weights`: {key: (codes, per-channel scales)}. With `observe`
    = (amax, shapes), records max|tensor| (and ":pre" before a table) and every tensor's shape. With `live`
    (op -> (real weight, g, B) as torch tensors, e.g. nfedge.integer.qat.LiveWeights) the layers take trainable
    weights instead: quantization-aware training through the integer program."""
    t = {INPUT: fake_quantize(x, prog.scales[INPUT]) if fake_quant else x}
    amax, shapes = observe if observe is not None else ({}, {})
    shapes[INPUT] = tuple(x.shape)

    def seen(name, v):
        if observe is not None:
            amax[name] = max(amax.get(name, 0.0), float(v.detach().abs().max()))

    for op in prog.ops:
        y = float_op(prog, op, [t[i] for i in op.inputs], weights, fake_quant, seen, live)
        seen(op.output, y)
        shapes[op.output] = tuple(y.shape)
        t[op.output] = y
    return t[prog.output]


def float_op(prog: Program, op: Op, a: list[torch.Tensor], weights: dict[str, tuple[np.ndarray, np.ndarray]] | None,
             fake_quant: bool, seen=lambda name, v: None, live=None) -> torch.Tensor:
    """One operator on real inputs (fake-quantized to its output grid when asked)."""
    p, s = op.params, prog.scales
    if op.kind in ("conv", "linear"):
        transposed = op.attrs.get("transposed", False)
        if live is None:
            codes, scales = weights[prog.weight_key(op)]
            w = real_weight(codes, scales, 1 if transposed else 0, a[0])
            g, b = _channels(p["g"], a[0]), _channels(p["B"], a[0])
        else:
            w, g, b = live(op)
        if op.kind == "linear":
            y = a[0] @ w.T
        elif transposed:
            y = F.conv_transpose2d(a[0], w, stride=op.attrs["stride"], padding=op.attrs["padding"],
                                   output_padding=op.attrs["output_padding"])
        else:
            y = F.conv2d(a[0], w, stride=op.attrs["stride"], padding=op.attrs["padding"], groups=op.attrs.get("groups", 1))
        shape = (1, -1, *([1] * (y.dim() - 2)))
        return _activate(prog, op, y * g.reshape(shape).to(y.dtype) + b.reshape(shape).to(y.dtype), fake_quant, seen)
    if op.kind == "add":
        return _activate(prog, op, a[0] + a[1], fake_quant, seen)
    if op.kind == "maxpool":
        return F.max_pool2d(a[0], op.attrs["kernel"], op.attrs.get("stride"), op.attrs.get("padding", 0))
    if op.kind == "avgpool":
        if "kernel" in op.attrs:
            y = F.avg_pool2d(a[0], op.attrs["kernel"], op.attrs["stride"])
        else:
            y = a[0].mean(dim=(2, 3), keepdim=True)
        return fake_quantize(y, s[op.output]) if fake_quant else y
    if op.kind == "pad":
        return F.pad(a[0], pad_amounts(op, tuple(a[0].shape)))
    if op.kind == "crop":
        rows, cols = crop_size(op, [tuple(v.shape) for v in a])
        return a[0][:, :, :rows, :cols]
    if op.kind == "upsample":
        return a[0].repeat_interleave(op.attrs["factor"], 2).repeat_interleave(op.attrs["factor"], 3)
    if op.kind == "concat":
        y = torch.cat(a, dim=1)
        return fake_quantize(y, s[op.output]) if fake_quant else y
    if op.kind == "flatten":
        return a[0].flatten(1)
    raise AssertionError(op.kind)  # trace_program emits only the kinds above


def _activate(prog: Program, op: Op, y: torch.Tensor, fake_quant: bool, seen) -> torch.Tensor:
    """The fused activation of a conv, linear or add on its real output y, fake-quantized to the output grid (and
    its clamp, the integer path's lo/hi) when asked; a table's input is first put on its pre-activation grid."""
    p = op.params
    if op.activation in TABLES:
        seen(op.output + ":pre", y)
        y = TABLES[op.activation].fn(fake_quantize(y, p["pre_scale"]) if fake_quant else y)
    elif op.activation == "relu" and not fake_quant:
        y = torch.relu(y)
    elif op.activation == "clamp" and not fake_quant:
        y = torch.clamp(y, *op.attrs["clamp"])
    return fake_quantize(y, prog.scales[op.output], p["lo"], p["hi"]) if fake_quant else y
