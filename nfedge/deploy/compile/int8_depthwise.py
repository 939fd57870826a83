"""The integer depthwise conv kernel (groups = Cin = Cout, channel multiplier 1), issue #23: the same integers as
the reference's grouped conv, with the same epilogue (nfedge.deploy.compile.int8_kernels.Requant) as the other
kernels, and its inner loop vectorized over output columns.

    xs[n, c, hh, r, j] = x[n, c, hh - p, j*s + r - p]        (0 off the image; r < s, j < J: the padded input
                                                              row split into its s column phases)
    acc[n, c, oh, ow] = sum_{kh, kw} int32(xs[n, c, oh*s + kh, kw % s, ow + kw // s]) * int32(W[c, kh, kw])

so that for one tap (kh, kw) the inputs of consecutive output columns ow are consecutive bytes of xs whatever the
stride, and W[c, kh, kw] is one code, the same for all of them. W is read in place: byte
`offset + c*kH*kW + kh*kW + kw` of the flat memory image (the codes as stored, [C, 1, kH, kW] OIHW: a channel's
taps are contiguous) or of a generator's flat constant. The output columns are computed in groups of LANES
(OWp = OW rounded up to LANES; xs is wide enough, J = OWp + (kW - 1) // s); the epilogue writes ow < OW only.

Schedule (every ISA): per channel, xs is filled for that channel only ((H + 2p) x s x J bytes of workspace: zeros
first, then the in-bound bytes copied by rows, TVM's decompose_padding); then per output row and group of LANES
columns, LANES int32 accumulators in registers over the kH x kW taps (unrolled), then the epilogue on them.
- "mve" (Cortex-M55): the group is one int32x4 vector: per tap one VLDRB.S32 (4 bytes sign-extended) and one
  VMLA.S32 by the tap's code in a core register; the epilogue vectorized too where OW is a multiple of 4.
- "dsp" / None: the same loops, the LANES columns unrolled (scalar MLA).
"""

from __future__ import annotations

from nfedge.deploy.compile.int8_kernels import Requant, _requantized

__all__ = ["DEPTHWISE_KERNEL", "LANES", "depthwise_int8", "schedule_depthwise"]

DEPTHWISE_KERNEL = "depthwise_int8"  # the KERNEL_ATTR value of this kernel
LANES = 4  # output columns per group: one int32x4 Helium vector


