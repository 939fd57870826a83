"""An integer program as a TOSA 1.0 (PRO-INT) flatbuffer: the input of Arm's Ethos-U compiler (Vela) and of the TOSA
reference model, the third oracle of the integer reference (nfedge.integer.tosa_reference; docs/NPU.md).

    info = export_integer_tosa(TosaExportConfig(batch=1), prog, "m.tosa", (1, 32, 32), image=faulty,
                               generator_program=g)

The base model's weights are the given image's codes (clean or faulty), as CONST tensors: one file per image, as an
NPU's weight stream is. A generator's are its int8 constants. With a generator, the graph computes F(x) and the base
model on it, and (front_output) also returns F(x). TOSA is NHWC: the graph's input is the int8 image [N, H, W, C]
and every activation stays NHWC; the codes are transposed from nfedge's OIHW here, and a flatten goes back to
nfedge's (C, H, W) order first (TRANSPOSE), so the logits are the reference's.

Every op kind of nfedge.integer.program is one entry of EMITTERS (a new kind is one function); a kind without an
entry is a one-line NfedgeError naming the layer. The mapping (docs/NPU.md has the table):
- conv: CONV2D (groups 1), DEPTHWISE_CONV2D (groups = in channels), else per-group SLICE, CONV2D, CONCAT;
  conv_transpose: TRANSPOSE_CONV2D (out_pad = -padding, -padding + output_padding); linear: a 1x1 CONV2D on
  [N, 1, 1, K] (TOSA 1.0 has no FULLY_CONNECTED). The bias is the operator's int32 bias input.
- the requantization: a BatchNorm with gamma < 0 is an int32 MUL by -1 for that channel (TOSA's multiplier is >= 0),
  then RESCALE (scale32, SINGLE_ROUND, per channel: (v * M + 2^(shift-1)) >> shift, saturated), then CLAMP on int8
  (ReLU, a clamp activation), then TABLE (a table activation: 256 int8 entries at q + 128).
- add: the shared-shift sum rounded once (scheme.add_rescaled). A factor of exactly 2^shift (the front's x) is a
  CAST; the other input's RESCALE to int32 is then exact as one rounding. Otherwise both multipliers are split
  M = Mh * 2^16 + Ml and y = RS(a*Mah + b*Mbh + RS(a*Mal + b*Mbl - 2^15, 16), shift - 16), where RS(v, k) =
  floor((v + 2^(k-1)) / 2^k) (ARITHMETIC_RIGHT_SHIFT with round, then RESCALE by 2^30 / 2^(30+k)): every term fits
  int32 and the result equals floor((a*Ma + b*Mb + 2^(shift-1)) / 2^shift).
- maxpool: MAX_POOL2D; global average pool: CAST to int32, REDUCE_SUM over H and W, RESCALE; a windowed one: the window
  sums by DEPTHWISE_CONV2D with a kernel of ones, RESCALE. pad: PAD (0); crop: SLICE; upsample: RESIZE nearest
  (scale 2f/2, offset 1-f, border f-1: the floor of oy / f, the form Vela accepts); concat: RESCALE each input,
  CONCAT on C.
TOSA needs the output size of a strided window to divide exactly; the rows a floor division leaves out are never
read, so the export trims them (a smaller bottom/right pad, or a SLICE).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import tosa_serializer as ts

from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_bytes
from nfedge.integer.program import INPUT, Op, Program, crop_size, pad_amounts
from nfedge.integer.reference import front_factors, image_codes, run_integer
from nfedge.integer.scheme import INT8_MAX, INT8_MIN, INT32_MIN
from nfedge.sram.image import WeightImage

D, O = ts.DType, ts.Op
TOSA_VERSION = (1, 0, 0)  # what Vela 5.2 reads (PRO-INT, level 8K)
_NP = {D.INT8: np.int8, D.INT32: np.int32}
ONE = (1 << 30, 30)  # the identity rescale: (v * 2^30 + 2^29) >> 30 = v


class T(NamedTuple):
    name: str
    shape: tuple[int, ...]  # NHWC for 4-D activations
    dtype: Any


@dataclasses.dataclass(frozen=True)
class TosaExportConfig(StageConfig):
    batch: int = 1  # N of the graph (Vela: 1; the reference model runs a whole test batch at once)
    front_output: bool = True  # with a generator: F(x) is also a graph output

    def validate(self) -> None:
        require(isinstance(self.batch, int) and self.batch >= 1, f"batch must be an integer >= 1, got {self.batch!r}")


@dataclasses.dataclass(frozen=True)
class TosaModel:
    """What export_integer_tosa wrote: the graph's input and outputs (name, NHWC or [N, K] shape, dtype name)."""

    path: str
    input: tuple[str, tuple[int, ...]]
    outputs: dict[str, tuple[str, tuple[int, ...], str]]  # "output" (logits or int8), "front" (F(x), with a generator)
    operators: dict[str, int]  # TOSA operator -> count


