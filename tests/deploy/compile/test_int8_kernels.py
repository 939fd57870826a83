"""nfedge.deploy.compile.int8_kernels: the integer conv kernel computes the reference's integers (compiled for this host),
its schedule uses the ISA's dot-product instructions (the compiled Cortex-M objects' disassembly), and a schedule
that fails is an error naming the function."""

import re
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfedge.deploy.compile.int8_kernels import (
    KERNEL_ATTR,
    Requant,
    conv2d_int8,
    emit_kernel,
    isa_of_target,
    narrow_accumulator,
    padded_reduction,
)
from nfedge.deploy.compile.int8_schedule import schedule_int8_kernels
from nfedge.deploy.compile.lower import lower_relax
from nfedge.errors import NfedgeError
from nfedge.integer.scheme import HIGH_WORD_MIN_SHIFT, apply_scale, apply_scale_high_word, saturate

M55 = {"kind": "llvm", "mtriple": "thumbv8.1m.main-none-eabi", "mcpu": "cortex-m55", "mfloat-abi": "soft"}
M4 = {"kind": "llvm", "mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-m4", "mfloat-abi": "soft"}


def _conv_module(c, o, h, kp, bias, mult, shift, high_word, stride=1, padding=1, lo=-128, hi=127, extra=0,
                 rows=False, kernel=3):
    import tvm
    from tvm import relax

    k = c * (kernel * kernel if isinstance(kernel, int) else kernel[0] * kernel[1])
    rq = Requant.per_channel(bias, mult, shift, out_channels=o, kp=kp, lo=lo, hi=hi, out_dtype="int8")
    assert rq.high_word == high_word  # the shifts and bias chosen select the epilogue path under test
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, h, h), "int8"))
    img = relax.Var("image", relax.TensorType((o * k + extra,), "int8"))
    with bb.function("main", [x, img]):
        with bb.dataflow():
            y = emit_kernel(bb, conv2d_int8, x, img, rq, name="nf_conv_t", w_offset=0, out_channels=o, kernel=kernel,
                            stride=stride, padding=padding, kp=kp, rows=rows)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    for gv, f in list(mod.functions.items()):
        if isinstance(f, tvm.tirx.PrimFunc):
            mod[gv] = f.with_attr(KERNEL_ATTR, "conv2d_int8").with_attr("op_pattern", 8)
    return mod


def _reference(x, w, bias, sign_mult, shift, stride, padding, lo=-128, hi=127):
    acc = F.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64), stride=stride,
                   padding=padding).numpy().astype(np.int64) + bias.reshape(1, -1, 1, 1)
    sign = np.sign(sign_mult).reshape(1, -1, 1, 1)
    return saturate(apply_scale(sign * acc, np.abs(sign_mult).reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)), lo, hi)


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("high_word", [True, False])
@pytest.mark.parametrize("c,o,h,stride,padded", [(8, 16, 8, 1, False), (1, 8, 12, 1, True), (4, 6, 9, 2, False),
                                                 (16, 4, 8, 2, False)])
def test_kernel_equals_the_reference_on_this_host(rows, high_word, c, o, h, stride, padded):
    import tvm
    from tvm import relax

    rng = np.random.default_rng(c * 100 + o)
    k = c * 9
    kp = -(-k // 16) * 16 if padded else k
    extra = kp - k  # the padded reduction over-reads the bytes after the tensor (multiplied by zeros)
    # extreme operands: codes and activations at -128/127, the smallest and largest shifts of each path
    lo_shift = HIGH_WORD_MIN_SHIFT if high_word else 2
    shift = rng.integers(lo_shift, 46, o)
    shift[0], shift[-1] = lo_shift, 45
    mult = rng.integers(2**30, 2**31, o) * rng.choice([-1, 1], o)
    bias = rng.integers(-20000, 20000, o)
    x = rng.choice(np.array([-128, 127, 0, 1, -1, 55], dtype=np.int8), (1, c, h, h))
    image = rng.integers(-128, 128, o * k + extra).astype(np.int8)
    mod = _conv_module(c, o, h, kp, bias, mult, shift, high_word, stride=stride, extra=extra, rows=rows)
    target = tvm.target.Target("llvm")
    ex = tvm.compile(lower_relax(mod, target, "inline"), target=target)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(image)).numpy()
    ref = _reference(x, image[: o * k].reshape(o, c, 3, 3), bias, mult, shift, stride, 1)
    assert got.shape == ref.shape and np.array_equal(got.astype(np.int64), ref)
    assert len(np.unique(ref)) > 10 and (ref == 127).any() and (ref == -128).any()  # saturation was exercised


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("c,h,kernel,stride,padding,padded", [
    (1, 16, (10, 4), 2, 0, True), (3, 12, (2, 5), 1, 2, False), (16, 9, (3, 1), 1, 1, False)])