def depthwise_int8(x, w, rq: Requant, *, w_offset: int, kernel_h: int, kernel_w: int, stride: int, padding: int):
    """The TE compute (see the module doc). x: int8 [N, C, H, W]; w: a flat int8 tensor (the image, or a
    generator's codes flattened) holding the C x kH x kW codes from w_offset; rq: the epilogue, its arrays TE
    tensors. Output [N, C, OH, OW] of rq.out_dtype."""
    from tvm import te, tirx

    n_, c_, h_, w_ = (int(v) for v in x.shape)
    kk = kernel_h * kernel_w
    oh_ = (h_ + 2 * padding - kernel_h) // stride + 1
    ow_ = (w_ + 2 * padding - kernel_w) // stride + 1
    owp = -(-ow_ // LANES) * LANES
    j_ = owp + (kernel_w - 1) // stride

    def phase(n, c, hh, r, j):
        ww = j * stride + r - padding
        inside = tirx.all(hh >= padding, hh < h_ + padding, ww >= 0, ww < w_)
        return tirx.if_then_else(inside, x[n, c, hh - padding, ww], tirx.const(0, "int8"))

    xs = te.compute((n_, c_, h_ + 2 * padding, stride, j_), phase, name="nf_dwpad")
    rh, rw = te.reduce_axis((0, kernel_h), name="kh"), te.reduce_axis((0, kernel_w), name="kw")
    # the epilogue the vector rescale of the schedule replaces: 32-bit, to int8, no table (its clamp: lo, hi)
    form = rq.high_word and rq.lut is None and rq.out_dtype == "int8"
    acc = te.compute((n_, c_, oh_, owp), lambda n, c, oh, ow: te.sum(
        xs[n, c, oh * stride + rh, rw % stride, ow + rw // stride].astype("int32")
        * w[w_offset + c * kk + rh * kernel_w + rw].astype("int32"), axis=[rh, rw]), name="nf_acc",
        attrs={"nf_rescale": [rq.lo, rq.hi]} if form else {})
    return _requantized(acc, 1, rq, kp=kk, shape=(n_, c_, oh_, ow_))


def schedule_depthwise(func, isa: str | None):
    """The schedule of a depthwise_int8 PrimFunc (see the module doc)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    acc, pad = sch.get_sblock("nf_acc"), sch.get_sblock("nf_dwpad")
    rescale = sch.get(acc).annotations.get("nf_rescale", None)
    rescale = None if rescale is None else (int(rescale[0]), int(rescale[1]))
    _, c, oh, ow, kh, kw = sch.get_loops(acc)
    wo, wi = sch.split(ow, [None, LANES])
    sch.reorder(c, oh, wo, kh, kw, wi)
    sch.compute_at(pad, c, preserve_unit_loops=True)
    if sch.can_decompose_padding(pad, sch.get_loops(pad)[2]):
        sch.decompose_padding(pad, sch.get_loops(pad)[2])  # a zero fill, then a plain copy of the in-bound bytes
    copy = sch.cache_write(acc, 0, "local")
    sch.compute_inline(copy)
    vector = isa == "mve"
    blocks = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    stages = [sch.get_sblock(n) for n in ("nf_bias", "nf_out") if n in blocks]
    ow_out = int(sch.get(sch.get_loops(stages[-1])[-1]).extent)
    if "nf_bias" in blocks:
        sch.set_scope(stages[0], 0, "local")
    whole = vector and ow_out % LANES == 0  # every group of columns is whole: the epilogue on vectors too
    for b in stages:
        sch.reverse_compute_at(b, wo, preserve_unit_loops=True)
        inner = sch.get_loops(b)[-1]
        if whole and sch.get(b).name_hint == "nf_out" and rescale is not None:
            sch.tensorize(inner, _rescale_intrin(*rescale))
        elif whole:
            sch.vectorize(inner)
        else:
            sch.unroll(inner)
    init = sch.decompose_reduction(acc, kh)
    inner_init = sch.get_loops(init)[-1]
    sch.vectorize(inner_init) if vector else sch.unroll(inner_init)
    sch.unroll(kh)
    sch.unroll(kw)
    sch.tensorize(wi, _mla_intrin()) if vector else sch.unroll(wi)
    return sch.mod["main"]


def _rescale_intrin(lo: int, hi: int) -> str:
    """The 32-bit epilogue of LANES columns of one channel (nfedge.integer.scheme.apply_scale_high_word) on one
    int32x4 vector: VMULH.S32 (the high word of the 64-bit products, `llvm.arm.mve.vmulh`), then the rounding
    constant, the shift, the clamp and a narrowing store, as the scalar epilogue computes them."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"nfedge_dw_rescale_{lo}_{hi}".replace("-", "m")
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, m: T.handle, r: T.handle, s: T.handle, o: T.handle) -> None:
        A = T.match_buffer(a, (LANES,), "int32", offset_factor=1, scope="local")
        M = T.match_buffer(m, (1,), "int32", offset_factor=1)
        R = T.match_buffer(r, (1,), "int32", offset_factor=1)
        S = T.match_buffer(s, (1,), "uint8", offset_factor=1)
        O = T.match_buffer(o, (LANES,), "int8", offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:LANES], M[0:1], R[0:1], S[0:1])
            T.writes(O[0:LANES])
            for i in T.serial(LANES):
                with T.sblock("out"):
                    vi = T.axis.remap("S", [i])
                    O[vi] = T.Cast("int8", T.max(T.min(T.Cast("int32", T.Cast("int64", A[vi]) * T.Cast("int64", M[0])
                                                              >> T.int64(32)) + R[0] >> T.Cast("int32", S[0]),
                                                       T.int32(hi)), T.int32(lo)))

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, m: T.handle, r: T.handle, s: T.handle, o: T.handle) -> None:
        A = T.match_buffer(a, (LANES,), "int32", offset_factor=1, scope="local")
        M = T.match_buffer(m, (1,), "int32", offset_factor=1)
        R = T.match_buffer(r, (1,), "int32", offset_factor=1)
        S = T.match_buffer(s, (1,), "uint8", offset_factor=1)
        O = T.match_buffer(o, (LANES,), "int8", offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:LANES], M[0:1], R[0:1], S[0:1])
            T.writes(O[0:LANES])
            top = T.call_llvm_pure_intrin("int32x4", "llvm.arm.mve.vmulh.v4i32", A.vload([0], "int32x4"),
                                          T.Broadcast(M[0], LANES), T.int32(0))
            y = top + T.Broadcast(R[0], LANES) >> T.Broadcast(T.Cast("int32", S[0]), LANES)
            O.vstore([0], T.Cast("int8x4", T.max(T.min(y, T.Broadcast(T.int32(hi), LANES)),
                                                 T.Broadcast(T.int32(lo), LANES))))

    TensorIntrin.register(name, desc, impl)
    return name


def _mla_intrin() -> str:
    """C[i] += int32(A[i]) * int32(B[0]) for LANES columns i: one int32x4 multiply-accumulate of a sign-extended
    int8x4 load by a broadcast code (VLDRB.S32 + VMLA.S32 on Helium). Registered once per process."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = "nfedge_dw_mla_i8x4_i32"
    if TensorIntrin.get(name, allow_missing=True) is not None:
        return name

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (LANES,), "int8", offset_factor=1)
        B = T.match_buffer(b, (1,), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:LANES], B[0:1])
            T.writes(C[0:LANES])
            for i in T.serial(LANES):
                with T.sblock("update"):
                    vi = T.axis.remap("S", [i])
                    C[vi] = C[vi] + T.cast(A[vi], "int32") * T.cast(B[0], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (LANES,), "int8", offset_factor=1)
        B = T.match_buffer(b, (1,), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:LANES], B[0:1])
            T.writes(C[0:LANES])
            # QADD(code, 0) = the code: an operation LLVM does not look through, so the code stays a sign-extended
            # int32 in a core register (VMLA's scalar operand) instead of a splat widened in a Q register
            C.vstore([0], C.vload([0], "int32x4") + T.Cast("int32x4", A.vload([0], "int8x4")) * T.Broadcast(
                T.call_llvm_pure_intrin("int32", "llvm.arm.qadd", T.Cast("int32", B[0]), T.int32(0)), LANES))

    TensorIntrin.register(name, desc, impl)
    return name
