"""An integer program as an ONNX model of integer operators, run by onnxruntime: the cross-check of the integer
reference (docs/INTEGER.md; issue #11 item 5).

    export_integer_onnx(prog, "int.onnx", (1, 32, 32), image=image, generator_program=gprog)
    rows = compare_with_reference("int.onnx", prog, x_q, {"clean": image, "chip 1": faulty}, gprog)

Inputs: `x`, int8 [N, C, H, W], the quantized image (scheme.quantize_to_int8); for a base program also `image`,
int8 [total_bytes], the flat memory image, clean or faulty. The weights are sliced out of it in-graph at the
manifest's offsets (Slice + Reshape), as the TVM graph does, so one model runs against every image. A generator's
codes are int8 initializers. Outputs: `output` (int32 logits, or int8 for a program without a classifier) and,
with a generator, `front` (F(x), int8).

Operator mapping (rescale="exact", the default: every step is integer arithmetic, so the model equals the
reference bit for bit):
- conv: ConvInteger, int8 x int8 -> int32 (its group attribute for depthwise and grouped convs). Its padding is the
  int8 0, which is the real 0 of symmetric activations; so is a pad op's (Pad, constant 0).
- conv_transpose: ONNX has no integer ConvTranspose. The model runs the equivalent direct convolution instead.
  The int8 input is zero-inserted: stride - 1 zeros after every sample (Unsqueeze, Pad, Reshape). It is then padded
  by kernel - 1 - padding, plus output_padding at the end (a negative pad crops). ConvInteger at stride 1 follows,
  with the kernel's in/out channels swapped and its taps flipped (Transpose, Slice with step -1). The products and
  sums are the same as the reference's.
- linear: MatMulInteger, int8 x int8 -> int32, against the transposed codes.
- rescale (scheme.requantize):
  - Cast to int64, + bias, * (sign * M), + 2^(shift-1);
  - the arithmetic right shift is a floor division by 2^shift. ONNX's BitShift is unsigned only, and its integer
    Div truncates towards zero. So floor(v / d) = (v - Mod(v, d)) / d, where Mod with fmod=0 takes the divisor's
    sign (Python's %). The numerator is then an exact multiple of d, so the truncating Div is exact;
  - int64 suffices: |acc| < 2^31 and M < 2^31 give |v| < 2^62 + 2^61;
  - then Clip to [lo, hi] (ReLU: lo = 0; logits: the int32 range) and Cast to int8 or int32.
- a table activation (tanh, sigmoid, ...): Gather on the 256-entry int8 table at index q + 128.
- add: both int8 inputs Cast to int64, the shared-shift sum of the rescale above (two terms), clamp, table.
- max pool: MaxPool on int8 (its padding never wins, as the reference's). Global average pool: ReduceSum in int64,
  then the rescale; a windowed one: the window sums by ConvInteger with a kernel of ones per channel (group = C),
  then the rescale. Crop: Slice. Nearest upsample: Resize (nearest, asymmetric, floor), which repeats values.
  Concat: each input rescaled, then Concat. Flatten: Flatten.
- front F(x) (reference.run_front): the shared-shift add (x * Mx + G(x) * Mg + 2^(shift-1)) >> shift, computed as
  above and saturated to [-127, 127].
Two caveats:
- the reference raises when an accumulator plus bias leaves int32, and this model does not check; int64 holds such
  a value anyway;
- exactness also needs onnxruntime's int8 x int8 kernels to be exact. A kernel that sums pairs of products in
  int16 (AVX2 VPMADDUBSW, u8 x s8) would saturate, since two products of 128 * 128 already exceed int16.
  tests/integer/test_onnx.py runs every code at -128 or 127 against inputs at -127 or 127, to catch that on
  whatever CPU runs the tests.

rescale="float" is the QLinearConv / QDQ way, which is not exact. The int32 accumulator is Cast to float32 and
multiplied by the float32 factor sign * M * 2^-shift. The result goes through QuantizeLinear at scale 1, which rounds
half to EVEN in float32, where the reference rounds half UP in exact integers; logits use Round, also half to even.
It differs from the reference by one step where a value falls within float32's error of a .5 boundary. The
differences propagate through later layers, so only measured bounds exist (compare_with_reference).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_bytes
from nfedge.integer.program import INPUT, Op, Program, crop_size, pad_amounts
from nfedge.integer.reference import front_factors, image_codes, run_front, run_integer
from nfedge.integer.scheme import INT8_MAX, INT8_MIN, INT32_MIN
from nfedge.sram.image import WeightImage

OPSET, IR_VERSION = 17, 8  # opset 17 belongs to IR version 8; the project's onnxruntime (>= 1.18) runs both
X, IMAGE, OUTPUT, FRONT = "x", "image", "output", "front"
RESCALES = ("exact", "float")
KINDS = ("conv", "linear", "add", "maxpool", "avgpool", "pad", "crop", "upsample", "concat", "flatten")  # all Op kinds
INT64_MIN = -(2**63)
FLOAT32_BELOW_2_31 = 2147483520.0  # the largest float32 below 2^31: float logits are clipped to it before the Cast


class _Graph:
    """Nodes and initializers of the model being built, with fresh tensor names."""

    def __init__(self, rescale: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rescale = rescale

    def const(self, value, dtype) -> str:
        name = f"const_{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, value) -> str:
        return self.const(value, np.int64)

    def op(self, kind: str, inputs: list[str], hint: str = "", **attrs) -> str:
        out = f"{hint or kind.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=f"node_{len(self.nodes)}", **attrs))
        return out

    def floor_div(self, v: str, d: str) -> str:
        """floor(v / d) for int64 v and d > 0: Div truncates, so subtract Python's v % d (Mod, fmod=0) first."""
        return self.op("Div", [self.op("Sub", [v, self.op("Mod", [v, d], fmod=0)]), d])

    def rescale_sum(self, terms: list[tuple[str, np.ndarray]], shift, lo: int, hi: int, lut=None,
                    hint: str = "") -> str:
        """saturate((sum_i v_i * m_i + 2^(shift-1)) >> shift, lo, hi), where v_i are int64 tensors and m_i = sign * M
        are int64 scalars or arrays shaped to broadcast, per channel. With `lut`, the result is the table's int8
        entry at q + 128; otherwise int8, or int32 when lo is below the int8 range (logits)."""
        shift = np.asarray(shift, dtype=np.int64)
        logits = lo < INT8_MIN
        if self.rescale == "exact":
            acc = ""
            for v, m in terms:
                t = self.op("Mul", [v, self.i64(m)])
                acc = self.op("Add", [acc, t]) if acc else t
            acc = self.op("Add", [acc, self.i64(np.left_shift(1, shift - 1))])
            q = self.floor_div(acc, self.i64(np.left_shift(1, shift)))
            q = self.op("Clip", [q, self.i64(lo), self.i64(hi)])
            if lut is not None:
                return self.op("Gather", [self.const(lut, np.int8), self.op("Sub", [q, self.i64(INT8_MIN)])], hint)
            return self.op("Cast", [q], hint, to=TensorProto.INT32 if logits else TensorProto.INT8)
        y = ""  # float: what QLinearConv / QDQ does, float32 products and round half to even
        for v, m in terms:
            f = self.const(np.asarray(m, dtype=np.float64) * np.exp2(-shift.astype(np.float64)), np.float32)
            t = self.op("Mul", [self.op("Cast", [v], to=TensorProto.FLOAT), f])
            y = self.op("Add", [y, t]) if y else t
        if logits:
            y = self.op("Clip", [self.op("Round", [y]), self.const(float(INT32_MIN), np.float32),
                                 self.const(FLOAT32_BELOW_2_31, np.float32)])
            return self.op("Cast", [y], hint, to=TensorProto.INT32)
        q = self.op("QuantizeLinear", [y, self.const(1.0, np.float32), self.const(0, np.int8)])
        if (lo, hi) != (INT8_MIN, INT8_MAX):
            q = self.op("Clip", [q, self.const(lo, np.int8), self.const(hi, np.int8)])
        if lut is not None:
            idx = self.op("Add", [self.op("Cast", [q], to=TensorProto.INT64), self.i64(-INT8_MIN)])
            return self.op("Gather", [self.const(lut, np.int8), idx], hint)
        return self.op("Identity", [q], hint)


