"""Shared fixtures: small models, checkpoints and images built in tmp dirs (no network, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfedge.models import create_base_model
from nfedge.sram.image import SramGeometry, WeightImage, build_image, with_codes
from nfedge.train.checkpoint import save_checkpoint


@pytest.fixture
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_base_model("cnn-xs", in_channels=1, num_classes=10).eval()


@pytest.fixture
def checkpoint(tmp_path, small_model):
    path = tmp_path / "base.pt"
    save_checkpoint(path, small_model, "cnn-xs", 1, 10)
    return path


def random_image(n_codes: int, bits: int, seed: int = 0, geometry: SramGeometry = SramGeometry()) -> WeightImage:
    """An image whose codes are uniform over the symmetric b-bit range (bits of every cell look random)."""
    model = torch.nn.Linear(n_codes, 1, bias=False)
    img = build_image(model, bits, geometry=geometry)
    q = 2 ** (bits - 1) - 1
    codes = np.random.default_rng(seed).integers(-q, q + 1, n_codes).astype(np.int8)
    return with_codes(img, codes, None)


def cnn_xs_with_bn_stats(seed: int = 0) -> torch.nn.Module:
    """cnn-xs in eval mode with non-trivial BatchNorm statistics, so that BN handling matters."""
    torch.manual_seed(seed)
    m = create_base_model("cnn-xs", in_channels=1, num_classes=10)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()