def test_non_square_kernel_equals_the_reference_on_this_host(rows, c, h, kernel, stride, padding, padded):
    # ds-cnn's 10x4 stem (one channel, a short row of partial windows: kp = 48 > K = 40), a padded 2x5 and a 3x1
    import tvm
    from tvm import relax

    o = 8
    rng = np.random.default_rng(c * 7 + kernel[0])
    k = c * kernel[0] * kernel[1]
    kp = -(-k // 16) * 16 if padded else k
    shift = rng.integers(33, 46, o)
    mult = rng.integers(2**30, 2**31, o) * rng.choice([-1, 1], o)
    bias = rng.integers(-20000, 20000, o)
    x = rng.choice(np.array([-128, 127, 0, 1, -1, 55], dtype=np.int8), (1, c, h, h))
    image = rng.integers(-128, 128, o * k + kp - k).astype(np.int8)
    mod = _conv_module(c, o, h, kp, bias, mult, shift, True, stride=stride, padding=padding, extra=kp - k, rows=rows,
                       kernel=kernel)
    target = tvm.target.Target("llvm")
    ex = tvm.compile(lower_relax(mod, target, "inline"), target=target)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(image)).numpy()
    ref = _reference(x, image[: o * k].reshape(o, c, *kernel), bias, mult, shift, stride, padding)
    assert got.shape == ref.shape and np.array_equal(got.astype(np.int64), ref)
    assert len(np.unique(ref)) > 10


def test_high_word_rescale_hand_worked_and_random():
    # (v*m + 2^(s-1)) >> s worked by hand:
    #   1 * 2^30, s=33:           (2^30 + 2^32) >> 33 = 0
    #   -3 * (2^31-1), s=33:      (-6442450941 + 4294967296) >> 33 = floor(-2147483645 / 2^33) = -1
    #   (2^31-1)^2, s=33:         (2^62 - 2^32 + 1 + 2^32) >> 33 = 2^29
    #   -2^31 * (2^31-1), s=33:   (-2^62 + 2^31 + 2^32) >> 33 = floor(-2^29 + 0.75) = -2^29
    #   12345 * -2^30, s=40:      (-12345 * 2^30 + 512 * 2^30) >> 40 = floor(-11833 / 1024) = -12
    #   7 * 2^30, s=62:           (7 * 2^30 + 2^61) >> 62 = 0
    cases = [(1, 2**30, 33, 0), (-3, 2**31 - 1, 33, -1), (2**31 - 1, 2**31 - 1, 33, 2**29),
             (-(2**31), 2**31 - 1, 33, -(2**29)), (12345, -(2**30), 40, -12), (7, 2**30, 62, 0)]
    for v, m, s, want in cases:
        assert int(apply_scale(np.sign(m) * v, abs(m), s)) == want
        assert int(apply_scale_high_word(v, m, s)) == want
    rng = np.random.default_rng(0)
    v = rng.integers(-(2**31), 2**31, 100_000)
    m = rng.integers(0, 2**31, 100_000) * rng.choice([-1, 1], 100_000)
    s = rng.integers(33, 63, 100_000)
    assert np.array_equal(apply_scale(np.sign(m) * v, np.abs(m), s), apply_scale_high_word(v, m, s))
    with pytest.raises(NfedgeError, match="shifts >= 33"):
        apply_scale_high_word(1, 1, 32)


