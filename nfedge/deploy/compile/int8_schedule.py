"""The schedules of nfedge's integer conv kernels (nfedge.deploy.compile.int8_kernels), chosen from the target's CPU.

- "mve" (Cortex-M55, Helium): the dot product of 16 int8 pairs is one VMLADAVA.S8 (`llvm.arm.mve.vmldava`);
- "dsp" (Cortex-M4/M7/M33, the DSP extension): 4 int8 pairs are two SXTB16 per operand and two SMLAD
  (`llvm.arm.sxtb16`, `llvm.arm.smlad`);
- None (any other target): the same loops untensorized, for LLVM's own vectorizer.
Each kernel computes a tile of 2 output channels x 2 output columns (2 x 4 columns for a single output
channel) in registers, then its bias, rescale and saturation. The im2col rows:
- the padded-rows form (conv2d_int8 with rows: always on the M55, on the M4 unless the conv is an unpadded 1x1): per
  output row, its kH zero-padded input rows (nf_xpad: a zero fill and a copy of whole input rows, both vectorized on
  the M55), then on the M55 the row's windows (OW x Kp bytes), LANES = 8 (or 4) output columns per (c, kh, kw) as one
  vector load (a gather by offsets i*s where s > 1) and one narrowing scatter store to offsets i*Kp; on the M4 the
  windows of one 2-column tile at a time (plain byte copies, then the int16 pairs), the loop over output-channel
  tiles inside the column tiles (RAM: the padded rows + 2 x Kp x 3 bytes);
- otherwise: the rows of one output row right before that row where Kp is a whole number of windows (RAM: OW x Kp
  bytes), for the whole layer first otherwise (OH x OW x Kc bytes).
The NHWC kernel's zero-padded input rows are computed for the whole layer. The residual add's schedule is
nfedge.deploy.compile.int8_elementwise.schedule_add.
The depthwise kernel's schedule is nfedge.deploy.compile.int8_depthwise.schedule_depthwise.
Measured (bench/bench_target.py, docs/BENCHMARKS.md): the 2 x 2 tile beat 4 x 2, 4 x 1, 2 x 1 and 1 x 4 on the M4
(4 x 2 spills its 8 accumulators: the M4 has 13 usable core registers).
"""

from __future__ import annotations

import numpy as np

from nfedge.deploy.compile.int8_depthwise import DEPTHWISE_KERNEL, schedule_depthwise
from nfedge.deploy.compile.int8_elementwise import ADD_KERNEL, schedule_add
from nfedge.deploy.compile.int8_kernels import KERNEL_ATTR, NHWC_KERNEL, chunk_of, isa_of_target
from nfedge.errors import NfedgeError

__all__ = ["schedule_int8_kernels"]

_TILE = {"mve": (2, 2), "dsp": (2, 2), None: (2, 2)}  # (output channels, output columns) per tile


# ---------------------------------------------------------------------------------------------- intrinsics

def _dot_desc(chunk: int, a_dtype: str = "int8", pair_order: bool = False):
    """C += sum_k A[k] * B[k] over `chunk` terms, the pattern every dot-product intrinsic replaces; with
    `pair_order`, B is read in PAIR_ORDER (B[k % 2 * 2 + k // 2]), the DSP form's int16 row against raw codes."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (chunk,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (chunk,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:chunk], B[0:chunk])
            T.writes(C[0:1])
            for k in T.serial(chunk):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    if pair_order:
                        C[0] = C[0] + T.cast(A[vk], "int32") * T.cast(B[vk % 2 * 2 + vk // 2], "int32")
                    else:
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


def _dsp16_impl():
    """C += A[0]B[0] + A[1]B[2] + A[2]B[1] + A[3]B[3]: A's two words are int16 pairs as they are (the im2col row
    is stored in PAIR_ORDER), SXTB16 splits B's word into bytes (0, 2) and, rotated by 8, (1, 3); two SMLAD."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int16", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:1], A[0:4], B[0:4])
            T.writes(C[0:1])
            a0 = T.reinterpret("int32", A.vload([0], "int16x2"))
            a1 = T.reinterpret("int32", A.vload([2], "int16x2"))
            wb = T.reinterpret("int32", B.vload([0], "int8x4"))
            rb = T.call_llvm_pure_intrin("int32", "llvm.fshr.i32", wb, wb, T.int32(8))
            even = T.call_llvm_pure_intrin("int32", "llvm.arm.smlad", a0,
                                           T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", wb), C[0])
            C[0] = T.call_llvm_pure_intrin("int32", "llvm.arm.smlad", a1,
                                           T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", rb), even)

    return impl


def _intrin(isa: str) -> str:
    """The registered TensorIntrin's name (registered once per process: TVM's registry is global)."""
    from tvm.s_tir import TensorIntrin

    name = f"nfedge_dot_i8i8i32_{isa}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        desc, impl = {"mve": (_dot_desc(16), _mve_impl()), "dsp": (_dot_desc(4), _dsp_impl()),
                      "dsp16": (_dot_desc(4, "int16", pair_order=True), _dsp16_impl())}[isa]
        TensorIntrin.register(name, desc, impl)
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
                schedules = {NHWC_KERNEL: _schedule_nhwc, DEPTHWISE_KERNEL: schedule_depthwise,
                             ADD_KERNEL: schedule_add}
                schedule = schedules.get(str(func.attrs[KERNEL_ATTR]), _schedule_im2col)
                mod[gv] = schedule(func, isa).with_attr("tirx.is_scheduled", True)
            except Exception as e:  # TVM raises its own types; the function name is what helps
                raise NfedgeError(f"integer kernel schedule failed for {gv.name_hint} ({isa or 'generic'}): "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}"
                                  ) from e
    return mod


