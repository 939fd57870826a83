"""The integer convolution kernel: im2col + int8 dot products, tensorized for the Cortex-M ISAs (issue #11).

One TE compute for every target (`conv2d_int8`), so every target computes the same integers:

    col[n, oh, ow, k] = x[n, c, oh*s + kh - p, ow*s + kw - p]   (k = (c, kh, kw) in OIHW order; 0 off the image
                                                                  and for k >= K, the zero padding of the row)
    acc[n, o, oh, ow] = sum_k int32(col[n, oh, ow, k]) * int32(W[o, k])
    out = saturate(((acc + bias[o]) * sign*M[o] + 2^(shift[o]-1)) >> shift[o])   (int64, docs/INTEGER.md)

W[o, k] is read in place: for a base model it is byte `offset + o*K + k` of the flat memory image (the codes
as stored, OIHW, so for one output channel the whole reduction is one contiguous run of K bytes), for a
generator a constant. Where the reduction is zero-padded to Kp > K, a read of W[o, k >= K] lands on the next
row's (or the next tensor's) codes and is multiplied by a zero of col: the sum is unchanged, and the graph
builder only pads where those bytes exist (`padded_reduction`).

The schedule (`schedule_int8_kernels`) is chosen from the target's CPU:
- "mve" (Cortex-M55, Helium): the dot product of 16 int8 pairs is one VMLADAVA.S8
  (`llvm.arm.mve.vmldava`), over a tile of 2 output channels x 2 output columns;
- "dsp" (Cortex-M4/M7/M33, the DSP extension): 4 int8 pairs are two SXTB16 per operand and two SMLAD
  (`llvm.arm.sxtb16`, `llvm.arm.smlad`), over a tile of 4 output channels x 2 columns;
- None (any other target): the same compute, unrolled 2 x 2, for LLVM's own vectorizer.
The im2col rows of one output row are computed right before that row (RAM: OW x Kp bytes) where Kp is a whole
number of windows, and for the whole layer first otherwise (OH x OW x Kc bytes).
"""

from __future__ import annotations

import numpy as np

from nfedge.errors import NfedgeError
from nfedge.integer.scheme import INT32_MAX

__all__ = ["ISAS", "KERNEL_ATTR", "chunk_of", "constant_weights", "conv2d_int8", "isa_of_target", "narrow_accumulator",
           "padded_reduction", "schedule_int8_kernels"]

ISAS = ("mve", "dsp")
KERNEL_ATTR = "nfedge.kernel"  # PrimFunc attribute that marks a conv2d_int8 function for the scheduler
_MVE_CPUS = ("cortex-m55", "cortex-m85")
_DSP_CPUS = ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m35p")
_CHUNK = {"mve": 16, "dsp": 4}  # int8 pairs per tensorized dot product
import os as _os
_TILE = {"mve": tuple(map(int, _os.environ.get("NF_TILE_MVE", "2,2").split(","))), "dsp": tuple(map(int, _os.environ.get("NF_TILE_DSP", "4,2").split(","))), None: (2, 2)}  # (output channels, output columns) per tile


def isa_of_target(target) -> str | None:
    """"mve", "dsp" or None (no integer dot-product instruction nfedge uses) from a tvm.target.Target."""
    cpu = str(target.attrs.get("mcpu", "")) if target is not None else ""
    if cpu in _MVE_CPUS:
        return "mve"
    if cpu in _DSP_CPUS:
        return "dsp"
    return None


def chunk_of(isa: str | None) -> int:
    return _CHUNK.get(isa, 1)


