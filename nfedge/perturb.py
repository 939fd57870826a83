"""Perturbed base models as weights, not module copies: one source of truth for training and evaluation.

A perturbed model is the clean image after `inject_faults`, dequantized: exactly the bytes the target
reads. `stacked_weights` stacks N such weight sets so one `torch.func.vmap` over
`functional_call` runs all N perturbed models in a single batched forward (no deep copies).
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


def stacked_weights(images: list[WeightImage] | None = None, weights: list[dict[str, torch.Tensor]] | None = None
                    ) -> dict[str, torch.Tensor]:
    weights = weights if weights is not None else [img.dequantized_weights() for img in images or []]
    return {k: torch.stack([w[k] for w in weights]) for k in weights[0]}


def forward_many(model: nn.Module, stacked: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits [N, B, classes] of N perturbed copies of `model` (eval mode) on the same input batch."""
    def one(w):
        return torch.func.functional_call(model, w, (x,))
    return torch.func.vmap(one)(stacked)


def training_chips(rng: np.random.Generator, n: int) -> list[int]:
    return [int(c) for c in rng.integers(TRAIN_CHIP_BASE, 1 << 62, size=n)]
