"""Integer mode's newer operators on the emulated targets (issue #23): the firmware's output integers equal the host
integer reference exactly on cortex-m55 and cortex-m4, at two voltages x two chips, for a network holding every
newer operator (tests/integer/edge_models.EdgeNet, imported as an exported program) and for the MLPerf Tiny models
resnet8 and ds-cnn (trained briefly); one flipped stored bit changes target and host alike."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_nfedge

from nfedge.deploy.compile.build import BuildConfig, build_bundle
from nfedge.deploy.run.faultrun import FaultrunConfig, _bundle_programs, _host_integers, faultrun
from nfedge.deploy.run.harness import run_on_target
from nfedge.integer.calibrate import INPUT_SCALE
from nfedge.integer.scheme import quantize_to_int8
from nfedge.progress import QUIET
from nfedge.sram.image import read_image, with_codes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integer"))
from edge_models import EdgeNet  # noqa: E402
from test_program import _with_bn_stats  # noqa: E402

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (checkpoint, 6-bit image)} for EdgeNet (imported) and resnet8 / ds-cnn (one short epoch)."""
    d = tmp_path_factory.mktemp("ops")
    torch.manual_seed(0)
    ep = torch.export.export(_with_bn_stats(EdgeNet(), 1), (torch.zeros(2, 1, 32, 32),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, d / "edge.pt2")
    r = run_nfedge("import-model", "--exported-program", d / "edge.pt2", "--input", "1x32x32", "--classes", 10,
                   "--dataset", "fashion-mnist", "--test-limit", 50, "--out", d / "edge")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("resnet8", "ds-cnn"):
        r = run_nfedge("train-base", "--model", name, "--epochs", 1, "--train-limit", 600, "--test-limit", 100,
                       "--out", d / name)
        assert r.returncode == 0, r.stderr[-2000:]
    out = {}
    for name in ("edge", "resnet8", "ds-cnn"):
        assert run_nfedge("quantize", "--checkpoint", d / name / "base.pt", "--bits", 6,
                          "--out", d / f"{name}-img").returncode == 0
        out[name] = (d / name / "base.pt", d / f"{name}-img")
    return out


@pytest.mark.parametrize("target", ["cortex-m55", "cortex-m4"])
@pytest.mark.parametrize("name", ["edge", "resnet8", "ds-cnn"])
def test_newer_operators_are_bit_exact_on_target(models, tmp_path, name, target):
    ckpt, img = models[name]
    bundle = build_bundle(BuildConfig(target=target, bits=6, mode="integer", calib_images=64), ckpt, img, None,
                          tmp_path / "bundle", QUIET)
    assert bundle.mode == "integer" and bundle.input_dtype == "int8" and bundle.logit_dtype == "int32"
    r = faultrun(bundle.path, None, FaultrunConfig(voltages=(0.875, 0.792), chips=2, samples=4, jobs=2), QUIET)
    a = r["agreement"]
    assert a["identical_outputs"] == 1.0 and a["max_logit_diff"] == 0.0 and a["passed"], a
    assert r["instructions_per_inference"]["base"] > 100_000


def test_one_flipped_bit_changes_target_and_host_alike(models, tmp_path):
    ckpt, img = models["edge"]
    bundle = build_bundle(BuildConfig(target="cortex-m55", bits=6, mode="integer", calib_images=64), ckpt, img, None,
                          tmp_path / "bundle", QUIET)
    clean = read_image(img)
    x_q = quantize_to_int8(np.random.default_rng(0).uniform(-1, 1, (4, 1, 32, 32)), INPUT_SCALE)
    programs = _bundle_programs(bundle)
    dw = next(t for t in clean.manifest.tensors if t.name.startswith("dw."))  # the depthwise conv's codes
    codes = clean.codes.copy()
    codes[dw.offset + 3] ^= np.int8(1 << 4)  # one stored bit (6-bit codes: bit 4 is stored)
    flipped = with_codes(clean, codes, None)
    outs = []
    for image in (clean, flipped):
        out = run_on_target(bundle, image, x_q).logits_base.astype(np.int64)
        assert np.array_equal(out, _host_integers(programs, image, x_q)[0])
        outs.append(out)
    assert not np.array_equal(*outs)


def test_the_paper_s_resnet18_is_bit_exact_on_cortex_a72(tmp_path):
    """The paper's CIFAR ResNet18 (11 MB image: too large for the M55) in integer mode on the Linux target."""
    r = run_nfedge("train-base", "--model", "resnet18", "--epochs", 1, "--train-limit", 64, "--test-limit", 32,
                   "--out", tmp_path / "base")
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_nfedge("quantize", "--checkpoint", tmp_path / "base" / "base.pt", "--bits", 8,
                      "--out", tmp_path / "img").returncode == 0
    bundle = build_bundle(BuildConfig(target="cortex-a72", bits=8, mode="integer", calib_images=32),
                          tmp_path / "base" / "base.pt", tmp_path / "img", None, tmp_path / "bundle", QUIET)
    assert bundle.mode == "integer"
    r = faultrun(bundle.path, None, FaultrunConfig(voltages=(0.875,), chips=1, samples=2, jobs=1), QUIET)
    assert r["agreement"]["identical_outputs"] == 1.0 and r["agreement"]["passed"], r["agreement"]
