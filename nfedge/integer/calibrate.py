"""Post-training calibration of an integer program: activation scales observed on a seeded calibration set,
then every operator's integer parameters (rescale multipliers and shifts, int32 biases, tanh tables).

    prog = calibrate(trace_program(base, True), base, x_calib, image=image)   # base model: codes from the image
    gprog = calibrate(trace_program(gen, False), gen, x_calib)                # generator: int8 constants (flash)
Scales: the input is fixed at 1/127 (images live in [-1, 1]); a tensor after conv/linear/add/avgpool gets
max|x| / 127 over the calibration set (observed in float with the clean weights, after the fused activation);
max pooling, padding, cropping, upsampling and flatten keep their input's scale; a concat takes the largest input
scale; a table's output takes its function's fixed grid (tanh, sigmoid: 1/127) or max|f| / 127 (nfedge.integer.
tables); the classifier's output (int32 logits) gets max|x| / 2^20, leaving 2^11 of headroom for faulty weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from nfedge.errors import NfedgeError
from nfedge.integer.program import INPUT, Op, Program, batchnorm_eps, trace_program
from nfedge.integer.scheme import (
    ACT_QMAX,
    INT8_MAX,
    INT8_MIN,
    INT32_MAX,
    INT32_MIN,
    quantize_add_factors,
    quantize_bias,
    quantize_multiplier,
    quantize_to_int8,
)
from nfedge.integer.simulate import run_float
from nfedge.integer.tables import TABLES
from nfedge.models.generators import neuralfuse_transform
from nfedge.quant import quantize_symmetric
from nfedge.sram.image import WeightImage

INPUT_SCALE = 1.0 / ACT_QMAX  # inputs and F(x) are in [-1, 1]
_KEEPS_SCALE = ("maxpool", "upsample", "flatten", "pad", "crop")  # ops that move values without changing them
LOGIT_RESOLUTION = 2.0**20  # logits' scale = max|logit| / 2^20
GENERATOR_BITS = 8  # a generator's weights live in flash, quantized per output channel at 8 bits


def _out_channel_axis(op: Op) -> int:
    return 1 if op.attrs.get("transposed") else 0  # ConvTranspose2d weights are [Cin, Cout, kH, kW]


def program_weights(prog: Program, model: nn.Module, image: WeightImage | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{weight key: (int8 codes, per-output-channel real scales)}: the image's codes (base model) or the
    model's weights quantized per output channel (generator)."""
    state = model.state_dict()
    out = {}
    entries = {t.name: t for t in image.manifest.tensors} if image is not None else {}
    for op in prog.ops:
        if op.kind not in ("conv", "linear"):
            continue
        key = prog.weight_key(op)
        if prog.weights_from_image:
            if key not in entries:
                raise NfedgeError(f"integer mode: weight {key} is not in the memory image")
            t = entries[key]
            codes = image.tensor_codes(t).astype(np.int64)
            scales = np.broadcast_to(np.asarray(t.scales, dtype=np.float64), (t.shape[0],)).copy()
        else:
            w = state[key].detach().float()
            axis = _out_channel_axis(op)
            q, s = quantize_symmetric(w.transpose(0, axis), GENERATOR_BITS, per_channel=True)
            codes = q.transpose(0, axis).numpy().astype(np.int64)
            scales = s.double().numpy()
        out[key] = (codes, scales)
    return out


