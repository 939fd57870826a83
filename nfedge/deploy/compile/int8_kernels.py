"""The integer convolution kernels (issue #11): int8 dot products over contiguous runs, one TE compute per form
for every target, so every target computes the same integers (nfedge.deploy.compile.int8_schedule tensorizes them
for the target's ISA).

`conv2d_int8` (im2col; any layer, the base model's always, NCHW activations):

    col[n, oh, ow, k] = x[n, c, oh*s + kh - p, ow*s + kw - p]   (k = (c, kh, kw) in OIHW order; 0 off the image
                                                                  and for k >= K, the zero padding of the row)
    acc[n, o, oh, ow] = sum_k int32(col[n, oh, ow, k]) * int32(W[o, k])

With `rows` (the padded-rows form, `rows_form`: OW a multiple of 4, and Kp whole windows or at most ROWS_FLAT_MAX
terms) col reads a zero-padded copy of the input instead of bounds-checking each byte:

    xpad[n, c, hh, ww] = x[n, c, hh - p, ww - p]     (0 off the image and for the zero channels c >= C)
    col[n, oh, ow, (c, kh, kw)] = xpad[n, c, oh*s + kh, ow*s + kw]

(xpad is x itself where nothing is padded). The kernel may be non-square (kernel = (kH, kW)).

W[o, k] is read in place: for a base model it is byte `offset + o*K + k` of the flat memory image (the codes
as stored, OIHW, so for one output channel the whole reduction is one contiguous run of K bytes), for a
generator a constant. Where the reduction is zero-padded to Kp > K, a read of W[o, k >= K] lands on the next
row's (or the next tensor's) codes and is multiplied by a zero of col: the sum is unchanged, and the graph
builder only pads where those bytes exist (`padded_reduction`).

`conv2d_int8_nhwc` (direct; constant weights in any layout nfedge likes, i.e. a generator's): NHWC
activations, so a kernel row's window is kW*C contiguous input bytes and no im2col copy is needed.

Both end in the same epilogue, described by one `Requant` (the layer's bias, rescale, clamp and tanh table):
saturate(((acc + bias[o]) * sign*M[o] + 2^(shift[o]-1)) >> shift[o]) with the int64 formula of docs/INTEGER.md,
or its exact 32-bit form (nfedge.integer.scheme.apply_scale_high_word) where every shift is >= 33, then the tanh
table where the layer has one. `emit_kernel` adds a kernel to a Relax graph with the Requant's arrays as its
constant operands.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from nfedge.errors import NfedgeError
from nfedge.integer.scheme import HIGH_WORD_MIN_SHIFT, INT32_MAX

__all__ = ["IM2COL_KERNEL", "KERNEL_ATTR", "NHWC_KERNEL", "Requant", "chunk_of", "constant_weights", "conv2d_int8",
           "conv2d_int8_nhwc", "emit_kernel", "isa_of_target", "narrow_accumulator", "nhwc_weights",
           "padded_reduction", "rows_form"]

KERNEL_ATTR = "nfedge.kernel"  # PrimFunc attribute that marks a kernel for nfedge.deploy.compile.int8_schedule
IM2COL_KERNEL, NHWC_KERNEL = "conv2d_int8", "conv2d_int8_nhwc"  # its values
_MVE_CPUS = ("cortex-m55", "cortex-m85")
_DSP_CPUS = ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m35p")
_CHUNK = {"mve": 16, "dsp": 4}  # int8 pairs per tensorized dot product


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


@dataclass(frozen=True, eq=False)  # eq=False: numpy/TE fields have no usable ==; compare by identity
class Requant:
    """How one conv layer turns its int32 accumulators into outputs (docs/INTEGER.md, "Rescaling": TOSA
    RESCALE, scale32, single rounding, half up towards +infinity), per output channel o:

        out[o] = saturate(((acc + bias[o]) * mult[o] + 2^(s[o]-1)) >> s[o], lo, hi)   (int64; >> floors)

    then lut[out + 128] where the layer ends in tanh. Units: acc and bias count s_in * s_w[o] * g[o] (the
    accumulator's scale); mult * 2^-s is the real factor from that scale to the output's; out counts the output
    scale (int8, or int32 logits).

    The arrays, [O] each: numpy arrays of exactly the dtypes below where a graph is built (`per_channel`), the
    kernel's TE tensors inside its compute (`emit_kernel` swaps them; `arrays` fixes their operand order):
    - bias: int32, bias_q[o];
    - mult: int32, sign[o] * M[o] with 2^30 <= M < 2^31, or 0 for a zero factor;
    - rounding and shift: int64 2^(s-1) and int64 s (2 <= s <= 62); with `high_word` (every s >= 33 and acc + bias
      within int32: nfedge.integer.scheme.apply_scale_high_word) int32 2^(s-33) and uint8 s-32;
    - lut: int8 [256], the tanh table (index: the int8 pre-activation + 128), or None.
    lo, hi: the clamp, in output units ([-128, 127]; [0, 127] with a fused ReLU; the int32 range for logits);
    out_dtype: "int8" or "int32"; bias_bound: max |bias[o]| (whether acc + bias fits int32, narrow_accumulator)."""

    bias: Any
    mult: Any
    rounding: Any
    shift: Any
    lut: Any
    lo: int
    hi: int
    out_dtype: str
    bias_bound: int
    high_word: bool

    @classmethod
    def per_channel(cls, bias, signed_mult, shift, *, out_channels: int, kp: int, lo: int, hi: int,
                    out_dtype: str, lut: np.ndarray | None = None) -> Requant:
        """A layer's Requant from its calibrated parameters (each a scalar or one value per output channel:
        bias_q, signed_mult = sign * M, shift the TOSA shift), for a kernel whose reduction has kp terms: the
        32-bit epilogue where every shift allows it (int32 logits too: their clamp is the int32 range) and
        acc + bias cannot overflow int32, the int64 formula otherwise."""

        def channels(v):  # int64 [O]; astype copies, so each array handed on is contiguous (it becomes a constant)
            return np.broadcast_to(np.asarray(v, dtype=np.int64), (out_channels,)).astype(np.int64)

        bias, signed_mult, shift = channels(bias), channels(signed_mult), channels(shift)
        bias_bound = int(np.abs(bias).max(initial=0))
        high_word = int(shift.min()) >= HIGH_WORD_MIN_SHIFT and narrow_accumulator(kp, bias_bound)
        if high_word:
            rounding, shift_arg = np.left_shift(1, shift - 33).astype(np.int32), (shift - 32).astype(np.uint8)
        else:
            rounding, shift_arg = np.left_shift(np.int64(1), shift - 1), shift
        return cls(bias.astype(np.int32), signed_mult.astype(np.int32), rounding, shift_arg,
                   None if lut is None else np.asarray(lut, dtype=np.int8), lo=int(lo), hi=int(hi),
                   out_dtype=out_dtype, bias_bound=bias_bound, high_word=high_word)

    def arrays(self) -> tuple:
        """The arrays in the kernel's operand order (after x and w): bias, mult, rounding, shift[, lut]."""
        return (self.bias, self.mult, self.rounding, self.shift) + (() if self.lut is None else (self.lut,))

    def with_arrays(self, arrays) -> Requant:
        """The same Requant over other arrays in `arrays` order (the kernel compute's TE tensors)."""
        bias, mult, rounding, shift, *lut = arrays
        return dataclasses.replace(self, bias=bias, mult=mult, rounding=rounding, shift=shift,
                                   lut=lut[0] if lut else None)


