"""Perturbed base models as weights, not module copies: one source of truth for training and evaluation.

A perturbed model is the clean image after `inject_faults`, dequantized: exactly the bytes the target
reads. The N perturbed models of an EOPM step are N weight dicts substituted into ONE module with
`functional_call`: no deep copies, and the weights are plain tensors, so backward computes only the
input gradient the generator needs (a module copy would also compute N sets of weight gradients).
A `torch.func.vmap` over stacked weights was measured slower on CPU (grouped convolutions;
docs/BENCHMARKS.md), so the N passes run one after another.

For training, `fold_batchnorm` also folds each eval-mode BatchNorm into the convolution before it
(W' = W * gamma / sqrt(var + eps) per output channel, the shift into the conv bias): the same function,
one memory-bound op fewer per layer in each of the N + 1 forward and backward passes. Evaluation keeps
the unfolded model, the reference the target is checked against.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.fx
from torch import nn

from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import WeightImage

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


@dataclasses.dataclass(frozen=True)
class FoldedBase:
    """A frozen eval-mode base model with its BatchNorms folded into the convolutions before them.

    `module` takes the same weight names as the original; `weights` maps the original's weights (clean or
    perturbed, as dequantized from an image) to the folded module's. `folded` counts the folded pairs.
    """

    module: nn.Module
    scales: dict[str, torch.Tensor]  # conv weight name -> BN scale gamma / sqrt(var + eps), shape [Cout, 1, 1, 1]

    @property
    def folded(self) -> int:
        return len(self.scales)

    def weights(self, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v * self.scales[k] if k in self.scales else v for k, v in w.items()}


def fold_batchnorm(model: nn.Module) -> FoldedBase:
    """Fold every BatchNorm2d that only reads a Conv2d's output into that conv (the model must be in eval
    mode: running statistics). A model that torch.fx cannot trace is returned as it is, with nothing folded."""
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (BatchNorm running statistics)")
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: folding is an optimisation only
        return FoldedBase(model, {})
    mods = dict(gm.named_modules())
    scales: dict[str, torch.Tensor] = {}
    for node in list(gm.graph.nodes):
        bn = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or not node.args:
            continue
        prev = node.args[0]
        conv = mods.get(prev.target) if isinstance(prev, torch.fx.Node) and prev.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(prev.users) != 1:
            continue
        with torch.no_grad():
            s = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            b0 = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = nn.Parameter((b0 - bn.running_mean) * s + shift, requires_grad=False)
            conv.weight.mul_(s.reshape(-1, 1, 1, 1))  # so the module alone is the folded original too
        scales[f"{prev.target}.weight"] = s.detach().reshape(-1, 1, 1, 1).clone()
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    if not scales:
        return FoldedBase(model, {})
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return FoldedBase(gm.eval().requires_grad_(False), scales)
