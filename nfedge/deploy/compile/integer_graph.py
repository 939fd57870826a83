"""The integer Relax graphs of an integer program (docs/INTEGER.md), built directly (TVM's ONNX importer
takes no QLinearConv, and its QDQ import folds weights back to float).

    mods = integer_relax_graphs(base_prog, (1, 32, 32), image, generator_prog)
    "base":      (x: int8 [N, C, H, W], image: int8 [image bytes]) -> int32 logits [N, K]
    "generator": (x: int8 [N, C, H, W]) -> F(x) = clip(x + G(x), -1, 1) as int8 at the input scale
The base model slices its int8 codes out of the ONE flat image input on every inference, so one compiled
artifact runs against every faulty image; the generator's codes are constants (flash). Every operator is
the reference's formula: conv2d (grouped too) / conv2d_transpose / matmul with int8 operands and out_dtype int32,
the int32 bias and the TOSA rescale in int64 ((acc * sign*M + 2^(shift-1)) >> shift), the add's shared-shift sum of
two rescaled terms (nfedge's add kernel, exact in int32, where its shift allows), saturation by maximum/minimum,
int8 max pooling (padded with -128, which never wins), int32 window sums, int8 zero pads, crops, repeats and concats,
a 256-entry table for a table activation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from nfedge.deploy.compile.int8_depthwise import DEPTHWISE_KERNEL, depthwise_int8
from nfedge.deploy.compile.int8_elementwise import ADD_KERNEL, add_int8, add_kernel_applies, global_sum_int32
from nfedge.deploy.compile.int8_kernels import (
    IM2COL_KERNEL,
    KERNEL_ATTR,
    NHWC_KERNEL,
    Requant,
    constant_weights,
    conv2d_int8,
    conv2d_int8_nhwc,
    emit_kernel,
    nhwc_weights,
    padded_reduction,
)
from nfedge.errors import NfedgeError
from nfedge.integer.program import INPUT, Op, Program, crop_size, pad_amounts
from nfedge.integer.reference import front_factors
from nfedge.integer.scheme import INT8_MAX, INT8_MIN, INT32_MIN
from nfedge.sram.image import WeightImage

__all__ = ["integer_relax_graphs", "runs_nhwc"]


def _const(v, dtype: str):
    from tvm import relax

    return relax.const(np.asarray(v, dtype=dtype), dtype)


def _rescale(bb, x, sign, mult, shift, lo: int, hi: int, out_dtype: str, channel_axis_ndim: int | None):
    """saturate((x * sign*M + 2^(shift-1)) >> shift) in int64, then cast; per channel when ndim is given."""
    def shaped(v):
        a = np.asarray(v, dtype=np.int64)
        if channel_axis_ndim is not None and a.ndim:
            a = a.reshape(1, -1, *([1] * (channel_axis_ndim - 2)))
        return a

    sm = shaped(np.asarray(sign, dtype=np.int64) * np.asarray(mult, dtype=np.int64))
    return _rescale_sum(bb, [(x, sm)], shaped(shift), lo, hi, out_dtype)


def _int64(bb, x):
    from tvm import relax

    return x if str(x.ty.dtype) == "int64" else bb.emit(relax.op.astype(x, "int64"))


def _rescale_sum(bb, terms: list, sh, lo: int, hi: int, out_dtype: str):
    """saturate((sum_i x_i * m_i + 2^(shift-1)) >> shift) in int64, then cast (terms: (tensor, int64 multiplier))."""
    from tvm import relax

    y = None
    for x, m in terms:
        t = bb.emit(relax.op.multiply(_int64(bb, x), _const(m, "int64")))
        y = t if y is None else bb.emit(relax.op.add(y, t))
    y = bb.emit(relax.op.add(y, _const(np.left_shift(np.int64(1), np.asarray(sh, dtype=np.int64) - 1), "int64")))
    y = bb.emit(relax.op.right_shift(y, _const(np.asarray(sh, dtype=np.int64), "int64")))
    y = bb.emit(relax.op.maximum(y, _const(lo, "int64")))
    y = bb.emit(relax.op.minimum(y, _const(hi, "int64")))
    return bb.emit(relax.op.astype(y, out_dtype))


def _weight(bb, prog: Program, op: Op, image_var, entries: dict[str, Any]):
    from tvm import relax

    key = prog.weight_key(op)
    if not prog.weights_from_image:
        return _const(prog.constants[key], "int8")
    t = entries[key]
    w = bb.emit(relax.op.strided_slice(image_var, axes=[0], begin=[t.offset], end=[t.offset + t.numel]))
    return bb.emit(relax.op.reshape(w, t.shape))


class _ConvWeights(NamedTuple):
    """A conv kernel's weight operand and the geometry that follows from it."""

    w: Any  # the Relax weight operand: the image input, or a constant
    out_channels: int
    kernel: int | tuple[int, int]  # kH (= kW), or (kH, kW)
    offset: int  # the codes' byte offset in the image (0 for a constant)
    kp: int  # the reduction length the kernel computes (padded_reduction; kH * KWp in NHWC)


