"""bench/bench_cmsis_nn.py's conversion of nfedge's integer layers to CMSIS-NN calls: built from the pinned CMSIS-NN
tree and run under QEMU on one small layer of each kind (conv with a negative BatchNorm factor, depthwise conv,
fully connected after an NCHW flatten, max pool), CMSIS-NN's output integers equal nfedge's reference. No timings
are asserted (the bench reports them)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import bench_cmsis_nn as bench  # noqa: E402

from nfedge.integer.calibrate import INPUT_SCALE, calibrate  # noqa: E402
from nfedge.integer.program import trace_program  # noqa: E402
from nfedge.integer.reference import image_codes, run_integer  # noqa: E402
from nfedge.integer.scheme import quantize_to_int8  # noqa: E402
from nfedge.sram.image import build_image  # noqa: E402

# The ARM toolchain and QEMU are nfedge's own (scripts/setup.sh installs them). CMSIS-NN is not: it is the pinned
# third-party tree the workplace provides beside the repository for benchmarks (no Debian or PyPI package ships it).
pytestmark = [pytest.mark.emulator, pytest.mark.slow,
              pytest.mark.skipif(not (bench.DEFAULT_CMSIS_NN / "Include" / "arm_nnfunctions.h").is_file(),
                                 reason=f"the pinned CMSIS-NN tree is not at {bench.DEFAULT_CMSIS_NN}")]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        x = torch.relu(self.dw(x))
        return torch.relu(self.fc(torch.flatten(x, 1)))  # ReLU: int8 outputs, which CMSIS-NN's FC writes


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(3)
    model = Tiny().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.linspace(-1.5, 1.5, 8))  # negative factors: nfedge's sign flip
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    image = build_image(model, 8)
    x_calib = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    prog = calibrate(trace_program(model, True), model, x_calib, image=image)
    codes = image_codes(prog, image)
    x_q = quantize_to_int8(np.random.default_rng(0).random((1, 1, 8, 8)) * 2 - 1, INPUT_SCALE)
    tensors = run_integer(prog, x_q, codes, keep=True)
    layers, _ = bench.cmsis_layers(prog, codes, tensors)
    fc = layers[3]
    if fc.kind == "fc":  # per-tensor scales (the image's, for a linear): run it through the per-channel FC too
        layers.append(dataclasses.replace(fc, kind="fc_pc", fields={**fc.fields, "kind": bench.KINDS["fc_pc"]}))
    return prog, layers


def test_layers_cover_each_kind(case):
    prog, layers = case
    assert [L.kind for L in layers][:3] == ["conv", "maxpool", "dw"] and layers[3].kind in ("fc", "fc_pc")
    conv = next(op for op in prog.ops if op.kind == "conv")
    assert (np.asarray(conv.params["sign"]) < 0).any() and (np.asarray(conv.params["sign"]) > 0).any()
    assert layers[0].arrays["mult"].min() < 0  # the sign travels in CMSIS-NN's multiplier


@pytest.mark.parametrize("target", bench.TARGETS)
def test_cmsis_nn_equals_reference(case, target, tmp_path):
    _, layers = case
    lib = bench.build_library(bench.DEFAULT_CMSIS_NN, target, tmp_path)
    elf, code = bench.link_firmware(bench.DEFAULT_CMSIS_NN, lib, target, {L.kind for L in layers}, tmp_path, "tiny")
    assert code > 0
    runs = bench.run_firmware(target, elf, bench.pack_blob(layers), len(layers), timeout_s=120)
    assert [bench.compare(L, r) for L, r in zip(layers, runs)] == ["exact"] * len(layers)
    assert all(r.ticks > 0 for r in runs)


def test_bad_input_is_one_line(capsys):
    assert bench.main(["--models", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_cmsis_nn: unknown model") and "\n" not in err