def padded_reduction(k: int, isa: str | None, room: int | None) -> int:
    """The reduction length Kp the kernel computes for K = Cin*kH*kW terms: K rounded up to the ISA's chunk,
    where `room` (bytes readable after the weight tensor's last code: None = constant weights, any amount)
    allows the over-read of the last row; K itself otherwise (that layer then runs untensorized)."""
    c = chunk_of(isa)
    kp = -(-k // c) * c
    if kp == k or room is None or room >= kp - k:
        return kp
    return k


def conv2d_int8(x, w, bias, mult, rounding, shift, lut=None, *, w_offset: int, out_channels: int, kernel: int,
                stride: int, padding: int, kp: int, lo: int, hi: int, out_dtype: str, bias_bound: int,
                high_word: bool):
    """The TE compute of one integer conv layer (see the module doc). x: int8 [N, C, H, W]; w: the flat int8
    image (w_offset = the tensor's byte offset) or a constant int8 [O, Kp]; per output channel: bias and
    mult (sign*M) int32, rounding and shift (see high_word); lut: int8 [256] (tanh) or None;
    bias_bound: max |bias|."""
    from tvm import te, tirx

    n_, c_, h_, w_ = (int(v) for v in x.shape)
    kk = kernel * kernel
    k_terms = c_ * kk
    oh_ = (h_ + 2 * padding - kernel) // stride + 1
    ow_ = (w_ + 2 * padding - kernel) // stride + 1
    flat = len(w.shape) == 1

    # col's row holds whole (c, kh, kw) windows: kc = Cpad*kH*kW >= Kp terms, c >= C zero; the schedule turns
    # the flat k into those three loops (no division left in the copy)
    kc = -(-kp // kk) * kk

    def col_value(n, oh, ow, k):
        c, kh, kw = k // kk, (k % kk) // kernel, k % kernel
        hh = oh * stride + kh - padding
        ww = ow * stride + kw - padding
        inside = tirx.all(c < c_, hh >= 0, hh < h_, ww >= 0, ww < w_)
        return tirx.if_then_else(inside, x[n, tirx.min(c, c_ - 1), hh, ww], tirx.const(0, "int8"))

    col = te.compute((n_, oh_, ow_, kc), col_value, name="nf_col", attrs={"nf_kernel": kernel})
    r = te.reduce_axis((0, kp), name="k")

    def weight(o, k):
        return w[w_offset + o * k_terms + k] if flat else w[o, k]

    # the bias is added in int32 where acc + bias cannot overflow (|acc| <= Kp * 2^14 with any codes): the
    # epilogue then multiplies two int32 (one SMULL), adds the rounding constant, shifts and clamps, the
    # reference's int64 formula; the bias is added in int64 otherwise
    narrow = narrow_accumulator(kp, bias_bound)
    if high_word and not narrow:
        raise NfedgeError("integer kernel: the 32-bit epilogue needs acc + bias within int32")
    acc = te.compute((n_, out_channels, oh_, ow_),
                     lambda n, o, oh, ow: te.sum(col[n, oh, ow, r].astype("int32") * weight(o, r).astype("int32"),
                                                 axis=r), name="nf_acc")
    # a stage of its own (a register after scheduling), so that the int64 product below is of two int32 values
    biased = te.compute(acc.shape, lambda n, o, oh, ow: acc[n, o, oh, ow] + bias[o], name="nf_bias") if narrow else acc

    def epilogue(n, o, oh, ow):
        v = biased[n, o, oh, ow].astype("int64")
        v = v if narrow else v + bias[o].astype("int64")
        if high_word:  # nfedge.integer.scheme.apply_scale_high_word: SMMUL, add, shift, saturate in 32 bits
            top = ((v * mult[o].astype("int64")) >> 32).astype("int32")
            # shift holds shift - 32 as uint8: TVM 0.27's bound analysis of x >> (an int32 of unknown range) is
            # wrong and it then drops the clamp below; a uint8 amount keeps it
            y = (top + rounding[o]) >> shift[o].astype("int32")
            return _finish(tirx.max(tirx.min(y, tirx.const(hi, "int32")), tirx.const(lo, "int32")))
        v = (v * mult[o].astype("int64") + rounding[o]) >> shift[o]
        return _finish(tirx.max(tirx.min(v, tirx.const(hi, "int64")), tirx.const(lo, "int64")))

    def _finish(v):
        if lut is not None:
            return lut[v.astype("int32") + 128]
        return v.astype(out_dtype)

    return te.compute((n_, out_channels, oh_, ow_), epilogue, name="nf_out")


def narrow_accumulator(kp: int, bias_bound: int) -> bool:
    """acc + bias fits int32 whatever the codes: |acc| <= Kp * 128 * 128 (a faulty code can be -128)."""
    return kp * (1 << 14) + bias_bound <= INT32_MAX


def constant_weights(codes: np.ndarray, kp: int) -> np.ndarray:
    """A generator's [O, C, kH, kW] codes as the kernel's [O, Kp] int8 constant (rows zero-padded)."""
    w = np.asarray(codes, dtype=np.int64).reshape(codes.shape[0], -1)
    out = np.zeros((w.shape[0], kp), dtype=np.int8)
    out[:, : w.shape[1]] = w
    return out


# ---------------------------------------------------------------------------------------------- intrinsics

def _dot_desc(chunk: int):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (chunk,), "int8", offset_factor=1)
        B = T.match_buffer(b, (chunk,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:chunk], B[0:chunk])
            T.writes(C[0:1])
            for k in T.serial(chunk):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk], "int32")

    return desc


