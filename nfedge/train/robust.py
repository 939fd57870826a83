"""Robust retraining of the base model for undervolted weight SRAM (issue #25 item 3), the two methods of Stutz et
al., "Bit Error Robustness for Energy-Efficient DNN Accelerators" (MLSys 2021), on nfedge's own quantization
(nfedge.quant: symmetric b-bit codes, per tensor or per channel) and cell model (nfedge.sram.image: the low b bits
of each code are the stored cells, read back as b-bit two's complement):

- clip: every conv and linear weight is clamped to [-w_max, w_max] after each optimizer step. The quantization
  scale is max|w| / (2^(b-1) - 1), so clipping bounds the step a flipped high bit can add; training at the bound
  spreads the function over more weights near it, so one flipped code moves less of the output (Stutz et al. 4.1);
- randbet: clipping, and each step's loss is CE on the clean b-bit weights plus CE on the same weights with random
  bit errors: every stored bit flipped independently with probability p, a fresh pattern per step (Stutz et al.
  4.3, their "RandBET"). The gradient of the perturbed term reaches the float weights straight through (the error
  is a constant of the step), as QAT's rounding does.

This changes the deployed model, so it is an option only when the user may retrain (`nfedge plan --retrained`,
docs/PLANNER.md); NeuralFuse's setting is the one where they may not.
"""

from __future__ import annotations

import torch
from torch import nn

from nfedge.quant import dequantize, fake_quantize, quantizable_weight_names, quantize_symmetric

ROBUST_METHODS = ("none", "clip", "randbet")


@torch.no_grad()
def clip_weights_(model: nn.Module, w_max: float) -> None:
    """Clamp every conv and linear weight of `model` to [-w_max, w_max] in place."""
    params = dict(model.named_parameters())
    for name in quantizable_weight_names(model):
        params[name].clamp_(-w_max, w_max)


def random_bit_errors(codes: torch.Tensor, bits: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """`codes` (integer tensor of b-bit two's complement codes) with each of the b stored bits flipped independently
    with probability p, read back sign-extended: what a cell flip does to the image (nfedge.sram.image layout)."""
    weights = 2 ** torch.arange(bits, device=codes.device)
    flips = torch.rand((*codes.shape, bits), generator=generator, device=codes.device) < p
    mask = (flips.to(torch.int64) * weights).sum(-1)
    stored = (codes.to(torch.int64) & (2 ** bits - 1)) ^ mask
    return torch.where(stored >= 2 ** (bits - 1), stored - 2 ** bits, stored)


def bit_error_weights(model: nn.Module, bits: int, per_channel: bool, p: float, generator: torch.Generator
                      ) -> dict[str, torch.Tensor]:
    """{name: weight} for functional_call: the fake-quantized weights with random bit errors in their codes
    (random_bit_errors), the gradient passed straight through to the float weights."""
    params = dict(model.named_parameters())
    out = {}
    for name in quantizable_weight_names(model):
        w = params[name]
        fq = fake_quantize(w, bits, per_channel)
        codes, scale = quantize_symmetric(w, bits, per_channel)
        flipped = random_bit_errors(codes, bits, p, generator)
        # exactly the dequantized faulty codes (fq - fq.detach() is 0), with fq's gradient
        out[name] = dequantize(flipped.to(torch.int8), scale.to(w.device)) + (fq - fq.detach())
    return out