def _tile(isa: str | None, n_out: int, n_cols: int) -> tuple[int, int]:
    to, tw = _TILE[isa]
    if n_out % to:
        to = 2 if n_out % 2 == 0 else 1
    if to == 1:  # one output channel (a generator's last layer): more columns share its weights instead
        tw = 2 * tw
    while n_cols % tw:
        tw //= 2
    return to, tw


def _epilogue_at(sch, loop) -> None:
    """The accumulators of a tile in registers, the bias stage and the rescale computed right after it."""
    copy = sch.cache_write(sch.get_sblock("nf_acc"), 0, "local")
    sch.compute_inline(copy)  # the epilogue reads the registers directly
    stages = [sch.get_sblock("nf_out")]
    if any(sch.get(b).name_hint == "nf_bias" for b in sch.get_child_blocks(sch.get_sblock("root"))):
        stages.insert(0, sch.get_sblock("nf_bias"))
        sch.set_scope(stages[0], 0, "local")
    for b in stages:
        sch.reverse_compute_at(b, loop, preserve_unit_loops=True)
        for inner in sch.get_loops(b)[-4:]:  # constant indices: the tile's accumulators stay in registers
            sch.unroll(inner)


def _schedule_im2col(func, isa: str | None):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    acc, col = sch.get_sblock("nf_acc"), sch.get_sblock("nf_col")
    blocks = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    pairs16 = "nf_col16" in blocks  # the DSP form: reduction (q, j) over int16 pairs
    loops = sch.get_loops(acc)
    _, o, oh, ow = loops[:4]
    to, tw = _tile(isa, int(sch.get(o).extent), int(sch.get(ow).extent))
    if pairs16:
        ko, ki = loops[4], loops[5]
        kp = 4 * int(sch.get(ko).extent)
        tensorize, intrin = True, "dsp16"
    else:
        k = loops[4]
        kp = int(sch.get(k).extent)
        tensorize, intrin = isa is not None and kp % chunk_of(isa) == 0, isa
    oo, oi = sch.split(o, [None, to])
    wo, wi = sch.split(ow, [None, tw])
    if not pairs16:
        ko, ki = sch.split(k, [None, chunk_of(isa)]) if tensorize else (k, None)
    sch.reorder(oh, oo, wo, ko, oi, wi, *([ki] if ki is not None else []))
    k_h, k_w = (int(v) for v in sch.get(col).annotations["nf_kernel"])
    kk = k_h * k_w
    if "nf_stride" in sch.get(col).annotations:  # the padded-rows form: kH padded rows, then the row's windows
        if kp % kk == 0:  # else a short row of partial windows: flat k, exact regions, its terms unrolled
            sch.transform_block_layout(col, lambda n_, oh_, ow_, k_: (n_, oh_, ow_, k_ // kk, k_ % kk // k_w,
                                                                      k_ % k_w))
        # the M55 gathers a whole output row (its vector gather spans 4-8 columns); the DSP form gathers one tile's
        # columns at a time, all output channels' tiles then reusing them (CMSIS-NN's few columns of RAM)
        at = oh
        if pairs16:
            sch.reorder(wo, oo)
            at = wo
            sch.compute_at(sch.get_sblock("nf_col16"), at, preserve_unit_loops=True)
        sch.compute_at(col, at, preserve_unit_loops=True)
        if "nf_xpad" in blocks:
            sch.compute_at(sch.get_sblock("nf_xpad"), oh, preserve_unit_loops=True)
        _rows_gather(sch, col, isa, int(sch.get(col).annotations["nf_stride"]), kp % kk == 0)
        _epilogue_at(sch, oo if pairs16 else wo)
        return _finish_im2col(sch, acc, ko, oi, wi, ki, tensorize, intrin)
    sch.transform_block_layout(col, lambda n_, oh_, ow_, k_: (n_, oh_, ow_, k_ // kk, k_ % kk // k_w, k_ % k_w))
    if kp % kk == 0:  # one output row's windows, right before the row (TVM's region inference is exact here)
        if pairs16:
            sch.compute_at(sch.get_sblock("nf_col16"), oh, preserve_unit_loops=True)
        sch.compute_at(col, oh, preserve_unit_loops=True)
    # else the whole layer's windows first (OH x OW x kc bytes): compute_at would infer a partial kw range
    _epilogue_at(sch, wo)
    return _finish_im2col(sch, acc, ko, oi, wi, ki, tensorize, intrin)


def _finish_im2col(sch, acc, ko, oi, wi, ki, tensorize: bool, intrin):
    init = sch.decompose_reduction(acc, ko)
    for loop in sch.get_loops(init)[-2:]:
        sch.unroll(loop)
    sch.unroll(oi)
    sch.unroll(wi)
    if tensorize:
        sch.tensorize(ki, _intrin(intrin))
    return sch.mod["main"]


def _vector_lanes(extent: int) -> int:
    return next((v for v in (16, 8, 4) if extent % v == 0), 1)


def _rows_gather(sch, col, isa: str | None, stride: int, windows: bool) -> None:
    """The padded-rows form's copies (conv2d_int8 with rows): nf_xpad's kH rows of one output row as a zero fill
    and a copy of the in-bound bytes, both vectorized; on the M55 the row's windows gathered LANES output
    columns at a time per (c, kh, kw): one VLDRB.S16 (VLDRB.U16 gather by offsets i*s where s > 1) and one
    VSTRB.16 scatter to offsets i*Kc (`_gather_intrin`)."""
    blocks = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    names = ["nf_xpad"] if "nf_xpad" in blocks else []
    xpad = sch.get_sblock("nf_xpad") if names else None
    if names and sch.can_decompose_padding(xpad, sch.get_loops(xpad)[2]):  # a fill only where there is padding
        sch.decompose_padding(xpad, sch.get_loops(xpad)[2])
        names.insert(0, "nf_xpad_pad_const")
    for name in names:
        block = sch.get_sblock(name)
        own = sch.get_loops(block)[2:]
        inner = sch.fuse(*own) if name.endswith("const") else own[-1]
        lanes = _vector_lanes(int(sch.get(inner).extent))
        if lanes > 1 and isa == "mve":
            sch.vectorize(sch.split(inner, [None, lanes])[1])
    if isa != "mve":
        return
    terms = sch.get_loops(col)[-3:] if windows else sch.get_loops(col)[-1:]  # (c, kh, kw) or the flat k
    ow = sch.get_loops(col)[-1 - len(terms)]
    n_cols, kc = int(sch.get(ow).extent), int(np.prod([int(sch.get(t).extent) for t in terms]))
    lanes = 8 if n_cols % 8 == 0 and 7 * kc < 2**15 else 4
    wo, wi = sch.split(ow, [None, lanes])
    sch.reorder(*terms, wo, wi)
    sch.unroll(terms[-1])
    sch.tensorize(wi, _gather_intrin(lanes, stride))


def _gather_intrin(lanes: int, stride: int) -> str:
    """C[i, 0] = A[i*stride] for `lanes` i, C's rows Kc bytes apart: a (gather) load of the input bytes widened to
    int16/int32 lanes and one narrowing scatter store (`llvm.arm.mve.vstr.scatter.offset`, offsets i*Kc)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"nfedge_gather_{lanes}x{stride}"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    span, vt = (lanes - 1) * stride + 1, {8: "int16x8", 4: "int32x4"}[lanes]

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        sc = T.int32()
        A = T.match_buffer(a, (span,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes, 1), "int8", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:span])
            T.writes(C[0:lanes, 0:1])
            for i in T.serial(lanes):
                with T.sblock("gather"):
                    vi = T.axis.remap("S", [i])
                    C[vi, 0] = A[vi * stride]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        sc = T.int32()
        A = T.match_buffer(a, (span,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes, 1), "int8", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:span])
            T.writes(C[0:lanes, 0:1])
            if stride == 1:
                v = T.Cast(vt, A.vload([0], f"int8x{lanes}"))
            else:
                v = T.call_llvm_pure_intrin(vt, "llvm.arm.mve.vldr.gather.offset", T.address_of(A[0]),
                                            T.Cast(vt, T.Ramp(0, stride, lanes)), T.int32(8), T.int32(0), T.int32(1))
            T.evaluate(T.call_llvm_intrin("void", "llvm.arm.mve.vstr.scatter.offset", T.address_of(C[0, 0]),
                                          T.Cast(vt, T.Ramp(0, sc, lanes)), v, T.int32(8), T.int32(0)))

    TensorIntrin.register(name, desc, impl)
    return name


def _schedule_nhwc(func, isa: str | None):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("nf_acc")
    _, oh, ow, o, kh, j = sch.get_loops(acc)
    to, tw = _tile(isa, int(sch.get(o).extent), int(sch.get(ow).extent))
    chunk = chunk_of(isa)
    tensorize = isa is not None and int(sch.get(j).extent) % chunk == 0
    wo, wi = sch.split(ow, [None, tw])
    oo, oi = sch.split(o, [None, to])
    jo, ji = sch.split(j, [None, chunk]) if tensorize else (j, None)
    sch.reorder(oh, wo, oo, kh, jo, wi, oi, *([ji] if ji is not None else []))
    _epilogue_at(sch, oo)
    init = sch.decompose_reduction(acc, kh)
    for loop in sch.get_loops(init)[-2:]:
        sch.unroll(loop)
    sch.unroll(wi)
    sch.unroll(oi)
    if tensorize:
        sch.tensorize(ji, _intrin(isa))
    return sch.mod["main"]