def _conv_weights(prog: Program, op: Op, image_var, entries, isa: str | None, total_bytes: int,
                  nhwc: bool) -> _ConvWeights:
    """The weight operand of a conv kernel: the image itself where the program reads its weights from it (the
    kernel reads the codes in place, over-reading into the `total_bytes` image's next bytes where padded), a
    constant in the kernel's layout otherwise."""
    key = prog.weight_key(op)
    if nhwc:
        codes = np.asarray(prog.constants[key])
        wk = nhwc_weights(codes, isa)
        return _ConvWeights(_const(wk, "int8"), int(codes.shape[0]), int(codes.shape[2]), 0,
                            int(wk.shape[1] * wk.shape[2]))
    if prog.weights_from_image:
        t = entries[key]
        shape = tuple(int(v) for v in t.shape)
        kp = padded_reduction(int(np.prod(shape[1:])), isa, total_bytes - (int(t.offset) + t.numel))
        return _ConvWeights(image_var, shape[0], _kernel_size(shape), int(t.offset), kp)
    codes = np.asarray(prog.constants[key])
    kp = padded_reduction(int(np.prod(codes.shape[1:])), isa, None)
    return _ConvWeights(_const(constant_weights(codes, kp), "int8"), int(codes.shape[0]), _kernel_size(codes.shape), 0,
                        kp)


def _kernel_size(shape) -> int | tuple[int, int]:
    """kH where the kernel is square, else (kH, kW) (the im2col kernel's `kernel`)."""
    kh, kw = int(shape[2]), int(shape[3])
    return kh if kh == kw else (kh, kw)


def _layer_requant(op: Op, kp: int, out_channels: int) -> Requant:
    """A conv op's calibrated epilogue (bias, sign*M, shift, clamp, tanh table) for a kernel of kp terms; the
    output is int32 where the clamp is the int32 range (the classifier's logits)."""
    p = op.params
    signed_mult = np.asarray(p["sign"], dtype=np.int64) * np.asarray(p["mult"], dtype=np.int64)
    return Requant.per_channel(p["bias_q"], signed_mult, p["shift"], out_channels=out_channels, kp=kp, lo=p["lo"],
                               hi=p["hi"], out_dtype="int32" if p["lo"] == INT32_MIN else "int8",
                               lut=p.get("lut"))


def _emit_conv_kernel(bb, prog: Program, op: Op, x, image_var, entries, isa: str | None, total_bytes: int,
                      nhwc: bool = False):
    """A conv layer as one of nfedge's own kernels (nfedge.deploy.compile.int8_kernels): im2col + int8 dot
    products + requantization, or with `nhwc` (constant weights only) the direct NHWC form."""
    cw = _conv_weights(prog, op, image_var, entries, isa, total_bytes, nhwc)
    rq = _layer_requant(op, cw.kp, cw.out_channels)
    geometry = {"out_channels": cw.out_channels, "kernel": cw.kernel, "stride": int(op.attrs["stride"]),
                "padding": int(op.attrs["padding"])}
    name = op.output.replace(".", "_")
    if nhwc:
        return emit_kernel(bb, conv2d_int8_nhwc, x, cw.w, rq, name=f"{_NHWC_PREFIX}{name}", **geometry)
    return emit_kernel(bb, conv2d_int8, x, cw.w, rq, name=f"{_IM2COL_PREFIX}{name}", w_offset=cw.offset, kp=cw.kp,
                       pairs16=isa == "dsp", rows=_rows(isa, cw.kernel, geometry["padding"]), **geometry)


def _rows(isa: str | None, kernel, padding: int) -> bool:
    """conv2d_int8's padded-rows form: on the M55 always; on the M4 where the byte-wise gather bounds-checks (a
    window wider than 1x1, or padding: an unpadded 1x1 gathers no zero, and its per-tile form was slower)."""
    return isa == "mve" or (isa == "dsp" and (kernel not in (1, (1, 1)) or padding > 0))