def _per_channel(v, ndim: int) -> np.ndarray:
    return np.asarray(v, dtype=np.int64).reshape(1, -1, *([1] * (ndim - 2)))


def _weights(g: _Graph, prog: Program, op: Op, entries: dict) -> tuple[str, tuple[int, ...]]:
    """The op's int8 codes as stored (conv [Cout, Cin, kH, kW], transposed [Cin, Cout, kH, kW], linear [O, K]):
    sliced out of the image input (base) or an initializer (generator)."""
    key = prog.weight_key(op)
    if not prog.weights_from_image:
        codes = prog.constants[key]
        return g.const(codes, np.int8), tuple(codes.shape)
    t = entries[key]
    flat = g.op("Slice", [IMAGE, g.i64([t.offset]), g.i64([t.offset + t.numel])])
    return g.op("Reshape", [flat, g.i64(t.shape)], key.replace(".", "_")), tuple(t.shape)


def _conv(g: _Graph, op: Op, x: str, w: str, wshape: tuple[int, ...], in_shape: tuple[int, ...]) -> str:
    """The int32 accumulators of a conv or transposed conv (see the module doc for the transposed form)."""
    s, p = op.attrs["stride"], op.attrs["padding"]
    if not op.attrs.get("transposed"):
        return g.op("ConvInteger", [x, w], pads=[p] * 4, strides=[s, s], group=op.attrs.get("groups", 1))
    _, _, h, wd = in_shape
    kh, kw = wshape[2], wshape[3]
    if s > 1:  # [N, C, H, 1, W, 1] -> pad s-1 zeros after each sample -> [N, C, H*s, W*s]
        x = g.op("Unsqueeze", [x, g.i64([3, 5])])
        x = g.op("Pad", [x, g.i64([0] * 9 + [s - 1, 0, s - 1])])
        x = g.op("Reshape", [x, g.i64([0, 0, h * s, wd * s])])
    # the zero-inserted input has (H-1)*s+1 rows plus s-1 trailing zeros already; pad to k-1-p before and
    # k-1-p+output_padding after (negative: crop)
    extra = op.attrs["output_padding"] - (s - 1)
    x = g.op("Pad", [x, g.i64([0, 0, kh - 1 - p, kw - 1 - p, 0, 0, kh - 1 - p + extra, kw - 1 - p + extra])])
    w = g.op("Transpose", [w], perm=[1, 0, 2, 3])  # [Cout, Cin, kH, kW]
    w = g.op("Slice", [w, g.i64([-1, -1]), g.i64([INT64_MIN, INT64_MIN]), g.i64([2, 3]), g.i64([-1, -1])])
    return g.op("ConvInteger", [x, w])


