"""Fast host scoring of many weight images of one model on fixed inputs (analysis.evaluate.ImageScorer), bit for bit
the logits of functional_call(model, weights): scoring_copy, 2x2 max-pools as elementwise maxima (CPU max_pool2d also
writes every window's argmax index).

A restart of the pass after the layers an image leaves unchanged (torch.fx cuts, the reference image's activations
kept) was tried and removed: side by side it saved nothing on the main job's sweep (43.2 s against 42.8 s without it,
docs/BENCHMARKS.md "Host evaluation sweep"). Near the voltages that matter (BER ~1e-4: ~75 flipped bits in the
93,728 weight bytes of cnn-s's 8-bit image) nearly every image likely changes one of the first layers, so the pass
restarts near the input anyway (an expectation from the fault counts, not traced).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2) as two elementwise maxima over strided views: the same values bit for bit (a maximum rounds
    nothing), 7x faster on 2 cores, where CPU max_pool2d also writes every window's argmax index
    (docs/BENCHMARKS.md "Host evaluation sweep"). Odd sizes and non-contiguous inputs take max_pool2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2 or not x.is_contiguous():
            return nn.functional.max_pool2d(x, 2)
        n, c, h, w = x.shape
        rows = x.view(n, c, h // 2, 2 * w)  # each row holds an input row pair side by side
        pairs = torch.maximum(rows[..., :w], rows[..., w:]).view(n, c, h // 2, w // 2, 2)
        return torch.maximum(pairs[..., 0], pairs[..., 1])


def _is_pool2x2(m: nn.Module) -> bool:
    def pair(v: Any) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (type(m) is nn.MaxPool2d and not m.return_indices and not m.ceil_mode and pair(m.kernel_size) == (2, 2)
            and pair(m.stride) == (2, 2) and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1))


def scoring_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` for host scoring, every 2x2/stride-2 nn.MaxPool2d replaced by MaxPool2x2: the
    same logits bit for bit (tests/analysis/test_evaluate.py), the same state-dict names (functional_call works)."""
    fast = copy.deepcopy(model).eval()
    pools = [(parent, name) for parent in fast.modules() for name, child in parent.named_children() if _is_pool2x2(child)]
    for parent, name in pools:
        setattr(parent, name, MaxPool2x2())
    return fast