class _Graph:
    """The TOSA graph being built (one region, one block) and the count of each operator."""

    def __init__(self) -> None:
        self.ser = ts.TosaSerializer("", ts.ConstMode.EMBED, *TOSA_VERSION, False)
        self.count: Counter = Counter()
        self._zp: dict = {}
        self.tensors: dict = {}  # name -> the serializer's tensor (graph outputs are marked by the object)

    def const(self, values, dtype) -> str:
        arr = np.ascontiguousarray(np.asarray(values).astype(_NP[dtype]))
        return self.ser.addConst(list(arr.shape), dtype, arr).name

    def shape(self, values) -> str:
        return self.ser.addConst([len(values)], D.SHAPE, np.asarray(values, dtype=np.int64)).name

    def zp(self, dtype) -> str:  # symmetric: every zero point is 0
        if dtype not in self._zp:
            self._zp[dtype] = self.const([0], dtype)
        return self._zp[dtype]

    def op(self, kind: str, inputs: list[str], shape, dtype, attr: Callable | None = None) -> T:
        out = self.ser.addIntermediate(list(shape), dtype)
        self.tensors[out.name] = out
        a = ts.TosaSerializerAttribute()
        if attr is not None:
            attr(a)
        self.ser.addOperator(getattr(O, kind), inputs, [out.name], a)
        self.count[kind] += 1
        return T(out.name, tuple(shape), dtype)

    def rescale(self, x: T, mult, shift, dtype=D.INT8) -> T:
        """saturate((x * M + 2^(shift-1)) >> shift) to dtype, M and shift per channel (last axis) or one."""
        m, s = np.atleast_1d(np.asarray(mult, np.int64)), np.atleast_1d(np.asarray(shift, np.int64))
        if m.min() < 0 or m.max() >= 2**31 or s.min() < 2 or s.max() > 62:
            raise NfedgeError(f"TOSA export: a rescale multiplier or shift is out of range (M {m.max()}, "
                              f"shift {s.min()})")
        per_channel = m.size > 1
        ins = [x.name, self.const(m, D.INT32), self.const(s, D.INT8), self.zp(x.dtype), self.zp(dtype)]
        return self.op("RESCALE", ins, x.shape, dtype,
                       lambda a: a.RescaleAttribute(True, ts.RoundingMode.SINGLE_ROUND, per_channel, False, False))

    def cast32(self, x: T) -> T:
        return self.op("CAST", [x.name], x.shape, D.INT32, lambda a: a.CastAttribute())

    def binary(self, kind: str, a: T, b: T) -> T:
        ins = [a.name, b.name] + ([self.const([0], D.INT8)] if kind == "MUL" else [])  # MUL's shift: 0
        return self.op(kind, ins, a.shape, D.INT32, lambda at: getattr(at, kind.title() + "Attribute")())

    def scalar(self, v: int, like: T) -> T:
        return T(self.const(np.full([1] * len(like.shape), v), D.INT32), (1,) * len(like.shape), D.INT32)

    def reshape(self, x: T, shape) -> T:
        return self.op("RESHAPE", [x.name, self.shape(shape)], shape, x.dtype, lambda a: a.ReshapeAttribute())

    def transpose(self, x: T, perm) -> T:
        return self.op("TRANSPOSE", [x.name], [x.shape[i] for i in perm], x.dtype, lambda a: a.TransposeAttribute(perm))

    def slice(self, x: T, start, size) -> T:
        ins = [x.name, self.shape(start), self.shape(size)]
        return self.op("SLICE", ins, size, x.dtype, lambda a: a.SliceAttribute())

    def concat(self, parts: list[T], axis: int) -> T:
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        return self.op("CONCAT", [p.name for p in parts], shape, parts[0].dtype, lambda a: a.ConcatAttribute(axis))