def _emit_program(g: _Graph, prog: Program, x: str, shapes: dict, entries: dict, prefix: str) -> str:
    """Every op of `prog` on the int8 tensor `x`; returns the name of the program's output tensor."""
    t = {INPUT: x}
    for op in prog.ops:
        a = [t[i] for i in op.inputs]
        p, hint = op.params, prefix + op.output
        if op.kind in ("conv", "linear"):
            w, wshape = _weights(g, prog, op, entries)
            if op.kind == "linear":
                acc = g.op("MatMulInteger", [a[0], g.op("Transpose", [w], perm=[1, 0])])
            else:
                acc = _conv(g, op, a[0], w, wshape, shapes[op.inputs[0]])
            nd = len(shapes[op.output])
            acc = g.op("Add", [g.op("Cast", [acc], to=TensorProto.INT64), g.i64(_per_channel(p["bias_q"], nd))])
            m = _per_channel(p["sign"], nd) * _per_channel(p["mult"], nd)
            y = g.rescale_sum([(acc, m)], _per_channel(p["shift"], nd), p["lo"], p["hi"], p.get("lut"), hint)
        elif op.kind == "add":
            terms = [(g.op("Cast", [v], to=TensorProto.INT64), np.int64(m)) for v, m in zip(a, (p["ma"], p["mb"]))]
            y = g.rescale_sum(terms, p["shift"], p["lo"], p["hi"], p.get("lut"), hint)
        elif op.kind == "maxpool":
            k, pad = op.attrs["kernel"], op.attrs.get("padding", 0)
            y = g.op("MaxPool", [a[0]], hint, kernel_shape=[k, k], strides=[op.attrs.get("stride", k)] * 2, pads=[pad] * 4)
        elif op.kind == "avgpool":
            if "kernel" in op.attrs:  # window sums: a depthwise ConvInteger with a kernel of ones
                k, c = op.attrs["kernel"], shapes[op.inputs[0]][1]
                s = g.op("ConvInteger", [a[0], g.const(np.ones((c, 1, k, k)), np.int8)], strides=[op.attrs["stride"]] * 2,
                         group=c)
                s = g.op("Cast", [s], to=TensorProto.INT64)
            else:
                s = g.op("ReduceSum", [g.op("Cast", [a[0]], to=TensorProto.INT64), g.i64([2, 3])], keepdims=1)
            y = g.rescale_sum([(s, p["sign"] * p["mult"])], p["shift"], INT8_MIN, INT8_MAX, hint=hint)
        elif op.kind == "pad":
            left, right, top, bottom = pad_amounts(op, shapes[op.inputs[0]])
            y = g.op("Pad", [a[0], g.i64([0, 0, top, left, 0, 0, bottom, right])], hint)
        elif op.kind == "crop":
            rows, cols = crop_size(op, [shapes[i] for i in op.inputs])
            y = g.op("Slice", [a[0], g.i64([0, 0]), g.i64([rows, cols]), g.i64([2, 3])], hint)
        elif op.kind == "upsample":
            f = float(op.attrs["factor"])
            y = g.op("Resize", [a[0], "", g.const([1.0, 1.0, f, f], np.float32)], hint, mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        elif op.kind == "concat":
            parts = [g.rescale_sum([(g.op("Cast", [v], to=TensorProto.INT64), sg * m)], sh, INT8_MIN, INT8_MAX)
                     for v, (sg, m, sh) in zip(a, p["mults"])]
            y = g.op("Concat", parts, hint, axis=1)
        else:  # flatten (_check_program admits only KINDS)
            y = g.op("Flatten", [a[0]], hint, axis=1)
        t[op.output] = y
    return t[prog.output]


def _check_program(prog: Program, what: str) -> None:
    if not isinstance(prog, Program) or not prog.calibrated:
        raise NfedgeError(f"ONNX export: the {what} program is not calibrated (run nfedge.integer.calibrate first)")
    unknown = sorted({op.kind for op in prog.ops} - set(KINDS))
    if unknown:
        raise NfedgeError(f"ONNX export: operator kind {unknown[0]!r} is not supported")


def _tensor_shapes(prog: Program, x_shape: tuple[int, ...], codes: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the reference run on one zero image (exactly the shapes the reference computes)."""
    trace = run_integer(prog, np.zeros((1, *x_shape), np.int64), codes, keep=True)
    return {k: tuple(v.shape) for k, v in trace.items()}


def export_integer_onnx(program: Program, path: str | Path, input_shape, image: WeightImage | None = None,
                        generator_program: Program | None = None, rescale: str = "exact") -> onnx.ModelProto:
    """Write the integer program (behind the generator's front F(x), when given) as an onnx.checker-valid ONNX
    model at `path`, atomically, and return it. `input_shape` is (C, H, W), with a dynamic batch, or
    (N, C, H, W). A base program needs `image`, any clean or faulty one: only the layout of its manifest is
    used, since the codes are the model's `image` input."""
    _check_program(program, "base" if program.weights_from_image else "generator")
    if rescale not in RESCALES:
        raise NfedgeError(f"ONNX export: rescale must be one of {', '.join(RESCALES)}, got {rescale!r}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise NfedgeError(f"ONNX export: input_shape must be (C, H, W) or (N, C, H, W), got {tuple(input_shape)!r}")
    batch, shape = (shape[0], shape[1:]) if len(shape) == 4 else ("N", shape)
    if program.weights_from_image and image is None:
        raise NfedgeError("ONNX export: a base-model program needs its memory image (for the weights' layout)")
    entries = {t.name: t for t in image.manifest.tensors} if program.weights_from_image else {}
    missing = sorted(set(program.weight_scales) - set(entries)) if program.weights_from_image else []
    if missing:
        raise NfedgeError(f"ONNX export: weight {missing[0]} is not in the memory image")
    g = _Graph(rescale)
    inputs = [helper.make_tensor_value_info(X, TensorProto.INT8, [batch, *shape])]
    outputs, x = [], X
    if generator_program is not None:
        _check_program(generator_program, "generator")
        if generator_program.weights_from_image or not program.weights_from_image:
            raise NfedgeError("ONNX export: generator_program must be a generator's program, program a base model's")
        gs = _tensor_shapes(generator_program, shape, generator_program.constants)
        if gs[generator_program.output][1:] != shape:
            raise NfedgeError(f"ONNX export: the generator outputs {gs[generator_program.output][1:]}, not {shape}")
        gout = _emit_program(g, generator_program, X, gs, {}, "gen_")
        mx, mg, shift = front_factors(generator_program)
        terms = [(g.op("Cast", [X], to=TensorProto.INT64), np.int64(mx)),
                 (g.op("Cast", [gout], to=TensorProto.INT64), np.int64(mg))]
        x = g.rescale_sum(terms, shift, -INT8_MAX, INT8_MAX)  # F(x) saturates to [-127, 127]: the clip to [-1, 1]
        g.nodes.append(helper.make_node("Identity", [x], [FRONT], name="front"))
        outputs.append(helper.make_tensor_value_info(FRONT, TensorProto.INT8, [batch, *shape]))
    if program.weights_from_image:
        inputs.append(helper.make_tensor_value_info(IMAGE, TensorProto.INT8, [image.manifest.total_bytes]))
    shapes = _tensor_shapes(program, shape, image_codes(program, image))
    out = _emit_program(g, program, x, shapes, entries, "")
    g.nodes.append(helper.make_node("Identity", [out], [OUTPUT], name="output"))
    last = next((op for op in program.ops if op.output == program.output), None)
    logits = last is not None and last.params.get("lo", INT8_MIN) < INT8_MIN
    outputs.insert(0, helper.make_tensor_value_info(OUTPUT, TensorProto.INT32 if logits else TensorProto.INT8,
                                                    [batch, *shapes[program.output][1:]]))
    graph = helper.make_graph(g.nodes, "nfedge_integer", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nfedge",
                              doc_string="nfedge integer mode (docs/INTEGER.md), rescale=" + rescale)
    model.ir_version = IR_VERSION
    meta = {"nfedge.format": "nfedge-integer-onnx", "nfedge.rescale": rescale,
            "nfedge.front": str(generator_program is not None)}
    if image is not None:
        meta["nfedge.image_bits"] = str(image.manifest.bits)
        meta["nfedge.image_bytes"] = str(image.manifest.total_bytes)
    helper.set_model_props(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:  # a bug here, not bad input: say where
        raise NfedgeError(f"ONNX export: the model is not valid ONNX ({str(e).splitlines()[0]})") from None
    atomic_write_bytes(path, model.SerializeToString())
    return model


def _check_inputs(x_q: np.ndarray) -> np.ndarray:
    x_q = np.asarray(x_q, dtype=np.int64)
    if x_q.ndim != 4 or x_q.min(initial=0) < INT8_MIN or x_q.max(initial=0) > INT8_MAX:
        raise NfedgeError("ONNX check: inputs must be int8 values shaped [N, C, H, W]")
    return x_q


def _batches(x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [x[i: i + batch_size] for i in range(0, len(x), batch_size)]


def run_onnx(model_path: str | Path, x_q: np.ndarray, image: WeightImage | None = None, batch_size: int = 250,
             threads: int = 1) -> dict[str, np.ndarray]:
    """The exported model under onnxruntime's CPU provider on int8 inputs `x_q` [N, C, H, W] (and the image's
    codes, for a base model): {"output": int64 array, "front": int64 array when the model has a front}."""
    x_q = _check_inputs(x_q)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    try:
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise NfedgeError(f"ONNX check: onnxruntime cannot load {model_path} ({type(e).__name__})") from None
    feeds = {}
    need = {i.name: i for i in sess.get_inputs()}
    if IMAGE in need:
        n_bytes = need[IMAGE].shape[0]
        if image is None or image.codes.size != n_bytes:
            raise NfedgeError(f"ONNX check: the model needs a memory image of {n_bytes} bytes")
        feeds[IMAGE] = np.asarray(image.codes, dtype=np.int8)
    names = [o.name for o in sess.get_outputs()]
    parts = [sess.run(None, {**feeds, X: b.astype(np.int8)}) for b in _batches(x_q, batch_size)]
    return {n: np.concatenate([p[i] for p in parts]).astype(np.int64) for i, n in enumerate(names)}


def reference_front(generator_program: Program, x_q: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """F(x) by the integer reference (reference.run_front), in batches."""
    return np.concatenate([run_front(generator_program, b) for b in _batches(_check_inputs(x_q), batch_size)])


def reference_output(program: Program, x_in: np.ndarray, image: WeightImage | None,
                     batch_size: int = 250) -> np.ndarray:
    """The program's output integers by the integer reference on int8 inputs `x_in` (x, or F(x) from
    reference_front), with the image's codes (a base model) or the program's constants (image None)."""
    codes = image_codes(program, image)
    return np.concatenate([run_integer(program, b, codes) for b in _batches(_check_inputs(x_in), batch_size)])


def agreement(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """predictions: the fraction of identical argmax over each sample's flattened output (for logits: the
    predicted class); outputs: the fraction of identical integers; max_diff: the largest |got - ref|, in output
    units (int8 steps, or logit units of the logits' scale)."""
    g, r = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    return {"predictions": float(np.mean(g.argmax(1) == r.argmax(1))), "outputs": float(np.mean(g == r)),
            "max_diff": int(np.abs(g - r).max(initial=0))}


def compare_with_reference(model_path: str | Path, program: Program, x_q: np.ndarray,
                           images: dict[str, WeightImage | None], generator_program: Program | None = None,
                           batch_size: int = 250, threads: int = 1) -> dict[str, dict[str, float]]:
    """onnxruntime against the integer reference on int8 inputs `x_q`, once per named image (a generator-only
    program takes {name: None}). Per image: images, agreement()'s predictions / outputs / max_diff,
    front_outputs (with a generator: the fraction of identical F(x) integers), onnx_s and reference_s (seconds,
    the latter including F(x)'s reference run, which all rows share)."""
    _check_program(program, "base" if program.weights_from_image else "generator")
    x_q = _check_inputs(x_q)
    t0 = time.perf_counter()
    x_in = reference_front(generator_program, x_q, batch_size) if generator_program is not None else x_q
    front_s = time.perf_counter() - t0
    rows = {}
    for name, image in images.items():
        t0 = time.perf_counter()
        got = run_onnx(model_path, x_q, image, batch_size, threads)
        t1 = time.perf_counter()
        ref = reference_output(program, x_in, image, batch_size)
        rows[name] = {"images": len(x_q), **agreement(got[OUTPUT], ref), "onnx_s": t1 - t0,
                      "reference_s": time.perf_counter() - t1 + front_s}
        if generator_program is not None:
            rows[name]["front_outputs"] = float(np.mean(got[FRONT] == x_in))
    return rows