_IM2COL_PREFIX, _NHWC_PREFIX, _DW_PREFIX, _ADD_PREFIX = "nf_conv_", "nf_convh_", "nf_dw_", "nf_add_"  # kernel names
_NHWC_KINDS = ("conv", "maxpool", "upsample", "concat")  # a generator of only these runs in NHWC


def _shape(v) -> tuple[int, ...]:
    return tuple(int(d) for d in v.ty.shape)


def _on_kernel(prog: Program, op: Op, entries: dict[str, Any], square: bool = False) -> bool:
    """A conv that one of nfedge's own kernels computes: not transposed, not grouped; square, or non-square in
    the im2col kernel (the direct NHWC kernel of a generator takes square kernels only)."""
    if op.kind != "conv" or op.attrs.get("transposed") or op.attrs.get("groups", 1) != 1:
        return False
    key = prog.weight_key(op)
    shape = entries[key].shape if prog.weights_from_image else np.shape(prog.constants[key])
    return int(shape[2]) == int(shape[3]) or not square


def _on_depthwise(prog: Program, op: Op, entries: dict[str, Any]) -> bool:
    """A depthwise conv (groups = Cin = Cout: codes [C, 1, kH, kW]) that the depthwise kernel computes."""
    if op.kind != "conv" or op.attrs.get("transposed") or op.attrs.get("groups", 1) == 1:
        return False
    key = prog.weight_key(op)
    shape = entries[key].shape if prog.weights_from_image else np.shape(prog.constants[key])
    return int(shape[1]) == 1 and int(op.attrs["groups"]) == int(shape[0])


def _emit_depthwise(bb, prog: Program, op: Op, x, image_var, entries):
    """A depthwise conv as nfedge's depthwise kernel (nfedge.deploy.compile.int8_depthwise): the image's codes
    read in place, or a generator's codes as a flat constant."""
    key = prog.weight_key(op)
    if prog.weights_from_image:
        t = entries[key]
        w, offset, shape = image_var, int(t.offset), tuple(int(v) for v in t.shape)
    else:
        codes = np.asarray(prog.constants[key])
        w, offset, shape = _const(codes.reshape(-1), "int8"), 0, codes.shape
    rq = _layer_requant(op, int(shape[2] * shape[3]), int(shape[0]))
    return emit_kernel(bb, depthwise_int8, x, w, rq, name=f"{_DW_PREFIX}{op.output.replace('.', '_')}",
                       w_offset=offset, kernel_h=int(shape[2]), kernel_w=int(shape[3]),
                       stride=int(op.attrs["stride"]), padding=int(op.attrs["padding"]))


def runs_nhwc(prog: Program) -> bool:
    """A generator (constant weights) made only of kernel convs, non-overlapping unpadded max pooling, upsampling
    and concats runs its layers in NHWC with the direct kernel (the reference stays NCHW: the same integers)."""
    return (not prog.weights_from_image and all(op.kind in _NHWC_KINDS for op in prog.ops)
            and all(_on_kernel(prog, op, {}, square=True) for op in prog.ops if op.kind == "conv")
            and all(op.attrs.get("stride", op.attrs["kernel"]) == op.attrs["kernel"] and not op.attrs.get("padding")
                    for op in prog.ops if op.kind == "maxpool"))


def _emit_nhwc(bb, prog: Program, x, isa: str | None):
    """A `runs_nhwc` program on NCHW int8 x, its layers in NHWC; the output back in NCHW."""
    from tvm import relax

    t = {INPUT: bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))}
    for op in prog.ops:
        a = [t[i] for i in op.inputs]
        if op.kind == "conv":
            y = _emit_conv_kernel(bb, prog, op, a[0], None, {}, isa, 0, nhwc=True)
        elif op.kind == "maxpool":
            k = op.attrs["kernel"]
            y = bb.emit(relax.op.nn.max_pool2d(a[0], pool_size=k, strides=k, layout="NHWC"))
        elif op.kind == "upsample":
            f = op.attrs["factor"]
            y = bb.emit(relax.op.repeat(relax.op.repeat(a[0], f, axis=1), f, axis=2))
        else:  # concat
            parts = [_rescale(bb, v, sg, m, sh, INT8_MIN, INT8_MAX, "int8", None)
                     for v, (sg, m, sh) in zip(a, op.params["mults"])]
            y = bb.emit(relax.op.concat(parts, axis=3))
        t[op.output] = y
    return bb.emit(relax.op.permute_dims(t[prog.output], [0, 3, 1, 2]))