class _Ctx(NamedTuple):
    prog: Program
    codes: dict
    shapes: dict  # tensor -> NHWC (or 2-D) shape, batch N
    prefix: str


def _nhwc(shape) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def _layer(op: Op, ctx: _Ctx) -> str:
    return ctx.prefix + (op.module or op.output)


def _exact(g: _Graph, x: T, kernel: tuple[int, int], stride: int, pads: list[int]) -> tuple[T, list[int]]:
    """Trim the bottom/right rows and columns a floor division leaves out, so TOSA's output size divides exactly:
    first from the pads (top, bottom, left, right), then by a SLICE of the input. kernel: (kH, kW)."""
    pads, size = list(pads), list(x.shape)
    for axis, (lo, hi), k in ((1, (0, 1), kernel[0]), (2, (2, 3), kernel[1])):
        extra = (x.shape[axis] + pads[lo] + pads[hi] - k) % stride
        cut = min(extra, pads[hi])
        pads[hi] -= cut
        size[axis] -= extra - cut
    return (x if size == list(x.shape) else g.slice(x, [0, 0, 0, 0], size)), pads


def _epilogue(g: _Graph, op: Op, acc: T, mult=None, shift=None, sign=None) -> T:
    """int32 accumulators (bias added) -> sign, RESCALE, CLAMP, TABLE: scheme.requantize and the fused activation
    (an int8 `acc` and no mult: the CLAMP and TABLE only)."""
    p = op.params
    if sign is not None and np.any(np.asarray(sign) < 0):  # TOSA's multipliers are >= 0: negate those channels first
        signs = np.asarray(sign, np.int64).reshape([1] * (len(acc.shape) - 1) + [-1])
        acc = g.binary("MUL", acc, T(g.const(signs, D.INT32), signs.shape, D.INT32))
    logits = p.get("lo", INT8_MIN) < INT8_MIN
    y = acc if mult is None else g.rescale(acc, mult, shift, D.INT32 if logits else D.INT8)
    lo, hi = p.get("lo", INT8_MIN), p.get("hi", INT8_MAX)
    if not logits and (lo, hi) != (INT8_MIN, INT8_MAX):
        y = g.op("CLAMP", [y.name], y.shape, D.INT8, lambda a: a.ClampAttribute(
            list(np.array([lo], np.int8).view(np.uint8)), list(np.array([hi], np.int8).view(np.uint8)),
            ts.NanPropagationMode.PROPAGATE))
    if "lut" in p:
        y = g.op("TABLE", [y.name, g.const(p["lut"], D.INT8)], y.shape, D.INT8, lambda a: a.TableAttribute())
    return y


def _weights(op: Op, ctx: _Ctx) -> np.ndarray:
    return np.asarray(ctx.codes[ctx.prog.weight_key(op)], dtype=np.int64)


