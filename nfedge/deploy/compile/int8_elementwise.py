"""The integer residual add as one of nfedge's kernels (issue #23), and the global average pool's window sum as one
TE stage: the same integers as the reference (nfedge.integer.scheme.add_rescaled, a plain int32 sum).

The add, per element, is the reference's

    out = saturate((a*Ma + b*Mb + 2^(s-1)) >> s, lo, hi)      (int64; Ma, Mb in [0, 2^31), s the shared shift)

computed in int32 lanes. With Ma = Mah*2^16 + Mal (Mal = Ma mod 2^16 in [0, 2^16), Mah = Ma >> 16 < 2^15), and the
same for Mb:

    H = a*Mah + b*Mbh      (|H| < 2 * 2^7 * 2^15 = 2^23)
    L = a*Mal + b*Mbl      (|L| < 2 * 2^7 * 2^16 = 2^24)
    a*Ma + b*Mb = H*2^16 + L = (H + (L >> 16))*2^16 + (L mod 2^16)

and, for 17 <= s (so that 2^(s-1) is a multiple of 2^16), floor(floor(v / 2^16) / 2^(s-16)) = floor(v / 2^s) gives

    out = saturate((H + (L >> 16) + 2^(s-17)) >> (s-16), lo, hi)

exactly. Every intermediate fits int32 for s <= 46 (|H + (L >> 16)| < 2^23 + 2^8, 2^(s-17) <= 2^29), so the kernel
takes shifts in [17, 46] (`add_kernel_applies`); an add outside that range stays the int64 Relax form.
tests/deploy/compile/test_int8_kernels.py checks all 65,536 int8 pairs (a, b) against add_rescaled.

Schedule: the elements in one flat loop, vectorized by 16 on the M55 (int32x4 multiplies of sign-extended int8
loads by the constants, VSHR/VSHL, VMAX/VMIN, a narrowing store), scalar elsewhere (one MUL and MLA per half,
SSAT-able clamp).
"""

from __future__ import annotations

__all__ = ["ADD_KERNEL", "add_int8", "add_kernel_applies", "global_sum_int32", "schedule_add"]

ADD_KERNEL = "add_int8"  # the KERNEL_ATTR value of the add kernel
_MIN_SHIFT, _MAX_SHIFT = 17, 46


def add_kernel_applies(ma: int, mb: int, shift: int) -> bool:
    """The add kernel's range (see the module doc): 0 <= Ma, Mb < 2^31 and 17 <= shift <= 46."""
    return 0 <= int(ma) < 2**31 and 0 <= int(mb) < 2**31 and _MIN_SHIFT <= int(shift) <= _MAX_SHIFT


def add_int8(a, b, *, ma: int, mb: int, shift: int, lo: int, hi: int):
    """The TE compute of the add (see the module doc): a, b int8 of one shape; the output int8."""
    from tvm import te, tirx

    if not add_kernel_applies(ma, mb, shift):
        raise ValueError("add_int8: factors or shift outside the kernel's range")
    mah, mal, mbh, mbl = int(ma) >> 16, int(ma) & 0xFFFF, int(mb) >> 16, int(mb) & 0xFFFF

    def i32(v):
        return tirx.const(v, "int32")

    def value(*i):
        av, bv = a[i].astype("int32"), b[i].astype("int32")
        high = av * i32(mah) + bv * i32(mbh)
        low = av * i32(mal) + bv * i32(mbl)
        y = (high + (low >> i32(16)) + i32(1 << (int(shift) - 17))) >> i32(int(shift) - 16)
        return tirx.max(tirx.min(y, i32(int(hi))), i32(int(lo))).astype("int8")

    return te.compute(a.shape, value, name="nf_add")


def global_sum_int32(x):
    """sum over H and W of int8 x [N, C, H, W] as int32 [N, C, 1, 1], the cast inside the reduction (one stage: no
    int32 copy of the whole input in the workspace)."""
    from tvm import te

    n_, c_, h_, w_ = (int(v) for v in x.shape)
    rh, rw = te.reduce_axis((0, h_), name="rh"), te.reduce_axis((0, w_), name="rw")
    return te.compute((n_, c_, 1, 1), lambda n, c, i, j: te.sum(x[n, c, i + rh, j + rw].astype("int32"),
                                                                axis=[rh, rw]), name="nf_gsum")


def schedule_add(func, isa: str | None):
    """The add's schedule (see the module doc)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("nf_add")
    loops = sch.get_loops(block)
    flat = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = int(sch.get(flat).extent)
    lanes = next((v for v in (16, 8, 4) if total % v == 0), 1) if isa == "mve" else 1
    if lanes > 1:
        sch.vectorize(sch.split(flat, [None, lanes])[1])
    elif total % 4 == 0:
        sch.unroll(sch.split(flat, [None, 4])[1])
    return sch.mod["main"]