def _mve_impl():
    """C += A . B over 16 int8 pairs: VMLADAVA.S8 (unsigned=0, subtract=0, exchange=0, the accumulator, Qn, Qm)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), "int8", offset_factor=1)
        B = T.match_buffer(b, (16,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:16], B[0:16])
            T.writes(C[0:1])
            C[0] = T.call_llvm_pure_intrin("int32", "llvm.arm.mve.vmldava.v16i8", T.int32(0), T.int32(0),
                                           T.int32(0), C[0], A.vload([0], "int8x16"), B.vload([0], "int8x16"))

    return impl


def _dsp_impl():
    """C += A . B over 4 int8 pairs: each operand's word split by SXTB16 into bytes (0, 2) and, rotated by 8,
    bytes (1, 3) as int16 pairs; two SMLAD add both pairs' products to the accumulator."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:4], B[0:4])
            T.writes(C[0:1])
            wa = T.reinterpret("int32", A.vload([0], "int8x4"))
            wb = T.reinterpret("int32", B.vload([0], "int8x4"))
            ra = T.call_llvm_pure_intrin("int32", "llvm.fshr.i32", wa, wa, T.int32(8))
            rb = T.call_llvm_pure_intrin("int32", "llvm.fshr.i32", wb, wb, T.int32(8))
            even = T.call_llvm_pure_intrin("int32", "llvm.arm.smlad", T.call_llvm_pure_intrin(
                "int32", "llvm.arm.sxtb16", wa), T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", wb), C[0])
            C[0] = T.call_llvm_pure_intrin("int32", "llvm.arm.smlad", T.call_llvm_pure_intrin(
                "int32", "llvm.arm.sxtb16", ra), T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", rb), even)

    return impl


def _intrin(isa: str) -> str:
    """The registered TensorIntrin's name (registered once per process: TVM's registry is global)."""
    from tvm.s_tir import TensorIntrin

    name = f"nfedge_dot_i8i8i32_{isa}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, _dot_desc(_CHUNK[isa]), _mve_impl() if isa == "mve" else _dsp_impl())
    return name


# ---------------------------------------------------------------------------------------------- schedule

def schedule_int8_kernels(mod, target):
    """Schedule every PrimFunc marked with KERNEL_ATTR (see the module doc); the others are left alone.
    A schedule TVM refuses is an error: these functions are nfedge's own, so a refusal is a bug here."""
    import tvm

    isa = isa_of_target(target)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and func.attrs.get(KERNEL_ATTR, None) is not None:
            try:
                mod[gv] = _schedule_conv(func, isa).with_attr("tirx.is_scheduled", True)
            except Exception as e:  # noqa: BLE001 - TVM raises its own types; the function name is what helps
                raise NfedgeError(f"integer kernel schedule failed for {gv.name_hint} ({isa or 'generic'}): "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}"
                                  ) from e
    return mod


def _schedule_conv(func, isa: str | None):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    acc, col, out = sch.get_sblock("nf_acc"), sch.get_sblock("nf_col"), sch.get_sblock("nf_out")
    n, o, oh, ow, k = sch.get_loops(acc)
    n_o, n_c = (int(sch.get(v).extent) for v in (o, ow))
    kp = int(sch.get(k).extent)
    to, tw = _TILE[isa]
    to = to if n_o % to == 0 else (2 if n_o % 2 == 0 else 1)
    tw = tw if n_c % tw == 0 else 1
    chunk = chunk_of(isa)
    tensorize = isa is not None and kp % chunk == 0
    oo, oi = sch.split(o, [None, to])
    wo, wi = sch.split(ow, [None, tw])
    ko, ki = sch.split(k, [None, chunk]) if tensorize else (k, None)
    sch.reorder(oh, oo, wo, ko, oi, wi, *([ki] if ki is not None else []))
    kernel = int(sch.get(col).annotations["nf_kernel"])
    kk = kernel * kernel
    sch.transform_block_layout(col, lambda n_, oh_, ow_, k_: (n_, oh_, ow_, k_ // kk, k_ % kk // kernel, k_ % kernel))
    if kp % kk == 0:  # one output row's windows, right before the row (TVM's region inference is exact here)
        sch.compute_at(col, oh, preserve_unit_loops=True)
    # else the whole layer's windows first (OH x OW x kc bytes): compute_at would infer a partial kw range
    copy = sch.cache_write(acc, 0, "local")  # the tile's accumulators stay in registers
    sch.compute_inline(copy)  # the epilogue reads them directly
    stages = [out]
    if any(sch.get(b).name_hint == "nf_bias" for b in sch.get_child_blocks(sch.get_sblock("root"))):
        stages.insert(0, sch.get_sblock("nf_bias"))
        sch.set_scope(stages[0], 0, "local")
    for b in stages:
        sch.reverse_compute_at(b, wo, preserve_unit_loops=True)
        for loop in sch.get_loops(b)[-4:]:  # constant indices: the tile's accumulators stay in registers
            sch.unroll(loop)
    init = sch.decompose_reduction(acc, ko)
    for loop in sch.get_loops(init)[-2:]:
        sch.unroll(loop)
    sch.unroll(oi)
    sch.unroll(wi)
    if tensorize:
        sch.tensorize(ki, _intrin(isa))
    return sch.mod["main"]
