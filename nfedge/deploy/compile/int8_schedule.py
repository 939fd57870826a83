"""The schedules of nfedge's integer conv kernels (nfedge.deploy.compile.int8_kernels), chosen from the target's CPU.

- "mve" (Cortex-M55, Helium): the dot product of 16 int8 pairs is one VMLADAVA.S8 (`llvm.arm.mve.vmldava`);
- "dsp" (Cortex-M4/M7/M33, the DSP extension): 4 int8 pairs are two SXTB16 per operand and two SMLAD
  (`llvm.arm.sxtb16`, `llvm.arm.smlad`);
- None (any other target): the same loops untensorized, for LLVM's own vectorizer.
Each kernel computes a tile of 2 output channels x 2 output columns (2 x 4 columns for a single output
channel) in registers, then its bias, rescale and saturation; the im2col rows of one output row are computed
right before that row where Kp is a whole number of windows (RAM: OW x Kp bytes), for the whole layer first
otherwise (OH x OW x Kc bytes); the NHWC kernel's zero-padded input rows are computed for the whole layer.
The depthwise kernel's schedule is nfedge.deploy.compile.int8_depthwise.schedule_depthwise.
Measured (bench/bench_target.py, docs/BENCHMARKS.md): the 2 x 2 tile beat 4 x 2, 4 x 1, 2 x 1 and 1 x 4 on the M4
(4 x 2 spills its 8 accumulators: the M4 has 13 usable core registers).
"""

from __future__ import annotations

from nfedge.deploy.compile.int8_depthwise import DEPTHWISE_KERNEL, schedule_depthwise
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
                schedule = {NHWC_KERNEL: _schedule_nhwc, DEPTHWISE_KERNEL: schedule_depthwise}.get(
                    str(func.attrs[KERNEL_ATTR]), _schedule_im2col)
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
    kernel = int(sch.get(col).annotations["nf_kernel"])
    kk = kernel * kernel
    sch.transform_block_layout(col, lambda n_, oh_, ow_, k_: (n_, oh_, ow_, k_ // kk, k_ % kk // kernel, k_ % kernel))
    if kp % kk == 0:  # one output row's windows, right before the row (TVM's region inference is exact here)
        if pairs16:
            sch.compute_at(sch.get_sblock("nf_col16"), oh, preserve_unit_loops=True)
        sch.compute_at(col, oh, preserve_unit_loops=True)
    # else the whole layer's windows first (OH x OW x kc bytes): compute_at would infer a partial kw range
    _epilogue_at(sch, wo)
    init = sch.decompose_reduction(acc, ko)
    for loop in sch.get_loops(init)[-2:]:
        sch.unroll(loop)
    sch.unroll(oi)
    sch.unroll(wi)
    if tensorize:
        sch.tensorize(ki, _intrin(intrin))
    return sch.mod["main"]


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
