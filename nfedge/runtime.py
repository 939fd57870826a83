"""Small shared pieces for training and evaluation: device choice, seeding, batching."""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nfedge.errors import NfedgeError


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA when present, else CPU (the product never needs a GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NfedgeError(f"device {name!r} asked for, but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def seeded_subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n rows of x drawn by a seeded permutation (all of them when x has fewer): a calibration set."""
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def batches(data: TensorDataset, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of an in-memory dataset; shuffled with `generator` when asked (reproducible)."""
    x, y = data.tensors
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i: i + batch_size]
        yield x[idx], y[idx]