def emit_kernel(bb, compute, x, w, rq: Requant, *, name: str, **geometry):
    """bb.emit_te of a kernel `compute` (conv2d_int8 or conv2d_int8_nhwc) on Relax x and w, with rq's arrays as
    Relax constants; `geometry` is the compute's keyword arguments, `name` the PrimFunc's name hint. The
    operands are x, w, then rq.arrays() in order (emit_te names the PrimFunc's parameters by position)."""
    from tvm import relax

    constants = [relax.const(a, str(a.dtype)) for a in rq.arrays()]

    def on_tensors(x_te, w_te, *arrays):
        return compute(x_te, w_te, rq.with_arrays(arrays), **geometry)

    return bb.emit_te(on_tensors, x, w, *constants, primfunc_name_hint=name)


def rows_form(kp: int, kernel, out_width: int) -> bool:
    """Whether conv2d_int8's padded-rows form applies (rows=True): OW a multiple of 4, and Kp whole windows or a
    short row (at most ROWS_FLAT_MAX terms: its terms are then unrolled, a stem's)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return (kp % (kh * kw) == 0 or kp <= ROWS_FLAT_MAX) and out_width % 4 == 0


ROWS_FLAT_MAX = 64  # the longest row of partial windows the padded-rows form gathers term by term (unrolled)


def conv2d_int8(x, w, rq: Requant, *, w_offset: int, out_channels: int, kernel, stride: int, padding: int,
                kp: int, pairs16: bool = False, rows: bool = False):
    """The TE compute of one integer conv layer (see the module doc). x: int8 [N, C, H, W]; w: the flat int8
    image (w_offset = the tensor's byte offset) or a constant int8 [O, Kp]; rq: the epilogue, its arrays TE
    tensors; kernel: kH = kW, or (kH, kW); kp: the reduction length (padded_reduction); pairs16: the DSP form
    of the im2col row; rows: gather the im2col rows from a zero-padded copy of the input rows (nf_xpad) instead
    of bounds-checking every byte, where `rows_form` allows (the schedule computes kH padded rows per output row,
    then the row's windows, vectorized on the M55)."""
    from tvm import te, tirx

    n_, c_, h_, w_ = (int(v) for v in x.shape)
    k_h, k_w = (kernel, kernel) if isinstance(kernel, int) else (int(kernel[0]), int(kernel[1]))
    kk = k_h * k_w
    k_terms = c_ * kk
    oh_ = (h_ + 2 * padding - k_h) // stride + 1
    ow_ = (w_ + 2 * padding - k_w) // stride + 1
    flat = len(w.shape) == 1

    # col's row holds whole (c, kh, kw) windows: kc = Cpad*kH*kW >= Kp terms, c >= C zero; the schedule turns
    # the flat k into those three loops (no division left in the copy)
    kc = -(-kp // kk) * kk

    def col_value(n, oh, ow, k):
        c, kh, kw = k // kk, (k % kk) // k_w, k % k_w
        hh = oh * stride + kh - padding
        ww = ow * stride + kw - padding
        inside = tirx.all(c < c_, hh >= 0, hh < h_, ww >= 0, ww < w_)
        return tirx.if_then_else(inside, x[n, tirx.min(c, c_ - 1), hh, ww], tirx.const(0, "int8"))

    if rows and rows_form(kp, (k_h, k_w), ow_):
        # xpad[n, c, hh, ww] = x[n, c, hh - p, ww - p], 0 off the image and for c >= C; the schedule computes
        # its kH rows of one output row at a time (a zero fill, then whole rows copied)
        wp = max(w_ + 2 * padding, (ow_ - 1) * stride + k_w)

        def padded(n, c, hh, ww):
            inside = tirx.all(c < c_, hh >= padding, hh < h_ + padding, ww >= padding, ww < w_ + padding)
            return tirx.if_then_else(inside, x[n, tirx.min(c, c_ - 1), hh - padding, ww - padding],
                                     tirx.const(0, "int8"))

        # where nothing is padded (no border, no zero channel) the windows are gathered from x itself
        unpadded = padding == 0 and kc // kk == c_
        xpad = x if unpadded else te.compute((n_, kc // kk, h_ + 2 * padding, wp), padded, name="nf_xpad")
        col = te.compute((n_, oh_, ow_, kc), lambda n, oh, ow, k: xpad[n, k // kk, oh * stride + k % kk // k_w,
                                                                       ow * stride + k % k_w],
                         name="nf_col", attrs={"nf_kernel": [k_h, k_w], "nf_stride": stride})
    else:
        col = te.compute((n_, oh_, ow_, kc), col_value, name="nf_col", attrs={"nf_kernel": [k_h, k_w]})

    def weight(o, k):
        return w[w_offset + o * k_terms + k] if flat else w[o, k]

    if pairs16 and kp % 4 == 0:
        # the DSP form (CMSIS-NN's): col widened once to int16, each group of 4 stored as (0, 2, 1, 3), so that
        # one word of it is the int16 pair SMLAD multiplies with SXTB16's (0, 2) or (1, 3) bytes of 4 codes
        col16 = te.compute((n_, oh_, ow_, kp // 4, 4), lambda n, oh, ow, q, j: col[n, oh, ow, 4 * q + PAIR_ORDER(j)]
                           .astype("int16"), name="nf_col16")
        r4, rj = te.reduce_axis((0, kp // 4), name="q"), te.reduce_axis((0, 4), name="j")
        acc = te.compute((n_, out_channels, oh_, ow_), lambda n, o, oh, ow: te.sum(
            col16[n, oh, ow, r4, rj].astype("int32") * weight(o, 4 * r4 + PAIR_ORDER(rj)).astype("int32"),
            axis=[r4, rj]), name="nf_acc")
    else:
        r = te.reduce_axis((0, kp), name="k")
        acc = te.compute((n_, out_channels, oh_, ow_), lambda n, o, oh, ow: te.sum(
            col[n, oh, ow, r].astype("int32") * weight(o, r).astype("int32"), axis=r), name="nf_acc")
    return _requantized(acc, 1, rq, kp=kp)


def conv2d_int8_nhwc(x, w, rq: Requant, *, out_channels: int, kernel: int, stride: int, padding: int):
    """The direct NHWC form for constant weights (a generator's, in flash): x int8 [N, H, W, C], w int8
    [O, kH, KWp] (each kernel row's kW x C codes, zero-padded to KWp, `nhwc_weights`). With channels innermost,
    a kernel row's window is kW*C contiguous bytes of one zero-padded input row, so the dot products need no
    im2col: acc[n, oh, ow, o] = sum_{kh, j < KWp} xrow[n, oh*s + kh, ow*s*C + j] * w[o, kh, j] (reads past
    kW*C meet zero weights). Output int8 [N, OH, OW, O]; the other arguments as conv2d_int8."""
    from tvm import te, tirx

    n_, h_, w_, c_ = (int(v) for v in x.shape)
    kwp = int(w.shape[2])
    oh_ = (h_ + 2 * padding - kernel) // stride + 1
    ow_ = (w_ + 2 * padding - kernel) // stride + 1
    row = max((w_ + 2 * padding) * c_, (ow_ - 1) * stride * c_ + kwp)

    def padded(n, hh, j):
        inside = tirx.all(hh >= padding, hh < h_ + padding, j >= padding * c_, j < (padding + w_) * c_)
        jj = tirx.max(j - padding * c_, 0)
        return tirx.if_then_else(inside, x[n, tirx.max(hh - padding, 0), jj // c_, jj % c_], tirx.const(0, "int8"))

    xrow = te.compute((n_, h_ + 2 * padding, row), padded, name="nf_pad")
    rk = te.reduce_axis((0, kernel), name="kh")
    rj = te.reduce_axis((0, kwp), name="j")
    acc = te.compute((n_, oh_, ow_, out_channels), lambda n, oh, ow, o: te.sum(
        xrow[n, oh * stride + rk, ow * stride * c_ + rj].astype("int32") * w[o, rk, rj].astype("int32"),
        axis=[rk, rj]), name="nf_acc")
    return _requantized(acc, 3, rq, kp=kernel * kwp)


def _requantized(acc, axis: int, rq: Requant, *, kp: int, shape=None):
    """bias, rescale, saturate (and the tanh table) of int32 accumulators whose output channel is `axis`, over
    kp reduction terms; `shape` (default acc's): the output's, a leading part of acc on every axis."""
    from tvm import te, tirx

    # the bias is added in int32 where acc + bias cannot overflow (|acc| <= Kp * 2^14 with any codes): the
    # epilogue then multiplies two int32 (one SMULL), adds the rounding constant, shifts and clamps, the
    # reference's int64 formula; the bias is added in int64 otherwise
    narrow = narrow_accumulator(kp, rq.bias_bound)
    if rq.high_word and not narrow:
        raise NfedgeError("integer kernel: the 32-bit epilogue needs acc + bias within int32")
    # a stage of its own (a register after scheduling), so that the int64 product below is of two int32 values
    shape = acc.shape if shape is None else shape
    biased = te.compute(shape, lambda *i: acc[i] + rq.bias[i[axis]], name="nf_bias") if narrow else acc

    def finish(v):
        return rq.lut[v.astype("int32") + 128] if rq.lut is not None else v.astype(rq.out_dtype)

    def epilogue(*i):
        o = i[axis]
        v = biased[i].astype("int64")
        v = v if narrow else v + rq.bias[o].astype("int64")
        if rq.high_word:  # nfedge.integer.scheme.apply_scale_high_word: SMMUL, add, shift, saturate in 32 bits
            top = ((v * rq.mult[o].astype("int64")) >> 32).astype("int32")
            # shift holds shift - 32 as uint8: TVM 0.27's bound analysis of x >> (an int32 of unknown range) is
            # wrong and it then drops the clamp below; a uint8 amount keeps it
            y = (top + rq.rounding[o]) >> rq.shift[o].astype("int32")
            return finish(tirx.max(tirx.min(y, tirx.const(rq.hi, "int32")), tirx.const(rq.lo, "int32")))
        v = (v * rq.mult[o].astype("int64") + rq.rounding[o]) >> rq.shift[o]
        return finish(tirx.max(tirx.min(v, tirx.const(rq.hi, "int64")), tirx.const(rq.lo, "int64")))

    return te.compute(shape, epilogue, name="nf_out")


def PAIR_ORDER(j):  # a fixed permutation, named like the constant it is
    """(0, 1, 2, 3) -> (0, 2, 1, 3): the order of 4 codes as SXTB16 splits them into two int16 pairs."""
    return (j % 2) * 2 + j // 2


def narrow_accumulator(kp: int, bias_bound: int) -> bool:
    """acc + bias fits int32 whatever the codes: |acc| <= Kp * 128 * 128 (a faulty code can be -128)."""
    return kp * (1 << 14) + bias_bound <= INT32_MAX


def nhwc_weights(codes: np.ndarray, isa: str | None) -> np.ndarray:
    """A generator's [O, C, kH, kW] codes as conv2d_int8_nhwc's [O, kH, KWp] constant: each kernel row's
    (kw, c) codes, channels innermost, zero-padded to the ISA's chunk."""
    o, c, kh, kw = codes.shape
    rows = np.asarray(codes, dtype=np.int64).transpose(0, 2, 3, 1).reshape(o, kh, kw * c)
    ch = chunk_of(isa)
    out = np.zeros((o, kh, -(-kw * c // ch) * ch), dtype=np.int8)
    out[:, :, : kw * c] = rows
    return out


def constant_weights(codes: np.ndarray, kp: int) -> np.ndarray:
    """A generator's [O, C, kH, kW] codes as the kernel's [O, Kp] int8 constant (rows zero-padded)."""
    w = np.asarray(codes, dtype=np.int64).reshape(codes.shape[0], -1)
    out = np.zeros((w.shape[0], kp), dtype=np.int8)
    out[:, : w.shape[1]] = w
    return out