def test_padding_and_narrowing_rules():
    assert padded_reduction(288, "mve", 0) == 288  # already whole chunks
    assert padded_reduction(9, "mve", 100) == 16 and padded_reduction(9, "mve", 6) == 9  # over-read needs the room
    assert padded_reduction(9, "mve", None) == 16  # constants are padded with zeros
    assert padded_reduction(9, "dsp", 3) == 12 and padded_reduction(9, None, 100) == 9
    assert narrow_accumulator(576, 2**31 - 1 - 576 * 2**14) and not narrow_accumulator(576, 2**31 - 576 * 2**14)


def test_isa_from_the_target():
    import tvm

    assert isa_of_target(tvm.target.Target(M55)) == "mve"
    assert isa_of_target(tvm.target.Target(M4)) == "dsp"
    assert isa_of_target(tvm.target.Target("llvm")) is None


def _disassembly(target_dict, mattr_m55: bool, rows: bool = False, stride: int = 1) -> str:
    import tvm

    target = tvm.target.Target(target_dict)
    rng = np.random.default_rng(1)
    mod = _conv_module(16, 32, 8, 144, rng.integers(-99, 99, 32), rng.integers(2**30, 2**31, 32),
                       rng.integers(33, 40, 32), True, rows=rows, stride=stride)
    lowered = lower_relax(mod, target, "inline")
    funcs = {gv.name_hint: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert all(f.attrs.get("tirx.is_scheduled") for n, f in funcs.items() if n.startswith("nf_conv"))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        rt = tvm.tirx.build(tvm.IRModule({tvm.ir.GlobalVar(n): f.with_attr("global_symbol", n)
                                          for n, f in funcs.items()}), target=target)
        rt.write_to_file(str(Path(d) / "k.o"))
        args = ["arm-none-eabi-objdump", "-d"] + (["-m", "armv8.1-m.main"] if mattr_m55 else []) + [str(Path(d) / "k.o")]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def test_m55_kernel_uses_helium_dot_products():
    asm = _disassembly(M55, True)
    assert "vmlava.s8" in asm or "vmladava.s8" in asm, "no Helium int8 dot product in the M55 kernel"
    assert "ldrsb" not in asm  # no scalar int8 multiply-accumulate left in the reduction


@pytest.mark.parametrize("stride", [1, 2])
def test_m55_padded_rows_gather_is_vectorized(stride):
    # the padded-rows form: per (c, kh, kw) the window bytes of 8 (stride 1) or 4 (stride 2: OW = 4) output
    # columns move as one vector load and one narrowing scatter store (vstrb.16 / vstrb.32 [rN, qM])
    asm = _disassembly(M55, True, rows=True, stride=stride)
    assert "vmlava.s8" in asm or "vmladava.s8" in asm
    scatter = r"vstrb\.%s\s+q\d+, \[r\d+, q\d+\]" % ("16" if stride == 1 else "32")
    assert re.search(scatter, asm), "no vector scatter store in the M55 im2col gather"
    assert "ldrsb" not in asm


def test_m4_kernel_uses_dsp_dual_macs():
    asm = _disassembly(M4, False)
    assert asm.count("smlad") >= 8 and "sxtb16" in asm, "no SMLAD/SXTB16 in the M4 kernel"


def test_a_kernel_the_schedule_cannot_handle_is_an_error():
    import tvm
    from tvm import te

    a = te.placeholder((4, 4), "int8", name="a")
    b = te.compute((4, 4), lambda i, j: a[i, j] + 1, name="not_a_conv")
    f = te.create_prim_func([a, b]).with_attr(KERNEL_ATTR, "conv2d_int8")
    mod = tvm.IRModule({"nf_conv_broken": f})
    with pytest.raises(NfedgeError, match="integer kernel schedule failed for nf_conv_broken"):
        schedule_int8_kernels(mod, tvm.target.Target(M55))


# ---------------------------------------------------------------------------------------------- depthwise


def _depthwise_module(c, h, w, kh, kw, stride, padding, bias, mult, shift, offset):
    import tvm
    from tvm import relax

    from nfedge.deploy.compile.int8_depthwise import DEPTHWISE_KERNEL, depthwise_int8

    rq = Requant.per_channel(bias, mult, shift, out_channels=c, kp=kh * kw, lo=-128, hi=127, out_dtype="int8")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, h, w), "int8"))
    img = relax.Var("image", relax.TensorType((offset + c * kh * kw,), "int8"))
    with bb.function("main", [x, img]):
        with bb.dataflow():
            y = emit_kernel(bb, depthwise_int8, x, img, rq, name="nf_dw_t", w_offset=offset, kernel_h=kh,
                            kernel_w=kw, stride=stride, padding=padding)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    for gv, f in list(mod.functions.items()):
        if isinstance(f, tvm.tirx.PrimFunc):
            mod[gv] = f.with_attr(KERNEL_ATTR, DEPTHWISE_KERNEL).with_attr("op_pattern", 8)
    return mod, rq


