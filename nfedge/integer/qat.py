"""Quantization-aware training through an integer program: the program's float twin with the model's own,
trainable weights (fake-quantized with a straight-through gradient) and its calibrated activation grids,
which stay frozen while the weights adapt to them ("observed ranges, then frozen").

    prog = calibrate(trace_program(model, True), model, x_calib, image=build_image(model, bits))
    live = LiveWeights(prog, model, bits, per_channel)
    logits = run_float(prog, x, None, fake_quant=True, live=live)     # differentiable w.r.t. the weights and x

BatchNorm statistics are frozen (eval mode): the fold into the rescale uses the running statistics, as the
deployed program does; gamma and beta still train.
"""

from __future__ import annotations

import torch
from torch import nn

from nfedge.integer.calibrate import GENERATOR_BITS
from nfedge.integer.program import Op, Program, batchnorm_eps
from nfedge.quant import fake_quantize


class LiveWeights:
    """op -> (fake-quantized real weight, g, B) from the model's current parameters (see simulate.float_op)."""

    def __init__(self, prog: Program, model: nn.Module, bits: int | None = None, per_channel: bool = False) -> None:
        self.prog, self.mods = prog, dict(model.named_modules())
        # a base model's weights are quantized as the image will store them; a generator's as flash holds them
        self.bits = bits if prog.weights_from_image else GENERATOR_BITS
        self.per_channel = per_channel if prog.weights_from_image else True

    def __call__(self, op: Op) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.mods[op.module]
        w = m.weight
        if op.attrs.get("transposed"):  # ConvTranspose2d weights are [Cin, Cout, ...]: channels on axis 1
            wq = fake_quantize(w.transpose(0, 1), self.bits, self.per_channel).transpose(0, 1)
        else:
            wq = fake_quantize(w, self.bits, self.per_channel)
        b = m.bias if getattr(m, "bias", None) is not None else w.new_zeros(wq.shape[1 if op.attrs.get("transposed") else 0])
        g = torch.ones_like(b)
        shift = torch.zeros_like(b)
        if "bn" in op.attrs:
            bn = self.mods[op.attrs["bn"]]
            g = bn.weight / torch.sqrt(bn.running_var + batchnorm_eps(op, bn))
            shift = bn.bias - g * bn.running_mean
        return wq, g, g * b + shift
