"""Symmetric b-bit weight quantization (2 <= b <= 8), as in the NeuralFuse public code.

codes in [-(2^(b-1)-1), 2^(b-1)-1], round to nearest (half to even), scale = max|w| / (2^(b-1)-1)
per tensor (default) or per output channel. Only conv and linear *weights* are quantized; biases,
BatchNorm and activations stay float. All arithmetic is float32 in torch so that fake quantization
(training), the memory image (deployment) and dequantization (host simulation) agree bit for bit:
dequantize(quantize_symmetric(w)) == fake_quantize(w) exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from nfedge.errors import NfedgeError

MIN_BITS, MAX_BITS = 2, 8
QUANTIZABLE = (nn.Conv2d, nn.Linear)
GRAPH_QUANTIZABLE = (torch.ops.aten.conv2d.default, torch.ops.aten.conv2d.padding, torch.ops.aten.linear.default)


def check_bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise NfedgeError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def qmax(bits: int) -> int:
    return 2 ** (check_bits(bits) - 1) - 1


def symmetric_scale(w: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """float32 scale: shape [] per tensor, [out_channels] per channel. An all-zero slice gets scale 1."""
    w = w.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1) if per_channel else w.abs().amax()
    scale = amax / qmax(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _broadcast(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (w.dim() - 1))) if scale.dim() == 1 else scale


def quantize_symmetric(w: torch.Tensor, bits: int, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (int8 codes, float32 scale) for one weight tensor."""
    scale = symmetric_scale(w, bits, per_channel)
    q = qmax(bits)
    codes = torch.round(w.detach().float() / _broadcast(scale, w)).clamp_(-q, q)
    return codes.to(torch.int8), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights from int8 codes (any int8 pattern, also faulty ones outside the symmetric range)."""
    return codes.float() * _broadcast(scale.float(), codes)


class _RoundSTE(torch.autograd.Function):
    """round() whose gradient is the identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def fake_quantize(w: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (for quantization-aware training).

    The scale is treated as a constant (detached), as in the public NeuralFuse code; inside the
    clamp range the gradient passes straight through, outside it is zero.
    """
    scale = _broadcast(symmetric_scale(w, bits, per_channel), w)
    q = qmax(bits)
    return torch.clamp(_RoundSTE.apply(w / scale), -q, q) * scale


def quantizable_weight_names(model: nn.Module) -> list[str]:
    """Names (state-dict keys) of the conv and linear weights, in module order.

    A graph from torch.export (ExportedProgram.module()) has plain Module placeholders instead of
    Conv2d/Linear: there they are the parameters that aten.conv2d and aten.linear read, in graph order.
    """
    names = [f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    if not names and isinstance(model, torch.fx.GraphModule):
        params = dict(model.named_parameters())
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target in GRAPH_QUANTIZABLE and len(node.args) > 1:
                w = node.args[1]
                if isinstance(w, torch.fx.Node) and w.op == "get_attr" and w.target in params and w.target not in names:
                    names.append(w.target)
    return names


def fake_quantized_weights(model: nn.Module, bits: int, per_channel: bool = False) -> dict[str, torch.Tensor]:
    """{name: fake-quantized weight} for torch.func.functional_call (QAT forward, keeps state-dict keys)."""
    params = dict(model.named_parameters())
    return {n: fake_quantize(params[n], bits, per_channel) for n in quantizable_weight_names(model)}
