"""Perturbed base models as weights, not module copies: one source of truth for training and evaluation.

A perturbed model is the clean image after `inject_faults`, dequantized: exactly the bytes the target
reads. The N perturbed models of an EOPM step are N weight dicts substituted into ONE module with
`functional_call`: no deep copies, and the weights are plain tensors, so backward computes only the
input gradient the generator needs (a module copy would also compute N sets of weight gradients).
A `torch.func.vmap` over stacked weights was measured slower on CPU (grouped convolutions;
docs/BENCHMARKS.md), so the N passes run one after another.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nfedge.faults import InjectConfig, inject_faults
from nfedge.memory import WeightImage

# Evaluation chips are 0, 1, 2, ...; training chips are drawn from [TRAIN_CHIP_BASE, 2^62) so the two
# never overlap (REFERENCE section 6: evaluation chips disjoint from training chips).
TRAIN_CHIP_BASE = 1 << 40


def perturbed_weights(image: WeightImage, cfg: InjectConfig) -> dict[str, torch.Tensor]:
    faulty, _ = inject_faults(image, cfg)
    return faulty.dequantized_weights()


def forward_many(model: nn.Module, weights: list[dict[str, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """Logits [N, B, classes] of N perturbed versions of `model` (eval mode) on the same input batch."""
    return torch.stack([torch.func.functional_call(model, w, (x,)) for w in weights])


def training_chips(rng: np.random.Generator, n: int) -> list[int]:
    return [int(c) for c in rng.integers(TRAIN_CHIP_BASE, 1 << 62, size=n)]