def _emit_relax_layer(bb, prog: Program, op: Op, x, image_var, entries):
    """A linear, grouped (not depthwise) or transposed conv layer (no kernel of nfedge's own) as Relax
    operators: the int8 x int8 -> int32 operator, the bias and rescale in int64 (_rescale), then the table where the
    layer has one."""
    from tvm import relax

    p = op.params
    w = _weight(bb, prog, op, image_var, entries)
    if op.kind == "linear":
        acc = bb.emit(relax.op.matmul(x, relax.op.permute_dims(w, [1, 0]), out_dtype="int32"))
    elif op.attrs.get("transposed"):
        acc = bb.emit(relax.op.nn.conv2d_transpose(x, w, strides=op.attrs["stride"], padding=op.attrs["padding"],
                                                   output_padding=op.attrs["output_padding"],
                                                   kernel_layout="IOHW", out_dtype="int32"))
    else:  # a grouped conv: every other conv is a kernel (_emit_conv_kernel, _emit_depthwise)
        acc = bb.emit(relax.op.nn.conv2d(x, w, strides=op.attrs["stride"], padding=op.attrs["padding"],
                                         groups=op.attrs.get("groups", 1), out_dtype="int32"))
    ndim = 2 if op.kind == "linear" else 4
    bias = np.asarray(p["bias_q"], dtype=np.int64).reshape(1, -1, *([1] * (ndim - 2)))
    acc = bb.emit(relax.op.add(relax.op.astype(acc, "int64"), _const(bias, "int64")))
    final = p["lo"] == INT32_MIN  # the classifier: int32 logits
    y = _rescale(bb, acc, p["sign"], p["mult"], p["shift"], p["lo"], p["hi"], "int32" if final else "int8", ndim)
    return _table(bb, op, y)


def _table(bb, op: Op, y):
    """lut[y + 128] where the op ends in a table activation, else y."""
    from tvm import relax

    if "lut" not in op.params:
        return y
    idx = bb.emit(relax.op.add(relax.op.astype(y, "int32"), _const(-INT8_MIN, "int32")))
    return bb.emit(relax.op.take(_const(op.params["lut"], "int8"), idx, axis=0))


def _window_sum(bb, x, kernel: int, stride: int):
    """int32 sums over each kernel x kernel window at `stride` (no padding): one strided slice per tap, added."""
    from tvm import relax

    _, _, h, w = (int(v) for v in x.ty.shape)
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    x32 = bb.emit(relax.op.astype(x, "int32"))
    total = None
    for i in range(kernel):
        for j in range(kernel):
            tap = bb.emit(relax.op.strided_slice(x32, axes=[2, 3], begin=[i, j],
                                                 end=[i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1],
                                                 strides=[stride, stride]))
            total = tap if total is None else bb.emit(relax.op.add(total, tap))
    return total


def _emit_program(bb, prog: Program, x, image_var, entries, isa: str | None = None, total_bytes: int = 0):
    """An integer program's operators into `bb` on int8 x; its output tensor. image_var/entries: the image input
    and its tensors by name, where the program reads its weights from the image (total_bytes: its size)."""
    from tvm import relax

    if runs_nhwc(prog):
        return _emit_nhwc(bb, prog, x, isa)
    t = {INPUT: x}
    for op in prog.ops:
        a = [t[i] for i in op.inputs]
        p = op.params
        if _on_kernel(prog, op, entries):
            y = _emit_conv_kernel(bb, prog, op, a[0], image_var, entries, isa, total_bytes)
        elif _on_depthwise(prog, op, entries):
            y = _emit_depthwise(bb, prog, op, a[0], image_var, entries)
        elif op.kind in ("conv", "linear"):
            y = _emit_relax_layer(bb, prog, op, a[0], image_var, entries)
        elif op.kind == "add":
            if add_kernel_applies(p["ma"], p["mb"], p["shift"]) and _shape(a[0]) == _shape(a[1]):
                y = bb.emit_te(add_int8, a[0], a[1], ma=int(p["ma"]), mb=int(p["mb"]), shift=int(p["shift"]),
                               lo=int(p["lo"]), hi=int(p["hi"]),
                               primfunc_name_hint=f"{_ADD_PREFIX}{op.output.replace('.', '_')}")
            else:
                y = _rescale_sum(bb, [(a[0], p["ma"]), (a[1], p["mb"])], p["shift"], p["lo"], p["hi"], "int8")
            y = _table(bb, op, y)
        elif op.kind == "maxpool":
            k = op.attrs["kernel"]
            y = bb.emit(relax.op.nn.max_pool2d(a[0], pool_size=k, strides=op.attrs.get("stride", k),
                                               padding=op.attrs.get("padding", 0)))
        elif op.kind == "avgpool":
            if "kernel" in op.attrs:
                s = _window_sum(bb, a[0], op.attrs["kernel"], op.attrs["stride"])
            else:
                s = bb.emit_te(global_sum_int32, a[0], primfunc_name_hint="nf_gsum")
            y = _rescale(bb, s, p["sign"], p["mult"], p["shift"], INT8_MIN, INT8_MAX, "int8", None)
        elif op.kind == "pad":
            left, right, top, bottom = pad_amounts(op, tuple(int(v) for v in a[0].ty.shape))
            y = bb.emit(relax.op.nn.pad(a[0], [0, 0, 0, 0, top, bottom, left, right], pad_value=0.0))
        elif op.kind == "crop":
            rows, cols = crop_size(op, [tuple(int(v) for v in x.ty.shape) for x in a])
            y = bb.emit(relax.op.strided_slice(a[0], axes=[2, 3], begin=[0, 0], end=[rows, cols]))
        elif op.kind == "upsample":
            f = op.attrs["factor"]
            y = bb.emit(relax.op.repeat(relax.op.repeat(a[0], f, axis=2), f, axis=3))
        elif op.kind == "concat":
            parts = [_rescale(bb, v, sg, m, sh, INT8_MIN, INT8_MAX, "int8", None)
                     for v, (sg, m, sh) in zip(a, p["mults"])]
            y = bb.emit(relax.op.concat(parts, axis=1))
        elif op.kind == "flatten":
            y = bb.emit(relax.op.reshape(a[0], [a[0].ty.shape[0], -1]))
        else:
            raise NfedgeError(f"integer build: operator {op.kind} has no Relax form")
        t[op.output] = y
    return t[prog.output]


