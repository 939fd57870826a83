"""Shared fixtures: small models, checkpoints and images built in tmp dirs (no network, no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

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


def run_nfedge(*args) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (`python -m nfedge ...`), output captured."""
    return subprocess.run([sys.executable, "-m", "nfedge", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="session")
def fr_bundle(tmp_path_factory):
    """A cnn-xs base (6-bit image), a tiny ConvT generator and their weight-only arm-cortex bundle, built by the CLI
    once per test session: <dir>/base/base.pt, <dir>/img, <dir>/gen/generator.pt, <dir>/bundle."""
    d = tmp_path_factory.mktemp("fr")
    r = run_nfedge("train-base", "--model", "cnn-xs", "--epochs", 1, "--train-limit", 2000, "--test-limit", 200,
                   "--out", d / "base")
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_nfedge("quantize", "--checkpoint", d / "base" / "base.pt", "--bits", 6, "--out", d / "img").returncode == 0
    r = run_nfedge("train", "--base", d / "base" / "base.pt", "--image", d / "img", "--generator", "ConvT", "--max-steps", 2,
                   "--n-perturbed", 2, "--batch-size", 8, "--out", d / "gen")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_nfedge("build", "--target", "arm-cortex", "--bits", 6, "--mode", "weight-only", "--base",
                   d / "base" / "base.pt", "--image", d / "img", "--generator", d / "gen" / "generator.pt",
                   "--out", d / "bundle")
    assert r.returncode == 0, r.stderr[-2000:]
    return d


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs and a small object store (the machine is shared), shut down after the module."""
    import ray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's note about accelerator variables
        os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")  # Ray must not replace this process's print
        ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