@pytest.mark.parametrize("c,h,w,kh,kw,stride,padding,high_word", [
    (8, 9, 9, 3, 3, 1, 1, True),     # stride 1, padded, OW = 9: a partial group of columns
    (16, 8, 8, 3, 3, 1, 1, False),   # the int64 epilogue
    (6, 10, 7, 3, 3, 2, 1, True),    # stride 2, padded
    (5, 9, 9, 3, 3, 2, 0, False),    # stride 2, unpadded (a Keras pad before it)
    (3, 12, 6, 5, 3, 1, 2, True),    # a non-square kernel
])
def test_depthwise_kernel_equals_the_reference_on_this_host(c, h, w, kh, kw, stride, padding, high_word):
    import tvm
    from tvm import relax

    rng = np.random.default_rng(c * 100 + h)
    lo_shift = HIGH_WORD_MIN_SHIFT if high_word else 2
    shift = rng.integers(lo_shift, 40, c)
    shift[0] = lo_shift
    mult = rng.integers(2**30, 2**31, c) * rng.choice([-1, 1], c)
    bias = rng.integers(-20000, 20000, c)
    x = rng.choice(np.array([-128, 127, 0, 1, -1, 55], dtype=np.int8), (1, c, h, w))
    offset = 7  # the codes start inside the image, read in place
    image = rng.integers(-128, 128, offset + c * kh * kw).astype(np.int8)
    mod, rq = _depthwise_module(c, h, w, kh, kw, stride, padding, bias, mult, shift, offset)
    assert rq.high_word == high_word
    target = tvm.target.Target("llvm")
    ex = tvm.compile(lower_relax(mod, target, "inline"), target=target)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(image)).numpy()
    codes = image[offset:].reshape(c, 1, kh, kw)
    acc = F.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(codes, dtype=torch.float64), stride=stride,
                   padding=padding, groups=c).numpy().astype(np.int64) + bias.reshape(1, -1, 1, 1)
    sign = np.sign(mult).reshape(1, -1, 1, 1)
    ref = saturate(apply_scale(sign * acc, np.abs(mult).reshape(1, -1, 1, 1), shift.reshape(1, -1, 1, 1)), -128, 127)
    assert got.shape == ref.shape and np.array_equal(got.astype(np.int64), ref)
    assert (ref == 127).any() and (ref == -128).any() and len(np.unique(ref)) > 5  # saturation was exercised