def integer_relax_graphs(base: Program, input_shape: tuple[int, int, int], image: WeightImage,
                         generator: Program | None = None, batch: int = 1,
                         isa: str | None = None) -> dict[str, Any]:
    """The Relax modules an integer bundle compiles (see the module doc); `isa` ("mve", "dsp" or None:
    nfedge.deploy.compile.int8_kernels.isa_of_target) sets how far each conv's reduction is zero-padded for its
    kernel."""
    from tvm import relax

    if not base.calibrated or (generator is not None and not generator.calibrated):
        raise NfedgeError("integer build: calibrate the programs first")
    entries = {t.name: t for t in image.manifest.tensors}
    missing = sorted(set(base.weight_scales) - set(entries))
    if missing:
        raise NfedgeError(f"integer build: the image lacks weight(s) {', '.join(missing)}")
    shape = (batch, *input_shape)
    mods = {}
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    img = relax.Var("image", relax.TensorType((image.manifest.total_bytes,), "int8"))
    with bb.function("main", [x, img]):
        with bb.dataflow():
            out = bb.emit_output(_emit_program(bb, base, x, img, entries, isa, image.manifest.total_bytes))
        bb.emit_func_output(out)
    mods["base"] = _mark_kernels(bb.get())
    if generator is not None:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "int8"))
        with bb.function("main", [x]):
            with bb.dataflow():
                g = _emit_program(bb, generator, x, None, {}, isa)
                mx, mg, shift = front_factors(generator)
                acc = bb.emit(relax.op.add(relax.op.multiply(relax.op.astype(x, "int64"), _const(mx, "int64")),
                                           relax.op.multiply(relax.op.astype(g, "int64"), _const(mg, "int64"))))
                out = bb.emit_output(_rescale(bb, acc, 1, 1, shift, -INT8_MAX, INT8_MAX, "int8", None))
            bb.emit_func_output(out)
        mods["generator"] = _mark_kernels(bb.get())
    return mods


def _mark_kernels(mod):
    """Mark nfedge's conv kernels for nfedge.deploy.compile.int8_schedule.schedule_int8_kernels, and as opaque
    so that FuseOps keeps each one whole (op_pattern 8 = kOpaque: nothing is fused into or onto it)."""
    import tvm

    for gv, f in list(mod.functions.items()):
        if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith((_IM2COL_PREFIX, _NHWC_PREFIX, _DW_PREFIX,
                                                                          _ADD_PREFIX)):
            form = (NHWC_KERNEL if gv.name_hint.startswith(_NHWC_PREFIX) else
                    DEPTHWISE_KERNEL if gv.name_hint.startswith(_DW_PREFIX) else
                    ADD_KERNEL if gv.name_hint.startswith(_ADD_PREFIX) else IM2COL_KERNEL)
            mod[gv] = f.with_attr(KERNEL_ATTR, form).with_attr("op_pattern", 8)
    return mod