def _affine(op: Op, model: nn.Module, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(g, B): the conv/linear output y is g * (x conv W) + B per channel (conv bias and BatchNorm folded)."""
    mods = dict(model.named_modules())
    m = mods[op.module]
    b = m.bias.detach().double().numpy() if getattr(m, "bias", None) is not None else np.zeros(channels)
    g, shift = np.ones(channels), np.zeros(channels)
    if "bn" in op.attrs:
        bn = mods[op.attrs["bn"]]
        gt = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + batchnorm_eps(op, bn))
        g, shift = gt.numpy(), (bn.bias.detach().double() - gt * bn.running_mean.detach().double()).numpy()
    return g, g * b + shift


def calibrate(prog: Program, model: nn.Module, x_calib: torch.Tensor, image: WeightImage | None = None,
              ranges: dict[str, float] | None = None) -> Program:
    """Fill in `prog`'s scales and integer parameters in place (and return it), from the float model on
    `x_calib` [N, C, H, W] in [-1, 1]. `ranges` (max|x| per tensor, e.g. frozen by quantization-aware training
    and kept in the checkpoint) replace the observed ones where given."""
    if prog.weights_from_image and image is None:
        raise NfedgeError("integer mode: calibrating a base model needs its memory image")
    weights = program_weights(prog, model, image)
    for op in prog.ops:
        if op.kind in ("conv", "linear"):
            codes, _ = weights[prog.weight_key(op)]
            channels = codes.shape[_out_channel_axis(op)]
            op.params["g"], op.params["B"] = _affine(op, model, channels)
    prog.weight_scales = {k: s for k, (_, s) in weights.items()}
    prog.constants = {} if prog.weights_from_image else {k: c for k, (c, _) in weights.items()}
    amax, shapes = {}, {}
    with torch.no_grad():
        run_float(prog, x_calib, weights, fake_quant=False, observe=(amax, shapes))
    amax.update(ranges or {})
    prog.ranges = dict(amax)
    scales = {INPUT: INPUT_SCALE}
    for op in prog.ops:
        s_in = [scales[i] for i in op.inputs]
        if op.kind in _KEEPS_SCALE:
            scales[op.output] = s_in[0]
        elif op.kind == "concat":
            scales[op.output] = max(s_in)
        elif op.activation in TABLES:
            op.params["pre_scale"] = _act_scale(amax[op.output + ":pre"], op)
            scales[op.output] = TABLES[op.activation].out_scale or _act_scale(amax[op.output], op)
        elif op.output == prog.output and op.kind == "linear" and op.activation == "none":
            scales[op.output] = max(amax[op.output], 1e-12) / LOGIT_RESOLUTION
        else:
            scales[op.output] = _act_scale(amax[op.output], op)
        _integer_params(prog, op, s_in, scales[op.output], shapes)
    prog.scales = scales
    return prog


def _act_scale(a: float, op: Op) -> float:
    if not math.isfinite(a):
        raise NfedgeError(f"integer mode: the output of {op.module or op.output} is not finite on the calibration set")
    # A tensor that is zero on every calibration image (e.g. a generator's last layer at its identity init,
    # G(x) = 0) gets the input's grid, 1/127: zero is exact on any grid, and [-1, 1] stays representable.
    return a / ACT_QMAX if a > 0 else INPUT_SCALE


def _integer_params(prog: Program, op: Op, s_in: list[float], s_out: float, shapes: dict) -> None:
    p = op.params
    if op.kind in ("conv", "linear"):
        sw = prog.weight_scales[prog.weight_key(op)]
        acc_scale = p["g"] * s_in[0] * sw
        if np.any(np.abs(acc_scale) < 1e-30):
            raise NfedgeError(f"integer mode: {op.module}: a channel's BatchNorm scale (gamma) is exactly zero, which the "
                              "rescale cannot express (a generator still at its identity initialisation? train it first)")
        target = p.get("pre_scale", s_out)
        mult = [quantize_multiplier(f) for f in acc_scale / target]
        p["sign"], p["mult"], p["shift"] = (np.array(v, dtype=np.int64) for v in zip(*mult))
        p["bias_q"] = quantize_bias(p["B"], acc_scale)
        final = op.output == prog.output and op.kind == "linear" and op.activation == "none"
        p["lo"], p["hi"] = (INT32_MIN, INT32_MAX) if final else _bounds(op, s_out)
        _table(op, s_out)
    elif op.kind == "add":  # y = (a * Ma + b * Mb + 2^(shift-1)) >> shift: one shared shift, rounded once
        target = p.get("pre_scale", s_out)
        p["ma"], p["mb"], p["shift"] = quantize_add_factors(s_in[0] / target, s_in[1] / target)
        p["lo"], p["hi"] = _bounds(op, s_out)
        _table(op, s_out)
    elif op.kind == "avgpool":  # the window's int32 sum, rescaled by s_in / (count * s_out)
        count = op.attrs["kernel"] ** 2 if "kernel" in op.attrs else shapes[op.inputs[0]][2] * shapes[op.inputs[0]][3]
        op.attrs["hw"] = int(count)
        p["sign"], p["mult"], p["shift"] = quantize_multiplier(s_in[0] / (count * s_out))
    elif op.kind == "concat":
        p["mults"] = [quantize_multiplier(s / s_out) for s in s_in]


def _bounds(op: Op, s_out: float) -> tuple[int, int]:
    """The int8 clamp of an op's output: ReLU from 0, a clamp activation at its real bounds on the output grid
    (round half up, within int8), a table's pre-activation and no activation the whole int8 range."""
    if op.activation == "relu":
        return 0, INT8_MAX
    if op.activation != "clamp":
        return INT8_MIN, INT8_MAX
    lo, hi = (None if v is None else math.floor(v / s_out + 0.5) for v in op.attrs["clamp"])
    lo, hi = INT8_MIN if lo is None else max(INT8_MIN, lo), INT8_MAX if hi is None else min(INT8_MAX, hi)
    if lo > hi:
        raise NfedgeError(f"integer mode: the clamp of {op.module or op.output} is empty on its output grid")
    return lo, hi


def _table(op: Op, s_out: float) -> None:
    """lut[i] = f((i - 128) * pre_scale) on the output grid, for an op ending in a table activation."""
    if op.activation in TABLES:
        q = torch.arange(INT8_MIN, INT8_MAX + 1, dtype=torch.float64)
        op.params["lut"] = quantize_to_int8(TABLES[op.activation].fn(q * op.params["pre_scale"]).numpy(), s_out)


CALIBRATION_IMAGES = 512  # default calibration set: a seeded subset of the training split


def calibrate_programs(model: nn.Module, image: WeightImage, generators: dict[str, nn.Module],
                       x_calib: torch.Tensor, base_ranges: dict[str, float] | None = None) -> dict[str, Program]:
    """{"base": the base model's program, name: each generator's}. One base program serves the model alone and
    behind every generator (the firmware holds one base model), so its ranges are observed on x and on F(x)."""
    with torch.no_grad():
        fronts = [neuralfuse_transform(g.eval(), x_calib) for g in generators.values()]
    programs = {"base": calibrate(trace_program(model, True), model, torch.cat([x_calib, *fronts]), image=image,
                                  ranges=base_ranges)}
    for name, g in generators.items():
        programs[name] = calibrate(trace_program(g, False), g, x_calib)
    return programs


def checkpoint_ranges(meta: dict) -> dict[str, float] | None:
    """The activation ranges a `train-base --mode integer` checkpoint froze (None for any other checkpoint)."""
    return (meta.get("meta", {}).get("integer") or {}).get("ranges")