def test_m55_depthwise_kernel_uses_helium_vector_macs():
    import tempfile
    from pathlib import Path

    import tvm

    rng = np.random.default_rng(2)
    mod, _ = _depthwise_module(16, 8, 8, 3, 3, 1, 1, rng.integers(-99, 99, 16), rng.integers(2**30, 2**31, 16),
                               rng.integers(33, 40, 16), 0)
    target = tvm.target.Target(M55)
    lowered = lower_relax(mod, target, "inline")
    funcs = {gv.name_hint: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    with tempfile.TemporaryDirectory() as d:
        rt = tvm.tirx.build(tvm.IRModule({tvm.ir.GlobalVar(n): f.with_attr("global_symbol", n)
                                          for n, f in funcs.items()}), target=target)
        rt.write_to_file(str(Path(d) / "k.o"))
        asm = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main", str(Path(d) / "k.o")],
                             capture_output=True, text=True, check=True).stdout
    # per tap: a sign-extending 4-byte load and a vector-by-scalar multiply-accumulate; the rescale on vectors
    assert "vldrb.s32" in asm and "vmla.s32" in asm, "no Helium int32x4 multiply-accumulate in the depthwise kernel"
    assert "vmulh.s32" in asm and "umull" not in asm, "the depthwise rescale is not on vectors"


# ---------------------------------------------------------------------------------------------- residual add

def _add_module(ma, mb, shift, lo, hi, shape):
    import tvm
    from tvm import relax

    from nfedge.deploy.compile.int8_elementwise import ADD_KERNEL, add_int8

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(shape, "int8"))
    b = relax.Var("b", relax.TensorType(shape, "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            y = bb.emit_te(add_int8, a, b, ma=ma, mb=mb, shift=shift, lo=lo, hi=hi, primfunc_name_hint="nf_add_t")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    for gv, f in list(mod.functions.items()):
        if isinstance(f, tvm.tirx.PrimFunc):
            mod[gv] = f.with_attr(KERNEL_ATTR, ADD_KERNEL).with_attr("op_pattern", 8)
    return mod


@pytest.mark.parametrize("ma,mb,shift,lo,hi", [
    (2**31 - 1, 2**31 - 1, 17, -128, 127),  # the extremes of the kernel's range: every intermediate at its bound
    (2**31 - 1, 1, 46, -128, 127),
    (1_518_500_250, 2**30, 38, 0, 127),  # a fused ReLU
    (1_234_567_891, 987_654_321, 31, -128, 127),
    (65_535, 65_536, 20, -128, 127),  # Mal, Mah at their edges
    (0, 2**30 + 12_345, 33, -128, 127),
])
def test_add_kernel_equals_the_reference_for_every_int8_pair(ma, mb, shift, lo, hi):
    import tvm
    from tvm import relax

    from nfedge.deploy.compile.int8_elementwise import add_kernel_applies
    from nfedge.integer.scheme import add_rescaled

    assert add_kernel_applies(ma, mb, shift)
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    a, b = a.astype(np.int8).reshape(1, 16, 64, 64), b.astype(np.int8).reshape(1, 16, 64, 64)  # all 65,536 pairs
    target = tvm.target.Target("llvm")
    ex = tvm.compile(lower_relax(_add_module(ma, mb, shift, lo, hi, a.shape), target, "inline"), target=target)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    assert np.array_equal(got.astype(np.int64), add_rescaled(a, b, ma, mb, shift, lo, hi))
    assert not add_kernel_applies(ma, mb, 16) and not add_kernel_applies(ma, mb, 47)
    assert not add_kernel_applies(2**31, 1, 20)


def test_m55_add_kernel_is_vectorized():
    import tempfile
    from pathlib import Path

    import tvm

    target = tvm.target.Target(M55)
    lowered = lower_relax(_add_module(1_518_500_250, 2**30, 38, 0, 127, (1, 16, 8, 8)), target, "inline")
    funcs = {gv.name_hint: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    with tempfile.TemporaryDirectory() as d:
        rt = tvm.tirx.build(tvm.IRModule({tvm.ir.GlobalVar(n): f.with_attr("global_symbol", n)
                                          for n, f in funcs.items()}), target=target)
        rt.write_to_file(str(Path(d) / "k.o"))
        asm = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main", str(Path(d) / "k.o")],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"vmul\.i32|vmla\.s32|vmla\.i32", asm) and "ldrsb" not in asm