def _conv(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    x, w, p = a[0], _weights(op, ctx), op.params
    s, pad, groups = op.attrs["stride"], op.attrs["padding"], op.attrs.get("groups", 1)
    out = ctx.shapes[op.output]
    bias, zp = g.const(p["bias_q"], D.INT32), g.zp(D.INT8)
    if op.attrs.get("transposed"):  # torch [Cin, Cout, kH, kW] -> TOSA [Cout, kH, kW, Cin]
        out_pad = [-pad, -pad + op.attrs["output_padding"]] * 2
        acc = g.op("TRANSPOSE_CONV2D", [x.name, g.const(w.transpose(1, 2, 3, 0), D.INT8), bias, zp, zp], out, D.INT32,
                   lambda at: at.TransposeConv2dAttribute(out_pad, [s, s], False, D.INT32))
        return _epilogue(g, op, acc, p["mult"], p["shift"], p["sign"])
    kh, kw = w.shape[2:]
    x, pads = _exact(g, x, (kh, kw), s, [pad] * 4)
    cin = x.shape[3]
    if groups == 1:
        acc = g.op("CONV2D", [x.name, g.const(w.transpose(0, 2, 3, 1), D.INT8), bias, zp, zp], out, D.INT32,
                   lambda at: at.Conv2dAttribute(pads, [s, s], [1, 1], False, D.INT32))
    elif groups == cin:  # depthwise: torch [C*M, 1, kH, kW] -> TOSA [kH, kW, C, M]
        dw = w[:, 0].reshape(cin, -1, kh, kw).transpose(2, 3, 0, 1)
        acc = g.op("DEPTHWISE_CONV2D", [x.name, g.const(dw, D.INT8), bias, zp, zp], out, D.INT32,
                   lambda at: at.DepthwiseConv2dAttribute(pads, [s, s], [1, 1], False, D.INT32))
    else:  # grouped: one CONV2D per group on its slice of channels, concatenated
        ci, co = cin // groups, w.shape[0] // groups
        parts = []
        for gi in range(groups):
            xs = g.slice(x, [0, 0, 0, gi * ci], [*x.shape[:3], ci])
            wb, bb = w[gi * co:(gi + 1) * co].transpose(0, 2, 3, 1), p["bias_q"][gi * co:(gi + 1) * co]
            parts.append(g.op("CONV2D", [xs.name, g.const(wb, D.INT8), g.const(bb, D.INT32), zp, zp], (*out[:3], co),
                              D.INT32, lambda at: at.Conv2dAttribute(pads, [s, s], [1, 1], False, D.INT32)))
        acc = g.concat(parts, 3)
    return _epilogue(g, op, acc, p["mult"], p["shift"], p["sign"])


def _linear(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    w, p = _weights(op, ctx), op.params  # [O, K]
    n, k = a[0].shape
    x4 = g.reshape(a[0], [n, 1, 1, k])
    acc = g.op("CONV2D", [x4.name, g.const(w.reshape(w.shape[0], 1, 1, k), D.INT8), g.const(p["bias_q"], D.INT32),
                          g.zp(D.INT8), g.zp(D.INT8)], [n, 1, 1, w.shape[0]], D.INT32,
               lambda at: at.Conv2dAttribute([0, 0, 0, 0], [1, 1], [1, 1], False, D.INT32))
    y = _epilogue(g, op, acc, p["mult"], p["shift"], p["sign"])
    return g.reshape(y, [n, w.shape[0]])


def add_exact(g: _Graph, a: T, b: T, ma: int, mb: int, shift: int) -> T:
    """saturate_int8(floor((a * Ma + b * Mb + 2^(shift-1)) / 2^shift)) for int8 a, b (module doc: the split form)."""
    if mb == 1 << shift:
        a, b, ma, mb = b, a, mb, ma
    if ma == 1 << shift:  # a * 2^shift is exact: y = a + RS(b * Mb, shift), one rounding as in the reference
        return g.rescale(g.binary("ADD", g.cast32(a), g.rescale(b, mb, shift, D.INT32)), *ONE)
    if not 17 <= shift <= 47:
        raise NfedgeError(f"TOSA export: an add's shared shift {shift} is outside 17..47 (a degenerate scale)")
    a32, b32 = g.cast32(a), g.cast32(b)

    def lin(ca: int, cb: int) -> T:
        return g.binary("ADD", g.binary("MUL", a32, g.scalar(ca, a32)), g.binary("MUL", b32, g.scalar(cb, b32)))

    hi = lin(ma >> 16, mb >> 16)  # |a * Mh| <= 2^7 * 2^15: every sum below fits int32
    lo = g.binary("ADD", lin(ma & 0xFFFF, mb & 0xFFFF), g.scalar(-(1 << 15), a32))
    q = g.op("ARITHMETIC_RIGHT_SHIFT", [lo.name, g.scalar(16, a32).name], lo.shape, D.INT32,
             lambda at: at.ArithmeticRightShiftAttribute(True))  # round: floor((L - 2^15 + 2^15) / 2^16)
    return g.rescale(g.binary("ADD", hi, q), ONE[0], ONE[1] + shift - 16)


def _add(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    p = op.params
    y = add_exact(g, a[0], a[1], int(p["ma"]), int(p["mb"]), int(p["shift"]))
    return _epilogue(g, op, y)


def _maxpool(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    k = op.attrs["kernel"]
    s, pad = op.attrs.get("stride", k), op.attrs.get("padding", 0)
    x, pads = _exact(g, a[0], (k, k), s, [pad] * 4)
    return g.op("MAX_POOL2D", [x.name], ctx.shapes[op.output], D.INT8,
                lambda at: at.MaxPool2dAttribute([k, k], [s, s], pads, ts.NanPropagationMode.PROPAGATE))


def _avgpool(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    p, x = op.params, a[0]
    if "kernel" in op.attrs:  # window sums in int32: a depthwise conv with a kernel of ones
        k, s = op.attrs["kernel"], op.attrs["stride"]
        x, pads = _exact(g, x, (k, k), s, [0] * 4)
        ones, zp = g.const(np.ones((k, k, x.shape[3], 1)), D.INT8), g.zp(D.INT8)
        acc = g.op("DEPTHWISE_CONV2D", [x.name, ones, g.const(np.zeros(x.shape[3]), D.INT32), zp, zp],
                   ctx.shapes[op.output], D.INT32,
                   lambda at: at.DepthwiseConv2dAttribute(pads, [s, s], [1, 1], False, D.INT32))
    else:
        acc = g.cast32(x)
        for axis in (1, 2):
            shape = [v if i != axis else 1 for i, v in enumerate(acc.shape)]
            acc = g.op("REDUCE_SUM", [acc.name], shape, D.INT32, lambda at, ax=axis: at.ReduceSumAttribute(ax))
    return _epilogue(g, op, acc, p["mult"], p["shift"], [p["sign"]])


def _pad(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    left, right, top, bottom = pad_amounts(op, ctx.shapes[op.inputs[0] + ":nchw"])
    return g.op("PAD", [a[0].name, g.shape([0, 0, top, bottom, left, right, 0, 0]), g.const([0], D.INT8)],
                ctx.shapes[op.output], D.INT8, lambda at: at.PadAttribute())


def _crop(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    rows, cols = crop_size(op, [ctx.shapes[i + ":nchw"] for i in op.inputs])
    return g.slice(a[0], [0, 0, 0, 0], [a[0].shape[0], rows, cols, a[0].shape[3]])


def _upsample(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    f = op.attrs["factor"]  # nearest rounds: sampling at 2*oy + 1 - f on a 2f grid picks floor(oy / f), never a tie
    ins = [a[0].name, g.shape([2 * f, 2, 2 * f, 2]), g.shape([1 - f, 1 - f]), g.shape([f - 1, f - 1])]
    return g.op("RESIZE", ins, ctx.shapes[op.output], D.INT8, lambda at: at.ResizeAttribute(ts.ResizeMode.NEAREST))


def _concat(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    parts = []
    for x, (sign, m, s) in zip(a, op.params["mults"]):
        if sign < 0:
            raise NfedgeError(f"TOSA export: concat {_layer(op, ctx)} has a negative input scale")
        parts.append(x if (m, s) == ONE else g.rescale(x, m, s))
    return g.concat(parts, 3)


def _flatten(g: _Graph, op: Op, a: list[T], ctx: _Ctx) -> T:
    x = a[0]
    if len(x.shape) == 4 and x.shape[1:3] != (1, 1):  # nfedge flattens in (C, H, W) order
        x = g.transpose(x, [0, 3, 1, 2])
    return g.reshape(x, ctx.shapes[op.output])


# One entry per program op kind: (graph, op, input tensors, context) -> output tensor.
EMITTERS: dict[str, Callable[[_Graph, Op, list[T], _Ctx], T]] = {
    "conv": _conv, "linear": _linear, "add": _add, "maxpool": _maxpool, "avgpool": _avgpool, "pad": _pad,
    "crop": _crop, "upsample": _upsample, "concat": _concat, "flatten": _flatten,
}


def _shapes(prog: Program, x_shape: tuple[int, ...], codes: dict, batch: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's NHWC shape (and NCHW under "name:nchw"), from the reference run on one zero image."""
    trace = run_integer(prog, np.zeros((1, *x_shape), np.int64), codes, keep=True)
    out = {}
    for k, v in trace.items():
        nchw = (batch, *v.shape[1:])
        out[k], out[k + ":nchw"] = _nhwc(nchw), nchw
    return out


def _emit(g: _Graph, prog: Program, x: T, x_shape, codes: dict, batch: int, prefix: str) -> T:
    for op in prog.ops:  # before anything runs: the reference that gives the shapes may not know the kind either
        if op.kind not in EMITTERS:
            raise NfedgeError(f"TOSA export: layer {prefix}{op.module or op.output} is a {op.kind!r} operator, "
                              "which has no TOSA form here")
    ctx = _Ctx(prog, codes, _shapes(prog, x_shape, codes, batch), prefix)
    t = {INPUT: x}
    for op in prog.ops:
        t[op.output] = EMITTERS[op.kind](g, op, [t[i] for i in op.inputs], ctx)
    return t[prog.output]


def export_integer_tosa(cfg: TosaExportConfig, program: Program, path: str | Path, input_shape,
                        image: WeightImage | None = None, generator_program: Program | None = None) -> TosaModel:
    """Write `program` (behind the generator's front F(x), when given) as a TOSA 1.0 flatbuffer at `path`,
    atomically. `input_shape` is (C, H, W). A base program takes its codes from `image` (clean or faulty)."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise NfedgeError(f"TOSA export: input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    for prog, what in ((program, "program"), (generator_program, "generator program")):
        if prog is not None and (not isinstance(prog, Program) or not prog.calibrated):
            raise NfedgeError(f"TOSA export: the {what} is not calibrated (run nfedge.integer.calibrate first)")
    if generator_program is not None and (generator_program.weights_from_image or not program.weights_from_image):
        raise NfedgeError("TOSA export: generator_program must be a generator's program, program a base model's")
    if program.weights_from_image and image is None:
        raise NfedgeError("TOSA export: a base-model program needs the memory image whose codes it reads")
    entries = {t.name for t in image.manifest.tensors} if image is not None else set()
    missing = sorted(set(program.weight_scales) - entries) if program.weights_from_image else []
    if missing:
        raise NfedgeError(f"TOSA export: weight {missing[0]} is not in the memory image")
    g, n = _Graph(), cfg.batch
    c, h, w = shape
    x_in = g.ser.addPlaceholder([n, h, w, c], D.INT8)
    x = T(x_in.name, (n, h, w, c), D.INT8)
    outputs = {}
    if generator_program is not None:
        gen = _emit(g, generator_program, x, shape, generator_program.constants, n, "generator.")
        x = add_exact(g, x, gen, *front_factors(generator_program))
        x = g.op("CLAMP", [x.name], x.shape, D.INT8, lambda a: a.ClampAttribute(  # clip(x + G(x), -1, 1)
            list(np.array([-INT8_MAX], np.int8).view(np.uint8)), list(np.array([INT8_MAX], np.int8).view(np.uint8)),
            ts.NanPropagationMode.PROPAGATE))
        if cfg.front_output:
            outputs["front"] = (x.name, x.shape, "int8")
    y = _emit(g, program, x, shape, image_codes(program, image), n, "")
    outputs = {"output": (y.name, y.shape, "int32" if y.dtype == D.INT32 else "int8"), **outputs}
    for name, *_ in outputs.values():
        g.ser.addOutputTensor(g.tensors[name])
    atomic_write_bytes(path, g.ser.serialize())
    return TosaModel(path=str(path), input=(x_in.name, (n, h, w, c)), outputs=outputs, operators=dict(g.count))
